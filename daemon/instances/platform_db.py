"""The database side of a platform instance (SPEC §8): read-only queries on the
platform's PostgreSQL, through a small psycopg pool opened on first use.

Every query runs in a READ ONLY transaction with bound parameters. ID lists go as one
array parameter (``= ANY(%(ids)s)``), ``chunk_size`` IDs per query. The SQL lives in
``DEFAULT_SQL``, one named query each; an instance's ``sql`` config replaces any of
them by name. A replacement takes the same named parameters and returns the same
column names, and writes a literal ``%`` as ``%%`` (psycopg's placeholder syntax).

Date selection (``select_scans``) filters on the scan's ``created_at``: it is a real,
indexed, always-present timestamp, whereas the capture time exists only inside
``provided_values`` (ISO text or epoch seconds, and not for every scan). It is read
with ``->``, so it keeps its JSON type (``copy`` with ``captured_at: source`` sends it
on unchanged). ``captured_from``/``captured_to`` are
whole UTC days, both inclusive. A ``sql.select_scans`` override may use the raw dates
instead: the parameters ``captured_from`` and ``captured_to`` are passed as dates too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from daemon.errors import FatalError
from daemon.instances.base import CapturedAt, FileRef, Scan, ScanDetails, Selection
from daemon.redact import redact
from daemon.retry import ClassifiedTransientError, RetryPolicy

CHUNK_SIZE = 5000
Row = dict[str, Any]

DEFAULT_SQL: dict[str, str] = {
    # One row per scan among %(ids)s, with its store's and category's names.
    "scans": """
        SELECT s.id, s.store_id, s.status, s.has_report, s.created_at,
               COALESCE(s.provided_values -> '_raw_data' -> 'captured_at',
                        s.provided_values -> 'captured_at') AS captured_at,
               s.provided_values,
               st.name AS store_name,
               cat.name AS category_name
        FROM realograms_implementation_scan s
        LEFT JOIN master_data_implementation_store st ON st.id = s.store_id
        LEFT JOIN master_data_implementation_category cat ON cat.id = s.selected_category_id
        WHERE s.id = ANY(%(ids)s)
    """,
    # The files of the scans among %(ids)s, in a stable order.
    "scan_files": """
        SELECT f.scan_id, f.file_id, f.file_type
        FROM realograms_implementation_scanfile f
        WHERE f.scan_id = ANY(%(ids)s)
        ORDER BY f.scan_id, f.file_id
    """,
    # One row per compliance report (section, bay) of the active realogram of each scan
    # among %(ids)s, by report ID. Figures: the store planogram's compliance of the
    # report's own day; only when %(fallback)s, else the latest day before it, else the
    # latest at all (compliance_date says which day). Majority v2: the newest log row of
    # the report's store planogram and what it says of this scan.
    "scan_details": """
        SELECT s.id AS scan_id,
               r.id AS report_id,
               r.store_planogram_id,
               COALESCE(r.planogram_id, ps.planogram_id) AS planogram_id,
               p.name AS planogram_name,
               r.section_id,
               r.section_name,
               EXISTS (
                   SELECT 1 FROM planograms_implementation_planogramsectionproduct sp
                   WHERE sp.section_id = r.section_id
                     AND (sp.action ILIKE '%%additional%%'
                          OR sp.merch_method ILIKE '%%additional%%')
               ) AS is_additional_section,
               c.pre_compliance AS pre_pog,
               c.post_compliance AS post_pog,
               c.pre_osa,
               c.post_osa,
               c.date AS compliance_date,
               c.date <> COALESCE(r.scan_created_date, s.created_at)::date
                   AS compliance_fallback,
               r.compliance_rates ->> 'correct' AS ok_count,
               r.compliance_rates ->> 'wandering' AS wandering_count,
               r.compliance_rates ->> 'missing' AS oos_count,
               r.compliance_rates ->> 'empty' AS hole_count,
               mv.id AS majority_v2_id,
               mv.store_planogram_id AS majority_store_planogram_id,
               mv.scan_created_date AS majority_created_at,
               mv.data -> (s.id::text) ->> 'map_by' AS map_by
        FROM realograms_implementation_scan s
        JOIN planograms_compliance_planogramcompliancereport r
          ON r.realogram_id = s.active_realogram_id
        LEFT JOIN planograms_implementation_planogramstore ps ON ps.id = r.store_planogram_id
        LEFT JOIN planograms_implementation_planogram p
          ON p.id = COALESCE(r.planogram_id, ps.planogram_id)
        LEFT JOIN LATERAL (
            -- The scan's day, else (with the fallback) the latest day before it, else the
            -- latest at all: two index look-ups, however many days a planogram has.
            SELECT x.* FROM (
                (SELECT spc.date, spc.pre_compliance, spc.post_compliance, spc.pre_osa,
                        spc.post_osa, 0 AS pick
                 FROM planograms_compliance_storeplanogramcompliance spc
                 WHERE spc.store_planogram_id = r.store_planogram_id
                   AND spc.date <= COALESCE(r.scan_created_date, s.created_at)::date
                 ORDER BY spc.date DESC LIMIT 1)
                UNION ALL
                (SELECT spc.date, spc.pre_compliance, spc.post_compliance, spc.pre_osa,
                        spc.post_osa, 1 AS pick
                 FROM planograms_compliance_storeplanogramcompliance spc
                 WHERE spc.store_planogram_id = r.store_planogram_id
                 ORDER BY spc.date DESC LIMIT 1)
            ) x
            WHERE x.date = COALESCE(r.scan_created_date, s.created_at)::date
               OR %(fallback)s::boolean
            ORDER BY x.pick
            LIMIT 1
        ) c ON true
        LEFT JOIN LATERAL (
            SELECT m.id, m.store_planogram_id, m.scan_created_date, m.data
            FROM planograms_compliance_majorityv2log m
            WHERE m.store_planogram_id = r.store_planogram_id
            ORDER BY m.scan_created_date DESC NULLS LAST, m.id DESC
            LIMIT 1
        ) mv ON true
        WHERE s.id = ANY(%(ids)s)
        ORDER BY s.id, r.id
    """,
    # Scan IDs by store, creation day range and status; oldest first.
    "select_scans": """
        SELECT s.id
        FROM realograms_implementation_scan s
        WHERE (%(store_id)s::bigint IS NULL OR s.store_id = %(store_id)s::bigint)
          AND (%(from_ts)s::timestamptz IS NULL OR s.created_at >= %(from_ts)s::timestamptz)
          AND (%(before_ts)s::timestamptz IS NULL OR s.created_at < %(before_ts)s::timestamptz)
          AND (%(status)s::text IS NULL OR s.status = %(status)s::text)
        ORDER BY s.created_at, s.id
        LIMIT %(limit)s::bigint
    """,
    # The scan created with any of the upload IDs %(ids)s (lowest ID if several).
    "find_scan_by_files": """
        SELECT f.scan_id AS id
        FROM realograms_implementation_scanfile f
        WHERE f.file_id = ANY(%(ids)s)
        ORDER BY f.scan_id
        LIMIT 1
    """,
    # The scan whose create payload carried %(field)s = %(value)s (lowest ID if several).
    "find_scan_by_marker": """
        SELECT s.id
        FROM realograms_implementation_scan s
        WHERE s.provided_values -> '_raw_data' ->> %(field)s::text = %(value)s::text
        ORDER BY s.id
        LIMIT 1
    """,
    # Every scan whose create payload carried %(field)s = one of %(ids)s (markers):
    # the post-run duplicate check of a copy counts them per marker.
    "scans_by_markers": """
        SELECT s.provided_values -> '_raw_data' ->> %(field)s::text AS marker, s.id
        FROM realograms_implementation_scan s
        WHERE s.provided_values -> '_raw_data' ->> %(field)s::text = ANY(%(ids)s::text[])
        ORDER BY s.id
    """,
}


class PlatformDb:
    """Read-only access to one platform database; thread-safe. Methods retry under
    ``policy`` and raise ``TransientError`` (``OperationalError``: connection lost,
    server down, pool timeout) or ``FatalError`` (any other database error: the SQL
    or the schema does not fit)."""

    def __init__(self, name: str, conninfo: Callable[[], str], policy: RetryPolicy, *,
                 sql: Mapping[str, str] | None = None, max_size: int = 4,
                 timeout: float = 30.0, chunk_size: int = CHUNK_SIZE,
                 secrets: Callable[[], Sequence[str | None]] = tuple,
                 compliance_fallback: bool = False) -> None:
        unknown = set(sql or {}) - set(DEFAULT_SQL)
        if unknown:
            raise FatalError(f"instance {name}: unknown sql names {sorted(unknown)}; "
                             f"known: {', '.join(DEFAULT_SQL)}")
        self.name = name
        self.sql = {**DEFAULT_SQL, **(sql or {})}
        self.chunk_size = chunk_size
        self.compliance_fallback = compliance_fallback
        self._conninfo = conninfo
        self._policy = policy
        self._max_size = max(1, max_size)
        self._timeout = timeout
        self._secrets = secrets
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._closed = False

    # --- queries ---------------------------------------------------------------------

    def select_scan_ids(self, selection: Selection) -> list[int]:
        """IDs matching ``selection``, oldest first (see the module doc for dates)."""
        params = {
            "store_id": selection.store_id,
            "status": selection.status,
            "limit": selection.limit,
            "captured_from": selection.captured_from,
            "captured_to": selection.captured_to,
            "from_ts": _day_start(selection.captured_from),
            "before_ts": _day_start(selection.captured_to, days_after=1),
        }
        return [int(row["id"]) for row in self.query("select_scans", params)]

    def get_scans(self, scan_ids: Sequence[int]) -> list[Scan]:
        """The existing scans among ``scan_ids`` in the order asked (each once), with
        their files and their compliance reports (none before processing)."""
        ids = list(dict.fromkeys(int(i) for i in scan_ids))
        rows = {int(r["id"]): r for r in self.query_ids("scans", ids)}
        found = [i for i in ids if i in rows]
        files: dict[int, list[FileRef]] = {}
        for r in self.query_ids("scan_files", found):
            files.setdefault(int(r["scan_id"]), []).append(
                FileRef(file_id=int(r["file_id"]), file_type=r["file_type"] or "image"))
        reports: dict[int, list[ScanDetails]] = {}
        for r in self.query_ids("scan_details", found,
                                {"fallback": self.compliance_fallback}):
            reports.setdefault(int(r["scan_id"]), []).append(_details(r))
        return [_scan(rows[i], tuple(files.get(i, ())), tuple(reports.get(i, ())))
                for i in found]

    def find_scan_by_marker(self, field_name: str, value: str) -> int | None:
        """The lowest scan ID whose create payload had ``field_name == value``."""
        rows = self.query("find_scan_by_marker", {"field": field_name, "value": value})
        return int(rows[0]["id"]) if rows else None

    def find_scan_by_files(self, file_ids: Sequence[int]) -> int | None:
        """The lowest scan ID linked to any of the upload IDs ``file_ids``."""
        if not file_ids:
            return None
        rows = self.query("find_scan_by_files", {"ids": [int(i) for i in file_ids]})
        return int(rows[0]["id"]) if rows else None

    def scans_by_markers(self, field_name: str, values: Sequence[str]) -> dict[str, list[int]]:
        """The scans whose create payload had ``field_name`` = each of ``values`` (the
        values found only), IDs ascending."""
        found: dict[str, list[int]] = {}
        for start in range(0, len(values), self.chunk_size):
            chunk = list(values[start:start + self.chunk_size])
            for row in self.query("scans_by_markers", {"field": field_name, "ids": chunk}):
                found.setdefault(str(row["marker"]), []).append(int(row["id"]))
        return found

    def query_ids(self, name: str, ids: Sequence[int],
                  params: Mapping[str, Any] | None = None) -> list[Row]:
        """Run the named query once per chunk of ``ids`` (parameter ``ids``, beside
        ``params``)."""
        rows: list[Row] = []
        for start in range(0, len(ids), self.chunk_size):
            chunk = list(ids[start:start + self.chunk_size])
            rows += self.query(name, {**(params or {}), "ids": chunk})
        return rows

    def query(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        """All rows of the named query, retried as a whole on a transient failure."""
        def attempt() -> list[Row]:
            with self.read_only() as cur:
                cur.execute(self.sql[name], params)
                return cur.fetchall()
        return self._policy.call(attempt, f"database query {name} on {self.name}")

    # --- connections -----------------------------------------------------------------

    @contextmanager
    def read_only(self) -> Iterator[psycopg.Cursor[Row]]:
        """A cursor inside a READ ONLY transaction on a pooled connection; psycopg
        errors leave it classified (see the class doc)."""
        try:
            with self._get_pool().connection() as conn:
                conn.read_only = True  # idle at checkout: applies to the next BEGIN
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    yield cur
        except psycopg.OperationalError as exc:
            raise ClassifiedTransientError(
                f"database {self.name}: {redact(str(exc), self._secrets())}", "database"
            ) from exc
        except psycopg.Error as exc:
            raise FatalError(
                f"database {self.name}: {type(exc).__name__}: "
                f"{redact(str(exc), self._secrets())}") from exc

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise FatalError(f"instance {self.name}: closed")
            if self._pool is None:
                # open=False + open(wait=False): no connection before the first query,
                # and a database that is down shows as a pool timeout (transient).
                pool = ConnectionPool(self._conninfo(), min_size=1, max_size=self._max_size,
                                      open=False, timeout=self._timeout,
                                      name=f"scanrelay-{self.name}")
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def close(self) -> None:
        """Close the pool (if it was ever opened). Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _day_start(day: date | None, days_after: int = 0) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=days_after), time.min, tzinfo=UTC)


def _scan(row: Row, files: tuple[FileRef, ...], reports: tuple[ScanDetails, ...]) -> Scan:
    return Scan(
        id=int(row["id"]),
        store_id=int(row["store_id"]),
        status=str(row["status"] or ""),
        has_report=bool(row["has_report"]),
        captured_at=_captured(row.get("captured_at")),
        created_at=_text(row.get("created_at")),
        provided_values=_create_payload(row.get("provided_values")),
        files=files,
        reports=reports,
        store_name=_text(row.get("store_name")),
        category_name=_text(row.get("category_name")),
    )


def _create_payload(provided: Any) -> Mapping[str, Any]:
    """The create payload a scan was made with, which the ``Instance`` contract calls
    its provided values: ``provided_values->'_raw_data'`` where the platform keeps it
    (SPEC §8), else the column itself (a scan made some other way)."""
    if isinstance(provided, Mapping) and isinstance(provided.get("_raw_data"), Mapping):
        return dict(provided["_raw_data"])
    return dict(provided) if isinstance(provided, Mapping) else {}


def _details(row: Row) -> ScanDetails:
    return ScanDetails(
        report_id=_int(row.get("report_id")),
        store_planogram_id=_int(row.get("store_planogram_id")),
        planogram_id=_int(row.get("planogram_id")),
        planogram_name=row.get("planogram_name"),
        section_id=_int(row.get("section_id")),
        section_name=row.get("section_name"),
        is_additional_section=bool(row.get("is_additional_section")),
        pre_pog=_float(row.get("pre_pog")),
        post_pog=_float(row.get("post_pog")),
        pre_osa=_float(row.get("pre_osa")),
        post_osa=_float(row.get("post_osa")),
        ok_count=_int(row.get("ok_count")),
        wandering_count=_int(row.get("wandering_count")),
        oos_count=_int(row.get("oos_count")),
        hole_count=_int(row.get("hole_count")),
        compliance_date=_text(row.get("compliance_date")),
        compliance_fallback=bool(row.get("compliance_fallback")),
        majority_v2_id=_int(row.get("majority_v2_id")),
        majority_store_planogram_id=_int(row.get("majority_store_planogram_id")),
        majority_created_at=_text(row.get("majority_created_at")),
        map_by=_text(row.get("map_by")),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime | date) else str(value)


def _captured(value: Any) -> CapturedAt:
    """The capture time with its JSON type unchanged (ISO text or epoch seconds)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    return _text(value)  # anything else (a nested value) as text, as before


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # a malformed figure reads as unknown rather than failing the scan


def _int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    number = _float(value)  # counts may come from JSON as "12" or 12.0
    return None if number is None else round(number)
