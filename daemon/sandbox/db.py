"""The reference server's database access: schema, users and tokens, files, scans,
reports. Functions take an open connection; the caller owns the transaction."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .blobs import FileRecord
from .model import ReportValues

Conn = psycopg.Connection[Any]
SCHEMA_PATH = Path(__file__).with_name("schema.sql")
# A section is additional when one of its products (alias sp) says so (SPEC §8).
ADDITIONAL_SQL = "(sp.action LIKE '%%additional%%' OR sp.merch_method LIKE '%%additional%%')"


def apply_schema(conn: Conn) -> None:
    """Create the tables (idempotent) and make the database's sessions speak UTC."""
    conn.execute(SCHEMA_PATH.read_text())
    name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None
    conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'UTC'").format(sql.Identifier(name[0])))


# users and tokens ------------------------------------------------------------------


def ensure_user(conn: Conn, username: str, password: str) -> int:
    row = conn.execute(
        "INSERT INTO refserver_user (username, password) VALUES (%s, %s) "
        "ON CONFLICT (username) DO UPDATE SET password = EXCLUDED.password RETURNING id",
        (username, password),
    ).fetchone()
    assert row is not None
    return int(row[0])


def login(conn: Conn, username: str, password: str) -> tuple[int, str] | None:
    """A new token for valid credentials, else None."""
    row = conn.execute(
        "SELECT id FROM refserver_user WHERE username = %s AND password = %s",
        (username, password),
    ).fetchone()
    if row is None:
        return None
    token = secrets.token_hex(20)
    conn.execute("INSERT INTO refserver_token (key, user_id) VALUES (%s, %s)", (token, row[0]))
    return int(row[0]), token


def token_valid(conn: Conn, token: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM refserver_token WHERE key = %s AND NOT expired", (token,)
    ).fetchone()
    return row is not None


def expire_tokens(conn: Conn, token: str | None = None) -> int:
    """Expire one token, or all when ``token`` is None; return how many."""
    if token is None:
        cur = conn.execute("UPDATE refserver_token SET expired = true WHERE NOT expired")
    else:
        cur = conn.execute(
            "UPDATE refserver_token SET expired = true WHERE key = %s AND NOT expired", (token,)
        )
    return cur.rowcount


# files -----------------------------------------------------------------------------


def insert_file(
    conn: Conn,
    *,
    original_filename: str,
    storage: str,
    size: int,
    path: str | None = None,
    gen_key: str | None = None,
    header: bytes = b"",
    sha256: str | None = None,
    input_type: str = "image",
) -> int:
    row = conn.execute(
        "INSERT INTO refserver_file (original_filename, input_type, storage, path, gen_key,"
        " header, size, sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (original_filename, input_type, storage, path, gen_key, header, size, sha256),
    ).fetchone()
    assert row is not None
    return int(row[0])


def get_file(conn: Conn, file_id: int) -> FileRecord | None:
    row = conn.execute(
        "SELECT id, original_filename, storage, path, gen_key, header, size, sha256"
        " FROM refserver_file WHERE id = %s",
        (file_id,),
    ).fetchone()
    if row is None:
        return None
    return FileRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5] or b""), row[6], row[7])


def existing_files(conn: Conn, file_ids: Iterable[int]) -> set[int]:
    rows = conn.execute(
        "SELECT id FROM refserver_file WHERE id = ANY(%s)", (list(file_ids),)
    ).fetchall()
    return {int(r[0]) for r in rows}


def store_exists(conn: Conn, store_id: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM master_data_implementation_store WHERE id = %s", (store_id,)
    ).fetchone()
    return row is not None


# scans and reports -----------------------------------------------------------------


def insert_scan(
    conn: Conn,
    *,
    store_id: int,
    provided_values: dict[str, Any],
    category_id: int | None = None,
    created_at: datetime | None = None,
) -> int:
    """A new scan in status 'processing' without report."""
    row = conn.execute(
        "INSERT INTO realograms_implementation_scan (store_id, provided_values,"
        " selected_category_id, created_at, updated_at, status, has_report)"
        " VALUES (%s, %s, %s, coalesce(%s, now()), coalesce(%s, now()), 'processing', false)"
        " RETURNING id",
        (store_id, Jsonb(provided_values), category_id, created_at, created_at),
    ).fetchone()
    assert row is not None
    return int(row[0])


def set_provided_values(conn: Conn, scan_id: int, provided_values: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE realograms_implementation_scan SET provided_values = %s WHERE id = %s",
        (Jsonb(provided_values), scan_id),
    )


def insert_scanfiles(conn: Conn, scan_id: int, file_ids: Iterable[int]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO realograms_implementation_scanfile (scan_id, file_id, file_type)"
            " VALUES (%s, %s, 'image')",
            [(scan_id, fid) for fid in file_ids],
        )


@dataclass(frozen=True)
class Report:
    """One compliance report to write (a section of a realogram)."""

    planogram_id: int | None
    store_planogram_id: int | None
    section_id: int | None
    values: ReportValues


def write_report(
    conn: Conn,
    *,
    scan_id: int,
    planogram_id: int | None,
    store_planogram_id: int | None,
    section_id: int | None,
    values: ReportValues,
    scan_date: datetime,
) -> int:
    """One report: see ``write_reports``."""
    report = Report(planogram_id, store_planogram_id, section_id, values)
    return write_reports(conn, scan_id=scan_id, reports=[report], scan_date=scan_date)


def write_reports(conn: Conn, *, scan_id: int, reports: Sequence[Report],
                  scan_date: datetime) -> int:
    """A realogram with one bay and one compliance report per report given, the store
    planograms' compliance of the day, and the scan done with a report. Returns the
    realogram ID. Reports of one store planogram must carry the same figures."""
    row = conn.execute(
        "INSERT INTO realograms_implementation_realogram DEFAULT VALUES RETURNING id"
    ).fetchone()
    assert row is not None
    realogram_id = int(row[0])
    for report in reports:
        values = report.values
        conn.execute("INSERT INTO realograms_implementation_realogrambay (realogram_id)"
                     " VALUES (%s)", (realogram_id,))
        conn.execute(
            "INSERT INTO planograms_compliance_planogramcompliancereport (realogram_id,"
            " section_id, section_name, store_planogram_id, planogram_id, aisle_name,"
            " compliance_rate, compliance_rates, scan_created_date)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (realogram_id, report.section_id, values.section_name,
             report.store_planogram_id, report.planogram_id, values.aisle_name,
             values.post_compliance, Jsonb(values.compliance_rates()), scan_date),
        )
        if report.store_planogram_id is not None:
            _upsert_store_compliance(conn, report.store_planogram_id, scan_date, values)
    first_planogram = reports[0].planogram_id if reports else None
    conn.execute(
        "UPDATE realograms_implementation_scan SET status = 'done', has_report = true,"
        " active_realogram_id = %s, updated_at = now(), selected_category_id ="
        " coalesce((SELECT category_id FROM planograms_implementation_planogram"
        " WHERE id = %s), selected_category_id) WHERE id = %s",
        (realogram_id, first_planogram, scan_id),
    )
    return realogram_id


MAJORITY_WINDOW = 1000  # scans a majority-v2 log row lists at most: the latest ones


def log_majority(conn: Conn, store_planogram_id: int, scan_id: int,
                 map_by: str | None) -> None:
    """A new newest majority-v2 log row of the store planogram: the newest row's data,
    plus ``scan_id`` when ``map_by`` is given, of the latest ``MAJORITY_WINDOW`` scans
    (a row of every scan ever would make each processing slower than the last: 100,000
    copies into one store took quadratic time)."""
    row = conn.execute(
        "SELECT data FROM planograms_compliance_majorityv2log WHERE store_planogram_id = %s"
        " ORDER BY scan_created_date DESC, id DESC LIMIT 1", (store_planogram_id,)
    ).fetchone()
    data = dict(row[0]) if row else {}
    if map_by is not None:
        data[str(scan_id)] = {"map_by": map_by}
    if len(data) > MAJORITY_WINDOW:
        latest = sorted(data, key=int)[-MAJORITY_WINDOW:]  # scan IDs grow with time
        data = {key: data[key] for key in latest}
    conn.execute(
        "INSERT INTO planograms_compliance_majorityv2log (store_planogram_id,"
        " scan_created_date, data) VALUES (%s, clock_timestamp(), %s)",
        (store_planogram_id, Jsonb(data)),
    )


def next_ids(conn: Conn, table: str, count: int) -> list[int]:
    """``count`` new IDs from ``table``'s serial, in order (for rows written with COPY)."""
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
        (table, count),
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def copy_rows(conn: Conn, table: str, columns: Iterable[str],
              rows: Iterable[tuple[object, ...]]) -> None:
    """Bulk-insert ``rows`` into ``table`` with COPY."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def upsert_store_compliance(conn: Conn, rows: list[tuple[object, ...]]) -> None:
    """Store-planogram compliance rows (``store_planogram_id, date, pre_osa, post_osa,
    pre_compliance, post_compliance``), each replacing the row of its day."""
    with conn.cursor() as cur:
        cur.executemany(STORE_COMPLIANCE_UPSERT, rows)


STORE_COMPLIANCE_UPSERT = (
    "INSERT INTO planograms_compliance_storeplanogramcompliance (store_planogram_id,"
    " date, pre_osa, post_osa, pre_compliance, post_compliance)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (store_planogram_id, date) DO UPDATE"
    " SET pre_osa = EXCLUDED.pre_osa, post_osa = EXCLUDED.post_osa,"
    " pre_compliance = EXCLUDED.pre_compliance, post_compliance = EXCLUDED.post_compliance"
)


def _upsert_store_compliance(
    conn: Conn, store_planogram_id: int, scan_date: datetime, values: ReportValues
) -> None:
    conn.execute(
        STORE_COMPLIANCE_UPSERT,
        (
            store_planogram_id,
            scan_date.date(),
            values.pre_osa,
            values.post_osa,
            values.pre_compliance,
            values.post_compliance,
        ),
    )


def mark_done_without_section(conn: Conn, scan_id: int) -> None:
    """Processed (done, has_report) onto a realogram with no compliance report: the
    recognition found none of the scan's sections."""
    row = conn.execute(
        "INSERT INTO realograms_implementation_realogram DEFAULT VALUES RETURNING id"
    ).fetchone()
    assert row is not None
    conn.execute(
        "UPDATE realograms_implementation_scan SET status = 'done', has_report = true,"
        " active_realogram_id = %s, updated_at = now() WHERE id = %s",
        (row[0], scan_id),
    )


def mark_done_without_report(conn: Conn, scan_id: int) -> None:
    conn.execute(
        "UPDATE realograms_implementation_scan SET status = 'done', has_report = false,"
        " updated_at = now() WHERE id = %s",
        (scan_id,),
    )


def scan_row(conn: Conn, scan_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM realograms_implementation_scan WHERE id = %s", (scan_id,)
        ).fetchone()


DETAILS_SQL = f"""
SELECT s.id AS scan_id, s.status, s.has_report, r.id AS report_id,
       r.store_planogram_id, p.name AS planogram_name, r.section_id, r.section_name,
       EXISTS (SELECT 1 FROM planograms_implementation_planogramsectionproduct sp
               WHERE sp.section_id = r.section_id AND {ADDITIONAL_SQL}) AS is_additional_section,
       c.pre_compliance AS pre_pog, c.post_compliance AS post_pog,
       c.pre_osa, c.post_osa,
       (r.compliance_rates->>'correct')::int AS ok_count,
       (r.compliance_rates->>'wandering')::int AS wandering_count,
       (r.compliance_rates->>'missing')::int AS oos_count,
       (r.compliance_rates->>'empty')::int AS hole_count
FROM realograms_implementation_scan s
JOIN planograms_compliance_planogramcompliancereport r ON r.realogram_id = s.active_realogram_id
LEFT JOIN planograms_implementation_planogram p ON p.id = r.planogram_id
LEFT JOIN planograms_compliance_storeplanogramcompliance c
       ON c.store_planogram_id = r.store_planogram_id AND c.date = r.scan_created_date::date
WHERE s.id = %s AND s.status = 'done' AND s.has_report
"""


def scan_details(conn: Conn, scan_id: int) -> dict[str, Any] | None:
    """The §7 figures of a processed scan's first report, read straight from the tables
    (the server's own reading, independent of any client); None when it has no report."""
    reports = scan_reports(conn, scan_id)
    if not reports:
        return None
    return {k: v for k, v in reports[0].items() if k != "report_id"}  # as it always was


def scan_reports(conn: Conn, scan_id: int) -> list[dict[str, Any]]:
    """``scan_details`` of every report of the scan, by report ID, with ``report_id``."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(DETAILS_SQL + " ORDER BY r.id", (scan_id,)).fetchall()
