"""Copy key leases: the half of ``CopyStore`` that keeps two owners from creating the
same copy (``daemon.store.abc``), over a ``LeaseTable`` that says where leases live.

- ``MemoryLeases``: in this process (one host: its threads are the only contenders,
  and a crash frees every lease with the process);
- ``daemon.store.pg_copies.PgLeases``: the table ``copy_leases``, timed by the server.

``Leases`` does the rest, the same for both: waiting with a bounded poll that honours
the run's stop event, and a keeper thread that renews every held lease in one call each
``seconds / 3``. A background keeper rather than renewal on use because a create may
take longer than a lease (a slow target, a retried create): renewing only when the
owner acts would let the lease lapse under a live owner that is merely waiting for its
answer, and another owner would create the copy a second time. A paused or partitioned
host renews nothing, so its leases lapse and its fence fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from daemon.errors import Interrupted
from daemon.store.abc import LeaseLost, StoreError
from daemon.store.records import CopyKey

Held = tuple[CopyKey, str]  # (key, owner)
POLL_FIRST = 0.02  # seconds before the first look again at a held key; doubles each time


class LeaseTable(Protocol):
    """Where leases live, and whose clock times them. Each method is atomic."""

    def acquire(self, key: CopyKey, owner: str, seconds: float) -> bool:
        """Take ``key`` for ``owner`` for ``seconds`` if it is free or its lease has
        expired; False if anyone (``owner`` too) holds it."""

    def renew(self, held: Sequence[Held], seconds: float) -> set[Held]:
        """Extend each lease of ``held`` that its owner still holds unexpired, by
        ``seconds`` from now; returns those (the others are lost)."""

    def release(self, key: CopyKey, owner: str) -> None:
        """Free ``key`` if ``owner`` holds it."""


class MemoryLeases:
    """``LeaseTable`` in this process's memory, timed by its monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[CopyKey, tuple[str, float]] = {}  # key -> (owner, expires)

    def acquire(self, key: CopyKey, owner: str, seconds: float) -> bool:
        with self._lock:
            now = self._clock()
            held = self._leases.get(key)
            if held is not None and held[1] > now:
                return False
            self._leases[key] = (owner, now + seconds)
            return True

    def renew(self, held: Sequence[Held], seconds: float) -> set[Held]:
        kept = set()
        with self._lock:
            now = self._clock()
            for key, owner in held:
                lease = self._leases.get(key)
                if lease is not None and lease[0] == owner and lease[1] > now:
                    self._leases[key] = (owner, now + seconds)
                    kept.add((key, owner))
        return kept

    def release(self, key: CopyKey, owner: str) -> None:
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease[0] == owner:
                del self._leases[key]


@dataclass(eq=False)
class _Holding:
    """One ``lease`` block; ``lost`` once a renewal found it gone (for good)."""

    lost: bool = False


class Leases:
    """The lease methods of ``CopyStore`` over a ``LeaseTable`` (see the module
    docstring). Thread-safe; ``close`` stops the keeper."""

    def __init__(self, table: LeaseTable, seconds: float) -> None:
        self.table = table
        self.seconds = seconds
        self.poll_max = min(1.0, seconds / 4)  # a freed key is seen within this
        self._lock = threading.Lock()
        self._holding: dict[Held, _Holding] = {}
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None

    def acquire(self, key: CopyKey, owner: str) -> bool:
        return self.table.acquire(key, owner, self.seconds)

    def release(self, key: CopyKey, owner: str) -> None:
        self.table.release(key, owner)

    @contextmanager
    def lease(self, key: CopyKey, owner: str, stop: threading.Event) -> Iterator[None]:
        self._wait(key, owner, stop)
        holding = _Holding()
        with self._lock:
            self._holding[(key, owner)] = holding
            self._start_keeper()
        try:
            yield
        finally:
            with self._lock:
                if self._holding.get((key, owner)) is holding:
                    del self._holding[(key, owner)]
            try:
                self.table.release(key, owner)
            except StoreError as exc:  # it lapses by itself; the block's own error counts
                logger.warning("could not release the lease of {}: {}", key, exc)

    def _wait(self, key: CopyKey, owner: str, stop: threading.Event) -> None:
        """Until ``owner`` has ``key``: poll, at first often (a key is held for one
        create), then at most every ``poll_max`` seconds."""
        delay = POLL_FIRST
        while not self.table.acquire(key, owner, self.seconds):
            if stop.wait(delay):
                raise Interrupted(f"stopped while waiting for the lease of {key}")
            delay = min(delay * 2, self.poll_max)

    def still_holds(self, key: CopyKey, owner: str) -> bool:
        with self._lock:
            holding = self._holding.get((key, owner))
        if holding is not None and holding.lost:
            return False
        try:
            held = bool(self.table.renew([(key, owner)], self.seconds))
        except StoreError as exc:
            logger.warning("cannot confirm the lease of {}: {}", key, exc)
            held = False
        if not held and holding is not None:
            holding.lost = True
        return held

    def fence(self, key: CopyKey, owner: str) -> None:
        if not self.still_holds(key, owner):
            raise LeaseLost(f"the lease of {key.source} scan {key.source_scan_id} for "
                            f"{key.target} store {key.target_store_id} is no longer ours")

    def close(self) -> None:
        self._closing.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)

    # --- the keeper ----------------------------------------------------------------

    def _start_keeper(self) -> None:
        """Under ``_lock``: the first lease starts the keeper; it lives until close."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="lease-keeper",
                                            daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        renewed = time.monotonic()  # when the last renewal (or idle round) began
        while not self._closing.wait(self.seconds / 3):
            started = time.monotonic()
            with self._lock:
                holdings = [(held, h) for held, h in self._holding.items() if not h.lost]
            if not holdings:
                renewed = started
                continue
            try:
                kept = self.table.renew([held for held, _ in holdings], self.seconds)
            except Exception as exc:  # any error: a dead keeper would let every lease lapse
                # Away longer than a lease: whatever we held may be another's by now.
                gone = time.monotonic() - renewed >= self.seconds
                logger.warning("could not renew {} copy lease(s){}: {}", len(holdings),
                               " (lost: away longer than a lease)" if gone else "", exc)
                kept = set() if gone else {held for held, _ in holdings}
            else:
                renewed = started
            for held, holding in holdings:
                if held not in kept:
                    holding.lost = True
                    logger.warning("lost the copy lease of {} (owner {})", *held)


class LeaseMethods:
    """The lease half of a ``CopyStore``, for a store that sets ``self.leases``."""

    leases: Leases

    @property
    def lease_seconds(self) -> float:
        return self.leases.seconds

    def acquire(self, key: CopyKey, owner: str) -> bool:
        return self.leases.acquire(key, owner)

    def release(self, key: CopyKey, owner: str) -> None:
        self.leases.release(key, owner)

    def lease(self, key: CopyKey, owner: str,
              stop: threading.Event) -> AbstractContextManager[None]:
        return self.leases.lease(key, owner, stop)

    def still_holds(self, key: CopyKey, owner: str) -> bool:
        return self.leases.still_holds(key, owner)

    def fence(self, key: CopyKey, owner: str) -> None:
        self.leases.fence(key, owner)
