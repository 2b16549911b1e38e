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

# ScanDetails field → the column label used in every output file.
LABELS: dict[str, str] = {
    "store_planogram_id": "Store_POG_ID",
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
}
DETAIL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ScanDetails))
assert set(LABELS) == set(DETAIL_FIELDS), "a ScanDetails field has no column label"

INT_FIELDS = ("store_planogram_id", "section_id", "ok_count", "wandering_count", "oos_count",
              "hole_count")
FLOAT_FIELDS = ("pre_pog", "post_pog", "pre_osa", "post_osa")
TEXT_FIELDS = ("planogram_name", "section_name")
BOOL_FIELDS = ("is_additional_section",)

SOURCE_ID = "Source_Scan_ID"
TARGET_ID = "Target_Scan_ID"
COMMENT = "comment"

# The details frame of one instance (``details.read_details``): one row per scan found.
SCAN_ID, STATUS, HAS_REPORT = "scan_id", "status", "has_report"

# analysis.csv / the workbook: IDs, then each field's source and target value side by
# side (QA reads them as pairs), then the comment.
ANALYSIS_COLUMNS: tuple[str, ...] = (
    SOURCE_ID, TARGET_ID,
    *(f"{side}_{LABELS[name]}" for name in DETAIL_FIELDS for side in ("Source", "Target")),
    COMMENT,
)

# source_scandetails.csv / target_scandetails.csv
DETAILS_COLUMNS: tuple[str, ...] = ("Scan_ID", "Found", "Status", "Has_Report",
                                    *(LABELS[name] for name in DETAIL_FIELDS))
