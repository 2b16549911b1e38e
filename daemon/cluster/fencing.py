"""Fencing a batch's execution while it runs, not only at its end.

A host paused (``SIGSTOP``, a VM frozen) or cut off longer than the worker's stalled
timeout finds, once it runs again, that its batch was handed to another execution. Its
creates are fenced by their copy key leases, and its result by ``stages.finish_batch``;
but until it ends it would go on writing into the batch's folder, which the other
execution uses too (temp files, the mapping, images). Two things keep executions of one
batch apart:

- ``watch``: while an execution runs, it touches its batch row (``updated_at``) every
  ``every`` seconds, and stops (its ``stop`` event) as soon as the row is no longer its
  own: it ends at its next stop check, and its job ends without going back to the
  queue;
- ``claim``: a new execution takes a running batch only once its owner has been silent
  for ``cluster.stalled_seconds``. Until then it waits (the batch's job may have been
  given again while its execution lives: a paused host's late finish marks the job
  done, and the sweep gives the open batch a new job): taking it at once would stop a
  live execution and cost an attempt each time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from daemon.cluster import stages
from daemon.cluster.runtime import Again, Runtime

EVERY = 1.0  # seconds between touches (and the superseded run's last writes, at most)


def every(rt: Runtime) -> float:
    """Touch often enough that a live owner never looks silent."""
    return min(EVERY, rt.cluster.stalled_seconds / 3)


def claim(rt: Runtime, run_id: str, number: int, owner: str) -> stages.BatchClaim | None:
    """The batch for ``owner`` (``stages.claim_batch``), waiting while another live
    execution runs it; None once it is finished. Raises ``Again`` if this host stops
    meanwhile."""
    while True:
        with rt.pool.connection() as conn:
            got = stages.claim_batch(conn, run_id, number, owner, rt.host_id,
                                     live_seconds=rt.cluster.stalled_seconds)
            if got is not None:
                return got
            row = conn.execute("SELECT status FROM batches WHERE run_id = %s"
                               " AND number = %s", (run_id, number)).fetchone()
        if row is None or row[0] not in ("pending", "running"):
            return None
        if rt.executions.stopping.wait(every(rt)):
            raise Again(f"stopped while batch {number} of {run_id} ran elsewhere")


@dataclass
class Watch:
    superseded: threading.Event = field(default_factory=threading.Event)


@contextmanager
def watch(rt: Runtime, run_id: str, number: int, owner: str, stop: threading.Event,
          log: Any) -> Iterator[Watch]:
    """While the block runs: touch the batch row as ``owner`` each ``every`` seconds,
    and stop the block once the row is another's (``Watch.superseded`` set). A touch
    that fails (PostgreSQL away) is skipped: the host's own handling of a lost database
    stops its executions."""
    found = Watch()
    done = threading.Event()
    period = every(rt)

    def touch() -> None:
        while not done.wait(period):
            try:
                with rt.pool.connection(timeout=period) as conn:
                    mine = conn.execute(
                        "UPDATE batches SET updated_at = now() WHERE run_id = %s"
                        " AND number = %s AND owner = %s AND status = 'running'"
                        " RETURNING 1", (run_id, number, owner)).fetchone()
                    now = None if mine else conn.execute(
                        "SELECT owner FROM batches WHERE run_id = %s AND number = %s",
                        (run_id, number)).fetchone()
            except Exception as exc:  # noqa: BLE001 - any failure: try again next time
                log.debug("could not touch batch {}: {}", number, exc)
                continue
            if not mine:
                log.warning("batch {} was taken over by another execution (now {}): this "
                            "one stops", number, now[0] if now else None)
                found.superseded.set()
                stop.set()
                return

    thread = threading.Thread(target=touch, name=f"fence-{run_id}-{number}", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        done.set()
        thread.join(timeout=period + 5)
