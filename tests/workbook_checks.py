"""Checks of an ``analysis.xlsx`` against its ``analysis.csv``, independent of how the
workbook was written: reopened with openpyxl, colours judged by hue against SPEC §7."""

from __future__ import annotations

import colorsys
import csv
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils import get_column_letter

SPEC_COLOURS = {  # SPEC §7: comment → colour
    "Missing In Target": "grey",
    "Wrong POG Name Mapping": "red",
    "Same POG Name but Different Section": "orange",
    "Target Has Additional Section (Source Does Not)": "yellow",
    "Target Has Higher POG% Than Source": "blue",
    "No Issues": "green",
}


def colour_name(argb: str) -> str:
    """The colour an ARGB fill shows, by hue (so any shade of red counts as red)."""
    r, g, b = (int(argb[i:i + 2], 16) / 255 for i in (2, 4, 6))
    hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
    degrees = hue * 360
    if saturation < 0.05:
        return "grey"
    for name, low, high in (("orange", 15, 45), ("yellow", 45, 75), ("green", 80, 170),
                            ("blue", 180, 260)):
        if low <= degrees < high:
            return name
    return "red" if degrees < 15 or degrees >= 330 else f"hue {degrees:.0f}"


def csv_rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run_dir / "analysis.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def as_csv_text(value: Any) -> str:
    """A workbook value as pandas writes it into the CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(value)
    return str(value)


def assert_workbook_matches(run_dir: Path) -> None:
    header, rows = csv_rows(run_dir)
    book = openpyxl.load_workbook(run_dir / "analysis.xlsx")
    assert book.sheetnames == ["Analysis", "Summary", "Legend"]
    sheet = book["Analysis"]
    assert [c.value for c in sheet[1]] == header
    assert sheet.freeze_panes is not None and sheet.freeze_panes.endswith("2"), \
        "header row frozen"
    assert sheet.auto_filter.ref == f"A1:{get_column_letter(len(header))}{len(rows) + 1}"
    assert sheet.max_row == len(rows) + 1
    for index, name in enumerate(header, start=1):
        width = sheet.column_dimensions[get_column_letter(index)].width
        assert width >= len(name), f"column {name} too narrow ({width})"
    comment_col = header.index("comment")
    for number, (cells, row) in enumerate(
            zip(sheet.iter_rows(min_row=2), rows, strict=True), start=2):
        values = [as_csv_text(c.value) for c in cells]
        assert values == [row[h] for h in header], f"row {number} differs from the CSV"
        fills = {c.fill.fgColor.rgb for c in cells}
        assert len(fills) == 1, f"row {number}: one colour across the row, got {fills}"
        assert colour_name(fills.pop()) == SPEC_COLOURS[values[comment_col]], \
            f"row {number}: colour does not match {values[comment_col]}"
    _assert_summary(book["Summary"], Counter(r["comment"] for r in rows), len(rows),
                    _worst_per_scan(rows))
    _assert_legend(book["Legend"])
    _assert_streaming_reader_sees_every_row(run_dir, header, rows)
    with zipfile.ZipFile(run_dir / "analysis.xlsx") as zf:
        charts = [n for n in zf.namelist() if n.startswith("xl/charts/chart")]
        assert charts, "the Summary sheet has a chart"
        chart = zf.read(charts[0]).decode()
        assert "barChart>" in chart, "a bar chart"
        assert "Summary!$B$2:$B$7</" in chart.replace("'", ""), "of the counts per comment"


def _worst_per_scan(rows: list[dict[str, str]]) -> Counter[str]:
    """Each pair once, under the first comment (in rule order) among its rows."""
    order = list(SPEC_COLOURS)
    worst: dict[tuple[str, str], str] = {}
    for row in rows:
        key = (row["Source_Scan_ID"], row["Target_Scan_ID"])
        if key not in worst or order.index(row["comment"]) < order.index(worst[key]):
            worst[key] = row["comment"]
    return Counter(worst.values())


def _assert_summary(sheet: Any, counts: Counter[str], total: int,
                    scans: Counter[str]) -> None:
    rows = list(sheet.iter_rows(min_row=2, values_only=True))
    by_comment = {r[0]: r for r in rows if r[0] in SPEC_COLOURS}
    assert list(by_comment) == list(SPEC_COLOURS), "every comment, in rule order"
    scan_total = sum(scans.values())
    for comment, (_, count, share, scan_count, scan_share) in by_comment.items():
        assert count == counts[comment], comment
        assert abs(share - (count / total if total else 0)) < 1e-9, comment
        assert scan_count == scans[comment], comment
        assert abs(scan_share - (scan_count / scan_total if scan_total else 0)) < 1e-9
    assert ("Total", total) == tuple(rows[len(SPEC_COLOURS)][:2])
    assert rows[len(SPEC_COLOURS)][3] == scan_total


def _assert_streaming_reader_sees_every_row(run_dir: Path, header: list[str],
                                            rows: list[dict[str, str]]) -> None:
    """openpyxl in read-only mode trusts the sheet's declared extent (<dimension>)."""
    book = openpyxl.load_workbook(run_dir / "analysis.xlsx", read_only=True)
    try:
        sheet = book["Analysis"]
        assert sheet.max_row == len(rows) + 1 and sheet.max_column == len(header)
        read = [[as_csv_text(v) for v in r] for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()
    assert read[0] == header
    assert read[1:] == [[row[h] for h in header] for row in rows]


def _assert_legend(sheet: Any) -> None:
    rows = list(sheet.iter_rows(min_row=2, max_row=len(SPEC_COLOURS) + 1))
    assert [r[0].value for r in rows] == list(SPEC_COLOURS)
    for row in rows:
        comment = row[0].value
        assert row[1].value == SPEC_COLOURS[comment]
        assert colour_name(row[0].fill.fgColor.rgb) == SPEC_COLOURS[comment]
    text = " ".join(str(c.value) for r in sheet.iter_rows() for c in r if c.value)
    for words in ("same section ID", "same section name", "Missing In Target",
                  "compared with an empty source", "worst comment"):
        assert words in text, f"the Legend states the matching rule ({words!r})"
