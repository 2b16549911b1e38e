"""The stores under test, each kind built the same way for ``test_store_contract``.

- ``StoreKind``: builds a kind's stores over a fresh place (a ``state/`` folder, or a
  migrated PostgreSQL database emptied between tests), and opens them again (a restart).
- ``migrated_database(prefix)``: a database of its own with the cluster schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from daemon.checkpoint import FileCheckpoints
from daemon.store import pg
from daemon.store.abc import CheckpointStores, CopyStore, RequestStore
from daemon.store.pg_checkpoints import PgCheckpoints
from daemon.store.pg_copies import PgCopyStore
from daemon.store.pg_requests import PgRequestStore
from daemon.store.sqlite_copies import SqliteCopyStore
from daemon.store.sqlite_requests import LEDGER_FILE, SqliteRequestStore
from tests import pg as testpg

HOST = "host-a"


@contextlib.contextmanager
def migrated_database(prefix: str) -> Iterator[str]:
    """The DSN of a fresh database with the cluster schema; dropped after."""
    testpg.require_admin_dsn()
    dsn = testpg.create_database(prefix)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            pg.migrate(conn)
        yield dsn
    finally:
        testpg.drop_database(dsn)


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Our tables (not procrastinate's, nor the schema's own record)."""
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                        " AND tablename NOT LIKE 'procrastinate%'"
                        " AND tablename <> 'scanrelay_schema'").fetchall()
    return [r[0] for r in rows]


@dataclass
class StoreKind:
    """One kind of store (``sqlite`` or ``postgres``) over a place of its own."""

    name: str
    state: Path
    dsn: str | None = None
    host_id: str | None = None  # what records name as their host (None: one host)
    _pool: ConnectionPool[Any] | None = None
    _opened: list[Any] = field(default_factory=list)

    @property
    def pool(self) -> ConnectionPool[Any]:
        assert self.dsn is not None
        if self._pool is None:
            self._pool = pg.open_pool(self.dsn, max_size=8, name="store-test")
        return self._pool

    def empty(self) -> None:
        """A clean slate for the next test (PostgreSQL: the database is shared)."""
        if self.dsn is None:
            return
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE " + ", ".join(_tables(conn)))

    def requests(self) -> RequestStore:
        store: RequestStore = PgRequestStore(self.pool, HOST) if self.dsn \
            else SqliteRequestStore(self.state / LEDGER_FILE)
        self._opened.append(store)
        return store

    def copies(self, lease_seconds: float = 30.0) -> CopyStore:
        """A copy store; each call opens another (a second host sharing the first's
        state in PostgreSQL, a restarted daemon on SQLite)."""
        store: CopyStore = PgCopyStore(self.pool, lease_seconds) if self.dsn \
            else SqliteCopyStore(self.state, lease_seconds)
        self._opened.append(store)
        return store

    def checkpoints(self) -> CheckpointStores:
        return PgCheckpoints(self.pool) if self.dsn else FileCheckpoints()

    def close(self) -> None:
        for store in reversed(self._opened):
            with contextlib.suppress(Exception):
                store.close()
        self._opened.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
