"""The Instance contract: what handlers may ask of a platform instance.

``copy``, ``download`` and ``analyze`` talk only to this contract, never to a kind.
Two kinds implement it: ``folder`` (embedded, §9 of SPEC) and ``platform`` (HTTP API +
PostgreSQL, §8). The contract test suite in ``tests/test_instance_contract.py`` runs
against every kind.

All values that cross threads are frozen dataclasses. Every method may raise
``TransientError`` (after the kind's own retries are spent), ``PermanentError`` (for
the item asked about) or ``FatalError`` (the instance is unusable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class FileRef:
    """One file of a scan. ``filename`` is the original name when the kind knows it
    without a request (the folder kind does; the platform learns it when fetching)."""

    file_id: int
    file_type: str = "image"
    filename: str | None = None


@dataclass(frozen=True)
class ScanDetails:
    """One compliance report of a scan (§7): a scan's realogram has one per section (and
    realogram bay). The compliance figures are the store planogram's of the report's own
    day (``compliance_date``, None when that day has none); ``compliance_fallback`` is
    true when another day's figures were taken because the instance was configured to
    (``analysis.compliance_fallback``). The ``majority_*`` fields are the newest
    majority-v2 log row of the report's store planogram; ``map_by`` is what it says of
    this scan (None when it does not list the scan)."""

    report_id: int | None = None
    store_planogram_id: int | None = None
    planogram_id: int | None = None
    planogram_name: str | None = None
    section_id: int | None = None
    section_name: str | None = None
    is_additional_section: bool = False
    pre_pog: float | None = None
    post_pog: float | None = None
    pre_osa: float | None = None
    post_osa: float | None = None
    ok_count: int | None = None
    wandering_count: int | None = None
    oos_count: int | None = None
    hole_count: int | None = None
    compliance_date: str | None = None  # ISO day of the figures shown
    compliance_fallback: bool = False
    majority_v2_id: int | None = None
    majority_store_planogram_id: int | None = None
    majority_created_at: str | None = None
    map_by: str | None = None


# A capture time as the platform keeps it in the create payload: ISO 8601 text or
# integer epoch seconds (both are accepted on create), with its JSON type unchanged.
CapturedAt = str | int | float | None


def captured_datetime(value: CapturedAt) -> datetime | None:
    """``value`` as an aware datetime (epoch seconds are UTC; naive text is taken as
    UTC); None when it is missing or not a time."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        when = (datetime.fromtimestamp(value, UTC) if isinstance(value, int | float)
                else datetime.fromisoformat(value))
    except (ValueError, OverflowError, OSError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Scan:
    """A scan as read from an instance. ``reports`` are its compliance reports, one per
    section (empty when it has none yet), in a stable order (the platform: by report
    ID). ``provided_values`` is the create payload the scan was made with (the platform
    keeps it as ``provided_values->'_raw_data'``), a marker field included."""

    id: int
    store_id: int
    status: str
    has_report: bool
    captured_at: CapturedAt
    created_at: str | None
    provided_values: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[FileRef, ...] = ()
    reports: tuple[ScanDetails, ...] = ()
    store_name: str | None = None
    category_name: str | None = None

    @property
    def details(self) -> ScanDetails | None:
        """The first report (what names a download's files), None without one."""
        return self.reports[0] if self.reports else None

    @property
    def processed(self) -> bool:
        """SPEC §8: a scan is processed when its status is done and it has a report."""
        return self.status == "done" and self.has_report


@dataclass(frozen=True)
class Selection:
    """Scans chosen by query instead of by ID (request key ``select``), dates resolved."""

    store_id: int | None = None
    captured_from: date | None = None
    captured_to: date | None = None
    status: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class FetchedFile:
    """What ``fetch_file`` learnt: the original file name and the byte count written."""

    original_filename: str | None
    size: int


@runtime_checkable
class Instance(Protocol):
    """A platform instance, whatever its kind."""

    name: str
    kind: str
    max_connections: int

    def select_scans(self, selection: Selection) -> list[int]:
        """IDs of the scans matching ``selection``, oldest first."""
        ...

    def get_scans(self, scan_ids: Sequence[int]) -> list[Scan]:
        """The scans that exist among ``scan_ids``, in the order asked; missing ones are
        left out (the caller reports them). Every compliance report of a scan is included."""
        ...

    def fetch_file(self, ref: FileRef, dest: BinaryIO) -> FetchedFile:
        """Stream the bytes of ``ref`` into ``dest`` (an open binary file at position 0).
        On an internal retry the kind rewinds and truncates ``dest`` itself."""
        ...

    def upload_file(self, path: Path, filename: str) -> int:
        """Upload a local file for a scan to be created; returns the upload (file) ID."""
        ...

    def create_scan(self, payload: Mapping[str, Any]) -> int:
        """Create a scan from ``payload`` ({store, files, captured_at, ...}); returns its ID."""
        ...

    def find_scan_by_marker(self, field_name: str, value: str) -> int | None:
        """The ID of a scan whose create payload carried ``field_name == value``, if any.
        A target that drops unknown payload keys never finds one: exactly once does not
        rest on it (see ``find_scan_by_files``)."""
        ...

    def find_scan_by_files(self, file_ids: Sequence[int]) -> int | None:
        """The lowest ID of a scan created with any of the upload IDs ``file_ids``, if
        any. Uploads are the creator's alone, so this finds a create whose answer was
        lost whatever the target keeps of the payload (SPEC §8, exactly once)."""
        ...

    def close(self) -> None:
        """Release connections and pools. Idempotent."""
        ...
