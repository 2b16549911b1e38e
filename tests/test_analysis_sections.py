"""One row per section (SPEC §7), pure: within a pair, reports are matched by section ID,
else by section name, else the one left on each side; leftovers are rows of their own;
no section is dropped. Checked case by case, and on random scans against the plain
Python matching of the reference platform's ground truth (``sandbox.model``)."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
from workbook_checks import SPEC_COLOURS

from daemon.sandbox.model import ReportValues, expected_rows
from handlers.analysis.compare import compare, pairs_frame, scan_counts
from handlers.analysis.details import frame_from_rows

MISSING, WRONG, SECTION, ADDITIONAL, HIGHER, OK = SPEC_COLOURS  # comments in rule order
BASE = {"planogram_name": "Dairy", "is_additional_section": False, "pre_pog": 50.0,
        "post_pog": 55.0, "pre_osa": 90.0, "post_osa": 91.0, "store_planogram_id": 7,
        "ok_count": 100, "wandering_count": 3, "oos_count": 4, "hole_count": 1}


def scan(scan_id: int, *sections: tuple[int | None, str | None, dict[str, Any]]
         ) -> list[dict[str, Any]]:
    """Detail rows of a scan: one per (section ID, section name, other values)."""
    head = {"scan_id": scan_id, "status": "done", "has_report": bool(sections),
            "reported": bool(sections)}
    if not sections:
        return [head]
    return [{**head, **BASE, "section_id": sid, "section_name": name, **values}
            for sid, name, values in sections]


def rows_of(pairs: list[tuple[int, int | None]], source: list[dict[str, Any]],
            target: list[dict[str, Any]]) -> pd.DataFrame:
    return compare(pairs_frame(pairs), frame_from_rows(source), frame_from_rows(target))


def sides(out: pd.DataFrame) -> list[tuple[object, object, str]]:
    def name(value: object) -> object:
        return None if pd.isna(value) else value
    return [(name(s), name(t), str(c)) for s, t, c in
            zip(out["Source_Section_Name"], out["Target_Section_Name"], out["comment"],
                strict=True)]


def test_one_two_and_three_sections_each_get_a_row() -> None:
    source = (scan(1, (10, "Milk", {}))
              + scan(2, (10, "Milk", {}), (11, "Cheese", {}))
              + scan(3, (10, "Milk", {}), (11, "Cheese", {}), (12, "Butter", {})))
    target = (scan(101, (10, "Milk", {}))
              + scan(102, (10, "Milk", {"pre_pog": 60.0}), (11, "Cheese", {}))
              + scan(103, (12, "Butter", {}), (11, "Cheese", {"planogram_name": "Deli"}),
                     (10, "Milk", {})))
    out = rows_of([(1, 101), (2, 102), (3, 103)], source, target)
    assert out["Source_Scan_ID"].tolist() == [1, 2, 2, 3, 3, 3]
    assert sides(out) == [("Milk", "Milk", OK), ("Milk", "Milk", HIGHER),
                          ("Cheese", "Cheese", OK), ("Milk", "Milk", OK),
                          ("Cheese", "Cheese", WRONG), ("Butter", "Butter", OK)]


def test_id_first_then_name_then_the_one_left_on_each_side() -> None:
    source = scan(1, (10, "Milk", {}), (11, "Cheese", {}), (12, "Butter", {}))
    # 10 by ID (though renamed), Cheese by name (another ID), Butter with the one left.
    target = scan(101, (99, "Cheese", {}), (10, "Milk (new)", {}), (98, "Eggs", {}))
    out = rows_of([(1, 101)], source, target)
    assert sides(out) == [("Milk", "Milk (new)", SECTION), ("Cheese", "Cheese", OK),
                          ("Butter", "Eggs", SECTION)]
    assert out["Target_Section_ID"].tolist() == [10, 99, 98]


def test_leftovers_on_both_sides_are_rows_of_their_own() -> None:
    source = scan(1, (10, "Milk", {}), (11, "Cheese", {}), (12, "Butter", {}))
    target = scan(101, (10, "Milk", {}), (20, "Eggs", {}), (21, "Yoghurt", {}))
    out = rows_of([(1, 101)], source, target)
    # Two left on each side: nothing to pair them by. No section is dropped.
    assert sides(out) == [("Milk", "Milk", OK), ("Cheese", None, MISSING),
                          ("Butter", None, MISSING), (None, "Eggs", WRONG),
                          (None, "Yoghurt", WRONG)]


def test_a_section_only_in_the_target_is_compared_with_an_empty_source() -> None:
    source = scan(1, (10, "Milk", {}))
    target = scan(101, (10, "Milk", {}), (11, "Cheese", {}))
    out = rows_of([(1, 101)], source, target)
    assert sides(out) == [("Milk", "Milk", OK), (None, "Cheese", WRONG)]
    assert out["Source_POG_Name"].isna().tolist() == [False, True]


def test_pairs_without_target_reports_keep_every_source_section() -> None:
    source = (scan(1, (10, "Milk", {}), (11, "Cheese", {})) + scan(2, (10, "Milk", {}))
              + scan(3) + scan(4, (10, "Milk", {}), (11, "Cheese", {})))
    target = scan(102) + scan(103)
    out = rows_of([(1, None), (2, 102), (3, 103), (4, 999)], source, target)
    assert out["Source_Scan_ID"].tolist() == [1, 1, 2, 3, 4, 4]
    assert set(out["comment"]) == {MISSING}


def test_the_same_section_twice_goes_bay_by_bay() -> None:
    source = scan(1, (10, "Milk", {"ok_count": 1}), (10, "Milk", {"ok_count": 2}))
    target = scan(101, (10, "Milk", {"ok_count": 3}), (10, "Milk", {"ok_count": 4}),
                  (10, "Milk", {"ok_count": 5}))
    out = rows_of([(1, 101)], source, target)
    assert list(zip(out["Source_OK_Count"].astype("Float64").fillna(-1),
                    out["Target_OK_Count"], strict=True)) == [(1, 3), (2, 4), (-1, 5)]


def test_scans_count_under_their_worst_row() -> None:
    source = scan(1, (10, "Milk", {}), (11, "Cheese", {})) + scan(2, (10, "Milk", {}))
    target = scan(101, (10, "Milk", {}), (11, "Cheese", {"section_name": "Brie"}),
                  (12, "Eggs", {})) + scan(102, (10, "Milk", {}))
    out = rows_of([(1, 101), (2, 102)], source, target)
    counts = scan_counts(out)
    assert counts[OK] == 1 and counts[WRONG] == 1 and sum(counts.values()) == 2


def _random_scan(rng: random.Random, scan_id: int, names: list[str]) -> list[dict[str, Any]]:
    count = rng.choice([0, 1, 1, 2, 3])
    sections = []
    for _ in range(count):
        sid = rng.choice([None, 1, 2, 3, 4])
        name = rng.choice([*names, None])
        values = {"planogram_name": rng.choice(["Dairy", "Deli"]),
                  "is_additional_section": rng.random() < 0.2,
                  "pre_pog": float(rng.randint(40, 60))}
        sections.append((sid, name, values))
    return scan(scan_id, *sections)


def _values(row: dict[str, Any]) -> ReportValues:
    return ReportValues(planogram_name=row["planogram_name"], category_name="",
                        section_name=row["section_name"],
                        is_additional=row["is_additional_section"], aisle_name="",
                        pre_compliance=row["pre_pog"], post_compliance=0.0, pre_osa=0.0,
                        post_osa=0.0, correct=0, wandering=0, missing=0, empty=0,
                        section_id=row["section_id"])


def test_random_scans_match_as_the_reference_platforms_ground_truth_says() -> None:
    """Two independent writings of the rule: the columnar one and the plain one."""
    rng = random.Random(12)
    names = ["Milk", "Cheese", "Butter", "Eggs"]
    source: list[dict[str, Any]] = []
    target: list[dict[str, Any]] = []
    pairs: list[tuple[int, int | None]] = []
    expected: list[tuple[object, object, str]] = []
    for i in range(1, 400):
        src, tgt = _random_scan(rng, i, names), _random_scan(rng, 1000 + i, names)
        source += src
        target += tgt
        pairs.append((i, 1000 + i))
        src_reports = [_values(r) for r in src if r["reported"]]
        tgt_reports = [_values(r) for r in tgt if r["reported"]] or None
        for row in expected_rows(src_reports, tgt_reports):
            expected.append((row.source.section_name if row.source else None,
                             row.target.section_name if row.target else None,
                             row.comment.value))
    assert sides(rows_of(pairs, source, target)) == expected
