"""``manifest.csv`` of a download run: ``scan_id,file_id,path,bytes,sha256,status,error``,
written as the run goes (``handlers.runcsv``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handlers.runcsv import RunCsv

FILE_NAME = "manifest.csv"
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


def manifest(run_dir: Path) -> RunCsv:
    return RunCsv(run_dir, FILE_NAME, COLUMNS)
