"""When a file noticed by the observer is ready to be taken.

The observer's callbacks report what happens to each path (opened, written, closed,
created, moved in, gone); the main loop asks which paths are due. The rules (SPEC §3):

- a file moved in is complete at once: a request name is due now;
- a file written in place is due once its writer closed it and nothing opened or
  wrote it for ``quiet_seconds`` (so `>` then `>>` is one request);
- a name that cannot be a request is due only after ``unknown_after_seconds`` of
  stillness: it may be a piece of a save (Excel writes an 8-hex temporary, then renames
  it over the workbook), and refusing it would break the writer's rename;
- a file open in the inbox is never due (a writer may pause with its file open).

Only the bookkeeping lives here, under a lock, with no I/O: the callbacks run on the
observer's thread. Checking size and mtime before release is the watcher's part.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.config import IntakeConfig
from daemon.intake.inbox import is_request_name

OPEN_FILE_PATIENCE = 3600.0  # seconds: an open file this quiet lost its close event


@dataclass
class _Entry:
    touched: float  # time.time() of the last event
    open: bool = False  # opened and not closed since
    written: bool = False  # written since its last close-after-write
    due: float | None = None  # when it may be taken, if not open meanwhile


class Gate:
    """Thread-safe: callbacks write, the main loop reads."""

    def __init__(self, intake: IntakeConfig) -> None:
        self.quiet = intake.quiet_seconds
        self.unknown_after = intake.unknown_after_seconds
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}

    def _wait(self, path: Path, quiet: float) -> float:
        return quiet if is_request_name(path.name) else max(quiet, self.unknown_after)

    def _entry(self, path: Path) -> _Entry:
        entry = self._entries.setdefault(path, _Entry(time.time()))
        entry.touched = time.time()
        return entry

    # --- what the observer reports --------------------------------------------------
    def opened(self, path: Path, *, written: bool) -> None:
        with self._lock:
            entry = self._entry(path)
            entry.open = True
            entry.written |= written

    def closed(self, path: Path, *, written: bool) -> bool:
        """A close; True when the path is due at once (a request name, no quiet period)."""
        with self._lock:
            entry = self._entry(path)
            if not written and entry.written:
                return False  # a reader closing leaves the writer's mark
            entry.open = entry.written = False
            if written or entry.due is not None:
                entry.due = entry.touched + self._wait(path, self.quiet)
            else:
                del self._entries[path]  # only read: nothing to take
                return False
            if entry.due <= entry.touched:
                del self._entries[path]
                return True
            return False

    def created(self, path: Path) -> None:
        """A creation (not a move-in). A writer's open follows at once; if nothing
        follows (a hard link, a folder, a pipe), it is due after the quiet period.
        Without a wait (0) a creation is left to the rescan: the writer's open that
        follows it may not have been reported yet."""
        with self._lock:
            wait = self._wait(path, self.quiet)
            if wait > 0:
                entry = self._entry(path)
                if not entry.open:
                    entry.due = entry.touched + wait

    def moved_in(self, path: Path) -> bool:
        """A rename into the inbox; True when the path is due at once (a request name)."""
        with self._lock:
            self._entries.pop(path, None)
            if is_request_name(path.name) or self.unknown_after <= 0:
                return True
            self._entry(path).due = time.time() + self.unknown_after
            return False

    def gone(self, path: Path) -> None:
        with self._lock:
            self._entries.pop(path, None)

    def later(self, path: Path, seconds: float) -> None:
        """Look at ``path`` again in ``seconds`` (the claim found it busy)."""
        with self._lock:
            entry = self._entry(path)
            entry.due = entry.touched + seconds

    # --- what the main loop asks ----------------------------------------------------
    def due(self) -> list[tuple[Path, float]]:
        """Paths whose time has come, each with the time of its last event (they leave
        the gate), oldest due first."""
        now = time.time()
        with self._lock:
            ready = sorted((e.due, p, e.touched) for p, e in self._entries.items()
                           if e.due is not None and e.due <= now and not self._busy(e, now))
            for _, path, _ in ready:
                del self._entries[path]
            self._forget_lost(now)
        return [(path, touched) for _, path, touched in ready]

    def restart(self, path: Path) -> None:
        """The file changed while it waited (no event told us): wait again."""
        with self._lock:
            entry = self._entry(path)
            entry.due = entry.touched + self._wait(path, self.quiet)

    def next_due_in(self) -> float | None:
        """Seconds until the next path is due (None: nothing waits)."""
        with self._lock:
            dues = [e.due for e in self._entries.values() if e.due is not None and not e.open]
        return max(0.0, min(dues) - time.time()) if dues else None

    def tracked(self, path: Path) -> bool:
        """The gate decides about ``path``: the rescan leaves it alone."""
        with self._lock:
            entry = self._entries.get(path)
            return entry is not None and (entry.due is not None
                                          or self._busy(entry, time.time()))

    @staticmethod
    def _busy(entry: _Entry, now: float) -> bool:
        return (entry.open or entry.written) and now - entry.touched < OPEN_FILE_PATIENCE

    def _forget_lost(self, now: float) -> None:
        """An open file silent for an hour lost its close event: the rescan takes over."""
        for path in [p for p, e in self._entries.items()
                     if e.due is None and not self._busy(e, now)]:
            del self._entries[path]
