"""One ``SlotBroker`` against a real PostgreSQL, in-process: leases taken in bulk as
calls wait, idle ones given back within a tick, everything given back at close, a tick
dated from its start, and a tick cut off mid-transaction that cannot keep rows locked.
(Several hosts at once: ``test_slots_cluster.py``.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from daemon.cluster.slots import BOUND_TICK, SlotBroker
from daemon.store import pg as store

LEASE = 3.0


@pytest.fixture
def pool(cluster_dsn: str) -> Iterator[ConnectionPool[Any]]:
    pool = store.open_pool(cluster_dsn, max_size=2, name="slots-test")
    yield pool
    pool.close()


def owned(dsn: str, owner: str) -> list[int]:
    """The slots ``owner`` leases now (the server's clock)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT slot FROM slot_leases WHERE owner = %s"
                            " AND expires_at > now() ORDER BY slot", (owner,))
        return [row[0] for row in rows]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)
    return value


def test_waiting_calls_get_leases_in_bulk_and_idle_ones_go_back(
        pool: ConnectionPool[Any], cluster_dsn: str) -> None:
    broker = SlotBroker(pool, "h1", LEASE).start()
    try:
        slots = broker.slots("inst", 4)
        release = threading.Event()

        def call() -> None:
            slots.acquire()
            release.wait(10)
            slots.release()
        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: slots.state().in_use == 3, 5, "three calls in flight")
        assert owned(cluster_dsn, broker.owner) == [0, 1, 2]  # no more than wanted
        release.set()
        for thread in threads:
            thread.join(5)
        idle_since = time.monotonic()
        wait_until(lambda: not owned(cluster_dsn, broker.owner), 5, "idle leases go back")
        assert time.monotonic() - idle_since <= broker.timing.renew_every * 2 + 0.5
        assert slots.state().held == 0
    finally:
        broker.close()


def test_close_gives_every_lease_and_demand_back(
        pool: ConnectionPool[Any], cluster_dsn: str) -> None:
    broker = SlotBroker(pool, "h1", LEASE).start()
    slots = broker.slots("inst", 2)
    slots.acquire()
    slots.release()
    assert owned(cluster_dsn, broker.owner) == [0]
    broker.close()
    assert owned(cluster_dsn, broker.owner) == []
    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM slot_demand").fetchone()
    assert row == (0,)


def test_leases_count_from_the_start_of_their_tick(pool: ConnectionPool[Any]) -> None:
    """A tick that took longer than half a lease (a stalled host) leases rows, but hands
    none out: the server may date them from a moment a whole lease ago."""
    broker = SlotBroker(pool, "h1", LEASE)
    slots = broker.slots("inst", 2)
    waiting = threading.Thread(target=lambda: slots.acquire() and slots.release())
    waiting.start()
    wait_until(lambda: slots.state().waiting == 1, 5, "a call waits")
    broker._tick(started=time.monotonic() - LEASE / 2)
    assert slots.state().held == 1 and not broker.is_open()
    broker._tick(started=time.monotonic())
    assert broker.is_open()
    waiting.join(5)
    assert not waiting.is_alive()
    broker.close()


def test_a_tick_cut_off_mid_transaction_cannot_keep_rows_locked(cluster_dsn: str) -> None:
    with psycopg.connect(cluster_dsn, autocommit=True) as cut_off, \
            psycopg.connect(cluster_dsn, autocommit=True) as other:
        cut_off.execute("INSERT INTO slot_leases (instance, slot) VALUES ('inst', 0)")
        with pytest.raises(psycopg.Error), cut_off.transaction():
            cut_off.execute(BOUND_TICK, {"bound": "300ms"})
            cut_off.execute("UPDATE slot_leases SET owner = 'a' WHERE slot = 0")
            # no statement comes any more (the client is cut off): the server ends the
            # session, so another broker can lock the row
            started = time.monotonic()
            wait_until(lambda: _lockable(other), 5, "the row is free to lock")
            assert time.monotonic() - started < 2
            cut_off.execute("SELECT 1")


def _lockable(conn: psycopg.Connection[Any]) -> bool:
    try:
        with conn.transaction():
            conn.execute("SELECT 1 FROM slot_leases WHERE slot = 0 FOR UPDATE NOWAIT")
        return True
    except psycopg.errors.LockNotAvailable:
        return False
