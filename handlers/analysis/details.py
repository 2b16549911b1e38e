"""Scan details of one instance as a DataFrame: one row per compliance report of each
scan found (one row without report fields for a scan that has none), typed columns.

Read through ``Instance.get_scans`` in chunks (a platform runs its queries per chunk
with ``= ANY(%s)`` in read-only transactions). Building the Scan objects costs about
0.06 ms CPU per scan; on the reference platform the details query itself dominates, so
there is no separate bulk reader (bench/README.md, "Reading details").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from daemon.instances.base import Instance, Scan
from handlers.analysis.model import (
    BOOL_FIELDS,
    CATEGORY_NAME,
    DETAIL_FIELDS,
    DETAILS_COLUMNS,
    FLOAT_FIELDS,
    HAS_REPORT,
    INT_FIELDS,
    LABELS,
    PLANOGRAM_COUNTS,
    SCAN_ID,
    STATUS,
    STORE_NAME,
    TEXT_FIELDS,
)

CHUNK = 5000  # scans per get_scans call: one query per chunk on a platform
REPORTED = "reported"  # details present (a compliance report row exists)
FRAME_COLUMNS: tuple[str, ...] = (SCAN_ID, STATUS, HAS_REPORT, REPORTED, STORE_NAME,
                                   CATEGORY_NAME, *DETAIL_FIELDS)


def read_details(instance: Instance, scan_ids: Sequence[int], *,
                 between_chunks: Callable[[int], None] = lambda done: None,
                 chunk: int = CHUNK) -> pd.DataFrame:
    """The details of the scans that exist among ``scan_ids`` (``FRAME_COLUMNS``, typed
    by ``typed``). ``between_chunks(done)`` is called after each chunk: a progress hook
    that may raise ``Interrupted``. Raises what the instance raises (``TransientError``,
    ``FatalError``; a corrupt folder scan: ``PermanentError``)."""
    ids = list(dict.fromkeys(int(i) for i in scan_ids))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), chunk):
        for scan in instance.get_scans(ids[start:start + chunk]):
            rows.extend(_rows(scan))
        between_chunks(min(start + chunk, len(ids)))
    return frame_from_rows(rows)


def frame_from_rows(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A typed details frame from dicts holding ``FRAME_COLUMNS`` keys."""
    frame = pd.DataFrame.from_records(list(rows), columns=list(FRAME_COLUMNS))
    return typed(frame)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in ``FRAME_COLUMNS`` order with one dtype each, whatever the reader gave:
    nullable integers (IDs and counts print without ``.0``), floats for percentages,
    nullable booleans, text as objects (None when missing)."""
    out = pd.DataFrame(index=frame.index)
    out[SCAN_ID] = pd.to_numeric(frame[SCAN_ID]).astype("int64")
    out[STATUS] = frame[STATUS].astype(object).where(frame[STATUS].notna(), None)
    out[HAS_REPORT] = frame[HAS_REPORT].fillna(False).astype(bool)
    out[REPORTED] = frame[REPORTED].fillna(False).astype(bool)
    for name in (STORE_NAME, CATEGORY_NAME):
        out[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in DETAIL_FIELDS:
        column = frame[name]
        if name in INT_FIELDS:
            out[name] = pd.to_numeric(column, errors="coerce").round().astype("Int64")
        elif name in FLOAT_FIELDS:
            out[name] = pd.to_numeric(column, errors="coerce").astype("float64")
        elif name in BOOL_FIELDS:
            out[name] = column.astype("boolean")
        else:
            assert name in TEXT_FIELDS
            out[name] = column.astype(object).where(column.notna(), None)
    # Without a report the defaults of ScanDetails (is_additional False) mean nothing.
    out.loc[~out[REPORTED], list(BOOL_FIELDS)] = pd.NA
    return out.reset_index(drop=True)


def details_csv_frame(details: pd.DataFrame, scan_ids: Sequence[int]) -> pd.DataFrame:
    """What ``source_scandetails.csv`` / ``target_scandetails.csv`` hold: one row per
    report of each asked scan ID (first-seen order; one row for a scan without reports),
    ``Found`` false for the ones that do not exist; per scan the distinct planograms and
    the reports with a planogram (``PLANOGRAM_COUNTS``: more than one flags a scan
    mapped to several planograms)."""
    ids = pd.Series(list(dict.fromkeys(int(i) for i in scan_ids)), dtype="int64", name=SCAN_ID)
    merged = ids.to_frame().merge(details, on=SCAN_ID, how="left", validate="one_to_many",
                                  indicator=True)
    by_scan = merged.groupby(SCAN_ID, sort=False)["planogram_id"]
    out = pd.DataFrame({
        "Scan_ID": merged[SCAN_ID],
        "Found": merged["_merge"].eq("both"),
        "Status": merged[STATUS],
        "Has_Report": merged[HAS_REPORT].astype("boolean"),
        "Store_Name": merged[STORE_NAME],
        "Category_Name": merged[CATEGORY_NAME],
        PLANOGRAM_COUNTS[0]: by_scan.transform("nunique").astype("int64"),
        PLANOGRAM_COUNTS[1]: by_scan.transform("count").astype("int64"),
    })
    for name in DETAIL_FIELDS:
        out[LABELS[name]] = merged[name]
    return out[list(DETAILS_COLUMNS)]


def _rows(scan: Scan) -> list[dict[str, Any]]:
    """One row per report of ``scan`` (one without report fields when it has none)."""
    base = {SCAN_ID: scan.id, STATUS: scan.status, HAS_REPORT: scan.has_report,
            STORE_NAME: scan.store_name, CATEGORY_NAME: scan.category_name}
    if not scan.reports:
        return [{**base, REPORTED: False}]
    return [{**base, REPORTED: True, **vars(report)} for report in scan.reports]
