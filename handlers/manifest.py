"""``manifest.csv`` of a download run: ``scan_id,file_id,path,bytes,sha256,status,error``.

Rows are appended batch by batch to a hidden temp file and the file is renamed into
place when the run ends, so memory stays flat and ``manifest.csv`` is only ever
complete. A resumed run starts the temp file over: it walks every batch again (reused
files included), so its manifest is whole too.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

COLUMNS = ("scan_id", "file_id", "path", "bytes", "sha256", "status", "error")


@dataclass(frozen=True)
class ManifestRow:
    scan_id: int
    file_id: int | None
    path: str
    size: int | None
    sha256: str
    error: str | None

    def as_list(self) -> list[object]:
        return [self.scan_id, "" if self.file_id is None else self.file_id, self.path,
                "" if self.size is None else self.size, self.sha256,
                "failed" if self.error else "ok", self.error or ""]


class Manifest:
    """Written on success of the ``with`` block only."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "manifest.csv"
        self._tmp = run_dir / ".manifest.csv.part"
        self._file = self._tmp.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def write(self, rows: list[ManifestRow]) -> None:
        self._writer.writerows(row.as_list() for row in rows)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if kind is None:
            os.replace(self._tmp, self.path)
