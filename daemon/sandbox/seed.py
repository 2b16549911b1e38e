"""Seeding: the catalogue, then processed scans with files and reports.

Everything is derived from the seed, so the same call on a fresh database gives the
same rows, names, figures and file bytes. Scans are captured at 12:00 UTC on
consecutive days (the newest yesterday by default), so no two seeded scans share a
``(store_planogram_id, date)`` compliance row and dates are the same in any timezone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from . import catalogue, db
from .blobs import BlobStore, encode_header
from .catalogue import Planogram, Section
from .db import Conn
from .model import ReportValues, ScanTruth, SeededFile

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


def _seed_files(
    conn: Conn, blobs: BlobStore, spec: SeedSpec, rng: random.Random, truth: ScanTruth
) -> list[SeededFile]:
    """The files of one scan; each starts with the scan's truth header."""
    header = encode_header(truth)
    files: list[SeededFile] = []
    for k in range(spec.files_per_scan):
        gen_key = f"{spec.seed}:{truth.source_scan_id}:{k}"
        size = max(_file_size(rng, spec), len(header))
        name = f"scan{truth.source_scan_id}_{k}.{'jpeg' if k % 3 == 2 else 'jpg'}"
        if size > spec.lazy_above:
            fid = db.insert_file(
                conn,
                original_filename=name,
                storage="generated",
                size=size,
                gen_key=gen_key,
                header=header,
            )
            files.append(SeededFile(fid, truth.source_scan_id, name, size, "generated"))
            continue
        rel, sha = blobs.write_generated(gen_key, header, size)
        fid = db.insert_file(
            conn,
            original_filename=name,
            storage="disk",
            size=size,
            path=rel,
            gen_key=gen_key,
            header=header,
            sha256=sha,
        )
        files.append(SeededFile(fid, truth.source_scan_id, name, size, "disk"))
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
    conn: Conn,
    blobs: BlobStore,
    spec: SeedSpec,
    index: int,
    store: int,
    planograms: list[Planogram],
    captured: datetime,
) -> tuple[int, ScanTruth, list[SeededFile]]:
    """One processed scan with files, report and compliance figures."""
    scan_id = db.insert_scan(
        conn, store_id=store, provided_values={}, created_at=captured + timedelta(minutes=7)
    )
    rng = random.Random(f"{spec.seed}:scan:{scan_id}:{index}")
    planogram = rng.choice(planograms)
    section = _pick_section(rng, planogram, spec.additional_share)
    values = replace(random_values(rng, planogram, section), section_id=section.id)
    extra = _extra_sections(rng, planogram, section, values,
                            spec.sections[index % len(spec.sections)] - 1)
    truth = ScanTruth(scan_id, store, values, tuple(v for _, v in extra))
    files = _seed_files(conn, blobs, spec, rng, truth)
    db.insert_scanfiles(conn, scan_id, [f.file_id for f in files])
    spid = catalogue.store_planogram_id(conn, planogram.id, store)
    raw = _raw_data(scan_id, store, files, captured, section, planogram, spid, values)
    db.set_provided_values(conn, scan_id, {"_raw_data": raw})
    reports = [db.Report(planogram.id, spid, s.id, v) for s, v in [(section, values), *extra]]
    db.write_reports(conn, scan_id=scan_id, reports=reports, scan_date=captured)
    return scan_id, truth, files


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
    """Seed the catalogue and ``spec.scans`` scans; return (store IDs, scan IDs,
    truths by scan, files by scan)."""
    store_ids = catalogue.ensure_stores(conn, max(spec.stores, 1))
    catalogue.ensure_catalogue(conn, store_ids)
    planograms = [p for p in catalogue.load_catalogue(conn) if p.sections]
    end = spec.captured_end or default_captured_end()
    scan_ids: list[int] = []
    truths: dict[int, ScanTruth] = {}
    files: dict[int, list[SeededFile]] = {}
    for i in range(spec.scans):
        store = spec.store_id if spec.store_id is not None else store_ids[i % len(store_ids)]
        captured = end - spec.captured_step * (spec.scans - 1 - i)
        scan_id, truth, scan_files = seed_scan(conn, blobs, spec, i, store, planograms, captured)
        scan_ids.append(scan_id)
        truths[scan_id] = truth
        files[scan_id] = scan_files
    return store_ids, scan_ids, truths, files
