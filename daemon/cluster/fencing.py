"""Fencing a batch's execution while it runs, not only at its end.

A host paused (``SIGSTOP``, a VM frozen) or cut off longer than the worker's stalled
timeout finds, once it runs again, that its batch was handed to another execution. Its
creates are fenced by their copy key leases, and its result by ``stages.finish_batch``;
but until it ends it would go on writing into the batch's folder, which the other
execution uses too (temp files, the mapping, images). ``watch`` looks at the batch's
owner every ``every`` seconds and stops the execution (its ``stop`` event) as soon as
the owner is another: it ends at its next stop check, and its job ends without being
put back in the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

EVERY = 1.0  # seconds between looks at the owner: the superseded run's last writes


@dataclass
class Watch:
    superseded: threading.Event = field(default_factory=threading.Event)


@contextmanager
def watch(pool: ConnectionPool[Any], run_id: str, number: int, owner: str,
          stop: threading.Event, log: Any, every: float = EVERY) -> Iterator[Watch]:
    """While the block runs: stop it once batch ``number`` of ``run_id`` is no longer
    ``owner``'s (``Watch.superseded`` set). A look that fails (PostgreSQL away) is
    skipped: the host's own handling of a lost database stops its executions."""
    found = Watch()
    done = threading.Event()

    def look() -> None:
        while not done.wait(every):
            try:
                with pool.connection(timeout=every) as conn:
                    row = conn.execute("SELECT owner FROM batches WHERE run_id = %s"
                                       " AND number = %s", (run_id, number)).fetchone()
            except Exception as exc:  # noqa: BLE001 - any failure: look again next time
                log.debug("could not look at the owner of batch {}: {}", number, exc)
                continue
            if row is None or row[0] != owner:
                log.warning("batch {} was taken over by another execution (now {}): this "
                            "one stops", number, row[0] if row else None)
                found.superseded.set()
                stop.set()
                return

    thread = threading.Thread(target=look, name=f"fence-{run_id}-{number}", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        done.set()
        thread.join(timeout=every + 5)
