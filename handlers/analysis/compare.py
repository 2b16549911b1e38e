"""The comparison of SPEC §7, pure and columnar: pandas merges on the pair mapping and
vectorised rules, no per-row Python. Nothing here does I/O.

One row per section: the details frames hold one row per compliance report, and within
each pair the reports are matched by ``match_sections`` (same section ID, else same
section name, else the one report left on each side). A source report left without a
partner is ``Missing In Target``; a target report left without one is compared with an
empty source. A pair whose scans have no report at all is one row.

A pair is compared only with the target scan its mapping names: a pair without a target
(``Target_Scan_ID`` missing) is ``Missing In Target``, never matched with some other
scan. That holds by construction: target reports are joined on the pair's own target
ID, and missing keys never join (the pairs' missing targets are dropped first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from handlers.analysis.details import REPORTED
from handlers.analysis.model import (
    ANALYSIS_COLUMNS,
    COMMENT,
    COMMENTS,
    COMPARED_FIELDS,
    HAS_REPORT,
    LABELS,
    MAP_BY,
    SCAN_ID,
    SOURCE_ID,
    TARGET_ID,
    Comment,
)

PAIR, S_ROW, T_ROW, _RANK = "__pair", "__source_row", "__target_row", "__rank"
_SECTION_ID, _SECTION_NAME = "__section_id", "__section_name"
_PRESENT = "__target_present"
COMMENT_DTYPE = pd.CategoricalDtype([c.value for c in COMMENTS], ordered=True)


def pairs_frame(pairs: Sequence[tuple[int, int | None]]) -> pd.DataFrame:
    """The pairs as two columns: source IDs (int64), target IDs (Int64, NA: none)."""
    return pd.DataFrame({
        SOURCE_ID: pd.array([p[0] for p in pairs], dtype="int64"),
        TARGET_ID: pd.array([p[1] for p in pairs], dtype="Int64"),
    })


def compare(pairs: pd.DataFrame, source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """One row per section of each pair (pairs in order; within a pair the source's
    reports in order, then the target's unmatched ones) with ``ANALYSIS_COLUMNS``;
    ``comment`` is a categorical of the §7 comments. ``source``/``target`` are details
    frames (``details.FRAME_COLUMNS``); every pair's source must be in ``source`` (pairs
    whose source does not exist are the caller's failed items)."""
    keys = pairs[[SOURCE_ID, TARGET_ID]].astype({SOURCE_ID: "int64", TARGET_ID: "Int64"})
    keys = keys.reset_index(drop=True)
    keys[PAIR] = np.arange(len(keys), dtype=np.int64)
    src = _reports(keys, source[source[REPORTED]], SOURCE_ID, "Source")
    present = target[target[REPORTED] & target[HAS_REPORT]]
    tgt = _reports(keys.dropna(subset=[TARGET_ID]), present, TARGET_ID, "Target")
    links = match_sections(keys[PAIR], src, tgt, S_ROW, T_ROW)
    merged = links.merge(keys, on=PAIR, how="left", validate="many_to_one")
    merged = pd.concat([merged.reset_index(drop=True),
                        _take(src, links[S_ROW]), _take(tgt, links[T_ROW])], axis=1)
    merged[_PRESENT] = links[T_ROW].notna().to_numpy()
    merged[MAP_BY] = merged[f"Target_{LABELS['map_by']}"]
    merged[COMMENT] = comments(merged)
    return merged[list(ANALYSIS_COLUMNS)]


def _reports(keys: pd.DataFrame, details: pd.DataFrame, key: str, side: str) -> pd.DataFrame:
    """The reports of one side, one row per (pair, report), numbered in ``side``'s row
    column (``S_ROW``/``T_ROW``) in pair order, then the details' order."""
    fields = [*COMPARED_FIELDS, "map_by"] if side == "Target" else list(COMPARED_FIELDS)
    renamed = {name: f"{side}_{LABELS[name]}" for name in fields}
    reports = details[[SCAN_ID, *fields]].rename(columns={SCAN_ID: key, **renamed})
    reports[key] = reports[key].astype("Int64" if key == TARGET_ID else "int64")
    reports[_RANK] = np.arange(len(reports), dtype=np.int64)
    out = keys[[PAIR, key]].merge(reports, on=key, how="inner")
    out = out.sort_values([PAIR, _RANK], kind="stable").reset_index(drop=True)
    out[_SECTION_ID] = out[f"{side}_{LABELS['section_id']}"]
    out[_SECTION_NAME] = out[f"{side}_{LABELS['section_name']}"]
    out[S_ROW if side == "Source" else T_ROW] = np.arange(len(out), dtype=np.int64)
    return out.drop(columns=[key, _RANK])


def match_sections(pairs: pd.Series, src: pd.DataFrame, tgt: pd.DataFrame,
                   s_row: str, t_row: str) -> pd.DataFrame:
    """SPEC §7's matching, as (PAIR, s_row, t_row) links in output order: every report
    of ``src``/``tgt`` (frames with ``PAIR``, the row column, ``_SECTION_ID``,
    ``_SECTION_NAME``) in exactly one link, a missing row number where it has no
    partner, and one link with neither for a pair without reports."""
    s_free = src[[PAIR, s_row, _SECTION_ID, _SECTION_NAME]]
    t_free = tgt[[PAIR, t_row, _SECTION_ID, _SECTION_NAME]]
    links = []
    for column in (_SECTION_ID, _SECTION_NAME):
        # The n-th report of a section on one side goes with the n-th on the other (a
        # section can have several reports, one per bay).
        found = _ranked(s_free, column).merge(_ranked(t_free, column),
                                              on=[PAIR, column, _RANK])[[PAIR, s_row, t_row]]
        links.append(found)
        s_free = s_free[~s_free[s_row].isin(found[s_row])]
        t_free = t_free[~t_free[t_row].isin(found[t_row])]
    last = _alone(s_free).merge(_alone(t_free), on=PAIR)[[PAIR, s_row, t_row]]
    links.append(last)
    links.append(s_free.loc[~s_free[s_row].isin(last[s_row]), [PAIR, s_row]])
    links.append(t_free.loc[~t_free[t_row].isin(last[t_row]), [PAIR, t_row]])
    linked = pd.concat(links, ignore_index=True)
    bare = pairs[~pairs.isin(linked[PAIR])].to_frame(PAIR)
    out = pd.concat([linked, bare], ignore_index=True).astype(
        {PAIR: "int64", s_row: "Int64", t_row: "Int64"})
    out = out.sort_values([PAIR, s_row, t_row], na_position="last", kind="stable")
    return out.reset_index(drop=True)


def _ranked(free: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows with a ``column`` value, each with its rank among its pair's rows of the
    same value."""
    known = free.dropna(subset=[column])
    return known.assign(**{_RANK: known.groupby([PAIR, column], sort=False).cumcount()}
                        ).drop(columns=[c for c in (_SECTION_ID, _SECTION_NAME) if c != column])


def _alone(free: pd.DataFrame) -> pd.DataFrame:
    """The rows that are the only one left in their pair."""
    return free[free.groupby(PAIR)[PAIR].transform("size") == 1].drop(
        columns=[_SECTION_ID, _SECTION_NAME])


def _take(side: pd.DataFrame, rows: pd.Series) -> pd.DataFrame:
    """``side``'s value columns for each row number in ``rows`` (all missing where the
    number is missing)."""
    values = side.drop(columns=[PAIR, S_ROW, T_ROW, _SECTION_ID, _SECTION_NAME],
                       errors="ignore")
    return values.reindex(rows.fillna(-1).to_numpy(dtype=np.int64)).reset_index(drop=True)


def comments(merged: pd.DataFrame) -> pd.Categorical:
    """§7: for each row the first comment whose rule applies (vectorised)."""
    def col(side: str, name: str) -> pd.Series:
        return merged[f"{side}_{LABELS[name]}"]

    # A row without a target report: no target, its target unprocessed, or unmatched.
    missing = ~merged[_PRESENT].fillna(False).astype(bool)
    wrong_pog = _differs(col("Source", "planogram_name"), col("Target", "planogram_name"))
    other_section = _differs(col("Source", "section_name"), col("Target", "section_name"))
    additional = (col("Target", "is_additional_section").fillna(False).astype(bool)
                  & ~col("Source", "is_additional_section").fillna(False).astype(bool))
    higher = (col("Target", "pre_pog") > col("Source", "pre_pog")).fillna(False).astype(bool)
    rules = [missing, wrong_pog, other_section, additional, higher]
    codes = np.select([r.to_numpy(dtype=bool) for r in rules], list(range(len(rules))),
                      default=COMMENTS.index(Comment.NO_ISSUES)).astype(np.int64)
    return pd.Categorical.from_codes(codes, dtype=COMMENT_DTYPE)


def _differs(a: pd.Series, b: pd.Series) -> pd.Series:
    """Values differ; two missing values do not (nothing to tell apart), one does."""
    both_missing = a.isna() & b.isna()
    equal = (a == b).fillna(False).astype(bool)
    return ~(equal | both_missing)


def comment_counts(analysis: pd.DataFrame) -> dict[str, int]:
    """Rows per comment, every comment listed (zero included), in rule order."""
    counts = analysis[COMMENT].value_counts()
    return {c.value: int(counts.get(c.value, 0)) for c in COMMENTS}


def scan_counts(analysis: pd.DataFrame) -> dict[str, int]:
    """Pairs (source scan and its target) per worst comment of their rows, i.e. the
    first in rule order; every comment listed, in rule order."""
    codes = pd.Series(analysis[COMMENT].cat.codes.to_numpy(), index=analysis.index)
    worst = codes.groupby([analysis[SOURCE_ID], analysis[TARGET_ID]], dropna=False,
                          sort=False).min()
    counts = np.bincount(worst.to_numpy(dtype=np.int64), minlength=len(COMMENTS))
    return {c.value: int(n) for c, n in zip(COMMENTS, counts, strict=True)}
