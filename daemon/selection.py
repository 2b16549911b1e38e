"""``scanrelay select``: which scans a selection matches, before anything runs.

The same ``select`` a request carries (store, capture days, status, limit) is asked of
the source instance; the answer is the count and the first scans (ID, store, capture
time, status). The wizard (``scanrelay new``) shows it before it writes a request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from rich.console import Console
from rich.table import Table

from daemon.instances.base import CapturedAt, Instance, Selection

SHOWN = 10  # scans listed by default


@dataclass(frozen=True)
class ScanRow:
    """One matching scan as the preview lists it."""

    id: int
    store_id: int
    captured_at: CapturedAt
    status: str


@dataclass(frozen=True)
class Preview:
    """How many scans ``selection`` matches in ``source``, and the first of them."""

    source: str
    selection: Selection
    count: int
    first: tuple[ScanRow, ...]

    def as_json(self) -> dict[str, Any]:
        chosen = {k: v.isoformat() if isinstance(v, date) else v
                  for k, v in asdict(self.selection).items() if v is not None}
        return {"source": self.source, "select": chosen, "count": self.count,
                "first": [asdict(row) for row in self.first]}


def preview(instance: Instance, selection: Selection, shown: int = SHOWN) -> Preview:
    """Count the matches (oldest first, as a run takes them) and read the first
    ``shown``. Raises what the instance raises (``TransientError`` etc.)."""
    ids = instance.select_scans(selection)
    scans = instance.get_scans(ids[:max(shown, 0)])
    rows = tuple(ScanRow(s.id, s.store_id, s.captured_at, s.status) for s in scans)
    return Preview(instance.name, selection, len(ids), rows)


def show(result: Preview, console: Console) -> None:
    """The preview as a line and a table, for people."""
    plural = "scan matches" if result.count == 1 else "scans match"
    console.print(f"{result.count} {plural} in {result.source}", markup=False)
    if not result.first:
        return
    table = Table("scan ID", "store", "captured", "status")
    for row in result.first:
        table.add_row(str(row.id), str(row.store_id), str(row.captured_at or "-"), row.status)
    console.print(table)
    if result.count > len(result.first):
        console.print(f"... and {result.count - len(result.first)} more", markup=False)
