"""``scan_mapping.csv`` of a copy run (SPEC §5): ``Source_Scan_ID,Target_Scan_ID,status,
error``, one row per requested scan in request order. ``status`` is ``ok`` (copied by
this run), ``skipped`` (copied before: the existing target ID), ``failed``, or in a dry
run ``planned``.

Rows are appended batch by batch to a hidden temp file that is renamed into place when
the run ends, so memory stays flat and ``scan_mapping.csv`` is only ever complete. A
resumed run walks every batch again (finished scans straight from the checkpoint), so
it writes the whole file anew.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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


class MappingWriter:
    """Written (renamed into place) only when the ``with`` block ends without error."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE_NAME
        self._tmp = run_dir / f".{FILE_NAME}.part"
        self._file = self._tmp.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def write(self, rows: Iterable[MappingRow]) -> None:
        self._writer.writerows(row.as_list() for row in rows)

    def __enter__(self) -> MappingWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if kind is None:
            os.replace(self._tmp, self.path)


def read_mapping(run_dir: Path) -> list[MappingRow]:
    """The rows of a run's ``scan_mapping.csv``. Raises ``OSError`` when it is missing
    and ``ValueError`` when a row is not as written by ``MappingWriter``."""
    with (run_dir / FILE_NAME).open(encoding="utf-8", newline="") as f:
        return [MappingRow(int(r["Source_Scan_ID"]),
                           int(r["Target_Scan_ID"]) if r["Target_Scan_ID"] else None,
                           r["status"], r["error"] or None)
                for r in csv.DictReader(f)]
