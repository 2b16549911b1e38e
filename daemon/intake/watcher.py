"""Noticing request files. Dumb by design: callbacks only report to the gate or put
paths on a queue.

- events mode: a watchdog observer reports what happens in the inbox. A rename into it
  (from within, from another folder, from a profile folder) is taken at once; inotify
  tells a move-in (``IN_MOVED_TO``) from a creation, and the observer is asked to say so
  (``generate_full_events``) instead of calling both "created". A file written in place
  is taken once closed and quiet (``daemon.intake.gate``). A periodic rescan catches
  what events missed (taken once stable, never while the gate holds the file);
- polling mode (network shares, where no events arrive): a listing every
  ``poll_interval``, a file taken once its size and mtime held still across two looks
  and it is at least ``settle_seconds`` old;
- both: a name that cannot be a request is refused only once still for
  ``unknown_after_seconds``; a sweep at start; a supervisor restarts a dead observer.
"""

from __future__ import annotations

import os
import queue
import stat
import time
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from daemon.config import IntakeConfig
from daemon.fsutil import is_ignored_name
from daemon.intake.gate import Gate
from daemon.intake.inbox import is_request_name, last_change, list_inbox

PathQueue = queue.Queue[Path]
BUSY_RETRY = 1.0  # seconds before a file the claim found busy is looked at again

__all__ = ["BUSY_RETRY", "InboxWatcher", "PathQueue", "Stability"]


def _path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))


class _Report(FileSystemEventHandler):
    """Watchdog callbacks: each event to the gate, or a path onto the queue. Nothing
    else: no parsing, no I/O. Ignored names (temporaries, our own claims) never get
    here, but a rename from one to a request name does (as a move-in)."""

    def __init__(self, paths: PathQueue, gate: Gate) -> None:
        self._paths = paths
        self._gate = gate

    def dispatch(self, event: FileSystemEvent) -> None:
        name = os.path.basename(os.fsdecode(event.dest_path or event.src_path))
        if not is_ignored_name(name):
            super().dispatch(event)

    def on_opened(self, event: FileSystemEvent) -> None:
        self._gate.opened(_path(event.src_path), written=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._gate.opened(_path(event.src_path), written=True)

    def on_closed_no_write(self, event: FileSystemEvent) -> None:
        self._gate.closed(_path(event.src_path), written=False)

    def on_closed(self, event: FileSystemEvent) -> None:
        path = _path(event.src_path)
        if self._gate.closed(path, written=True):
            self._paths.put(path)

    def on_created(self, event: FileSystemEvent) -> None:
        self._gate.created(_path(event.src_path))

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._gate.gone(_path(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.src_path:  # empty: moved in from outside the inbox
            self._gate.gone(_path(event.src_path))
        if not event.dest_path:  # moved out of the inbox
            return
        dest = _path(event.dest_path)
        if event.is_directory or self._gate.moved_in(dest):
            self._paths.put(dest)  # a folder: the service looks inside at once


def _observer() -> BaseObserver:
    """inotify's own masks where there is inotify (a move-in is a move, not a creation)."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux: creations and move-ins look alike; the gate's
        return Observer()  # quiet period after a creation takes both
    return InotifyObserver(generate_full_events=True)


class Stability:
    """Size-and-mtime stability: a path is ready once two looks agree and it has settled;
    a name that cannot be a request only once it has been still ``unknown_after`` s."""

    def __init__(self, settle_seconds: float, unknown_after: float = 0.0) -> None:
        self.settle = settle_seconds
        self.unknown_after = unknown_after
        self._seen: dict[Path, tuple[int, int]] = {}

    def ready(self, listing: list[tuple[Path, os.stat_result]]) -> list[Path]:
        now = time.time()
        seen, out = {}, []
        for path, st in listing:
            mark = (st.st_size, st.st_mtime_ns)
            seen[path] = mark
            if self._seen.get(path) == mark and self._still(path, st, now):
                out.append(path)
        self._seen = {p: m for p, m in seen.items() if p not in set(out)}
        return out

    def _still(self, path: Path, st: os.stat_result, now: float) -> bool:
        if is_request_name(path.name):
            return now - st.st_mtime >= self.settle
        return now - last_change(st) >= max(self.settle, self.unknown_after)


class InboxWatcher:
    """Feeds ``paths`` from the inbox; call ``tick()`` from the main loop."""

    def __init__(self, inbox: Path, paths: PathQueue, intake: IntakeConfig) -> None:
        self.inbox = inbox
        self.paths = paths
        self.intake = intake
        self.gate = Gate(intake)
        self._observer: BaseObserver | None = None
        self._stability = Stability(intake.settle_seconds, intake.unknown_after_seconds)
        self._next_look = 0.0
        self.restarts = 0

    @property
    def events(self) -> bool:
        return self.intake.mode == "events"

    def start(self) -> None:
        if self.events:
            self._start_observer()
        self.sweep()

    def _start_observer(self) -> None:
        observer = _observer()
        observer.schedule(_Report(self.paths, self.gate), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def sweep(self) -> None:
        """Queue every request present now, oldest first (used at start); any other
        name waits in the gate until it has been still ``unknown_after_seconds``."""
        now = time.time()
        listing = sorted(list_inbox(self.inbox), key=lambda item: item[1].st_mtime_ns)
        for path, st in listing:
            if is_request_name(path.name) or stat.S_ISDIR(st.st_mode):
                self.paths.put(path)
            else:
                still = now - last_change(st)
                self.gate.later(path, max(0.0, self.intake.unknown_after_seconds - still))

    def later(self, path: Path, seconds: float = BUSY_RETRY) -> None:
        """Look at ``path`` again in ``seconds`` (the claim found it busy)."""
        self.gate.later(path, seconds)

    def next_due_in(self, at_most: float) -> float:
        """Seconds until the gate releases its next path, at most ``at_most``: how long
        the main loop may wait for a path before ticking."""
        due = self.gate.next_due_in()
        return at_most if due is None else min(at_most, due)

    def alive(self) -> bool:
        return not self.events or (self._observer is not None and self._observer.is_alive())

    def tick(self) -> None:
        """Supervise the observer; release what the gate says is due; rescan or poll
        when due."""
        if self.events and not self.alive():
            self.restarts += 1
            logger.error("inbox observer died; restarting it (restart {})", self.restarts)
            self._start_observer()
            self.sweep()
        self._release_due()
        now = time.monotonic()
        if now < self._next_look:
            return
        interval = self.intake.rescan_interval if self.events else self.intake.poll_interval
        self._next_look = now + interval
        listing = [(p, st) for p, st in list_inbox(self.inbox) if not self.gate.tracked(p)]
        for path in self._stability.ready(listing):
            self.paths.put(path)

    def _release_due(self) -> None:
        for path, since in self.gate.due():
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # gone: renamed or deleted by its writer
            except OSError:
                st = None  # the claim will say what is wrong
            if st is not None and last_change(st) > since + 0.001:
                self.gate.restart(path)  # changed without an event (e.g. a share)
            else:
                self.paths.put(path)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
