"""Names shared by the analysis modules: the §7 comments in rule order, their colours,
the detail fields and the column names of the CSV files and the workbook."""

from __future__ import annotations

from dataclasses import fields
from enum import StrEnum

from daemon.instances.base import ScanDetails


class Comment(StrEnum):
    """SPEC §7 comments, in the order their rules apply (the first that applies wins)."""

    MISSING = "Missing In Target"
    WRONG_POG = "Wrong POG Name Mapping"
    DIFFERENT_SECTION = "Same POG Name but Different Section"
    ADDITIONAL = "Target Has Additional Section (Source Does Not)"
    HIGHER_POG = "Target Has Higher POG% Than Source"
    NO_ISSUES = "No Issues"


COMMENTS: tuple[Comment, ...] = tuple(Comment)

# Fill colours (ARGB, light tints so black text stays readable) and the colour's name.
COLOURS: dict[Comment, tuple[str, str]] = {
    Comment.MISSING: ("FFD9D9D9", "grey"),
    Comment.WRONG_POG: ("FFFFC7CE", "red"),
    Comment.DIFFERENT_SECTION: ("FFFFD8A8", "orange"),
    Comment.ADDITIONAL: ("FFFFF2A8", "yellow"),
    Comment.HIGHER_POG: ("FFBDD7EE", "blue"),
    Comment.NO_ISSUES: ("FFC6EFCE", "green"),
}

RULES: dict[Comment, str] = {
    Comment.MISSING: "no target scan, or the target scan has no report yet",
    Comment.WRONG_POG: "planogram names differ",
    Comment.DIFFERENT_SECTION: "same planogram name, section names differ",
    Comment.ADDITIONAL: "target section is additional, source section is not",
    Comment.HIGHER_POG: "target pre POG % is higher than source pre POG %",
    Comment.NO_ISSUES: "none of the above",
}

# ScanDetails field → the column label used in every output file (the majority-v2
# fields keep the old scripts' names, which their users know).
LABELS: dict[str, str] = {
    "report_id": "Report_ID",
    "store_planogram_id": "Store_POG_ID",
    "planogram_id": "POG_ID",
    "planogram_name": "POG_Name",
    "section_id": "Section_ID",
    "section_name": "Section_Name",
    "is_additional_section": "Is_Additional_Section",
    "pre_pog": "Pre_POG_%",
    "post_pog": "Post_POG_%",
    "pre_osa": "Pre_OSA_%",
    "post_osa": "Post_OSA_%",
    "ok_count": "OK_Count",
    "wandering_count": "Wandering_Count",
    "oos_count": "OOS_Count",
    "hole_count": "Hole_Count",
    "compliance_date": "Compliance_Date",
    "compliance_fallback": "Compliance_Fallback",
    "majority_v2_id": "majority_v2_id",
    "majority_store_planogram_id": "majority_store_planogram_id",
    "majority_created_at": "majority_created_at",
    "map_by": "map_by_value",
}
DETAIL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ScanDetails))
assert set(LABELS) == set(DETAIL_FIELDS), "a ScanDetails field has no column label"

INT_FIELDS = ("report_id", "store_planogram_id", "planogram_id", "section_id", "ok_count",
              "wandering_count", "oos_count", "hole_count", "majority_v2_id",
              "majority_store_planogram_id")
FLOAT_FIELDS = ("pre_pog", "post_pog", "pre_osa", "post_osa")
TEXT_FIELDS = ("planogram_name", "section_name", "compliance_date", "majority_created_at",
               "map_by")
BOOL_FIELDS = ("is_additional_section", "compliance_fallback")
assert set(INT_FIELDS + FLOAT_FIELDS + TEXT_FIELDS + BOOL_FIELDS) == set(DETAIL_FIELDS)

# The fields analysis.csv shows side by side, source then target (QA reads them as pairs).
COMPARED_FIELDS: tuple[str, ...] = (
    "report_id", "store_planogram_id", "planogram_name", "section_id", "section_name",
    "is_additional_section", "pre_pog", "post_pog", "pre_osa", "post_osa",
    "compliance_date", "compliance_fallback", "ok_count", "wandering_count", "oos_count",
    "hole_count",
)

SOURCE_ID = "Source_Scan_ID"
TARGET_ID = "Target_Scan_ID"
MAP_BY = "MAv2_Map_by"  # how majority v2 mapped the target scan (the target's map_by)
COMMENT = "comment"

# The details frame of one instance (``details.read_details``): one row per report of
# each scan found (one row without report fields for a scan that has none).
SCAN_ID, STATUS, HAS_REPORT = "scan_id", "status", "has_report"
STORE_NAME, CATEGORY_NAME = "store_name", "category_name"

# analysis.csv / the workbook: one row per section (report) of each pair: the IDs, each
# compared field's source and target value side by side, MAv2_Map_by, the comment.
ANALYSIS_COLUMNS: tuple[str, ...] = (
    SOURCE_ID, TARGET_ID,
    *(f"{side}_{LABELS[name]}" for name in COMPARED_FIELDS for side in ("Source", "Target")),
    MAP_BY, COMMENT,
)

# source_scandetails.csv / target_scandetails.csv: one row per report of each scan.
PLANOGRAM_COUNTS = ("planogram_unique_count", "planogram_all_count")
DETAILS_COLUMNS: tuple[str, ...] = ("Scan_ID", "Found", "Status", "Has_Report", "Store_Name",
                                    "Category_Name", *PLANOGRAM_COUNTS,
                                    *(LABELS[name] for name in DETAIL_FIELDS))

# The matching rule of SPEC §7, as the Legend and the README say it.
MATCHING_RULE: tuple[str, ...] = (
    "One row per section: a scan's realogram has one compliance report per section (and "
    "bay).",
    "Within a pair, a source report goes with the target report of the same section ID, "
    "else of the same section name, else, when exactly one report is left on each side, "
    "with that one.",
    "A source report left without a partner is Missing In Target; a target report left "
    "without a partner is compared with an empty source (so its planogram name differs).",
    "A pair whose scans have no report at all is one row. No section is ever dropped.",
    "Summary counts rows, and scans by their worst comment (the first in this table).",
)
