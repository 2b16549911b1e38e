"""``analyze`` on folder instances and the pure comparison: the §7 rules in their order,
the inputs (pairs, from_run, scan_ids + target_scan_ids), the files written, the
workbook (colours, summary, legend) and LibreOffice reading it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from helpers import make_root
from workbook_checks import SPEC_COLOURS, assert_workbook_matches, colour_name, csv_rows

from daemon.errors import RequestError
from daemon.instances.folder import FolderInstance
from daemon.request import Request
from handlers.analysis.compare import compare, pairs_frame
from handlers.analysis.details import frame_from_rows
from handlers.analysis.pairs import resolve_pairs

MISSING, WRONG, SECTION, ADDITIONAL, HIGHER, OK = SPEC_COLOURS  # comments in rule order
BASE = {"planogram_name": "Dairy", "section_name": "Milk", "is_additional_section": False,
        "pre_pog": 50.0, "post_pog": 55.0, "pre_osa": 90.0, "post_osa": 91.0,
        "store_planogram_id": 7, "section_id": 70, "ok_count": 100, "wandering_count": 3,
        "oos_count": 4, "hole_count": 1}


def details(scan_id: int, *, report: bool = True, **values: Any) -> dict[str, Any]:
    row = {"scan_id": scan_id, "status": "done", "has_report": report, "reported": report}
    return row | ({**BASE, **values} if report else {})


def comments_of(pairs: list[tuple[int, int | None]], source: list[dict[str, Any]],
                target: list[dict[str, Any]]) -> list[str]:
    out = compare(pairs_frame(pairs), frame_from_rows(source), frame_from_rows(target))
    return [str(c) for c in out["comment"]]


# ---- the rules, pure ------------------------------------------------------------------


def test_each_rule_and_the_first_that_applies_wins() -> None:
    source = [details(i) for i in range(1, 10)]
    target = [
        details(101),                                                   # same
        details(102, planogram_name="Bakery", section_name="Bread",     # every rule at once
                is_additional_section=True, pre_pog=99.0),
        details(103, section_name="Cheese", is_additional_section=True, pre_pog=99.0),
        details(104, is_additional_section=True, pre_pog=99.0),
        details(105, pre_pog=50.5),
        details(106, pre_pog=49.0),                                     # lower: fine
        details(107, report=False),                                     # no report yet
    ]
    pairs = [(1, 101), (2, 102), (3, 103), (4, 104), (5, 105), (6, 106), (7, 107), (8, None),
             (9, 999)]
    assert comments_of(pairs, source, target) == [OK, WRONG, SECTION, ADDITIONAL, HIGHER, OK,
                                                  MISSING, MISSING, MISSING]


def test_missing_values_on_either_side() -> None:
    source = [details(1, report=False), details(2, planogram_name=None, section_name=None),
              details(3, pre_pog=None), details(4, is_additional_section=True)]
    target = [details(11), details(12, planogram_name=None, section_name=None),
              details(13, pre_pog=60.0), details(14, is_additional_section=True)]
    # A source without a report differs from any reported target (as the reference
    # server's comment_for has it); two unknown names do not differ; an unknown source
    # POG % is not lower than a known one; additional on both sides is no finding.
    assert comments_of([(1, 11), (2, 12), (3, 13), (4, 14)], source, target) == \
        [WRONG, OK, OK, OK]


def test_an_unmapped_scan_is_never_compared_with_another_target() -> None:
    # The target instance holds a perfect match for the source, but the pair names none.
    source = [details(1), details(2)]
    target = [details(1), details(2)]
    assert comments_of([(1, None), (2, 2), (1, 2)], source, target) == [MISSING, OK, OK]


def test_rows_follow_the_pairs_order_with_repeats() -> None:
    source = [details(i) for i in (5, 3, 9)]
    target = [details(50, pre_pog=80.0), details(30)]
    out = compare(pairs_frame([(9, 30), (3, 30), (5, 50), (9, None)]),
                  frame_from_rows(source), frame_from_rows(target))
    assert out["Source_Scan_ID"].tolist() == [9, 3, 5, 9]
    assert out["Target_Scan_ID"].tolist() == [30, 30, 50, pd.NA]
    assert [str(c) for c in out["comment"]] == [OK, OK, HIGHER, MISSING]


# ---- inputs ---------------------------------------------------------------------------


def _mapping(runs: Path, run_id: str, rows: list[tuple[Any, Any]]) -> None:
    (runs / run_id).mkdir(parents=True)
    lines = ["Source_Scan_ID,Target_Scan_ID,status,error"]
    lines += [f"{s},{'' if t is None else t},{'ok' if t else 'failed'}," for s, t in rows]
    (runs / run_id / "scan_mapping.csv").write_text("\n".join(lines) + "\n")


def test_inputs_pairs_from_run_and_scan_id_columns(tmp_path: Path) -> None:
    run_id = "20260101-010101-copy-abcdef"
    _mapping(tmp_path, run_id, [(1, 11), (2, None), (3, 33)])
    ask = {"action": "analyze", "source": "a", "target": "b"}
    assert resolve_pairs(Request(**ask, pairs=[(1, 2), (3, 4)]), tmp_path) == [(1, 2), (3, 4)]
    assert resolve_pairs(Request(**ask, from_run=run_id), tmp_path) == \
        [(1, 11), (2, None), (3, 33)]
    # A retry of such a run lists the failed sources: only their pairs are analysed.
    assert resolve_pairs(Request(**ask, from_run=run_id, scan_ids=[3, 2]), tmp_path) == \
        [(2, None), (3, 33)]
    assert resolve_pairs(Request(**ask, scan_ids=[5, 6], target_scan_ids=[50, 60]),
                         tmp_path) == [(5, 50), (6, 60)]


@pytest.mark.parametrize(("request_keys", "message"), [
    ({"from_run": "20260101-010101-copy-000000"}, "scan_mapping.csv does not exist"),
    ({"from_run": "20260101-010101-copy-abcdef", "scan_ids": [1, 4]}, "4 not in the mapping"),
    ({"from_run": "20260101-010101-copy-bad000"}, "row(s) 3 hold no valid scan ID"),
    ({"scan_ids": [1, 2]}, "target_scan_ids: analyze with scan_ids needs"),
])
def test_inputs_that_cannot_be_resolved(tmp_path: Path, request_keys: dict[str, Any],
                                        message: str) -> None:
    _mapping(tmp_path, "20260101-010101-copy-abcdef", [(1, 11)])
    _mapping(tmp_path, "20260101-010101-copy-bad000", [(1, 11), ("x", 12)])
    request = Request(action="analyze", source="a", target="b", **request_keys)
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_pairs(request, tmp_path)


# ---- end to end on folder instances -----------------------------------------------------


def _scan(instance: FolderInstance, tmp: Path, values: dict[str, Any] | None) -> int:
    image = tmp / "shelf.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    payload: dict[str, Any] = {"store": 1, "files": [instance.upload_file(image, "s.png")],
                               "captured_at": "2026-01-02T10:00:00+00:00"}
    if values is not None:
        payload["details"] = values
    return instance.create_scan(payload)


ODD = {"planogram_name": 'Café & "Tea" <b>', "section_name": "  Müsli / Flakes\u00a0 "}


def _folder_run(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A daemon root with source/target folder scans for every comment, analysed with
    ``scanrelay once``; returns the run folder and the expected comment per source."""
    root = make_root(tmp_path, demo=False, instances={
        "src": {"kind": "folder", "path": "./data/src"},
        "tgt": {"kind": "folder", "path": "./data/tgt"}}, log={"level": "INFO"})
    src = FolderInstance("src", root / "data" / "src")
    tgt = FolderInstance("tgt", root / "data" / "tgt")
    cases = [({}, {}, OK), ({}, {"planogram_name": "Bakery"}, WRONG),
             ({}, {"section_name": "Cheese"}, SECTION),
             ({}, {"is_additional_section": True}, ADDITIONAL),
             ({}, {"pre_pog": 77.5}, HIGHER), ({}, None, MISSING), (ODD, ODD, OK)]
    pairs, expected = [], {}
    for source_values, target_values, comment in cases:
        sid = _scan(src, tmp_path, {**BASE, **source_values})
        tid = _scan(tgt, tmp_path, None if target_values is None else
                    {**BASE, **source_values, **target_values})
        pairs.append([sid, tid])
        expected[str(sid)] = comment
    pairs.append([424242, pairs[0][1]])  # no such source: a failed item
    request = tmp_path / "analyze.json"
    request.write_text(json.dumps({"action": "analyze", "source": "src", "target": "tgt",
                                   "pairs": pairs}))
    once = subprocess.run([sys.executable, "-m", "daemon", "once", str(request), "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert once.returncode == 1, once.stdout + once.stderr
    result = json.loads((root / "failed" / "analyze.json.result.json").read_text())
    assert result["status"] == "partial" and result["counts"]["items"] == len(pairs)
    assert [f["scan_id"] for f in result["failed"]] == [424242]
    return root / result["run_dir"], expected


def test_folder_instances_end_to_end(tmp_path: Path) -> None:
    run_dir, expected = _folder_run(tmp_path)
    for name in ("source_scandetails.csv", "target_scandetails.csv", "analysis.csv",
                 "analysis.xlsx"):
        assert (run_dir / name).is_file(), name
    header, rows = csv_rows(run_dir)
    assert {r["Source_Scan_ID"]: r["comment"] for r in rows} == expected
    odd = rows[-1]
    assert (odd["Source_POG_Name"], odd["Target_Section_Name"]) == \
        (ODD["planogram_name"], ODD["section_name"])
    assert_workbook_matches(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["analysis"]["counts"] == {c: list(expected.values()).count(c)
                                         for c in SPEC_COLOURS}
    with (run_dir / "source_scandetails.csv").open(newline="") as f:
        found = {r["Scan_ID"]: r["Found"] for r in csv.DictReader(f)}
    assert found["424242"] == "False" and set(found) == {*expected, "424242"}


def _soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


@pytest.mark.slow
@pytest.mark.skipif(_soffice() is None, reason="LibreOffice (soffice) is not installed")
def test_libreoffice_reads_the_workbook(tmp_path: Path) -> None:
    """LibreOffice converts the workbook without error, reads every value where it
    belongs (CSV export of the Analysis sheet) and keeps each row's colour (re-saved as
    XLSX by LibreOffice, then read back)."""
    run_dir, _ = _folder_run(tmp_path)
    out = tmp_path / "lo"
    soffice = _soffice()
    assert soffice is not None
    env = {"HOME": str(tmp_path / "lo-home"), "PATH": "/usr/bin:/bin"}
    for target in ('csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,'
                   'false,1', "xlsx:Calc MS Excel 2007 XML"):
        done = subprocess.run([soffice, "--headless", "--norestore", "--convert-to", target,
                               "--outdir", str(out), str(run_dir / "analysis.xlsx")],
                              capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    header, rows = csv_rows(run_dir)
    exported = sorted(out.glob("analysis*.csv"))  # "analysis-Analysis.csv" in LO >= 7.2
    assert len(exported) == 1, exported
    with exported[0].open(newline="", encoding="utf-8") as f:
        seen = list(csv.reader(f))
    assert seen[0] == header and len(seen) == len(rows) + 1
    for row, got in zip(rows, seen[1:], strict=True):
        assert [_normal(v) for v in got] == [_normal(row[h]) for h in header]
    sheet = openpyxl.load_workbook(out / "analysis.xlsx")["Analysis"]
    comment_col = header.index("comment")
    for cells in sheet.iter_rows(min_row=2, max_col=len(header)):
        comment = str(cells[comment_col].value)
        assert {colour_name(c.fill.fgColor.rgb) for c in cells} == {SPEC_COLOURS[comment]}


def _normal(value: str) -> str:
    """One spelling for numbers and booleans, whoever wrote the text."""
    if value.upper() in ("TRUE", "FALSE"):
        return value.upper()
    try:
        return repr(float(value))
    except ValueError:
        return value



def test_workbook_text_escaping_and_row_chunks(tmp_path: Path) -> None:
    """Text that XML cannot carry as is, and rows written in several chunks, read back
    exactly (control characters, which XML 1.0 forbids, are dropped)."""
    from handlers.analysis import sheetxml
    from handlers.analysis.compare import comment_counts
    from handlers.analysis.report import write_workbook

    source = [details(i, planogram_name=name) for i, name in enumerate(
        ["a < b & c > d", "bell\x07ring", "  lead and trail  ", "x" * 40_000, "ok"], start=1)]
    target = [details(10 + i, planogram_name=s["planogram_name"]) for i, s in
              enumerate(source, start=1)]
    analysis = compare(pairs_frame([(i, 10 + i) for i in range(1, 6)]),
                       frame_from_rows(source), frame_from_rows(target))
    write_workbook(tmp_path / "a.xlsx", analysis, comment_counts(analysis))
    sheet = openpyxl.load_workbook(tmp_path / "a.xlsx")["Analysis"]
    column = [c.value for c in sheet[1]].index("Source_POG_Name")
    names = [row[column].value for row in sheet.iter_rows(min_row=2)]
    assert names == ["a < b & c > d", "bellring", "  lead and trail  ", "x" * 32_767, "ok"]
    styles = pd.Series(range(5)).to_numpy()
    whole = "".join(sheetxml.row_chunks(analysis, styles, chunk=1000))
    assert "".join(sheetxml.row_chunks(analysis, styles, chunk=2)) == whole
    assert [f'<row r="{n}">' in whole for n in range(2, 7)] == [True] * 5


def test_a_stopping_daemon_interrupts_the_analysis_before_any_output(tmp_path: Path) -> None:
    from analysis_support import config_with, run_context

    from daemon.errors import Interrupted
    from daemon.instances.registry import Instances
    from handlers.analyze import OUTPUTS, analyze_pairs

    src = FolderInstance("src", tmp_path / "src")
    sid = _scan(src, tmp_path, BASE)
    config = config_with(tmp_path, {"src": {"kind": "folder", "path": "./src"}})
    instances = Instances(config)
    request = Request(action="analyze", source="src", target="src", pairs=[(sid, sid)])
    ctx = run_context(tmp_path / "run", config, request, instances)
    ctx.stop.set()
    with pytest.raises(Interrupted):
        analyze_pairs(ctx, instances.get("src"), instances.get("src"), [(sid, sid)])
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)


def test_a_csv_with_both_id_columns_and_its_retry(tmp_path: Path) -> None:
    """A CSV with scan_id and target_scan_id columns (parameters from the profile); the
    retry request keeps each failed source with its own target."""
    root = make_root(tmp_path, demo=False, instances={
        "src": {"kind": "folder", "path": "./data/src"},
        "tgt": {"kind": "folder", "path": "./data/tgt"}},
        profiles={"qa": {"action": "analyze", "source": "src", "target": "tgt"}},
        defaults={"profile": "qa"})
    src = FolderInstance("src", root / "data" / "src")
    tgt = FolderInstance("tgt", root / "data" / "tgt")
    s1, s3 = _scan(src, tmp_path, BASE), _scan(src, tmp_path, BASE)
    t1, t2, t3 = (_scan(tgt, tmp_path, {**BASE, "pre_pog": 80.0}) for _ in range(3))
    request = tmp_path / "pairs.csv"
    request.write_text(f"scan_id;target_scan_id\n{s1};{t1}\n424242;{t2}\n{s3};{t3}\n")
    once = subprocess.run([sys.executable, "-m", "daemon", "once", str(request), "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert once.returncode == 1, once.stdout + once.stderr
    retry = json.loads((root / "failed" / "pairs.csv.retry.json").read_text())
    assert (retry["scan_ids"], retry["target_scan_ids"]) == ([424242], [t2])
    result = json.loads((root / "failed" / "pairs.csv.result.json").read_text())
    _, rows = csv_rows(root / result["run_dir"])
    assert [(r["Source_Scan_ID"], r["Target_Scan_ID"], r["comment"]) for r in rows] == \
        [(str(s1), str(t1), HIGHER), (str(s3), str(t3), HIGHER)]


def test_a_csv_with_blank_target_cells_lands_in_done_with_those_rows_missing(
        tmp_path: Path) -> None:
    """Blank Target_Scan_ID cells are pairs without a target: listed, every section of
    their source Missing In Target, and the request is done (a finding, not an error)."""
    root = make_root(tmp_path, demo=False, instances={
        "src": {"kind": "folder", "path": "./data/src"},
        "tgt": {"kind": "folder", "path": "./data/tgt"}},
        profiles={"qa": {"action": "analyze", "source": "src", "target": "tgt"}},
        defaults={"profile": "qa"})
    src = FolderInstance("src", root / "data" / "src")
    tgt = FolderInstance("tgt", root / "data" / "tgt")
    image = tmp_path / "two.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"2" * 32)
    two_sections = src.create_scan({
        "store": 1, "files": [src.upload_file(image, "two.png")],
        "captured_at": "2026-01-02T10:00:00+00:00",
        "reports": [BASE, {**BASE, "section_id": 71, "section_name": "Yoghurt"}]})
    s1, s3 = _scan(src, tmp_path, BASE), _scan(src, tmp_path, BASE)
    t1 = _scan(tgt, tmp_path, BASE)
    request = tmp_path / "pairs.csv"
    request.write_text(f"Source_Scan_ID,Target_Scan_ID\n{s1},{t1}\n{two_sections},\n"
                       f"{s3}, \n")
    once = subprocess.run([sys.executable, "-m", "daemon", "once", str(request), "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert once.returncode == 0, once.stdout + once.stderr
    result = json.loads((root / "done" / "pairs.csv.result.json").read_text())
    assert result["status"] == "done"
    _, rows = csv_rows(root / result["run_dir"])
    assert [(r["Source_Scan_ID"], r["Target_Scan_ID"], r["Source_Section_Name"], r["comment"])
            for r in rows] == [
        (str(s1), str(t1), "Milk", OK),
        (str(two_sections), "", "Milk", MISSING),
        (str(two_sections), "", "Yoghurt", MISSING),
        (str(s3), "", "Milk", MISSING)]
    assert result["analysis"]["scan_counts"][MISSING] == 2
    assert_workbook_matches(root / result["run_dir"])
