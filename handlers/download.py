"""The ``download`` action: the images of scans to ``images/``, with ``manifest.csv``.

Plan (pure): scans → one task per file with its name stem. Execute: a pipeline, not
batch barriers: a thread pool streams each file to a temp name, hashing while writing,
renames it, and journals it in the checkpoint. Each fetch holds one of the source's
``max_connections`` slots, which a retry gives back while it waits, so the pool has
more workers than slots: one file's backoff does not idle a connection. Up to
``WINDOW`` batches are in flight, so one batch's slow file does not idle the pool;
batches still complete in order for progress lines and the manifest.

The last pass (``retry.passes``): a scan whose files failed only transiently is held
back from its batch's report; at the end of the run its failed files are fetched again,
once per pass, and only then is the scan reported, ok or failed.
A resumed run skips every file whose journal record still matches the file on disk
(re-hashed), and every batch that had finished whole (one ``download:batch`` record
listing its files, each checked by size) without asking the source again. It finds
where the run before it stopped by bisection on those records' keys, starts its first
new batches there, and only then reports the batches done before: its first new file
comes within a second however many scans were done before.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from daemon.checkpoint import resume_point
from daemon.errors import PermanentError, RequestError, TransientError
from daemon.instances.base import FileRef, Instance, Scan
from handlers.base import HandlerResult, ItemResult, ItemStatus, RunContext
from handlers.limits import connection
from handlers.manifest import ManifestRow, manifest
from handlers.naming import extension, file_stems
from handlers.runcsv import RunCsv
from handlers.streams import HashingSink, is_complete

IMAGES = "images"
WINDOW = 4  # batches in flight at once
WORKERS_PER_SLOT = 2  # workers per connection slot: some may be sleeping on a retry


@dataclass(frozen=True)
class FileTask:
    scan_id: int
    ref: FileRef
    stem: str

    @property
    def key(self) -> str:
        return f"file:{self.scan_id}:{self.ref.file_id}"


@dataclass(frozen=True)
class FileOutcome:
    task: FileTask
    path: str = ""
    size: int = 0
    sha256: str = ""
    error: str | None = None
    transient: bool = False
    reused: bool = False


@dataclass
class Held:
    """Scans held back for the last pass: each file outcome by scan, in order."""

    scans: dict[int, list[FileOutcome]] = field(default_factory=dict)

    def add(self, scan_id: int, outcomes: list[FileOutcome]) -> None:
        self.scans[scan_id] = outcomes

    def failed_tasks(self) -> list[FileTask]:
        return [o.task for outs in self.scans.values() for o in outs if o.error]

    def replace(self, outcomes: list[FileOutcome]) -> None:
        by_key = {o.task.key: o for o in outcomes}
        for outs in self.scans.values():
            outs[:] = [by_key.get(o.task.key, o) for o in outs]


@dataclass(frozen=True)
class Batch:
    number: int
    scan_ids: Sequence[int]
    missing: dict[int, str]  # scan ID → why it cannot be downloaded
    futures: list[Future[FileOutcome]]
    finished: list[FileOutcome] | None = None  # the whole batch, from its batch record


def plan(scans: Sequence[Scan]) -> list[FileTask]:
    """One task per file of each scan, named by ``handlers.naming``."""
    return [FileTask(scan.id, ref, stem)
            for scan in scans for ref, stem in zip(scan.files, file_stems(scan), strict=True)]


def batches(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def run(ctx: RunContext) -> HandlerResult:
    request = ctx.request
    assert request.source is not None  # guaranteed by request validation
    source = ctx.instance(request.source)
    scan_ids = resolve_scan_ids(ctx, source)
    images = ctx.run_dir / IMAGES
    images.mkdir(exist_ok=True)
    for stale in images.glob(".*.part"):  # half-written by a crash: this run owns them
        stale.unlink()
    result = HandlerResult(counts={"scans": len(scan_ids), "files": 0, "failed_files": 0,
                                   "bytes": 0, "reused_files": 0})
    chunks = list(batches(scan_ids, request.batch_size))
    window: deque[Batch] = deque()
    held = Held() if ctx.config.retry.passes else None
    workers = WORKERS_PER_SLOT * source.max_connections
    with ThreadPoolExecutor(workers, thread_name_prefix="download") as pool, \
            manifest(ctx.run_dir) as rows_out:
        def finish(batch: Batch) -> None:
            _finish(ctx, batch, len(chunks), result, rows_out, held)

        try:
            _run_batches(ctx, source, pool, chunks, images, window, finish)
            if held is not None:
                _last_passes(ctx, source, pool, images, held)
                _report_held(held, result, rows_out)
        except BaseException:
            _cancel(window)
            raise
    return result


def resolve_scan_ids(ctx: RunContext, source: Instance) -> list[int]:
    request = ctx.request
    if request.scan_ids:
        return list(request.scan_ids)
    assert request.select is not None
    ids = source.select_scans(request.select.selection())
    if not ids:
        raise RequestError([f"select: no scans of {request.source} match "
                            f"{request.select.model_dump(exclude_none=True, mode='json')}; "
                            "widen the selection"])
    if len(ids) > ctx.config.limits.max_scans:
        raise RequestError([f"select: {len(ids)} scans exceed limits.max_scans; add a limit"])
    ctx.log.info("select matched {} scans", len(ids))
    return ids


def _run_batches(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor,
                 chunks: Sequence[Sequence[int]], images: Path, window: deque[Batch],
                 finish: Callable[[Batch], None]) -> None:
    """Fetch and ``finish`` every batch, in order, up to ``WINDOW`` in flight. A resumed
    run starts after the batches a run before the restart recorded (``_recorded_prefix``)
    and reports those once its first new batches are fetching: its first new file does
    not wait for a walk through everything done before."""
    recorded = _recorded_prefix(ctx, len(chunks))
    if recorded == len(chunks):
        _report_recorded(ctx, source, pool, chunks, images, finish)
        return
    for number in range(recorded + 1, len(chunks) + 1):
        ctx.check_stop()
        window.append(_start(ctx, source, pool, number, chunks[number - 1], images))
        if recorded and (len(window) == WINDOW or number == len(chunks)):
            _report_recorded(ctx, source, pool, chunks[:recorded], images, finish)
            recorded = 0
        while not recorded and (len(window) >= WINDOW or (window and _all_done(window[0]))):
            finish(window.popleft())
    while window:
        finish(window.popleft())


def _recorded_prefix(ctx: RunContext, count: int) -> int:
    """Where a run before a restart stopped: a batch number whose batch record the
    journal has while the next one's it has not (0 for a fresh run), found by bisection
    on the records' keys alone (``Checkpoint.had``: no read), as batches finish roughly
    in order. A batch before it that did not finish after all is done again when the
    batches before it are reported (``_report_recorded``)."""
    return resume_point(count, lambda number: ctx.checkpoint.had(_batch_key(number)))


def _report_recorded(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor,
                     chunks: Sequence[Sequence[int]], images: Path,
                     finish: Callable[[Batch], None]) -> None:
    """Report ``chunks``, the first batches, which a run before the restart finished
    whole; a batch with no record, or whose record or files do not hold up, is done
    again, here."""
    redone = 0
    for number, chunk in enumerate(chunks, start=1):
        ctx.check_stop()
        batch = _start(ctx, source, pool, number, chunk, images)
        redone += batch.finished is None
        finish(batch)
    ctx.log.info("resumed after {} batches finished before the restart ({} of them done "
                 "again: their files had changed)", len(chunks), redone)


def _start(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor, number: int,
           chunk: Sequence[int], images: Path) -> Batch:
    finished = _finished_before(ctx, number, chunk)
    if finished is not None:
        return Batch(number, chunk, {}, [], finished)
    scans = source.get_scans(chunk)
    found = {s.id for s in scans}
    missing = {i: f"scan {i} not found in {source.name}" for i in chunk if i not in found}
    futures = [pool.submit(_fetch_one, ctx, source, task, images) for task in plan(scans)]
    return Batch(number, chunk, missing, futures)


def _all_done(batch: Batch) -> bool:
    return all(f.done() for f in batch.futures)


def _finish(ctx: RunContext, batch: Batch, total_batches: int, result: HandlerResult,
            manifest: RunCsv, held: Held | None) -> None:
    """Wait for a batch and report it, but for the scans ``held`` back for the last
    pass. An ``Interrupted`` or ``FatalError`` of any file stops the run."""
    outcomes = batch.finished if batch.finished is not None else _outcomes(batch.futures)
    by_scan = _by_scan(outcomes)
    if held is not None:
        for scan_id, outs in by_scan.items():
            if any(o.error for o in outs) and all(o.transient for o in outs if o.error):
                held.add(scan_id, outs)
    kept = {i: by_scan.get(i, []) for i in batch.scan_ids
            if held is None or i not in held.scans}
    for scan_id, outs in kept.items():
        result.add(_scan_result(scan_id, outs, batch.missing.get(scan_id)))
    reported = [o for outs in kept.values() for o in outs]
    _count(result.counts, reported)
    manifest.write(_rows(reported, batch.missing))
    if batch.finished is None and not batch.missing and not any(o.error for o in outcomes):
        _record_batch(ctx, batch, outcomes)
    # This run will not look at these records again (a resume reads the journal), so
    # memory stays flat however many files the run has.
    ctx.checkpoint.forget(o.task.key for o in outcomes)
    waiting = len(held.scans) if held is not None else 0
    if batch.finished is None:  # one finished before a restart is no news (see the resume)
        ctx.log.info("[BATCH {}/{}] {} scans, {} files, {} failed scans so far, {} held for "
                     "the last pass", batch.number, total_batches, len(batch.scan_ids),
                     len(outcomes), len(result.failed), waiting)
    ctx.progress(result.total, result.counts["scans"], batch=batch.number,
                 batches=total_batches, failed=len(result.failed), held=waiting)


def _batch_key(number: int) -> str:
    return f"download:batch:{number}"


def _record_batch(ctx: RunContext, batch: Batch, outcomes: list[FileOutcome]) -> None:
    """Journal a batch whose every file is on disk, so that a resume skips it whole."""
    files = [[o.task.scan_id, o.task.ref.file_id, o.path, o.size, o.sha256] for o in outcomes]
    ctx.checkpoint.record(_batch_key(batch.number), scan_ids=list(batch.scan_ids),
                          files=files)
    ctx.checkpoint.forget([_batch_key(batch.number)])


def _finished_before(ctx: RunContext, number: int,
                     chunk: Sequence[int]) -> list[FileOutcome] | None:
    """The files of a batch a run before a restart finished whole, if its record is for
    these scans and every file is still there with its size; else None (the batch is
    done again, reusing each file whose record matches its hash)."""
    record = ctx.checkpoint.get(_batch_key(number))
    if record is None or record.get("scan_ids") != list(chunk):
        return None
    outcomes = []
    run_dir = str(ctx.run_dir)
    for scan_id, file_id, path, size, sha256 in record["files"]:
        try:
            if os.stat(os.path.join(run_dir, path)).st_size != size:
                return None
        except OSError:
            return None
        outcomes.append(FileOutcome(FileTask(scan_id, FileRef(file_id), ""), path, size,
                                    sha256, reused=True))
    return outcomes


def _outcomes(futures: list[Future[FileOutcome]]) -> list[FileOutcome]:
    """The outcomes once all are done; the first error that stops the run is raised."""
    wait(futures)
    error = next((f.exception() for f in futures if f.exception()), None)
    if error is not None:
        raise error
    return [f.result() for f in futures]


def _last_passes(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor,
                 images: Path, held: Held) -> None:
    """Fetch the held scans' failed files again, up to ``retry.passes`` times."""
    for number in range(1, ctx.config.retry.passes + 1):
        tasks = held.failed_tasks()
        if not tasks:
            return
        ctx.check_stop()
        ctx.log.info("last pass {}: {} file(s) of {} scan(s) that failed transiently",
                     number, len(tasks), len(held.scans))
        futures = [pool.submit(_fetch_one, ctx, source, task, images) for task in tasks]
        outcomes = _outcomes(futures)
        held.replace(outcomes)
        ctx.checkpoint.forget(o.task.key for o in outcomes)


def _report_held(held: Held, result: HandlerResult, manifest: RunCsv) -> None:
    for scan_id, outs in held.scans.items():
        result.add(_scan_result(scan_id, outs, None))
        _count(result.counts, outs)
        manifest.write(_rows(outs, {}))
    held.scans.clear()


def _cancel(window: deque[Batch]) -> None:
    """Cancel queued files and wait for running ones (they stop within a chunk)."""
    futures = [f for batch in window for f in batch.futures]
    for f in futures:
        f.cancel()
    wait(futures)


def _fetch_one(ctx: RunContext, source: Instance, task: FileTask, images: Path) -> FileOutcome:
    ctx.check_stop()
    record = ctx.checkpoint.get(task.key)
    if record and is_complete(ctx.run_dir / record["path"], record["size"], record["sha256"]):
        return FileOutcome(task, record["path"], record["size"], record["sha256"], reused=True)
    item = f"{task.scan_id}/{task.ref.file_id}"
    try:
        # Lines the instance logs itself (retries) name this run and item too.
        with logger.contextualize(run=ctx.run_id, item=item), connection(source):
            outcome = _stream_to_images(source, task, images, ctx)
    except (PermanentError, TransientError, OSError) as exc:
        # A local OSError (disk full, a share gone) fails this file, transiently: the
        # rerun window may find the disk emptied.
        ctx.log.bind(item=item).warning("file {} of scan {} failed: {}", task.ref.file_id,
                                        task.scan_id, exc)
        error = str(exc) if not isinstance(exc, OSError) else \
            f"file {task.ref.file_id}: writing it locally failed: {exc}"
        return FileOutcome(task, error=error, transient=not isinstance(exc, PermanentError))
    ctx.checkpoint.record(task.key, path=outcome.path, size=outcome.size,
                          sha256=outcome.sha256)
    return outcome


def _stream_to_images(source: Instance, task: FileTask, images: Path,
                      ctx: RunContext) -> FileOutcome:
    fd, tmp_name = tempfile.mkstemp(dir=images, prefix=f".{task.scan_id}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            sink = HashingSink(raw, ctx.stop)
            fetched = source.fetch_file(task.ref, sink)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        ext = extension(fetched.original_filename or task.ref.filename, sink.head)
        name = f"{task.stem}.{ext}"
        os.replace(tmp, images / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileOutcome(task, f"{IMAGES}/{name}", sink.size, sink.sha256)


def _by_scan(outcomes: list[FileOutcome]) -> dict[int, list[FileOutcome]]:
    by_scan: dict[int, list[FileOutcome]] = {}
    for o in outcomes:
        by_scan.setdefault(o.task.scan_id, []).append(o)
    return by_scan


def _scan_result(scan_id: int, outcomes: list[FileOutcome], missing: str | None
                 ) -> ItemResult:
    if missing is not None:
        return ItemResult(scan_id, ItemStatus.FAILED, missing)
    failed = [o for o in outcomes if o.error]
    if not failed:
        return ItemResult(scan_id, ItemStatus.OK)
    message = "; ".join(o.error or "" for o in failed)  # each names its file
    return ItemResult(scan_id, ItemStatus.FAILED, message,
                      transient=all(o.transient for o in failed))


def _count(counts: dict[str, int], outcomes: list[FileOutcome]) -> None:
    ok = [o for o in outcomes if not o.error]
    counts["files"] += len(ok)
    counts["failed_files"] += len(outcomes) - len(ok)
    counts["bytes"] += sum(o.size for o in ok)
    counts["reused_files"] += sum(o.reused for o in ok)


def _rows(outcomes: list[FileOutcome], missing: dict[int, str]) -> list[ManifestRow]:
    rows = [ManifestRow(o.task.scan_id, o.task.ref.file_id, o.path,
                        o.size if not o.error else None, o.sha256, o.error)
            for o in outcomes]
    rows += [ManifestRow(scan_id, None, "", None, "", error)
             for scan_id, error in missing.items()]
    return rows
