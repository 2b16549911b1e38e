"""A run's checkpoint: ``checkpoint.jsonl`` in its run folder.

An append-only journal: each finished step is one JSON line, written with a single
``write`` and fsynced before the step counts as done (threads recording at once share
one fsync). A crash can only tear the last
line, which loading ignores; so every record is all-or-nothing, and a resumed run
redoes exactly the steps whose record is missing. The latest record of a key wins.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILE_NAME = "checkpoint.jsonl"


class Checkpoint:
    """Thread-safe journal of finished steps, keyed by a string."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE_NAME
        self._lock = threading.Lock()  # the file position and the records
        self._sync_lock = threading.Lock()  # one fsync at a time; taken before _lock
        self._written = self._synced = 0  # lines written by this process / known on disk
        self._records = self._load()
        self._file = self.path.open("ab")
        if self._file.tell() and not self._ends_with_newline():
            self._file.write(b"\n")  # a torn last line must not glue onto the next record

    def _load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash: that step was not done
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    records[record["key"]] = record
        return records

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records.values())

    def forget(self, keys: Iterable[str]) -> None:
        """Drop records from memory only (the journal keeps them): for steps a later
        record supersedes, so memory does not grow with the run. Missing keys are fine."""
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def record(self, key: str, **data: Any) -> None:
        """Durably record that step ``key`` is finished, with ``data``."""
        record = {"key": key, **data}
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self._written += 1
            mine = self._written
        self._sync(mine)
        with self._lock:
            self._records[key] = record

    def _sync(self, line: int) -> None:
        """Return once the ``line``-th line written is on disk. Group commit: one fsync
        covers every line written before it started, so threads recording at once share
        it instead of queueing for one fsync each (a few ms apiece on a busy disk)."""
        with self._sync_lock:
            if self._synced >= line:
                return  # another thread's fsync covered it
            with self._lock:
                upto = self._written
            os.fsync(self._file.fileno())
            self._synced = upto

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        with self._sync_lock, self._lock:
            self._file.close()
