"""Seeding: the catalogue, then processed scans with files and reports.

Everything is derived from the seed, so the same call on a fresh database gives the
same rows, names, figures and file bytes. Scans are captured at 12:00 UTC on
consecutive days (the newest yesterday by default), so no two seeded scans share a
``(store_planogram_id, date)`` compliance row and dates are the same in any timezone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from psycopg.types.json import Jsonb

from . import catalogue, db
from .blobs import BlobStore, encode_header
from .catalogue import Planogram, Section
from .db import Conn
from .model import ReportValues, ScanTruth, SeededFile

CHUNK = 2000  # scans per COPY round
AISLES = ("Aisle 1", "Aisle 2/3", "Gang 4.B", "Allée «Centrale»")


@dataclass(frozen=True)
class SeedSpec:
    """The arguments of ``RefServer.seed``."""

    scans: int = 10
    files_per_scan: int = 2
    file_size: int | tuple[int, int] = 64 * 1024
    seed: int = 0
    stores: int = 3
    store_id: int | None = None  # put every scan in this store (default: round robin)
    lazy_above: int = 8 << 20  # files bigger than this are generated on the fly
    captured_end: datetime | None = None
    captured_step: timedelta = timedelta(days=1)
    additional_share: float = 0.15  # share of scans on an additional section
    # Sections (compliance reports) per scan, cycled over the scans: (1, 2, 3) gives the
    # 1st scan one, the 2nd two, the 3rd three, the 4th one ...
    sections: tuple[int, ...] = (1,)


def default_captured_end() -> datetime:
    """Yesterday, 12:00 UTC."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


def random_values(rng: random.Random, planogram: Planogram, section: Section) -> ReportValues:
    """Plausible report figures (percentages 0..100, two decimals)."""
    pre = round(rng.uniform(40.0, 92.0), 2)
    pre_osa = round(rng.uniform(70.0, 97.0), 2)
    return ReportValues(
        planogram_name=planogram.name,
        category_name=planogram.category_name,
        section_name=section.name,
        is_additional=section.additional,
        aisle_name=rng.choice(AISLES),
        pre_compliance=pre,
        post_compliance=round(min(100.0, pre + rng.uniform(0.0, 8.0)), 2),
        pre_osa=pre_osa,
        post_osa=round(min(100.0, pre_osa + rng.uniform(0.0, 3.0)), 2),
        correct=rng.randint(20, 240),
        wandering=rng.randint(0, 25),
        missing=rng.randint(0, 30),
        empty=rng.randint(0, 12),
    )


def _pick_section(rng: random.Random, planogram: Planogram, additional_share: float) -> Section:
    extra = [s for s in planogram.sections if s.additional]
    normal = [s for s in planogram.sections if not s.additional]
    if extra and rng.random() < additional_share:
        return rng.choice(extra)
    return rng.choice(normal)


def _file_size(rng: random.Random, spec: SeedSpec) -> int:
    if isinstance(spec.file_size, tuple):
        return rng.randint(*spec.file_size)
    return spec.file_size


@dataclass
class _Rows:
    """The rows of a chunk of scans, written with COPY (one round trip per table)."""

    files: list[tuple[object, ...]] = field(default_factory=list)
    realograms: list[tuple[object, ...]] = field(default_factory=list)
    bays: list[tuple[object, ...]] = field(default_factory=list)
    scans: list[tuple[object, ...]] = field(default_factory=list)
    scanfiles: list[tuple[object, ...]] = field(default_factory=list)
    reports: list[tuple[object, ...]] = field(default_factory=list)
    compliance: dict[tuple[int, date], tuple[object, ...]] = field(default_factory=dict)


def _seed_files(
    blobs: BlobStore, spec: SeedSpec, rng: random.Random, truth: ScanTruth,
    file_ids: list[int], rows: _Rows,
) -> list[SeededFile]:
    """The files of one scan; each starts with the scan's truth header."""
    header = encode_header(truth)
    files: list[SeededFile] = []
    for k, fid in enumerate(file_ids):
        gen_key = f"{spec.seed}:{truth.source_scan_id}:{k}"
        size = max(_file_size(rng, spec), len(header))
        name = f"scan{truth.source_scan_id}_{k}.{'jpeg' if k % 3 == 2 else 'jpg'}"
        storage, rel, sha = "generated", None, None
        if size <= spec.lazy_above:
            storage = "disk"
            rel, sha = blobs.write_generated(gen_key, header, size)
        rows.files.append((fid, name, "image", storage, rel, gen_key, header, size, sha))
        files.append(SeededFile(fid, truth.source_scan_id, name, size, storage))
    return files


def _raw_data(
    scan_id: int,
    store: int,
    files: list[SeededFile],
    captured: datetime,
    section: Section,
    planogram: Planogram,
    spid: int,
    values: ReportValues,
) -> dict[str, object]:
    """The create payload the scan was made with, as the platform keeps it."""
    return {
        "store": store,
        "files": [f.file_id for f in files],
        "captured_at": captured.isoformat(),
        "category_id": planogram.category_id,
        "section_id": section.id,
        "store_planogram": spid,
        "aisle": values.aisle_name,
        "task_id": 90000 + scan_id,
        "replace_id": None,
        "device": "refscan-phone-7",
        "app_version": "4.12.0",
        "note": f"seeded scan {scan_id}: «{planogram.name}»",
    }


def seed_scan(
    blobs: BlobStore,
    spec: SeedSpec,
    ids: tuple[int, int, list[int]],
    index: int,
    store: int,
    planograms: list[Planogram],
    spids: dict[tuple[int, int], int],
    captured: datetime,
    rows: _Rows,
) -> tuple[ScanTruth, list[SeededFile]]:
    """The rows of one processed scan with files, report and compliance figures;
    ``ids``: its scan ID, realogram ID and file IDs."""
    scan_id, realogram_id, file_ids = ids
    rng = random.Random(f"{spec.seed}:scan:{scan_id}:{index}")
    planogram = rng.choice(planograms)
    section = _pick_section(rng, planogram, spec.additional_share)
    values = replace(random_values(rng, planogram, section), section_id=section.id)
    extra = _extra_sections(rng, planogram, section, values,
                            spec.sections[index % len(spec.sections)] - 1)
    truth = ScanTruth(scan_id, store, values, tuple(v for _, v in extra))
    files = _seed_files(blobs, spec, rng, truth, file_ids, rows)
    rows.scanfiles += [(scan_id, fid, "image") for fid in file_ids]
    spid = spids[(planogram.id, store)]
    raw = _raw_data(scan_id, store, files, captured, section, planogram, spid, values)
    rows.realograms.append((realogram_id,))
    rows.scans.append((scan_id, store, Jsonb({"_raw_data": raw}), planogram.category_id,
                       realogram_id, captured + timedelta(minutes=7), "done", True))
    for s, v in [(section, values), *extra]:  # a realogram bay and a report per section
        rows.bays.append((realogram_id,))
        rows.reports.append((realogram_id, s.id, v.section_name, spid, planogram.id,
                             v.aisle_name, v.post_compliance, Jsonb(v.compliance_rates()),
                             captured))
        # One row per (store planogram, day): the latest scan of the day wins.
        rows.compliance[(spid, captured.date())] = (
            spid, captured.date(), v.pre_osa, v.post_osa, v.pre_compliance,
            v.post_compliance)
    return truth, files



def _extra_sections(rng: random.Random, planogram: Planogram, first: Section,
                    values: ReportValues, count: int) -> list[tuple[Section, ReportValues]]:
    """``count`` more sections of the planogram (other names, not additional), with
    their own counts and the first's POG/OSA % (one row per store planogram and day)."""
    others = [s for s in planogram.sections if not s.additional and s.name != first.name]
    chosen = rng.sample(others, min(count, len(others)))
    return [(s, replace(values, section_name=s.name, is_additional=False, section_id=s.id,
                        correct=rng.randint(20, 240), wandering=rng.randint(0, 25),
                        missing=rng.randint(0, 30), empty=rng.randint(0, 12)))
            for s in chosen]


def seed(
    conn: Conn, blobs: BlobStore, spec: SeedSpec
) -> tuple[list[int], list[int], dict[int, ScanTruth], dict[int, list[SeededFile]]]:
    """Seed the catalogue and ``spec.scans`` scans, ``CHUNK`` at a time with COPY, so
    100,000 scans take minutes, not hours (files written to disk cost the most: with
    ``lazy_above=0`` every file is generated on the fly); return (store IDs, scan IDs,
    truths by scan, files by scan)."""
    store_ids = catalogue.ensure_stores(conn, max(spec.stores, 1))
    catalogue.ensure_catalogue(conn, store_ids)
    planograms = [p for p in catalogue.load_catalogue(conn) if p.sections]
    stores = [spec.store_id] if spec.store_id is not None else store_ids
    spids = {(p.id, store): catalogue.store_planogram_id(conn, p.id, store)
             for p in planograms for store in stores}
    end = spec.captured_end or default_captured_end()
    scan_ids: list[int] = []
    truths: dict[int, ScanTruth] = {}
    files: dict[int, list[SeededFile]] = {}
    for first in range(0, spec.scans, CHUNK):
        count = min(CHUNK, spec.scans - first)
        new_scans = db.next_ids(conn, "realograms_implementation_scan", count)
        realograms = db.next_ids(conn, "realograms_implementation_realogram", count)
        new_files = db.next_ids(conn, "refserver_file", count * spec.files_per_scan)
        rows = _Rows()
        for n, (scan_id, realogram_id) in enumerate(zip(new_scans, realograms, strict=True)):
            i = first + n
            store = stores[i % len(stores)]
            captured = end - spec.captured_step * (spec.scans - 1 - i)
            scan_files = new_files[n * spec.files_per_scan:(n + 1) * spec.files_per_scan]
            truths[scan_id], files[scan_id] = seed_scan(
                blobs, spec, (scan_id, realogram_id, scan_files), i, store, planograms, spids,
                captured, rows)
            scan_ids.append(scan_id)
        _write(conn, rows)
    if spec.scans:
        # Fresh statistics: planned on an empty table's, a query of ten scans of 100,000
        # seq-scans the reports (and pays a JIT) until autovacuum gets round to it.
        conn.execute("ANALYZE")
    return store_ids, scan_ids, truths, files


def _write(conn: Conn, rows: _Rows) -> None:
    db.copy_rows(conn, "refserver_file", ("id", "original_filename", "input_type", "storage",
                                          "path", "gen_key", "header", "size", "sha256"),
                 rows.files)
    db.copy_rows(conn, "realograms_implementation_realogram", ("id",), rows.realograms)
    db.copy_rows(conn, "realograms_implementation_realogrambay", ("realogram_id",), rows.bays)
    db.copy_rows(conn, "realograms_implementation_scan", (
        "id", "store_id", "provided_values", "selected_category_id", "active_realogram_id",
        "created_at", "status", "has_report"), rows.scans)
    db.copy_rows(conn, "realograms_implementation_scanfile", ("scan_id", "file_id",
                                                              "file_type"), rows.scanfiles)
    db.copy_rows(conn, "planograms_compliance_planogramcompliancereport", (
        "realogram_id", "section_id", "section_name", "store_planogram_id", "planogram_id",
        "aisle_name", "compliance_rate", "compliance_rates", "scan_created_date"),
        rows.reports)
    db.upsert_store_compliance(conn, list(rows.compliance.values()))
