"""The comparison of SPEC §7, pure and columnar: pandas merges on the pair mapping and
vectorised rules, no per-row Python. Nothing here does I/O.

A pair is compared only with the target scan its mapping names: a pair without a target
(``Target_Scan_ID`` missing) is ``Missing In Target``, never matched with some other
scan. That holds by construction: the target details are joined on the pair's own
target ID, and missing keys never join (the details frame holds no missing IDs).
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
    DETAIL_FIELDS,
    HAS_REPORT,
    LABELS,
    SCAN_ID,
    SOURCE_ID,
    TARGET_ID,
    Comment,
)

_PRESENT = "__target_present"
COMMENT_DTYPE = pd.CategoricalDtype([c.value for c in COMMENTS], ordered=True)


def pairs_frame(pairs: Sequence[tuple[int, int | None]]) -> pd.DataFrame:
    """The pairs as two columns: source IDs (int64), target IDs (Int64, NA: none)."""
    return pd.DataFrame({
        SOURCE_ID: pd.array([p[0] for p in pairs], dtype="int64"),
        TARGET_ID: pd.array([p[1] for p in pairs], dtype="Int64"),
    })


def compare(pairs: pd.DataFrame, source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """One row per pair (in the pairs' order) with ``ANALYSIS_COLUMNS``; ``comment`` is a
    categorical of the §7 comments. ``source``/``target`` are details frames
    (``details.FRAME_COLUMNS``); every pair's source must be in ``source`` (pairs whose
    source does not exist are the caller's failed items). Raises ``ValueError`` when a
    details frame lists a scan twice."""
    src = _side(source, "Source", SOURCE_ID).drop(columns=[_PRESENT])
    tgt = _side(target, "Target", TARGET_ID)
    keys = pairs[[SOURCE_ID, TARGET_ID]].astype({SOURCE_ID: "int64", TARGET_ID: "Int64"})
    merged = keys.merge(src, on=SOURCE_ID, how="left", validate="many_to_one")
    merged = merged.merge(tgt, on=TARGET_ID, how="left", validate="many_to_one")
    merged[COMMENT] = comments(merged)
    return merged[list(ANALYSIS_COLUMNS)]


def _side(details: pd.DataFrame, side: str, key: str) -> pd.DataFrame:
    """The details renamed for one side of the comparison, keyed by that side's ID."""
    renamed = {name: f"{side}_{LABELS[name]}" for name in DETAIL_FIELDS}
    out = details[[SCAN_ID, *DETAIL_FIELDS]].rename(columns={SCAN_ID: key, **renamed})
    out[key] = out[key].astype("Int64" if key == TARGET_ID else "int64")
    out[_PRESENT] = (details[HAS_REPORT] & details[REPORTED]).to_numpy()
    return out


def comments(merged: pd.DataFrame) -> pd.Categorical:
    """§7: for each row the first comment whose rule applies (vectorised)."""
    def col(side: str, name: str) -> pd.Series:
        return merged[f"{side}_{LABELS[name]}"]

    # A target without a scan row (unmapped, or not found) has no _PRESENT value.
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
