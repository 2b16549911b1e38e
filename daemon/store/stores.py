"""``open_stores``: the daemon's three stores, chosen by the config. Without
``cluster:`` SQLite under ``state/`` and a journal in each run folder (one host, as
always); with it, the cluster's PostgreSQL.

The PostgreSQL side is imported only in cluster mode: one host starts as fast as it
always did (psycopg and its pool are not loaded until a platform instance needs them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.checkpoint import FileCheckpoints
from daemon.config import ClusterConfig, Config
from daemon.layout import Layout
from daemon.store.abc import CheckpointStores, CopyStore, RequestStore, StoreError
from daemon.store.sqlite_copies import SqliteCopyStore
from daemon.store.sqlite_requests import LEDGER_FILE, SqliteRequestStore, read_ledger

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

LEASE_SECONDS = 30.0  # one host's copy leases (in memory: only a hung thread lets one lapse)


@dataclass(frozen=True)
class Stores:
    """The daemon's state: ``requests`` (history), ``copies`` (copy ledger and key
    leases), ``checkpoints`` (opens a run's or a batch's checkpoint)."""

    requests: RequestStore
    copies: CopyStore
    checkpoints: CheckpointStores
    pool: ConnectionPool[Any] | None = None  # set when ``open_stores`` opened it itself

    def close(self) -> None:
        """Close the stores, and the pool if it is their own (not one passed in)."""
        self.copies.close()
        self.requests.close()
        if self.pool is not None:
            self.pool.close()


def open_stores(config: Config, layout: Layout,
                pool: ConnectionPool[Any] | None = None) -> Stores:
    """The stores for ``config``: SQLite files in ``layout.state`` without
    ``config.cluster``; with it PostgreSQL over ``pool`` (or a pool of its own, from
    the cluster's DSN, closed by ``Stores.close``). The schema must be migrated already
    (``daemon.store.pg.migrate``, at the service's start). Raises ``StoreError`` when
    a store cannot be opened, ``FatalError`` when the DSN cannot be read."""
    cluster = config.cluster
    if cluster is None:
        return Stores(SqliteRequestStore(layout.state / LEDGER_FILE),
                      SqliteCopyStore(layout.state, LEASE_SECONDS), FileCheckpoints())
    from daemon.store.pg_checkpoints import PgCheckpoints
    from daemon.store.pg_copies import PgCopyStore
    from daemon.store.pg_requests import PgRequestStore

    own = None
    if pool is None:
        pool = own = _open_pool(cluster, 8, f"scanrelay-{cluster.host_id}")
    return Stores(PgRequestStore(pool, cluster.host_id),
                  PgCopyStore(pool, cluster.lease_seconds), PgCheckpoints(pool), own)


def read_requests(config: Config, layout: Layout,
                  pool: ConnectionPool[Any] | None = None) -> RequestStore | None:
    """The request history for a reader (the CLI, the web page), which must not create
    the daemon's files: ``state/ledger.sqlite`` read-only (None if the daemon never ran
    there), or the cluster's over ``pool`` (or a small pool of its own, closed with
    the store). Raises ``StoreError`` when it cannot be opened."""
    cluster = config.cluster
    if cluster is None:
        return read_ledger(layout.state)
    from daemon.store.pg_requests import PgRequestStore

    if pool is not None:
        return PgRequestStore(pool, cluster.host_id)
    own = _open_pool(cluster, 2, f"scanrelay-{cluster.host_id}-read")
    return PgRequestStore(own, cluster.host_id, owns_pool=True)


def _open_pool(cluster: ClusterConfig, size: int, name: str) -> ConnectionPool[Any]:
    from psycopg_pool import PoolTimeout

    from daemon.store import pg

    try:
        return pg.open_pool(pg.dsn_of(cluster), max_size=size, name=name)
    except PoolTimeout as exc:
        raise StoreError(f"the cluster's database does not answer: {exc}",
                         transient=True) from exc
