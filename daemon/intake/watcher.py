"""Noticing request files. Dumb by design: it only puts paths on a queue.

- events mode: a watchdog observer reports files closed after writing and files moved
  in; a periodic rescan catches what events missed (taken once stable, and never while
  the observer saw the file open and not yet closed);
- polling mode (network shares, where no events arrive): a listing every
  ``poll_interval``, a file taken once its size and mtime held still across two looks
  and it is at least ``settle_seconds`` old;
- both: a sweep at start, and a supervisor that restarts a dead observer.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import IntakeConfig
from daemon.fsutil import is_ignored_name

PathQueue = queue.Queue[Path]
OPEN_FILE_PATIENCE = 3600.0  # seconds: an open file this quiet lost its close event


class OpenFiles:
    """Files opened or written in the inbox and not yet closed: the rescan leaves them
    alone, so a writer that pauses with its file open is never taken half-written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Path, tuple[float, bool]] = {}  # path → (last event, written)

    def opened(self, path: Path, written: bool) -> None:
        with self._lock:
            before = self._open.get(path, (0.0, False))[1]
            self._open[path] = (time.time(), written or before)

    def closed(self, path: Path, written: bool) -> None:
        with self._lock:
            if written or not self._open.get(path, (0.0, False))[1]:
                self._open.pop(path, None)  # a reader closing leaves a writer's mark

    def busy(self, path: Path) -> bool:
        with self._lock:
            last = self._open.get(path)
            return last is not None and time.time() - last[0] < OPEN_FILE_PATIENCE


class _Enqueue(FileSystemEventHandler):
    """Watchdog callbacks: a path onto the queue (or a mark of an open file), nothing
    else: no parsing, no I/O."""

    def __init__(self, paths: PathQueue, open_files: OpenFiles) -> None:
        self._paths = paths
        self._open = open_files

    def on_opened(self, event: FileSystemEvent) -> None:
        self._open.opened(Path(os.fsdecode(event.src_path)), written=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._open.opened(Path(os.fsdecode(event.src_path)), written=True)

    def on_closed_no_write(self, event: FileSystemEvent) -> None:
        self._open.closed(Path(os.fsdecode(event.src_path)), written=False)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            path = Path(os.fsdecode(event.src_path))
            self._open.closed(path, written=True)
            self._paths.put(path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._paths.put(Path(os.fsdecode(event.dest_path)))


def list_inbox(inbox: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Everything that may be a request: entries of the inbox and of its profile folders."""
    for entry in _scandir(inbox):
        if is_ignored_name(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            for child in _scandir(Path(entry.path)):
                if not is_ignored_name(child.name):
                    yield from _stat(child)
        else:
            yield from _stat(entry)


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _stat(entry: os.DirEntry[str]) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        yield Path(entry.path), entry.stat(follow_symlinks=False)
    except OSError:
        return


class Stability:
    """Size-and-mtime stability: a path is ready once two looks agree and it has settled."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle = settle_seconds
        self._seen: dict[Path, tuple[int, int]] = {}

    def ready(self, listing: list[tuple[Path, os.stat_result]]) -> list[Path]:
        now = time.time()
        seen, out = {}, []
        for path, st in listing:
            mark = (st.st_size, st.st_mtime_ns)
            seen[path] = mark
            if self._seen.get(path) == mark and now - st.st_mtime >= self.settle:
                out.append(path)
        self._seen = {p: m for p, m in seen.items() if p not in set(out)}
        return out


class InboxWatcher:
    """Feeds ``paths`` from the inbox; call ``tick()`` from the main loop."""

    def __init__(self, inbox: Path, paths: PathQueue, intake: IntakeConfig) -> None:
        self.inbox = inbox
        self.paths = paths
        self.intake = intake
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._stability = Stability(intake.settle_seconds)
        self.open_files = OpenFiles()
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
        observer = Observer()
        observer.schedule(_Enqueue(self.paths, self.open_files), str(self.inbox),
                          recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def sweep(self) -> None:
        """Queue everything present now, oldest first (used at start)."""
        listing = sorted(list_inbox(self.inbox), key=lambda item: item[1].st_mtime_ns)
        for path, _ in listing:
            self.paths.put(path)

    def alive(self) -> bool:
        return not self.events or (self._observer is not None and self._observer.is_alive())

    def tick(self) -> None:
        """Supervise the observer; rescan or poll when due."""
        if self.events and not self.alive():
            self.restarts += 1
            logger.error("inbox observer died; restarting it (restart {})", self.restarts)
            self._start_observer()
            self.sweep()
        now = time.monotonic()
        if now < self._next_look:
            return
        interval = self.intake.rescan_interval if self.events else self.intake.poll_interval
        self._next_look = now + interval
        listing = [(p, st) for p, st in list_inbox(self.inbox) if not self.open_files.busy(p)]
        for path in self._stability.ready(listing):
            self.paths.put(path)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
