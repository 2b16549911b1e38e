"""``run.json``: a run's status, counts, progress, timings and errors, rewritten
atomically so a reader (``scanrelay status``, a person) never sees half a file."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.fsutil import write_json
from daemon.outcomes import RunStatus

MIN_INTERVAL = 0.5  # seconds between progress rewrites


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunState:
    """The in-memory state of ``run.json``; thread-safe, throttled progress writes."""

    def __init__(self, run_dir: Path, base: dict[str, Any]) -> None:
        self.path = run_dir / "run.json"
        self._lock = threading.Lock()
        self._last_write = 0.0
        self.data = self.load(run_dir) or {}
        self.data.update(base)
        self.data.setdefault("created_at", now_iso())
        self.data.setdefault("attempts", 0)

    @staticmethod
    def load(run_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def start(self) -> None:
        with self._lock:
            self.data.update(status=RunStatus.RUNNING.value, started_at=now_iso(),
                             attempts=self.data["attempts"] + 1)
            self.data.pop("interrupted_at", None)
            self._write()

    def progress(self, done: int, total: int, **counts: Any) -> None:
        """O(1) however big the run: at most one small rewrite per ``MIN_INTERVAL``, not
        fsynced (progress is advisory: a crash loses at most the last one; the checkpoint
        is what a resume trusts)."""
        with self._lock:
            self.data["progress"] = {"done": done, "total": total, **counts}
            if time.monotonic() - self._last_write >= MIN_INTERVAL or done == total:
                self._write(durable=False)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self._write()

    def interrupted(self) -> None:
        with self._lock:
            self.data["interrupted_at"] = now_iso()
            self._write()

    def finish(self, status: RunStatus, **fields: Any) -> None:
        with self._lock:
            self.data.update(status=status.value, finished_at=now_iso(), **fields)
            self._write()

    def _write(self, *, durable: bool = True) -> None:
        self.data["updated_at"] = now_iso()
        write_json(self.path, self.data, durable=durable)
        self._last_write = time.monotonic()
