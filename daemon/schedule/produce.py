"""Writing the scheduler's requests into the inbox, exactly once per key.

A request goes through ``drop_request`` (temp name, rename into the inbox), the same
path as ``scanrelay submit``. Around it, the drop log: the key is reserved, with the
request and its file name, before the file is written, and marked dropped after.

- A key that is dropped (or missed, or exhausted) is never produced again, whatever
  fires again after a crash or restart.
- A crash between the two steps leaves a reservation. Whether the file was written is
  then read from where a request can be: ``inbox/``, ``processing/``, or the ledger
  (which has every claimed request by name). Written: marked dropped. Not written: it
  is written now, from the reserved payload (``recover`` at start, or the next time
  the key comes up).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from daemon.config import Config
from daemon.layout import Layout
from daemon.schedule.state import DROPPED, RESERVED, SchedulerState
from daemon.store.abc import RequestStore
from daemon.submit import drop_request


class Drops(Protocol):
    """What the rerun window produces through, once per key: ``Producer`` on one host
    (the drop log and the inbox), ``daemon.cluster.fires.ClusterFires`` in a cluster."""

    def produce(self, key: str, job: str, kind: str, fire_time: datetime, name: str,
                raw: dict[str, Any], source: str | None = None) -> Path | None: ...

    def done(self, key: str) -> bool: ...

    def record(self, key: str, job: str, kind: str, fire_time: datetime, state: str, *,
               source: str | None = None, detail: dict[str, Any] | None = None) -> bool: ...


class Producer:
    """Thread-safe (the state and the ledger are)."""

    def __init__(self, config: Config, layout: Layout, state: SchedulerState,
                 ledger: RequestStore) -> None:
        self.config = config
        self.layout = layout
        self.state = state
        self.ledger = ledger

    def produce(self, key: str, job: str, kind: str, fire_time: datetime, name: str,
                raw: dict[str, Any], source: str | None = None) -> Path | None:
        """Write ``raw`` into the inbox as ``name`` unless ``key`` was produced before;
        the path written, or None. Raises ``OSError`` if the inbox cannot be written
        (the reservation stays, and is repaired at the next start)."""
        drop = self.state.get(key)
        if drop is not None and drop.state != RESERVED:
            return None
        if drop is None:
            self.state.reserve(key, job, kind, fire_time, name, source, raw)
        elif self.was_dropped(drop.name or name):
            self.state.mark(key, DROPPED)
            return None
        return self._write(key, name, raw)

    def done(self, key: str) -> bool:
        """True once ``key`` is settled for good (dropped, missed, exhausted)."""
        drop = self.state.get(key)
        return drop is not None and drop.state != RESERVED

    def record(self, key: str, job: str, kind: str, fire_time: datetime, state: str, *,
               source: str | None = None, detail: dict[str, Any] | None = None) -> bool:
        """A row that needs no file (missed, exhausted, a window); False if it existed."""
        return self.state.record(key, job, kind, fire_time, state, source=source,
                                 detail=detail)

    def recover(self) -> int:
        """Finish the reservations a crash left behind; how many files it wrote."""
        written = 0
        for drop in self.state.reserved():
            if drop.name is None or drop.payload is None:
                continue
            if self.was_dropped(drop.name):
                self.state.mark(drop.key, DROPPED)
            else:
                logger.info("writing {} for {}: a crash interrupted it", drop.name, drop.key)
                self._write(drop.key, drop.name, drop.payload)
                written += 1
        return written

    def was_dropped(self, name: str) -> bool:
        """True if a request file ``name`` is in the inbox, being processed, or was
        claimed (the ledger records every claim by name before it leaves
        ``processing/``)."""
        if (self.layout.inbox / name).exists():
            return True
        if self.layout.processing.is_dir() and any(
                p.name.endswith(f"+{name}") for p in self.layout.processing.iterdir()):
            return True
        return bool(self.ledger.by_name(name))

    def _write(self, key: str, name: str, raw: dict[str, Any]) -> Path:
        # Not validated here: the runner validates every request, ours included, and an
        # invalid one lands in failed/ with its error.txt, where people look.
        path = drop_request(self.config, raw, name=name, validate=False)
        self.state.mark(key, DROPPED, name=path.name)
        return path
