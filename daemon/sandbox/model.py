"""Values the reference server shares with tests: ground truth, recognitions, records.

A seeded scan's *truth* (``ScanTruth``) is what its compliance report says. The same
truth is embedded in the header of each of its files, so a server that receives those
bytes in an upload (another ``RefServer``, the target of a copy) can "recognise" the
scan: it knows the source scan, its planogram, section and figures. Its recognition
(``Recognition``) records what it chose and the §7 comment an analysis must print.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What the simulated recognition of a created scan did."""

    SAME = "same"  # the source's planogram, section and figures
    OTHER_PLANOGRAM = "other_planogram"  # a planogram with another name
    OTHER_SECTION = "other_section"  # same planogram, a section with another name
    ADDITIONAL_SECTION = "additional_section"  # same names, but an additional section
    HIGHER_POG = "higher_pog"  # same as source, pre POG % higher
    NO_REPORT = "no_report"  # status done, has_report false: no report at all
    SECTION_NOT_FOUND = "section_not_found"  # processed, but no report of its section
    MAPPED = "mapped"  # mapped mode: the payload's section/store planogram kept
    UNKNOWN_SOURCE = "unknown_source"  # files carry no truth header: a pick of its own


AUTO_OUTCOMES: tuple[Outcome, ...] = (
    Outcome.SAME,
    Outcome.OTHER_PLANOGRAM,
    Outcome.OTHER_SECTION,
    Outcome.ADDITIONAL_SECTION,
    Outcome.HIGHER_POG,
    Outcome.NO_REPORT,
)


class Comment(StrEnum):
    """The comments of SPEC §7, in the order the rules apply."""

    MISSING = "Missing In Target"
    WRONG_POG = "Wrong POG Name Mapping"
    DIFFERENT_SECTION = "Same POG Name but Different Section"
    ADDITIONAL = "Target Has Additional Section (Source Does Not)"
    HIGHER_POG = "Target Has Higher POG% Than Source"
    NO_ISSUES = "No Issues"


@dataclass(frozen=True)
class ReportValues:
    """What one compliance report says, by name (IDs differ between instances)."""

    planogram_name: str
    category_name: str
    section_name: str
    is_additional: bool
    aisle_name: str
    pre_compliance: float
    post_compliance: float
    pre_osa: float
    post_osa: float
    correct: int
    wandering: int
    missing: int
    empty: int
    section_id: int | None = None  # in the database of the server that holds the report

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> ReportValues:
        """From a ``RefServer.scan_details()`` row (category and aisle left empty)."""
        return cls(
            planogram_name=details["planogram_name"],
            category_name="",
            section_name=details["section_name"],
            is_additional=bool(details["is_additional_section"]),
            aisle_name="",
            pre_compliance=details["pre_pog"],
            post_compliance=details["post_pog"],
            pre_osa=details["pre_osa"],
            post_osa=details["post_osa"],
            correct=details["ok_count"],
            wandering=details["wandering_count"],
            missing=details["oos_count"],
            empty=details["hole_count"],
            section_id=details.get("section_id"),
        )

    def compliance_rates(self) -> dict[str, float | int]:
        """The ``compliance_rates`` JSON of the report row."""
        return {
            "correct": self.correct,
            "wandering": self.wandering,
            "missing": self.missing,
            "empty": self.empty,
            "osa": self.post_osa,
        }


@dataclass(frozen=True)
class ScanTruth:
    """The ground truth of one seeded scan, as embedded in its files' headers: its first
    report (``values``) and the reports of its other sections (``extra``)."""

    source_scan_id: int
    store_id: int
    values: ReportValues
    extra: tuple[ReportValues, ...] = ()

    @property
    def sections(self) -> tuple[ReportValues, ...]:
        """Every report of the scan, first one first."""
        return (self.values, *self.extra)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_scan_id": self.source_scan_id,
            "store_id": self.store_id,
            "values": asdict(self.values),
            "extra": [asdict(v) for v in self.extra],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanTruth:
        return cls(
            int(data["source_scan_id"]), int(data["store_id"]), ReportValues(**data["values"]),
            tuple(ReportValues(**v) for v in data.get("extra", ())),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode()


def comment_for(source: ReportValues | None, target: ReportValues | None) -> Comment:
    """SPEC §7: the first comment that applies to a source/target pair."""
    if target is None:
        return Comment.MISSING
    if source is None:
        return Comment.WRONG_POG
    if source.planogram_name != target.planogram_name:
        return Comment.WRONG_POG
    if source.section_name != target.section_name:
        return Comment.DIFFERENT_SECTION
    if target.is_additional and not source.is_additional:
        return Comment.ADDITIONAL
    if target.pre_compliance > source.pre_compliance:
        return Comment.HIGHER_POG
    return Comment.NO_ISSUES


@dataclass(frozen=True)
class ExpectedRow:
    """One row an analysis must print for a pair: the source report and the target
    report it goes with (None: that side is empty), and the row's comment."""

    source: ReportValues | None
    target: ReportValues | None
    comment: Comment


def match_reports(source: Sequence[ReportValues], target: Sequence[ReportValues]
                  ) -> list[tuple[ReportValues | None, ReportValues | None]]:
    """SPEC §7's matching within a pair, written plainly: same section ID, else same
    section name (the n-th of a kind with the n-th), else the one report left on each
    side; the rest alone. Source reports in order first, then the unmatched target."""
    partner: dict[int, int] = {}
    for key in ("section_id", "section_name"):
        taken: set[int] = set(partner.values())
        for i, report in enumerate(source):
            value = getattr(report, key)
            if i in partner or value is None:
                continue
            j = next((j for j, t in enumerate(target)
                      if j not in taken and getattr(t, key) == value), None)
            if j is not None:
                partner[i] = j
                taken.add(j)
    left_source = [i for i in range(len(source)) if i not in partner]
    left_target = [j for j in range(len(target)) if j not in partner.values()]
    if len(left_source) == 1 and len(left_target) == 1:
        partner[left_source[0]] = left_target[0]
    rows: list[tuple[ReportValues | None, ReportValues | None]] = [
        (s, target[partner[i]] if i in partner else None) for i, s in enumerate(source)]
    rows += [(None, t) for j, t in enumerate(target) if j not in partner.values()]
    return rows or [(None, None)]


def expected_rows(source: Sequence[ReportValues], target: Sequence[ReportValues] | None
                  ) -> list[ExpectedRow]:
    """The rows of a pair (``target`` None: no target scan, or no report yet)."""
    if target is None:
        return [ExpectedRow(s, None, Comment.MISSING) for s in source] or \
            [ExpectedRow(None, None, Comment.MISSING)]
    return [ExpectedRow(s, t, comment_for(s, t)) for s, t in match_reports(source, target)]


@dataclass(frozen=True)
class AppliedReport:
    """What processing wrote for a created scan (IDs are the target database's)."""

    realogram_id: int
    planogram_id: int | None
    store_planogram_id: int | None
    section_id: int | None
    values: ReportValues


@dataclass
class Recognition:
    """Ground truth for one scan created through the API.

    ``truth`` is the source scan's truth, read from the uploaded files (None when they
    carry none). ``expected_comment`` is what an analysis of source vs this scan must
    say; for auto outcomes it is known at creation, for mapped ones once processed.
    """

    scan_id: int
    store_id: int
    mode: str  # "auto" or "mapped"
    outcome: Outcome
    truth: ScanTruth | None
    payload: dict[str, Any]
    applied: AppliedReport | None = None  # the first report
    processed: bool = False
    applied_all: tuple[AppliedReport, ...] = ()  # every report written, first one first
    extra_section: bool = False  # the target got a section the source does not have
    map_by: dict[int, str] = field(default_factory=dict)  # majority v2, by store planogram

    @property
    def source_scan_id(self) -> int | None:
        return self.truth.source_scan_id if self.truth else None

    @property
    def expected_comment(self) -> Comment | None:
        if self.outcome == Outcome.NO_REPORT:
            return Comment.MISSING
        if self.truth is None:
            return None  # the source is unknown to this server
        if self.processed:
            target = self.applied.values if self.applied else None
            return comment_for(self.truth.values, target)
        return NOMINAL_COMMENTS.get(self.outcome)

    @property
    def expected_rows(self) -> list[ExpectedRow] | None:
        """Every row an analysis of source vs this scan must print, one per section
        (see ``match_reports``); None while unprocessed or when the source is unknown."""
        if self.truth is None or not self.processed:
            return None
        if self.outcome == Outcome.NO_REPORT or not self.applied_all:
            return expected_rows(self.truth.sections, None)
        return expected_rows(self.truth.sections, [a.values for a in self.applied_all])


NOMINAL_COMMENTS: dict[Outcome, Comment] = {
    Outcome.SAME: Comment.NO_ISSUES,
    Outcome.OTHER_PLANOGRAM: Comment.WRONG_POG,
    Outcome.OTHER_SECTION: Comment.DIFFERENT_SECTION,
    Outcome.ADDITIONAL_SECTION: Comment.ADDITIONAL,
    Outcome.HIGHER_POG: Comment.HIGHER_POG,
    Outcome.NO_REPORT: Comment.MISSING,
    Outcome.SECTION_NOT_FOUND: Comment.MISSING,
}


@dataclass(frozen=True)
class SeededFile:
    """One seeded file. ``sha256`` of big generated files: ``SeedResult.sha256()``."""

    file_id: int
    scan_id: int
    original_filename: str
    size: int
    storage: str  # "disk" or "generated"


@dataclass
class SeedResult:
    """What ``RefServer.seed()`` created."""

    store_ids: list[int]
    scan_ids: list[int]
    files: dict[int, list[SeededFile]]  # by scan ID
    truths: dict[int, ScanTruth]  # by scan ID
    _sha256: Any = field(repr=False, default=None)  # callable file_id -> hex digest

    def sha256(self, file_id: int) -> str:
        """Expected sha256 of a file's bytes (computed on first ask for big files)."""
        return str(self._sha256(file_id))

    def all_files(self) -> list[SeededFile]:
        return [f for scan_id in self.scan_ids for f in self.files[scan_id]]

    def expected_sha256(self) -> dict[int, str]:
        """Every seeded file's sha256 by file ID (generates big files: may be slow)."""
        return {f.file_id: self.sha256(f.file_id) for f in self.all_files()}


@dataclass(frozen=True)
class ReceivedCreate:
    """A create-scan request as received (payload exactly as sent) and answered."""

    payload: Any
    outcome: str  # HTTP status as text, or the fault ("reset", "timeout", ...)
    scan_id: int | None


@dataclass(frozen=True)
class RecordedRequest:
    """A request to the blob listener: what arrived, headers included."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def has_authorization(self) -> bool:
        """True when an Authorization header (any case) arrived."""
        return any(k.lower() == "authorization" for k in self.headers)


def capture_time(value: Any) -> datetime | None:
    """A payload's ``captured_at`` as the platform takes it: ISO 8601 text or integer
    epoch seconds (the old scripts sent the latter); naive times are UTC; None if it is
    neither."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        when = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
