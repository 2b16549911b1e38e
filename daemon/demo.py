"""Demo data: two folder instances, ``demo-source`` full of sample scans and an empty
``demo-target``, so every action can be tried without a platform.

The sample scans have stable IDs (1001, 1002, …), real PNG images made here with
``zlib`` + ``struct`` (no imaging library), and details chosen to exercise the awkward
cases: section names with spaces, slashes, dots, quotes and non-ASCII letters, scans
without a section name or a store planogram ID (download name fallbacks), and the
newest scan without a report yet. Running it again adds only what is missing.
"""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
import zlib
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.instances.base import ScanDetails
from daemon.instances.folder import SCAN_JSON, FolderInstance

SOURCE = "demo-source"
TARGET = "demo-target"
FIRST_SCAN_ID = 1001
STORES = (101, 102, 205)
# (planogram name, section name); None exercises the download name fallbacks.
SECTIONS: tuple[tuple[str, str | None], ...] = (
    ("Beverages 2024.2", "Soft Drinks / Cola"),
    ("Hot Drinks", "Café & Tea"),
    ("Dry Grocery", "Aisle 3.B"),
    ("Snacks & Crisps", "O'Brien's snacks"),
    ("Frozen", 'Frozen "Deluxe" Pizza'),
    ("Bières & Cidres", "Bière / Cidre 0.5L"),
    ("Fresh Produce", "Obst & Gemüse"),
    ("Health/Beauty", None),
    ("Dairy", "Milk & Yoghurt"),
    ("Household", "Cleaning: Kitchen"),
    ("Pet Food", None),
    ("Confectionery", "Chocolate\u00a0Bars"),
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def create_demo(root: Path, *, scans: int = 12, seed: int = 7) -> list[Path]:
    """Create (or complete) ``<root>/demo-source`` and ``<root>/demo-target``; returns
    their roots. The same ``seed`` gives the same scans; existing ones are kept."""
    source = FolderInstance(SOURCE, root / SOURCE)
    target = FolderInstance(TARGET, root / TARGET)
    source.ensure_layout()
    target.ensure_layout()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    wanted = [FIRST_SCAN_ID + i for i in range(scans)]
    existing = {scan.id for scan in source.get_scans(wanted)}
    with tempfile.TemporaryDirectory(prefix="scanrelay-demo-") as tmp:
        for index, scan_id in enumerate(wanted):
            if scan_id not in existing:
                _add_scan(source, Path(tmp), index, scans, seed, now)
    return [source.root, target.root]


def _add_scan(source: FolderInstance, tmp: Path, index: int, count: int, seed: int,
              now: datetime) -> None:
    scan_id = FIRST_SCAN_ID + index
    rng = random.Random(f"{seed}:{scan_id}")  # per scan: the same whatever exists already
    half_made = source.root / "scans" / str(scan_id)
    if half_made.is_dir() and not (half_made / SCAN_JSON).exists():
        shutil.rmtree(half_made)  # left by an interrupted run: make it again
    file_ids = []
    for n in range(1, rng.randint(1, 3) + 1):
        image = tmp / f"{scan_id}_{n}.png"
        image.write_bytes(shelf_png(rng))
        file_ids.append(source.upload_file(image, f"IMG_{scan_id}_{n}.png"))
    # Spread over the last three days, oldest first, so IDs and capture order agree.
    captured = now - timedelta(hours=6 * (count - index), minutes=rng.randint(0, 300))
    payload: dict[str, Any] = {
        "store": STORES[index % len(STORES)],
        "files": file_ids,
        "captured_at": captured.isoformat(),
        "device": f"demo-phone-{rng.randint(1, 4)}",
        "note": "scanrelay demo",
    }
    if index != count - 1:  # the newest scan has no report yet
        payload["details"] = asdict(_details(rng, index))
    source.create_scan(payload, scan_id=scan_id)


def _details(rng: random.Random, index: int) -> ScanDetails:
    planogram, section = SECTIONS[index % len(SECTIONS)]
    pre_pog = round(rng.uniform(55, 95), 1)
    pre_osa = round(rng.uniform(70, 98), 1)
    return ScanDetails(
        store_planogram_id=None if index % 6 == 4 else 5000 + index * 7,
        planogram_name=planogram,
        section_id=300 + index,
        section_name=section,
        is_additional_section=index % 4 == 3,
        pre_pog=pre_pog,
        post_pog=min(100.0, round(pre_pog + rng.uniform(0, 8), 1)),
        pre_osa=pre_osa,
        post_osa=min(100.0, round(pre_osa + rng.uniform(0, 5), 1)),
        ok_count=rng.randint(20, 80),
        wandering_count=rng.randint(0, 6),
        oos_count=rng.randint(0, 8),
        hole_count=rng.randint(0, 5),
    )


def shelf_png(rng: random.Random, width: int = 64, height: int = 48) -> bytes:
    """A small RGB PNG that looks vaguely like a shelf: grey boards with coloured
    products between them, plus a little noise so no two images are the same."""
    boards = {y for y in range(height) if y % 16 in (0, 1)}
    colours = [(rng.randrange(256), rng.randrange(256), rng.randrange(256))
               for _ in range(width // 8 * (height // 16 + 1))]
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 (none) for each scanline
        for x in range(width):
            base = (150, 150, 150) if y in boards else colours[(y // 16) * (width // 8) + x // 8]
            row += bytes(min(255, c + rng.randrange(12)) for c in base)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
