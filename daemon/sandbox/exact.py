"""Scans written exactly as given (``RefServer.insert_scan``), for tests that need the
same scans on several kinds of instance: given IDs, names, figures and bytes.

Unlike ``seed``, nothing is derived or random: the caller names the store, the capture
time, the status, each file's name and bytes, the report figures (the fields of
``daemon.instances.base.ScanDetails``, as a mapping) and the provided values. The rows
go into the SPEC §8 tables so that a client's SQL reads the same details back:

* the store, a section or a store planogram named by ID is created with that ID when
  missing (the table's sequence is moved past it), and must agree when it exists;
* the planogram is found or created by name; the report names it by ID;
* a section is additional through one of its products (``action`` like
  ``%additional%``), as §8 defines it;
* POG and OSA figures live in ``storeplanogramcompliance`` per (store planogram,
  capture day), so they need a ``store_planogram_id``; a later scan of the same store
  planogram and day replaces them, as on the platform.

A combination the platform cannot hold (figures without a store planogram, a section
or store planogram without a planogram name) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from . import db
from .blobs import BlobStore, header_segment
from .db import Conn

DETAIL_FIELDS = frozenset({
    "store_planogram_id", "planogram_name", "section_id", "section_name",
    "is_additional_section", "pre_pog", "post_pog", "pre_osa", "post_osa",
    "ok_count", "wandering_count", "oos_count", "hole_count",
})
# ScanDetails fields the platform derives itself (IDs, the day of the figures, the
# majority-v2 log): accepted only empty (compliance_date: or the capture day), so
# asdict(ScanDetails(...)) can be passed.
DERIVED_FIELDS = frozenset({
    "report_id", "planogram_id", "compliance_date", "compliance_fallback", "majority_v2_id",
    "majority_store_planogram_id", "majority_created_at", "map_by",
})
FIGURES = ("pre_pog", "post_pog", "pre_osa", "post_osa")
# compliance_rates key -> details field (schema.sql: OK, wandering, OOS, hole)
RATE_FIELDS = {"correct": "ok_count", "wandering": "wandering_count",
               "missing": "oos_count", "empty": "hole_count"}


def insert_scan(
    conn: Conn,
    blobs: BlobStore,
    *,
    store_id: int,
    captured_at: datetime,
    status: str,
    files: Sequence[tuple[str, bytes]],
    details: Mapping[str, Any] | None,
    provided_values: Mapping[str, Any],
    created_at: datetime | None,
    reports: Sequence[Mapping[str, Any]] = (),
) -> tuple[int, list[int]]:
    """Write one scan (see the module doc); return (scan ID, file IDs in order).
    ``reports``: several compliance reports (sections), instead of one ``details``."""
    if details is not None and reports:
        raise ValueError("give details (one report) or reports, not both")
    captured = captured_at if captured_at.tzinfo else captured_at.replace(tzinfo=UTC)
    captured_day = captured.astimezone(UTC).date().isoformat()  # the figures' own day
    all_reports = list(reports) if reports else ([] if details is None else [details])
    for report in all_reports:
        unknown = set(report) - DETAIL_FIELDS - DERIVED_FIELDS
        if unknown:
            raise ValueError(f"unknown details fields: {sorted(unknown)}")
        derived = sorted(f for f in DERIVED_FIELDS if report.get(f) not in (None, False)
                         and not (f == "compliance_date" and report[f] == captured_day))
        if derived:
            raise ValueError(f"{derived}: the platform derives these; leave them empty")
    ensure_row(conn, "master_data_implementation_store", store_id, {"name": f"Store {store_id}"})
    file_ids = []
    for filename, data in files:
        rel, sha = blobs.write_bytes(data)
        file_ids.append(db.insert_file(conn, original_filename=filename, storage="disk",
                                       size=len(data), path=rel, header=header_segment(data),
                                       sha256=sha))
    raw = {"store": store_id, "files": file_ids, "captured_at": captured.isoformat(),
           **provided_values}
    scan_id = db.insert_scan(conn, store_id=store_id, provided_values={"_raw_data": raw},
                             created_at=created_at or captured)
    db.insert_scanfiles(conn, scan_id, file_ids)
    realogram_id = None
    if all_reports:
        realogram_id = _realogram(conn)
        day_figures: dict[int, tuple[Any, ...]] = {}
        for report in all_reports:
            _write_report(conn, store_id, captured, report, realogram_id, day_figures)
    conn.execute(
        "UPDATE realograms_implementation_scan SET status = %s, has_report = %s,"
        " active_realogram_id = %s WHERE id = %s",
        (status, bool(all_reports), realogram_id, scan_id),
    )
    return scan_id, file_ids


def ensure_row(conn: Conn, table: str, row_id: int, values: Mapping[str, Any]) -> bool:
    """Insert ``values`` as row ``row_id`` of ``table`` unless that ID exists, and move
    the table's ID sequence past it; True when inserted. An existing row must hold the
    same ``values`` (ValueError otherwise), except for a ``name`` column."""
    columns = [sql.Identifier("id"), *(sql.Identifier(c) for c in values)]
    inserted = conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING RETURNING id").format(
            sql.Identifier(table), sql.SQL(", ").join(columns),
            sql.SQL(", ").join(sql.Placeholder() * len(columns))),
        (row_id, *values.values()),
    ).fetchone() is not None
    conn.execute(
        sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'),"
                " (SELECT max(id) FROM {}))").format(sql.Identifier(table)),
        (table,),
    )
    checked = {k: v for k, v in values.items() if k != "name"}
    if not inserted and checked:
        row = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in checked), sql.Identifier(table)),
            (row_id,),
        ).fetchone()
        if row is None or tuple(row) != tuple(checked.values()):
            raise ValueError(f"{table} {row_id} exists with other values than {dict(checked)}"
                             " (or another row holds them)")
    return inserted


def _planogram(conn: Conn, name: str) -> int:
    row = conn.execute(
        "SELECT id FROM planograms_implementation_planogram WHERE name = %s ORDER BY id LIMIT 1",
        (name,),
    ).fetchone()
    if row is None:
        row = conn.execute(
            "INSERT INTO planograms_implementation_planogram (name) VALUES (%s) RETURNING id",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _section(conn: Conn, section_id: int, planogram_id: int, name: str,
             additional: bool) -> None:
    """Section ``section_id`` of the planogram, additional through its products."""
    if ensure_row(conn, "planograms_implementation_planogramsection", section_id,
                  {"planogram_id": planogram_id, "name": name}):
        action, merch = ("additional", "additional_display") if additional else ("keep", "shelf")
        conn.execute(
            "INSERT INTO planograms_implementation_planogramsectionproduct"
            " (section_id, product_ean, action, merch_method) VALUES (%s, %s, %s, %s)",
            (section_id, f"40{section_id:010d}", action, merch),
        )
        return
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM planograms_implementation_planogramsectionproduct sp"
        f" WHERE sp.section_id = %s AND {db.ADDITIONAL_SQL})",
        (section_id,),
    ).fetchone()
    if row is None or bool(row[0]) != additional:
        raise ValueError(f"section {section_id} exists with is_additional_section={not additional}")


def _realogram(conn: Conn) -> int:
    row = conn.execute(
        "INSERT INTO realograms_implementation_realogram DEFAULT VALUES RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _write_report(conn: Conn, store_id: int, captured: datetime, details: Mapping[str, Any],
                  realogram_id: int, day_figures: dict[int, tuple[Any, ...]]) -> None:
    """A bay, a compliance report and (with a store planogram) the day's figures, which
    two reports of one store planogram must agree on (``day_figures``: those so far)."""
    name = details.get("planogram_name")
    spid = details.get("store_planogram_id")
    section_id = details.get("section_id")
    if name is None and (spid is not None or section_id is not None):
        raise ValueError("a section or store planogram needs a planogram_name")
    if spid is None and any(details.get(f) is not None for f in FIGURES):
        raise ValueError(f"{', '.join(FIGURES)} need a store_planogram_id: the platform"
                         " keeps them per store planogram and day")
    planogram_id = None if name is None else _planogram(conn, name)
    if spid is not None:
        ensure_row(conn, "planograms_implementation_planogramstore", spid,
                   {"planogram_id": planogram_id, "store_id": store_id})
    if section_id is not None:
        assert planogram_id is not None
        _section(conn, section_id, planogram_id,
                 details.get("section_name") or f"Section {section_id}",
                 bool(details.get("is_additional_section")))
    figures = tuple(details.get(f) for f in FIGURES)
    if spid is not None and day_figures.setdefault(spid, figures) != figures:
        raise ValueError(f"store planogram {spid}: two reports with other {', '.join(FIGURES)};"
                         " the platform keeps them per store planogram and day")
    conn.execute("INSERT INTO realograms_implementation_realogrambay (realogram_id)"
                 " VALUES (%s)", (realogram_id,))
    rates = {key: details[f] for key, f in RATE_FIELDS.items() if details.get(f) is not None}
    if details.get("post_osa") is not None:
        rates["osa"] = details["post_osa"]
    conn.execute(
        "INSERT INTO planograms_compliance_planogramcompliancereport (realogram_id,"
        " section_id, section_name, store_planogram_id, planogram_id, compliance_rate,"
        " compliance_rates, scan_created_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (realogram_id, section_id, details.get("section_name"), spid, planogram_id,
         details.get("post_pog"), Jsonb(rates), captured),
    )
    if spid is not None:
        conn.execute(
            "INSERT INTO planograms_compliance_storeplanogramcompliance (store_planogram_id,"
            " date, pre_osa, post_osa, pre_compliance, post_compliance)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (store_planogram_id, date) DO UPDATE"
            " SET pre_osa = EXCLUDED.pre_osa, post_osa = EXCLUDED.post_osa,"
            " pre_compliance = EXCLUDED.pre_compliance,"
            " post_compliance = EXCLUDED.post_compliance",
            (spid, captured.astimezone(UTC).date(), details.get("pre_osa"),
             details.get("post_osa"), details.get("pre_pog"), details.get("post_pog")),
        )
