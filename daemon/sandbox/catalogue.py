"""The master data of a reference platform: stores, categories, planograms, sections.

Names are awkward on purpose (spaces, slashes, dots, quotes, apostrophes, unicode),
since clients put them in file names and reports. The catalogue is the same on every
server (get-or-create by name), so two servers seeded alike share planogram and
section names, and in fresh databases even their IDs.

Each planogram's first section has an *additional* twin: a section with the same
name whose products include an ``action``/``merch_method`` like ``%additional%``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .db import ADDITIONAL_SQL, Conn

CATEGORY_NAMES: tuple[str, ...] = (
    "Beverages",
    "Café & Tea",
    "Hygiène / Beauté",
    "日用品 Household",
)

PLANOGRAMS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("Soft Drinks 1.5L / Cans", 0, ("Shelf 1/2", "Bay 3.A", 'Door "North"')),
    ('Café "Premium" Beans 250g', 1, ("Top Shelf", "Ende-Gondel Süd", "Bay 1.B / Promo")),
    ("Bière & Cidre — Été", 0, ("Chiller 2.0", "L'Aisle End", "Shelf 4/5")),
    ("Shampoo's & Conditioner v2.1", 2, ("Eye Level", "Bottom ./ Shelf", "Gondola 7")),
    ("日本茶 / Green Tea", 1, ("棚 1", 'Shelf 2.5 "Tea"', "End Cap")),
    ("Paper Towels 8-Pack. Value", 3, ("Pallet A/B", "Shelf 3", "Promo 'Winter'")),
)

STORE_NAMES: tuple[str, ...] = (
    "Store 001 – Zürich HB",
    "Store 002 / Lyon Part-Dieu",
    'Store 003 "Flagship"',
    "Store 004 O'Brien's",
    "Store 005 東京駅",
)

_NORMAL_PRODUCTS = (("keep", "shelf"), ("add", "peg"), ("remove", "shelf"))
_ADDITIONAL_PRODUCTS = (("keep", "additional_display"), ("additional", "shelf"), ("add", "peg"))


@dataclass(frozen=True)
class Section:
    id: int
    name: str
    additional: bool


@dataclass(frozen=True)
class Planogram:
    id: int
    name: str
    category_id: int | None
    category_name: str
    sections: tuple[Section, ...]


def _get_or_create(conn: Conn, select: str, insert: str, params: tuple[object, ...]) -> int:
    row = conn.execute(select, params).fetchone()
    if row is None:
        row = conn.execute(insert, params).fetchone()
    assert row is not None
    return int(row[0])


def store_name(index: int) -> str:
    base = STORE_NAMES[index % len(STORE_NAMES)]
    return base if index < len(STORE_NAMES) else f"{base} #{index // len(STORE_NAMES) + 1}"


def ensure_stores(conn: Conn, count: int) -> list[int]:
    """The first ``count`` stores of the catalogue, created when missing."""
    return [
        _get_or_create(
            conn,
            "SELECT id FROM master_data_implementation_store WHERE name = %s ORDER BY id LIMIT 1",
            "INSERT INTO master_data_implementation_store (name) VALUES (%s) RETURNING id",
            (store_name(i),),
        )
        for i in range(count)
    ]


def category_id(conn: Conn, name: str) -> int:
    return _get_or_create(
        conn,
        "SELECT id FROM master_data_implementation_category WHERE name = %s ORDER BY id LIMIT 1",
        "INSERT INTO master_data_implementation_category (name) VALUES (%s) RETURNING id",
        (name,),
    )


def planogram_id(conn: Conn, name: str, category: str) -> int:
    """The planogram named ``name``, created (in ``category``) when missing."""
    row = conn.execute(
        "SELECT id FROM planograms_implementation_planogram WHERE name = %s ORDER BY id LIMIT 1",
        (name,),
    ).fetchone()
    if row is not None:
        return int(row[0])
    row = conn.execute(
        "INSERT INTO planograms_implementation_planogram (name, category_id)"
        " VALUES (%s, %s) RETURNING id",
        (name, category_id(conn, category)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def section_id(conn: Conn, planogram: int, name: str, additional: bool) -> int:
    """The section of ``planogram`` with this name and additional-ness, made if missing."""
    rows = conn.execute(
        "SELECT s.id, EXISTS (SELECT 1 FROM planograms_implementation_planogramsectionproduct"
        f" sp WHERE sp.section_id = s.id AND {ADDITIONAL_SQL})"
        " FROM planograms_implementation_planogramsection s"
        " WHERE s.planogram_id = %s AND s.name = %s ORDER BY s.id",
        (planogram, name),
    ).fetchall()
    for sid, is_additional in rows:
        if bool(is_additional) == additional:
            return int(sid)
    row = conn.execute(
        "INSERT INTO planograms_implementation_planogramsection (planogram_id, name)"
        " VALUES (%s, %s) RETURNING id",
        (planogram, name),
    ).fetchone()
    assert row is not None
    new_id = int(row[0])
    products = _ADDITIONAL_PRODUCTS if additional else _NORMAL_PRODUCTS
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO planograms_implementation_planogramsectionproduct"
            " (section_id, product_ean, action, merch_method) VALUES (%s, %s, %s, %s)",
            [(new_id, f"40{new_id:06d}{i:04d}", a, m) for i, (a, m) in enumerate(products)],
        )
    return new_id


def store_planogram_id(conn: Conn, planogram: int, store: int) -> int:
    row = conn.execute(
        "INSERT INTO planograms_implementation_planogramstore (planogram_id, store_id)"
        " VALUES (%s, %s) ON CONFLICT (planogram_id, store_id) DO UPDATE"
        " SET store_id = EXCLUDED.store_id RETURNING id",
        (planogram, store),
    ).fetchone()
    assert row is not None
    return int(row[0])


def ensure_catalogue(conn: Conn, store_ids: list[int]) -> None:
    """Categories, planograms (in every given store), sections and products."""
    for name in CATEGORY_NAMES:
        category_id(conn, name)
    for name, category_index, section_names in PLANOGRAMS:
        pid = planogram_id(conn, name, CATEGORY_NAMES[category_index])
        for section_name in section_names:
            section_id(conn, pid, section_name, additional=False)
        section_id(conn, pid, section_names[0], additional=True)
        for store in store_ids:
            store_planogram_id(conn, pid, store)


def load_catalogue(conn: Conn) -> list[Planogram]:
    """Every planogram with its sections, by ID."""
    rows = conn.execute(
        "SELECT p.id, p.name, p.category_id, coalesce(c.name, ''), s.id, s.name,"
        " EXISTS (SELECT 1 FROM planograms_implementation_planogramsectionproduct sp"
        f" WHERE sp.section_id = s.id AND {ADDITIONAL_SQL})"
        " FROM planograms_implementation_planogram p"
        " LEFT JOIN master_data_implementation_category c ON c.id = p.category_id"
        " LEFT JOIN planograms_implementation_planogramsection s ON s.planogram_id = p.id"
        " ORDER BY p.id, s.id"
    ).fetchall()
    planograms: dict[int, Planogram] = {}
    for pid, name, cat_id, cat_name, sid, sname, additional in rows:
        current = planograms.get(pid) or Planogram(pid, name, cat_id, cat_name, ())
        if sid is not None:
            current = Planogram(
                pid,
                name,
                cat_id,
                cat_name,
                current.sections + (Section(sid, sname, bool(additional)),),
            )
        planograms[pid] = current
    return list(planograms.values())
