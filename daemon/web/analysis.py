"""The analysis of a run for its page: the Summary (count per comment, in rule order,
with the workbook's colours) and the rows of ``analysis.csv``, filtered by comment."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.analysis.model import COLOURS, COMMENT, COMMENTS, SOURCE_ID, TARGET_ID

# The columns the page shows (the workbook has them all).
SHOWN = (SOURCE_ID, TARGET_ID, "Source_POG_Name", "Target_POG_Name", "Source_Section_Name",
         "Target_Section_Name", "Source_Pre_POG_%", "Target_Pre_POG_%", COMMENT)
MAX_ROWS = 500  # rows listed per page; the counts cover them all


@dataclass(frozen=True)
class Bar:
    comment: str
    count: int
    share: float  # 0..1 of all pairs
    colour: str  # ARGB, as in the workbook
    colour_name: str


@dataclass(frozen=True)
class AnalysisView:
    bars: list[Bar]
    total: int
    columns: tuple[str, ...]
    rows: list[tuple[int, list[str]]]  # (the comment's place in rule order, cells)
    matched: int  # rows matching the filter (``rows`` holds the first MAX_ROWS)


def summary(analysis: dict[str, Any]) -> tuple[list[Bar], int]:
    counts = analysis.get("counts") or {}
    total = sum(int(v) for v in counts.values())
    bars = [Bar(c.value, int(counts.get(c.value, 0)), int(counts.get(c.value, 0)) / total
                if total else 0.0, *COLOURS[c]) for c in COMMENTS]
    return bars, total


def read_rows(path: Path, comment: str | None) -> tuple[list[tuple[int, list[str]]], int]:
    """The first ``MAX_ROWS`` rows with ``comment`` (all if None), each with its
    comment's place in rule order (its colour), and how many rows match."""
    place = {c.value: i for i, c in enumerate(COMMENTS)}
    rows: list[tuple[int, list[str]]] = []
    matched = 0
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            if comment and row.get(COMMENT) != comment:
                continue
            matched += 1
            if len(rows) < MAX_ROWS:
                rows.append((place.get(row.get(COMMENT) or "", -1),
                             [row.get(col) or "" for col in SHOWN]))
    return rows, matched


def analysis_view(analysis: dict[str, Any], csv_path: Path | None,
                  comment: str | None) -> AnalysisView:
    bars, total = summary(analysis)
    rows, matched = read_rows(csv_path, comment) if csv_path else ([], 0)
    return AnalysisView(bars, total, SHOWN, rows, matched)


def known_comment(value: str | None) -> str | None:
    """``value`` if it is one of the comments, else None (no filter)."""
    return value if value in {c.value for c in COMMENTS} else None


def colour_css() -> str:
    """CSS classes ``c0`` … ``c5``: the workbook's fill colour of each comment (a
    stylesheet, because the page's CSP allows no inline style)."""
    return "".join(f".c{i}{{background:#{COLOURS[c][0][-6:].lower()}}}\n"
                   for i, c in enumerate(COMMENTS))
