"""A CSV of a run folder (``manifest.csv``, ``scan_mapping.csv``) written as the run goes.

Rows are appended batch by batch to a hidden temp file, which is fsynced and renamed
into place when the ``with`` block ends without error: memory stays flat, and the CSV
a reader finds is only ever complete. A resumed run walks every batch again (finished
items straight from the checkpoint), so it writes the whole file anew.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol


class Row(Protocol):
    def as_list(self) -> list[object]: ...


class RunCsv:
    def __init__(self, run_dir: Path, name: str, columns: Sequence[str]) -> None:
        self.path = run_dir / name
        # A temp file of its own: two executions of one cluster batch (a paused host
        # and the one that took over) must not write into the same file.
        self._tmp = run_dir / f".{name}.{uuid.uuid4().hex[:8]}.part"
        self._file = self._tmp.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(columns)

    def write(self, rows: Iterable[Row]) -> None:
        self._writer.writerows(row.as_list() for row in rows)

    def __enter__(self) -> RunCsv:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if kind is None:
            os.replace(self._tmp, self.path)
        else:  # a resumed run writes the whole file anew
            self._tmp.unlink(missing_ok=True)
