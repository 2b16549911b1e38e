"""The cluster's PostgreSQL: one pool per process, and a schema the daemon creates and
migrates itself.

Migrations are the files ``daemon/store/migrations/NNNN_name.sql``, applied in order,
each once, each in the transaction that records it in ``scanrelay_schema``. Every
host runs ``migrate`` at start; a transaction-scoped advisory lock makes the hosts that
start together take turns, so each file runs once in the cluster. procrastinate's own
schema is applied the same way, as version 0, the first time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from daemon.config import ClusterConfig, read_secret
from daemon.errors import FatalError
from daemon.redact import register_secret
from daemon.store.abc import StoreError

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATE_LOCK = 0x5CA_4E1A7  # pg_advisory_xact_lock key: one migrating host at a time
PROCRASTINATE_VERSION = 0  # the row in scanrelay_schema that stands for its schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def dsn_of(cluster: ClusterConfig) -> str:
    """The DSN from ``cluster.dsn_env`` or ``cluster.dsn_file`` (never from the config)."""
    dsn = read_secret(cluster.dsn_env, cluster.dsn_file, "cluster DSN")
    if not dsn:
        raise FatalError("cluster DSN: it is empty")
    register_secret(dsn)  # a driver's error may quote it: never into a log or a sidecar
    password = _password_of(dsn)
    if password:
        register_secret(password)
    return dsn


def _password_of(dsn: str) -> str | None:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None  # malformed: the whole DSN is registered
    return str(password) if password else None


def open_pool(dsn: str, *, max_size: int = 8, name: str = "scanrelay",
              wait: bool = True) -> ConnectionPool[Any]:
    """A pool of autocommit connections: a caller wanting a transaction opens one with
    ``conn.transaction()``. Waits for the server at most ``timeout`` seconds per get;
    ``wait``: also at the open (else the pool connects in the background). Each
    connection is checked as it is handed out (one empty round trip), so after a
    database restart the pool replaces its dead connections instead of failing a call
    with each of them in turn."""
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=1, max_size=max_size, name=name, open=False, timeout=30,
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, "application_name": name})
    pool.open(wait=wait, timeout=30)
    return pool


@contextmanager
def connection(pool: ConnectionPool[Any], what: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of ``pool`` for one short piece of work on ``what`` (e.g. "the copy
    ledger"). Raises ``StoreError`` for any database error, transient when the database
    is unreachable (a later attempt may find it back)."""
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise StoreError(f"{what}: no database connection: {exc}", transient=True) from exc
    except psycopg.OperationalError as exc:
        raise StoreError(f"{what}: the database is unreachable: {exc}",
                         transient=True) from exc
    except psycopg.Error as exc:
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc


def migrations() -> list[Migration]:
    """The shipped migrations, in version order."""
    found = []
    for entry in resources.files("daemon.store").joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise FatalError(f"two migrations share a version: {versions}")
    return found


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Bring the schema up to date; returns the names of what was applied now."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS scanrelay_schema ("
                     " version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row[0] for row in conn.execute("SELECT version FROM scanrelay_schema")}
        if PROCRASTINATE_VERSION not in done:
            _apply(conn, Migration(PROCRASTINATE_VERSION, "procrastinate",
                                   _procrastinate_schema(conn)))
            applied.append("procrastinate")
        for migration in migrations():
            if migration.version not in done:
                _apply(conn, migration)
                applied.append(migration.name)
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The newest applied version, or None on a database the daemon never migrated."""
    try:
        row = conn.execute("SELECT max(version) FROM scanrelay_schema").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else row[0]


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute(migration.sql.encode())  # bytes: a script of several statements
    conn.execute("INSERT INTO scanrelay_schema (version, name) VALUES (%s, %s)",
                 (migration.version, migration.name))


def _procrastinate_schema(conn: psycopg.Connection[Any]) -> str:
    """procrastinate's schema, unless a database shared with another procrastinate user
    has it already (then theirs is kept: applying it twice fails)."""
    from procrastinate.schema import SchemaManager

    exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
    return "SELECT 1" if exists and exists[0] else SchemaManager.get_schema()
