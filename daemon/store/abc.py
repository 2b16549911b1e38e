"""The contract of the daemon's state: what the runner, handlers, CLI and web page may
ask of it, whichever store keeps it (APScheduler 4's ``abc.DataStore`` is the model).

- ``RequestStore``: the history of requests (claimed, running, how they ended);
- ``CopyStore``: what was copied where (exactly once across runs) and the copy key
  leases that serialise a key's look-up → create → record across threads and hosts;
- ``CheckpointStore``: the finished steps of one run (or one batch of it), opened
  through ``CheckpointStores``.

One host keeps them in SQLite under ``state/`` and in the run folders
(``daemon.store.sqlite_*``, ``daemon.checkpoint``); cluster mode in PostgreSQL
(``daemon.store.pg_*``). ``daemon.store.open_stores`` picks by the config. One test
suite (``tests/test_store_contract.py``) holds every implementation to this contract.

Errors: any method may raise ``StoreError`` when the store cannot answer at all (its
file unusable, its database unreachable past the pool's timeout); the methods below name
only what they raise beyond that.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import FatalError, ScanrelayError
from daemon.store.records import (
    CopyKey,
    CopyState,
    MarkerCheck,
    RequestRecord,
    RunFilter,
)


class StoreError(FatalError):
    """The store cannot answer: its SQLite file is unusable (disk full, corrupt), or its
    PostgreSQL is unreachable past the pool's timeout. A run cannot go on without its
    state. ``transient``: a later attempt may succeed (the database was away)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class LeaseLost(ScanrelayError):  # noqa: N818 - a state, like Interrupted
    """The owner no longer holds the copy key's lease (it expired, another owner took it
    over, or the store could not confirm it): the owner must not create."""


class RequestStore(Protocol):
    """The request history: one row per claim. Thread-safe."""

    def claimed(self, claim_id: str, name: str, profile: str | None) -> None:
        """Record the claim of the file ``name`` (status ``claimed``). A claim ID
        recorded before is left as it is (a resumed request claims again)."""

    def started(self, claim_id: str, run_id: str, action: str, label: str | None) -> None:
        """The claim became run ``run_id``: status ``running``, one attempt more, and
        in cluster mode the host running it. An unknown claim ID changes nothing."""

    def finished(self, claim_id: str, status: str, final_path: Path, message: str | None,
                 counts: dict[str, Any]) -> None:
        """The request ended (``status``) and was settled at ``final_path``."""

    def get(self, key: str) -> RequestRecord | None:
        """A request by claim ID or run ID, or None."""

    def by_name(self, name: str) -> list[RequestRecord]:
        """Requests claimed under the file name ``name`` (as dropped), newest first."""

    def recent(self, limit: int = 50, failed_only: bool = False) -> list[RequestRecord]:
        """The newest ``limit`` requests; ``failed_only``: failed, partial or invalid."""

    def search(self, filters: RunFilter, limit: int, offset: int = 0) -> list[RequestRecord]:
        """One page of the history matching ``filters``, newest first."""

    def count(self, filters: RunFilter) -> int:
        """How many requests match ``filters``."""

    def actions(self) -> list[str]:
        """The actions the history holds, sorted (for a filter's choices)."""

    def close(self) -> None:
        """Release the store's connection (a pool passed in stays open)."""


class CopyStore(Protocol):
    """The copy ledger (what was copied to which target store, across runs; SPEC §4,
    §8) and the leases on its keys. Thread-safe.

    Ledger: one row per (key, marker): an *intent* (a create is about to be sent) or a
    *copy* (the create succeeded, or the scan was found). The newest copy of a key wins.

    Leases: ``lease(key, owner)`` is held around a key's look-up → create → record, so
    that two owners (threads, runs, hosts) never both create it. It expires
    ``lease_seconds`` after its last renewal, by the store's clock (PostgreSQL's
    ``now()``, never a host's); while held it is renewed in the background. An owner
    calls ``fence`` right before the create: an owner whose lease expired (a paused or
    partitioned host) fails it and never creates. An owner is one execution (never
    reused by a retry); a lease is not re-entrant, even for its own owner.
    """

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts after its last renewal."""

    def states(self, source: str, target: str, store: int,
               scan_ids: Sequence[int]) -> dict[int, CopyState]:
        """What is known of each of ``scan_ids`` (those with any row), by source scan."""

    def state(self, key: CopyKey) -> CopyState:
        """What is known of ``key`` (an empty ``CopyState`` if nothing)."""

    def intent(self, key: CopyKey, marker: str, run_id: str,
               upload_ids: Sequence[int] = ()) -> None:
        """Record that ``run_id`` is about to create ``key``'s copy with ``marker`` and
        the uploads ``upload_ids``, both or neither (a copy already confirmed for that
        marker is left as it is)."""

    def copied(self, key: CopyKey, marker: str, run_id: str, target_scan_id: int) -> None:
        """Record that ``key``'s copy with ``marker`` is ``target_scan_id`` (created, or
        found by its marker or uploads)."""

    def marker_check(self, target: str, field: str) -> MarkerCheck | None:
        """What the last read-back of ``field`` on ``target`` found, if any."""

    def record_marker_check(self, target: str, field: str, kept: bool) -> None:
        """Record a read-back of the marker ``field`` on ``target`` (the latest counts)."""

    def dropped_markers(self) -> list[MarkerCheck]:
        """The targets whose last read-back found the marker dropped."""

    def acquire(self, key: CopyKey, owner: str) -> bool:
        """One try, no waiting and no renewal: take ``key``'s lease for ``owner`` if no
        one holds it or its holder's lease expired (then it is taken over). False if
        another owner holds it, or ``owner`` itself does."""

    def release(self, key: CopyKey, owner: str) -> None:
        """Give the lease back if ``owner`` still holds it; otherwise nothing."""

    def lease(self, key: CopyKey, owner: str,
              stop: threading.Event) -> AbstractContextManager[None]:
        """Hold ``key``'s lease for the ``with`` block: wait (a bounded poll) while
        another owner holds it, keep it renewed, give it back at the end. Raises
        ``Interrupted`` if ``stop`` is set while waiting."""

    def still_holds(self, key: CopyKey, owner: str) -> bool:
        """Whether ``owner`` holds ``key``'s lease now, asked of the store (and, when
        it does, renewed for a full ``lease_seconds``). False once it expired or was
        taken over, and when the store cannot be asked: never True on a doubt."""

    def fence(self, key: CopyKey, owner: str) -> None:
        """Call right before a create: raises ``LeaseLost`` unless ``still_holds``."""

    def close(self) -> None:
        """Stop renewing, release the connection (a pool passed in stays open)."""


class CheckpointStore(Protocol):
    """The finished steps of one run (or one batch of it), keyed by a string; the
    latest record of a key wins. Thread-safe. A resumed run opens it again and redoes
    exactly the steps without a record."""

    def get(self, key: str) -> dict[str, Any] | None:
        """The latest record of ``key`` (``{"key": key, **data}``), or None."""

    def had(self, key: str) -> bool:
        """Whether ``key`` has a record, cheaply (a resumed run bisects on it to find
        where the run before it stopped); may say True wrongly, never False wrongly:
        ``get`` has the last word."""

    def record(self, key: str, **data: Any) -> None:
        """Record that step ``key`` is finished, with ``data`` (JSON-able; others are
        written as their ``str``). Durable when it returns. Raises ``ValueError`` for
        a key that is empty or holds quotes, backslashes or control characters."""

    def forget(self, keys: Iterable[str]) -> None:
        """Drop records from memory only, for steps a later record supersedes, so memory
        does not grow with the run: the store keeps them for the next open, but ``get``
        may no longer find them before it (ask only for what is not forgotten). Unknown
        keys are fine."""

    def held(self) -> int:
        """How many records are held in memory (the rest are read back on demand)."""

    def records(self) -> list[dict[str, Any]]:
        """The latest record of every key, in the order the keys were first recorded:
        O(n) memory, for tests and tools; a run uses ``get``."""

    def close(self) -> None:
        """Flush and release; the records stay for the next open."""


class CheckpointStores(Protocol):
    """Opens the checkpoint of a run, or of one batch of it (cluster mode)."""

    def open(self, run_id: str, run_dir: Path, batch: int = 0) -> CheckpointStore:
        """The checkpoint of run ``run_id`` (folder ``run_dir``); ``batch`` 0 is the
        run's own, batches are numbered from 1. Records from before are found again."""

