"""Copying one scan: download its files, upload them to the target, create it there,
exactly once. One call per scan, on a worker thread of ``copy_pipeline``.

Checkpoint records (``ctx.checkpoint``, the fsynced journal; ``S`` = source scan ID,
``F`` = source file ID), each written when its step is done:

- ``copy:down:S:F``: the file is in ``.copy/S/`` of the run folder
  (``path, size, sha256, filename``); reused after a crash only if size and hash match;
- ``copy:up:S:F``: uploaded to the target as ``upload_id`` (``filename, size``); the
  temp file is removed;
- ``copy:intent:S``: about to create the target scan carrying ``marker``;
- ``copy:created:S``: the target scan ``target_scan_id`` exists (``how``: created by
  this run, recovered by its marker, or an existing copy; ``marker, files, bytes``).

Once a scan is created its records are dropped from the checkpoint's memory (the
journal keeps them), so memory does not grow with the number of scans; a resumed run
reads the records it needs back from the journal (``daemon.checkpoint``).

Exactly once (SPEC §8): a scan's look-up → create → record holds the lease of its copy
key (``ctx.copies``: between the threads of one host, or the hosts of a cluster), and
each create is fenced right before it is sent: an owner whose lease lapsed (a paused or
cut-off host) does not create, and its scan fails transiently, to be looked up again by
its next attempt. Before creating, the intent is journalled with the attempt's
upload IDs and put into the copy ledger. A create that fails without a clear answer
(reset, timeout, 5xx) is followed by a look-up in the target before it is tried again,
and so is a create whose intent a crashed run left behind (its own, or for a plain
copy another run's): first for a scan holding the intent's upload IDs (they are ours
alone, so this holds whatever the target keeps of the payload), then by the marker
where the target keeps it. After a run's first create the marker is read back once; a
target that dropped it is reported (log, ``scanrelay status``) and marker look-ups stop
for that run. ``marker_field: null`` sends no marker; the upload IDs still hold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.errors import PermanentError, ScanrelayError, TransientError
from daemon.instances.base import FileRef, Instance, Scan
from daemon.retry import RetryPolicy
from daemon.store.abc import LeaseLost
from daemon.store.records import CopyKey, OpenIntent
from handlers.base import ItemStatus, RunContext
from handlers.copy_plan import (
    CapturedAtMode,
    How,
    Mode,
    ScanOutcome,
    Stage,
    Tries,
    build_payload,
    capture_value,
    failed,
    marker_value,
)
from handlers.copy_plan import existing as existing_outcome
from handlers.limits import connection
from handlers.naming import extension
from handlers.streams import HashingSink, is_complete

TMP_DIR = ".copy"


@dataclass(frozen=True)
class CopySettings:
    """What every scan of one copy run shares."""

    run_id: str
    source: str
    target: str
    store: int
    mode: Mode
    force: bool
    marker_field: str | None
    with_details: bool
    captured_at: CapturedAtMode = "now"

    def key(self, scan_id: int) -> CopyKey:
        return CopyKey(self.source, scan_id, self.target, self.store)

    def marker(self, scan_id: int) -> str:
        return marker_value(self.source, scan_id, self.store,
                            self.run_id if self.force else None)


class StepFailed(Exception):
    """One step of one scan failed (``error`` is a Permanent- or TransientError)."""

    def __init__(self, stage: Stage, error: ScanrelayError) -> None:
        super().__init__(str(error))
        self.stage = stage
        self.error = error


@dataclass
class _Tally:
    """Counters of one scan's attempt (one thread: no lock)."""

    files: int = 0
    bytes: int = 0
    reused: int = 0
    downloads: int = 0
    downloads_ok: int = 0
    uploads: int = 0
    uploads_ok: int = 0
    creates: int = 0
    creates_ok: int = 0

    def tries(self) -> Tries:
        return Tries(self.downloads, self.downloads_ok, self.uploads, self.uploads_ok,
                     self.creates, self.creates_ok)


@dataclass(frozen=True)
class _Made:
    """How a scan's target copy came to be; ``marker`` None: nothing for the ledger."""

    target_id: int
    how: How
    marker: str | None


def _keys(scan_id: int) -> tuple[str, str]:
    return f"copy:intent:{scan_id}", created_key(scan_id)


def created_key(scan_id: int) -> str:
    """The key of the record that ``scan_id``'s copy exists."""
    return f"copy:created:{scan_id}"


def superseded(scan_id: int, file_ids: list[int]) -> list[str]:
    """The records a ``copy:created`` record makes redundant. They are dropped from the
    checkpoint's memory (never from its journal), so memory does not grow with the run;
    the ``copy:created`` record itself is dropped once its outcome is taken."""
    return [f"copy:{step}:{scan_id}:{f}" for f in file_ids for step in ("down", "up")] \
        + [_keys(scan_id)[0]]


class ScanCopier:
    """Copies scans of one run; thread-safe (each call works on its own scan)."""

    def __init__(self, ctx: RunContext, source: Instance, target: Instance,
                 settings: CopySettings) -> None:
        self.ctx = ctx
        self.source = source
        self.target = target
        self.settings = settings
        self.ledger = ctx.copies
        self.tmp = ctx.run_dir / TMP_DIR
        # Ambiguous creates: each retry first looks the marker up, so resending is safe.
        retry = ctx.config.retry
        self.create_policy = RetryPolicy(max_seconds=retry.max_seconds, base=retry.base,
                                         cap=retry.cap)
        # Whether the target keeps the marker (None: not read back yet in this run).
        self.marker_kept: bool | None = None
        self._marker_asked = False
        self._marker_lock = threading.Lock()

    # --- decided without work ------------------------------------------------------

    def known(self, scan_ids: list[int]) -> dict[int, ScanOutcome]:
        """Outcomes that need no work: created by this run before a restart (checkpoint),
        or copied by an earlier run (ledger; not when forced)."""
        s = self.settings
        states = self.ledger.states(s.source, s.target, s.store, scan_ids)
        out: dict[int, ScanOutcome] = {}
        for scan_id in scan_ids:
            record = self.ctx.checkpoint.get(_keys(scan_id)[1])
            state = states.get(scan_id)
            if record is not None:
                target_id, how = int(record["target_scan_id"]), How(record["how"])
                marker = record.get("marker")
                if marker and (state is None or state.copied_to != target_id):
                    # the crash fell between the journal and the ledger
                    self.ledger.copied(s.key(scan_id), marker, s.run_id, target_id)
                status = ItemStatus.SKIPPED if how is How.EXISTING else ItemStatus.OK
                out[scan_id] = ScanOutcome(scan_id, status, target_id, how,
                                           files=record.get("files", 0),
                                           bytes=record.get("bytes", 0), reused=1)
                self.ctx.checkpoint.forget([_keys(scan_id)[1]])  # memory stays flat
            elif not s.force and state is not None and state.copied_to is not None:
                out[scan_id] = existing_outcome(scan_id, state.copied_to)
        return out

    # --- one scan ------------------------------------------------------------------

    def copy(self, scan: Scan) -> ScanOutcome:
        """Copy ``scan``; failures of its own come back in the outcome. Raises only what
        stops the run: ``Interrupted``, ``FatalError``, or a broken ledger."""
        self.ctx.check_stop()
        tally = _Tally()
        with logger.contextualize(run=self.ctx.run_id, item=f"scan {scan.id}"):
            try:
                if not scan.files:
                    raise StepFailed(Stage.READ, PermanentError("the scan has no files"))
                upload_ids = [self._transfer(scan, ref, tally) for ref in scan.files]
                target_id, how = self._create(scan, upload_ids, tally)
            except StepFailed as exc:
                transient = isinstance(exc.error, TransientError)
                self.ctx.log.bind(item=f"scan {scan.id}").warning(
                    "scan {} failed at {}: {}", scan.id, exc.stage.value, exc.error)
                return failed(scan.id, exc.stage, str(exc.error), transient, tally.tries())
        shutil.rmtree(self.tmp / str(scan.id), ignore_errors=True)
        # The outcome carries what the records say; the journal keeps them for a resume.
        self.ctx.checkpoint.forget([*superseded(scan.id, [ref.file_id for ref in scan.files]),
                                    _keys(scan.id)[1]])
        status = ItemStatus.SKIPPED if how is How.EXISTING else ItemStatus.OK
        return ScanOutcome(scan.id, status, target_id, how, files=tally.files,
                           bytes=tally.bytes, reused=tally.reused, tries=tally.tries())

    # --- files ---------------------------------------------------------------------

    def _transfer(self, scan: Scan, ref: FileRef, tally: _Tally) -> int:
        """The target's upload ID for ``ref`` (uploaded now, or by an earlier attempt)."""
        key = f"copy:up:{scan.id}:{ref.file_id}"
        record = self.ctx.checkpoint.get(key)
        if record is not None:
            tally.reused += 1
            tally.files += 1
            tally.bytes += int(record.get("size", 0))
            return int(record["upload_id"])
        path, filename, size = self._download(scan, ref, tally)
        self.ctx.check_stop()
        tally.uploads += 1
        try:
            with connection(self.target):
                upload_id = self.target.upload_file(path, filename)
        except (PermanentError, TransientError) as exc:
            if not path.exists():  # removed under us (a superseded execution of a batch
                # cleaning up): download it again on the next try, not a lost scan
                exc = TransientError(f"the local file of {ref.file_id} vanished: {exc}")
            raise StepFailed(Stage.UPLOAD, exc) from exc
        tally.uploads_ok += 1
        tally.files += 1
        tally.bytes += size
        self.ctx.checkpoint.record(key, upload_id=upload_id, filename=filename, size=size)
        path.unlink(missing_ok=True)  # disk use stays at the files in flight
        return upload_id

    def _download(self, scan: Scan, ref: FileRef, tally: _Tally) -> tuple[Path, str, int]:
        """The local copy of ``ref``, its original name and size (reused when whole)."""
        key = f"copy:down:{scan.id}:{ref.file_id}"
        record = self.ctx.checkpoint.get(key)
        if record is not None:
            path = self.ctx.run_dir / record["path"]
            if is_complete(path, record["size"], record["sha256"]):
                tally.reused += 1
                return path, str(record["filename"]), int(record["size"])
        self.ctx.check_stop()
        tally.downloads += 1
        try:
            path, filename, sink = self._fetch_to_tmp(scan.id, ref)
        except (PermanentError, TransientError) as exc:
            raise StepFailed(Stage.DOWNLOAD, exc) from exc
        except OSError as exc:  # the local disk (full, gone): may pass; the run goes on
            raise StepFailed(Stage.DOWNLOAD, TransientError(
                f"cannot write the file locally: {exc}")) from exc
        tally.downloads_ok += 1
        self.ctx.checkpoint.record(key, path=str(path.relative_to(self.ctx.run_dir)),
                                   size=sink.size, sha256=sink.sha256, filename=filename)
        return path, filename, sink.size

    def _fetch_to_tmp(self, scan_id: int, ref: FileRef) -> tuple[Path, str, HashingSink]:
        """Stream ``ref`` into ``.copy/<scan>/``: (its path, original name, the sink).
        Raises what ``fetch_file`` raises, and ``OSError`` for the local file."""
        folder = self.tmp / str(scan_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{ref.file_id}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            # No fsync: a kill keeps the page cache, and after a power loss the hash
            # check on resume sends a damaged file back to download.
            with os.fdopen(fd, "w+b") as raw:
                sink = HashingSink(raw, self.ctx.stop)
                with connection(self.source):
                    fetched = self.source.fetch_file(ref, sink)  # type: ignore[arg-type]
            filename = (fetched.original_filename or ref.filename
                        or f"{ref.file_id}.{extension(None, sink.head)}")
            path = folder / f"{ref.file_id}.{extension(filename, sink.head)}"
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path, filename, sink

    # --- the create, exactly once --------------------------------------------------

    def _create(self, scan: Scan, upload_ids: list[int], tally: _Tally) -> tuple[int, How]:
        s = self.settings
        marker = s.marker(scan.id)
        tally.creates += 1
        try:
            payload = build_payload(
                scan, mode=s.mode, store=s.store, upload_ids=upload_ids,
                marker_field=s.marker_field, marker=marker, with_details=s.with_details,
                captured_at=capture_value(scan, s.captured_at, time.time()))
            # look up, create and record as one, against every other owner of the key
            with self.ledger.lease(s.key(scan.id), self.ctx.owner, self.ctx.stop):
                made = self._look_up_earlier(scan.id, marker) \
                    or self._create_new(scan.id, payload, OpenIntent(marker, tuple(upload_ids)))
                self._record_created(scan.id, made, tally)
        except (PermanentError, TransientError) as exc:
            raise StepFailed(Stage.CREATE, exc) from exc
        except LeaseLost as exc:  # not created: the next attempt looks it up first
            raise StepFailed(Stage.CREATE, TransientError(str(exc))) from exc
        tally.creates_ok += 1
        if made.how is How.CREATED:
            self._check_marker_kept(made)
        return made.target_id, made.how

    def _find(self, intent: OpenIntent) -> int | None:
        """The target scan of an intended create: by its upload IDs (ours alone, so
        this holds whatever the target keeps of the payload), then by its marker where
        the target keeps it (and for intents journalled without upload IDs)."""
        found = self.target.find_scan_by_files(intent.upload_ids) if intent.upload_ids \
            else None
        field = self.settings.marker_field
        if found is None and field is not None and self.marker_kept is not False:
            found = self.target.find_scan_by_marker(field, intent.marker)
        return found

    def _look_up_earlier(self, scan_id: int, marker: str) -> _Made | None:
        """A copy that exists already: in the ledger (a concurrent run finished it), or
        found for an unconfirmed create (this run's; for a plain copy, any run's)."""
        s = self.settings
        state = self.ledger.state(s.key(scan_id))
        if state.copied_to is not None and state.copied_by == s.run_id:
            # this run's own copy, made by another execution of its batch (a host that
            # was paused or died after creating): a copy of this run, not an existing one
            return _Made(state.copied_to, How.RECOVERED, marker)
        if not s.force and state.copied_to is not None:
            return _Made(state.copied_to, How.EXISTING, None)  # the ledger has it already
        ours = self.ctx.checkpoint.get(_keys(scan_id)[0])
        candidates = [OpenIntent(marker, tuple(ours.get("upload_ids", ())))] if ours else []
        if not s.force:
            candidates += [i for i in state.open_intents if i not in candidates]
        for candidate in candidates:
            found = self._find(candidate)
            if found is not None:
                mine = ours is not None and candidate.marker == marker
                how = How.RECOVERED if mine else How.EXISTING
                self.ctx.log.info("scan {}: found its copy {} in {} (uploads {}, marker {})",
                                  scan_id, found, s.target, list(candidate.upload_ids),
                                  candidate.marker)
                return _Made(found, how, candidate.marker)
        return None

    def _create_new(self, scan_id: int, payload: dict[str, object],
                    intent: OpenIntent) -> _Made:
        self._record_intent(scan_id, intent)
        asked = False

        def attempt() -> tuple[int, How]:
            nonlocal asked
            if asked:  # the last try may have created it without our knowing
                found = self._find(intent)
                if found is not None:
                    return found, How.RECOVERED
            self.ctx.check_stop()
            with connection(self.target):  # a slot may take a while: fence after it
                self.ledger.fence(self.settings.key(scan_id), self.ctx.owner)  # or LeaseLost
                asked = True
                return self.target.create_scan(payload), How.CREATED

        target_id, how = self.create_policy.call(attempt,
                                                 f"create the copy of scan {scan_id}")
        if how is How.RECOVERED:
            self.ctx.log.info("scan {}: its create had committed ({} in {})", scan_id,
                              target_id, self.settings.target)
        return _Made(target_id, how, intent.marker)

    def _check_marker_kept(self, made: _Made) -> None:
        """Once per run, after its first create: read the marker back. A target that
        dropped it is said so (log, once per target; ``scanrelay status``), and marker
        look-ups stop for the run: the upload IDs carry exactly once alone."""
        s = self.settings
        with self._marker_lock:
            if s.marker_field is None or made.marker is None or self._marker_asked:
                return
            self._marker_asked = True
        try:  # by the scan's ID: no search through the target's payloads
            created = self.target.get_scans([made.target_id])
        except (PermanentError, TransientError) as exc:
            self.ctx.log.info("could not read the marker back from {}: {}", s.target, exc)
            return
        if not created:
            return  # not readable yet: nothing learnt either way
        kept = created[0].provided_values.get(s.marker_field) == made.marker
        before = self.ledger.marker_check(s.target, s.marker_field)
        self.ledger.record_marker_check(s.target, s.marker_field, kept)
        self.marker_kept = kept
        if not kept and (before is None or before.kept):
            self.ctx.log.warning(
                "target {} does not keep the marker field {} of a create (it dropped it "
                "from scan {}): exactly once rests on the upload IDs alone there",
                s.target, s.marker_field, made.target_id)

    def _record_intent(self, scan_id: int, intent: OpenIntent) -> None:
        s = self.settings
        self.ctx.checkpoint.record(_keys(scan_id)[0], marker=intent.marker,
                                   upload_ids=list(intent.upload_ids))
        self.ledger.intent(s.key(scan_id), intent.marker, s.run_id, intent.upload_ids)

    def _record_created(self, scan_id: int, made: _Made, tally: _Tally) -> None:
        s = self.settings
        self.ctx.checkpoint.record(_keys(scan_id)[1], target_scan_id=made.target_id,
                                   marker=made.marker, how=made.how.value,
                                   files=tally.files, bytes=tally.bytes)
        if made.marker is not None:
            self.ledger.copied(s.key(scan_id), made.marker, s.run_id, made.target_id)
