"""``scan_mapping.csv`` of a copy run (SPEC §5): ``Source_Scan_ID,Target_Scan_ID,status,
error``, one row per requested scan in request order. ``status`` is ``ok`` (copied by
this run), ``skipped`` (copied before: the existing target ID), ``failed``, or in a dry
run ``planned``.

Written as the run goes (``handlers.runcsv``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from handlers.runcsv import RunCsv

FILE_NAME = "scan_mapping.csv"
COLUMNS = ("Source_Scan_ID", "Target_Scan_ID", "status", "error")


@dataclass(frozen=True)
class MappingRow:
    source_scan_id: int
    target_scan_id: int | None
    status: str
    error: str | None = None

    def as_list(self) -> list[object]:
        target = "" if self.target_scan_id is None else self.target_scan_id
        return [self.source_scan_id, target, self.status, self.error or ""]


def mapping_writer(run_dir: Path) -> RunCsv:
    return RunCsv(run_dir, FILE_NAME, COLUMNS)


def read_mapping(run_dir: Path) -> list[MappingRow]:
    """The rows of a run's ``scan_mapping.csv``. Raises ``OSError`` when it is missing
    and ``ValueError`` when a row is not as ``mapping_writer`` writes it."""
    with (run_dir / FILE_NAME).open(encoding="utf-8", newline="") as f:
        return [MappingRow(int(r["Source_Scan_ID"]),
                           int(r["Target_Scan_ID"]) if r["Target_Scan_ID"] else None,
                           r["status"], r["error"] or None)
                for r in csv.DictReader(f)]
