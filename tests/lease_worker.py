"""A process contending for a copy key lease in PostgreSQL, for
``test_store_lease_processes`` (run as ``python tests/lease_worker.py MODE DSN DIR``).

- ``contend N``: N times: take the lease (waiting while the other holds it), pass the
  fence, and inside it count how many owners are inside at once (``lease_probe``);
  prints the largest count seen.
- ``hold``: take the lease, pass the fence, write ``DIR/held``; once ``DIR/go`` exists,
  try the fence again and write ``DIR/result`` (``passed`` or ``lost``).
- ``take``: take the lease (once the holder's lapses), pass the fence, write
  ``DIR/taken``; hold it until ``DIR/go`` exists.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

from daemon.store import pg
from daemon.store.abc import LeaseLost
from daemon.store.pg_copies import PgCopyStore
from daemon.store.records import CopyKey

KEY = CopyKey("prod", 7, "qa", 1)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.02)


def contend(store: PgCopyStore, dsn: str, times: int) -> int:
    owner, stop, largest = f"contend:{uuid.uuid4().hex[:8]}", threading.Event(), 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(times):
            with store.lease(KEY, owner, stop):
                store.fence(KEY, owner)
                row = conn.execute("UPDATE lease_probe SET inside = inside + 1"
                                   " RETURNING inside").fetchone()
                assert row is not None
                largest = max(largest, row[0])
                time.sleep(0.005)  # a create takes a while
                conn.execute("UPDATE lease_probe SET inside = inside - 1")
    return largest


def hold(store: PgCopyStore, folder: Path) -> None:
    owner = f"hold:{uuid.uuid4().hex[:8]}"
    with store.lease(KEY, owner, threading.Event()):
        store.fence(KEY, owner)
        (folder / "held").write_text(owner)
        _wait_for(folder / "go")
        try:
            store.fence(KEY, owner)
            result = "passed"
        except LeaseLost:
            result = "lost"
        (folder / "result").write_text(result)


def take(store: PgCopyStore, folder: Path) -> None:
    owner = f"take:{uuid.uuid4().hex[:8]}"
    with store.lease(KEY, owner, threading.Event()):
        store.fence(KEY, owner)
        (folder / "taken").write_text(owner)
        _wait_for(folder / "go")


def main(argv: list[str]) -> int:
    mode, dsn, folder = argv[0], argv[1], Path(argv[2])
    lease_seconds = float(argv[3]) if len(argv) > 3 else 1.0
    pool = pg.open_pool(dsn, max_size=3, name=f"lease-{mode}")
    store = PgCopyStore(pool, lease_seconds)
    try:
        if mode == "contend":
            print(contend(store, dsn, int(argv[4])), flush=True)
        elif mode == "hold":
            hold(store, folder)
        else:
            take(store, folder)
    finally:
        store.close()
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
