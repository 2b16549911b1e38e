"""The pure half of the ``copy`` action: what to send, under which marker, what a scan's
outcome is, and when a batch is retried. No I/O here; ``copy_scan`` and
``copy_pipeline`` do it.

Create payload (SPEC §4): the source scan's create payload (``provided_values``, or its
``_raw_data`` where the platform keeps it there), minus ``task_id, id, created_at,
updated_at`` always and minus the section/POG assignment (``category_id, section_id,
store_planogram, aisle, task_id, replace_id``) in ``auto`` mode; then ``store``,
``files`` (the target's upload IDs, in the source's file order) and ``captured_at`` (the
copy's time as integer epoch seconds, or with ``captured_at: source`` the source's
value as it is) are set, and the marker field (the target's ``marker_field``) carries
the marker. For a folder target (an archive) the source's ``reports`` ride along, so
the archive keeps the analysis (SPEC §9); no platform payload carries them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from daemon.errors import PermanentError
from daemon.instances.base import Scan, captured_datetime
from handlers.base import ItemStatus

ALWAYS_DROPPED = frozenset({"task_id", "id", "created_at", "updated_at"})
ASSIGNMENT = frozenset({"category_id", "section_id", "store_planogram", "aisle", "task_id",
                        "replace_id"})
# Set by the copy itself, or private to one kind (``reports``, ``details``: the folder
# kind's compliance reports).
REPLACED = frozenset({"store", "files", "captured_at", "details", "reports"})
RAW_DATA = "_raw_data"

# Batch-level retry (the old workflow's rule): a batch is retried when fewer than these
# shares of its downloads, uploads or creates succeeded, at most MAX_BATCH_RETRIES times.
MIN_DOWNLOAD_SUCCESS = 0.8
MIN_UPLOAD_SUCCESS = 0.8
MIN_CREATE_SUCCESS = 0.5
MAX_BATCH_RETRIES = 3

Mode = Literal["auto", "mapped"]
CapturedAtMode = Literal["now", "source"]


class Stage(StrEnum):
    """Where a scan's copy failed."""

    READ = "read"  # reading the scan from the source
    DOWNLOAD = "download"
    UPLOAD = "upload"
    CREATE = "create"


class How(StrEnum):
    """How a scan came to have its target copy."""

    CREATED = "created"  # created by this run
    RECOVERED = "recovered"  # this run's earlier create, found by its marker
    EXISTING = "existing"  # copied before (ledger), or by another run (marker)


@dataclass(frozen=True)
class Tries:
    """Attempted and successful steps of one scan (for the batch-retry rule)."""

    downloads: int = 0
    downloads_ok: int = 0
    uploads: int = 0
    uploads_ok: int = 0
    creates: int = 0
    creates_ok: int = 0

    def __add__(self, other: Tries) -> Tries:
        # Field by field: ``dataclasses.astuple`` deep-copies, which took a fifth of a
        # resume's time (every settled batch adds up its scans' tries).
        return Tries(self.downloads + other.downloads, self.downloads_ok + other.downloads_ok,
                     self.uploads + other.uploads, self.uploads_ok + other.uploads_ok,
                     self.creates + other.creates, self.creates_ok + other.creates_ok)


@dataclass(frozen=True)
class ScanOutcome:
    """What happened to one source scan in one attempt."""

    scan_id: int
    status: ItemStatus
    target_id: int | None = None
    how: How | None = None
    error: str | None = None
    transient: bool = False
    stage: Stage | None = None
    files: int = 0  # the scan's files in the target
    bytes: int = 0  # their bytes
    reused: int = 0  # steps taken from the checkpoint instead of redone
    tries: Tries = field(default_factory=Tries)

    @property
    def mapping_status(self) -> str:
        return "skipped" if self.how is How.EXISTING else self.status.value


def failed(scan_id: int, stage: Stage, error: str, transient: bool,
           tries: Tries = Tries()) -> ScanOutcome:  # noqa: B008 - frozen, so shared safely
    return ScanOutcome(scan_id, ItemStatus.FAILED, error=f"{stage.value}: {error}",
                       transient=transient, stage=stage, tries=tries)


def existing(scan_id: int, target_id: int) -> ScanOutcome:
    return ScanOutcome(scan_id, ItemStatus.SKIPPED, target_id, How.EXISTING)


# --- payload -------------------------------------------------------------------------


def source_payload(scan: Scan) -> dict[str, Any]:
    """The payload ``scan`` was created with: the platform keeps it under ``_raw_data``,
    the folder kind as ``provided_values`` itself."""
    values = scan.provided_values
    raw = values.get(RAW_DATA)
    return dict(raw) if isinstance(raw, Mapping) else dict(values)


def source_capture_time(scan: Scan) -> str | int | float:
    """The source scan's own capture time, with its JSON type unchanged (ISO text or
    epoch seconds); its creation time where none was recorded. Raises
    ``PermanentError`` when the scan has neither."""
    captured = source_payload(scan).get("captured_at")
    if captured is None or captured == "":
        captured = scan.captured_at or scan.created_at
    if captured_datetime(captured) is None:
        raise PermanentError(f"scan {scan.id} has no capture time")
    assert captured is not None  # a valid time is never None
    return captured


def capture_value(scan: Scan, captured_at: CapturedAtMode, now: float) -> str | int | float:
    """``captured_at`` of the copy: ``now`` is the copy's time in integer epoch seconds
    (what the old scripts sent, so the target maps it with today's planograms);
    ``source`` is the source's own value (``source_capture_time``)."""
    return int(now) if captured_at == "now" else source_capture_time(scan)


def build_payload(scan: Scan, *, mode: Mode, store: int, upload_ids: Sequence[int],
                  marker_field: str | None, marker: str | None,
                  with_details: bool, captured_at: str | int | float) -> dict[str, Any]:
    """The create payload of ``scan``'s copy (see the module docstring)."""
    dropped = ALWAYS_DROPPED | REPLACED | (ASSIGNMENT if mode == "auto" else frozenset())
    payload = {k: v for k, v in source_payload(scan).items()
               if k not in dropped and k != marker_field}
    payload.update(store=store, files=list(upload_ids), captured_at=captured_at)
    if marker_field:
        payload[marker_field] = marker
    if with_details and scan.reports:
        payload["reports"] = [asdict(report) for report in scan.reports]
    return payload


def marker_value(source: str, scan_id: int, store: int, forced_by: str | None = None) -> str:
    """Unique per source instance + scan and target store; a forced copy appends its run
    ID, so each forced copy is one new scan, created once however often it resumes."""
    base = f"{source}:{scan_id}:{store}"
    return f"{base}:{forced_by}" if forced_by else base


# --- batch retry -----------------------------------------------------------------------


def _share(ok: int, tried: int) -> float:
    return 1.0 if tried == 0 else ok / tried


def batch_shares(outcomes: Iterable[ScanOutcome]) -> tuple[float, float, float]:
    """Success shares of downloads, uploads and creates over the scans' latest tries."""
    total = sum((o.tries for o in outcomes), Tries())
    return (_share(total.downloads_ok, total.downloads), _share(total.uploads_ok, total.uploads),
            _share(total.creates_ok, total.creates))


def batch_retry(outcomes: Sequence[ScanOutcome], retries_done: int) -> list[int]:
    """The scans to try again, if this batch is retried; else []. A batch is retried when
    a share of ``batch_shares`` is under its minimum and retries are left; only scans
    that failed transiently are retried (a permanent failure would fail again)."""
    if retries_done >= MAX_BATCH_RETRIES:
        return []
    download, upload, create = batch_shares(outcomes)
    if download >= MIN_DOWNLOAD_SUCCESS and upload >= MIN_UPLOAD_SUCCESS \
            and create >= MIN_CREATE_SUCCESS:
        return []
    return [o.scan_id for o in outcomes if o.status is ItemStatus.FAILED and o.transient]


# --- progress --------------------------------------------------------------------------


def eta_text(done: int, total: int, elapsed: float) -> str:
    """``1:02:03``-style time left at the rate so far; ``?`` before any progress."""
    if done <= 0 or elapsed <= 0:
        return "?"
    left = round((total - done) * elapsed / done)
    hours, rest = divmod(left, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
