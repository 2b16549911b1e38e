"""The cluster's request history (``RequestStore``) in PostgreSQL: the table
``requests`` of ``0001_core.sql``, shared by every host.

Times come from the server's clock (``now()``), never a host's: one host may run with a
shifted clock. Each call is one short statement on a connection of the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from daemon.store import pg
from daemon.store.records import FAILED_STATUSES, RequestRecord, RunFilter

WHAT = "the request ledger"
COLUMNS = ("claim_id, name, profile, claimed_at, run_id, action, label, status,"
           " finished_at, final_path, message, counts, attempts, claimed_by, host_id")
NOW = "extract(epoch FROM now())"  # the server's clock, in the ledger's epoch seconds


def insert_claimed(conn: psycopg.Connection[Any], *, claim_id: str, name: str,
                   profile: str | None, body: bytes, processing_name: str,
                   claimed_by: str) -> bool:
    """Insert a claimed request's row on ``conn``, in the caller's transaction (so the
    row and the first job of the request commit together). False if ``claim_id`` has a
    row already (it is left as it is)."""
    cursor = conn.execute(
        "INSERT INTO requests (claim_id, name, profile, claimed_at, claimed_by,"
        f" processing_name, body, status) VALUES (%s, %s, %s, {NOW}, %s, %s, %s, 'claimed')"
        " ON CONFLICT (claim_id) DO NOTHING",
        (claim_id, name, profile, claimed_by, processing_name, body))
    return cursor.rowcount == 1


class PgRequestStore:
    """``RequestStore`` over the cluster's ``requests`` table. ``host_id`` is this
    host: it is recorded as the claimer of what ``claimed`` inserts and as the host of
    what it ``started``. Thread-safe (each call takes a connection of ``pool``).
    ``owns_pool``: ``close`` closes the pool too (a reader's own small pool)."""

    def __init__(self, pool: ConnectionPool[Any], host_id: str, *,
                 owns_pool: bool = False) -> None:
        self._pool = pool
        self.host_id = host_id
        self._owns_pool = owns_pool

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()

    def claimed(self, claim_id: str, name: str, profile: str | None) -> None:
        """A claim with no request body (a file refused as it came, or recorded before
        its body): cluster intake inserts its claims with ``insert_claimed``."""
        with pg.connection(self._pool, WHAT) as conn:
            insert_claimed(conn, claim_id=claim_id, name=name, profile=profile, body=b"",
                           processing_name="", claimed_by=self.host_id)

    def started(self, claim_id: str, run_id: str, action: str, label: str | None) -> None:
        self._write("UPDATE requests SET run_id = %s, action = %s, label = %s,"
                    " status = 'running', attempts = attempts + 1, host_id = %s"
                    " WHERE claim_id = %s", (run_id, action, label, self.host_id, claim_id))

    def finished(self, claim_id: str, status: str, final_path: Path, message: str | None,
                 counts: dict[str, Any]) -> None:
        self._write(f"UPDATE requests SET status = %s, finished_at = {NOW}, final_path = %s,"
                    " message = %s, counts = %s WHERE claim_id = %s",
                    (status, str(final_path), message, Jsonb(counts), claim_id))

    def get(self, key: str) -> RequestRecord | None:
        rows = self._query(f"SELECT {COLUMNS} FROM requests"
                           " WHERE claim_id = %s OR run_id = %s", (key, key))
        return rows[0] if rows else None

    def by_name(self, name: str) -> list[RequestRecord]:
        return self._query(f"SELECT {COLUMNS} FROM requests WHERE name = %s"
                           " ORDER BY claimed_at DESC", (name,))

    def recent(self, limit: int = 50, failed_only: bool = False) -> list[RequestRecord]:
        where, params = ("WHERE status = ANY(%s)", (list(FAILED_STATUSES),)) \
            if failed_only else ("", ())
        return self._query(f"SELECT {COLUMNS} FROM requests {where}"
                           " ORDER BY claimed_at DESC, claim_id DESC LIMIT %s",
                           (*params, limit))

    def search(self, filters: RunFilter, limit: int, offset: int = 0) -> list[RequestRecord]:
        where, params = filters.where("%s", "ILIKE")
        return self._query(f"SELECT {COLUMNS} FROM requests {where}"
                           " ORDER BY claimed_at DESC, claim_id DESC LIMIT %s OFFSET %s",
                           (*params, limit, offset))

    def count(self, filters: RunFilter) -> int:
        where, params = filters.where("%s", "ILIKE")
        with pg.connection(self._pool, WHAT) as conn:
            row = conn.execute(f"SELECT count(*) FROM requests {where}", params).fetchone()
        return int(row[0]) if row else 0

    def actions(self) -> list[str]:
        with pg.connection(self._pool, WHAT) as conn:
            rows = conn.execute("SELECT DISTINCT action FROM requests"
                                " WHERE action IS NOT NULL ORDER BY action").fetchall()
        return [r[0] for r in rows]

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with pg.connection(self._pool, WHAT) as conn:
            conn.execute(sql, params)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[RequestRecord]:
        with pg.connection(self._pool, WHAT) as conn, \
                conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(sql, params).fetchall()
        return [RequestRecord(**{**row, "counts": row["counts"] or {}}) for row in rows]
