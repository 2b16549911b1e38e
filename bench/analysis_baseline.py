"""The old analysis workflow, kept only as the benchmark's comparison: for each source
row, filter the target frame for its target scan and decide the comment in Python;
then write the sheet with ``DataFrame.to_excel``, load the workbook back and style it
cell by cell. Same inputs and same §7 rules as ``handlers.analyze``; the benchmark
checks that both give the same comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
from openpyxl.styles import PatternFill

from handlers.analysis.model import COLOURS, COMMENTS, DETAIL_FIELDS, LABELS, Comment


def _comment(s: pd.Series, t: pd.Series | None) -> str:
    if t is None or not (t["has_report"] and t["reported"]):
        return Comment.MISSING.value
    if _differs(s["planogram_name"], t["planogram_name"]):
        return Comment.WRONG_POG.value
    if _differs(s["section_name"], t["section_name"]):
        return Comment.DIFFERENT_SECTION.value
    if _true(t["is_additional_section"]) and not _true(s["is_additional_section"]):
        return Comment.ADDITIONAL.value
    if pd.notna(t["pre_pog"]) and pd.notna(s["pre_pog"]) and t["pre_pog"] > s["pre_pog"]:
        return Comment.HIGHER_POG.value
    return Comment.NO_ISSUES.value


def _true(value: Any) -> bool:
    return bool(pd.notna(value) and value)


def _differs(a: Any, b: Any) -> bool:
    if pd.isna(a) and pd.isna(b):
        return False
    return bool(pd.isna(a) or pd.isna(b) or a != b)


def run_baseline(run_dir: Path, pairs: list[tuple[int, int | None]], source: pd.DataFrame,
                 target: pd.DataFrame) -> list[str]:
    """Write the four files the old way; returns the comments (for the cross-check)."""
    rows = []
    for source_id, target_id in pairs:
        s = source[source["scan_id"] == source_id]  # per-row filtering, as it was
        if s.empty:
            continue
        t = target[target["scan_id"] == target_id] if target_id is not None else None
        srow = s.iloc[0]
        trow = t.iloc[0] if t is not None and not t.empty else None
        row: dict[str, Any] = {"Source_Scan_ID": source_id, "Target_Scan_ID": target_id}
        for name in DETAIL_FIELDS:
            row[f"Source_{LABELS[name]}"] = srow[name]
            row[f"Target_{LABELS[name]}"] = trow[name] if trow is not None else None
        row["comment"] = _comment(srow, trow)
        rows.append(row)
    analysis = pd.DataFrame(rows)
    source.to_csv(run_dir / "source_scandetails.csv", index=False)
    target.to_csv(run_dir / "target_scandetails.csv", index=False)
    analysis.to_csv(run_dir / "analysis.csv", index=False)
    path = run_dir / "analysis.xlsx"
    analysis.to_excel(path, index=False, sheet_name="Analysis", engine="openpyxl")
    book = openpyxl.load_workbook(path)
    sheet = book["Analysis"]
    fills = {c.value: PatternFill("solid", fgColor=COLOURS[c][0]) for c in COMMENTS}
    last = sheet.max_column
    for cells in sheet.iter_rows(min_row=2):
        fill = fills[cells[last - 1].value]
        for cell in cells:  # cell by cell, as it was
            cell.fill = fill
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = sheet.dimensions
    summary = book.create_sheet("Summary")
    summary.append(["Comment", "Count"])
    for comment, count in analysis["comment"].value_counts().items():
        summary.append([comment, int(count)])
    book.save(path)
    return analysis["comment"].tolist()
