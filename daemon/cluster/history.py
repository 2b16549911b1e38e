"""Run history in cluster mode: the ``requests`` table read through the same calls as
the single host's ``Ledger`` (``get``, ``by_name``, ``recent``, ``search``, ``count``,
``actions``, ``close``), so ``runs``, ``show``, ``retry``, the schedules and the web page
read either without knowing which.

This is a reader only. The store's ``RequestStore`` contract (its PostgreSQL
implementation writes these rows) may replace it at merge: the readers depend on
``HistoryReader``, not on this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, LiteralString, Protocol

from psycopg.rows import dict_row

from daemon.store.records import RequestRecord, RunFilter

if TYPE_CHECKING:
    from daemon.cluster.views import ClusterView

COLUMNS: LiteralString = ("claim_id, name, profile, claimed_at, run_id, action, label,"
                          " status, finished_at, final_path, message, counts, attempts,"
                          " claimed_by, host_id")
NEWEST_FIRST: LiteralString = " ORDER BY claimed_at DESC, claim_id DESC"
FAILED: LiteralString = " WHERE status IN ('failed', 'partial', 'invalid')"


class HistoryReader(Protocol):
    """The read calls of a ``RequestStore``."""

    def get(self, key: str) -> RequestRecord | None: ...
    def by_name(self, name: str) -> list[RequestRecord]: ...
    def recent(self, limit: int = 50, failed_only: bool = False) -> list[RequestRecord]: ...
    def search(self, filters: RunFilter, limit: int, offset: int = 0
               ) -> list[RequestRecord]: ...
    def count(self, filters: RunFilter) -> int: ...
    def actions(self) -> list[str]: ...
    def close(self) -> None: ...


class PgHistory:
    """The cluster's request history, read-only. Raises ``ClusterUnavailable``."""

    def __init__(self, view: ClusterView) -> None:
        self._view = view

    def close(self) -> None:
        """Nothing to close: the connections belong to the view."""

    def get(self, key: str) -> RequestRecord | None:
        """A request by claim ID or run ID."""
        rows = self._records(" WHERE claim_id = %s OR run_id = %s", (key, key))
        return rows[0] if rows else None

    def by_name(self, name: str) -> list[RequestRecord]:
        return self._records(" WHERE name = %s ORDER BY claimed_at DESC", (name,))

    def recent(self, limit: int = 50, failed_only: bool = False) -> list[RequestRecord]:
        return self._records((FAILED if failed_only else "") + NEWEST_FIRST + " LIMIT %s",
                             (limit,))

    def search(self, filters: RunFilter, limit: int, offset: int = 0) -> list[RequestRecord]:
        where, params = pg_where(filters)
        return self._records(where + NEWEST_FIRST + " LIMIT %s OFFSET %s",
                             (*params, limit, offset))

    def count(self, filters: RunFilter) -> int:
        where, params = pg_where(filters)
        with self._view.read() as conn:
            row = conn.execute("SELECT count(*) FROM requests" + where, params).fetchone()
        return int(row[0]) if row else 0

    def actions(self) -> list[str]:
        with self._view.read() as conn:
            rows = conn.execute("SELECT DISTINCT action FROM requests"
                                " WHERE action IS NOT NULL ORDER BY action").fetchall()
        return [r[0] for r in rows]

    def _records(self, tail: LiteralString, params: tuple[Any, ...]) -> list[RequestRecord]:
        with self._view.read() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT " + COLUMNS + " FROM requests" + tail,
                               params).fetchall()
        return [RequestRecord(**{**row, "counts": row["counts"] or {}}) for row in rows]


def pg_where(filters: RunFilter) -> tuple[LiteralString, tuple[Any, ...]]:
    """``RunFilter.where`` for PostgreSQL: ``ILIKE``, as SQLite's ``LIKE`` ignores the
    case of ASCII letters; values bound, ``%``, ``_`` and ``\\`` in the text escaped."""
    terms: list[LiteralString] = []
    params: list[Any] = []
    if filters.action:
        terms.append("action = %s")
        params.append(filters.action)
    if filters.status:
        terms.append("status = %s")
        params.append(filters.status)
    if filters.text:
        like = "%" + filters.text.replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_") + "%"
        terms.append("(name ILIKE %s OR label ILIKE %s)")
        params += [like, like]
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)
