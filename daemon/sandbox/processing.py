"""Simulated processing of created scans: after a delay a scan becomes done, with a
realogram, a compliance report and store-planogram compliance figures.

Recognition: in *auto* mode (payload without ``section_id``/``store_planogram``) the
server maps the scan itself from the source truth in the uploaded files' headers.
Most of the time it finds the source's planogram and section; sometimes another
planogram, another section, the additional twin of the section, a higher pre POG %,
or no report at all (and, only when forced, a processed scan without a report of its
section: ``SECTION_NOT_FOUND``). The choice is a pure function of (policy seed, source scan,
target store), so it does not depend on thread timing, and ``force()`` overrides it.
In *mapped* mode the payload's ``section_id`` and ``store_planogram`` are kept.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from . import catalogue, db
from .db import Conn
from .model import (
    AUTO_OUTCOMES,
    AppliedReport,
    Outcome,
    Recognition,
    ReportValues,
    ScanTruth,
    capture_time,
)
from .seed import random_values

DEFAULT_WEIGHTS: dict[Outcome, float] = {
    Outcome.SAME: 0.60,
    Outcome.OTHER_PLANOGRAM: 0.10,
    Outcome.OTHER_SECTION: 0.10,
    Outcome.ADDITIONAL_SECTION: 0.08,
    Outcome.HIGHER_POG: 0.08,
    Outcome.NO_REPORT: 0.04,
}


@dataclass
class RecognitionPolicy:
    """How auto-mode recognition chooses. ``forced`` maps source scan IDs to outcomes."""

    weights: dict[Outcome, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    seed: int = 0
    forced: dict[int, Outcome] = field(default_factory=dict)
    extra_sections: set[int] = field(default_factory=set)  # source scans: one more section


def is_mapped(payload: dict[str, Any]) -> bool:
    return payload.get("section_id") is not None or payload.get("store_planogram") is not None


def _feasible(outcome: Outcome, truth: ScanTruth) -> Outcome:
    """Fall back to SAME where an outcome cannot change the §7 comment."""
    if outcome == Outcome.ADDITIONAL_SECTION and truth.values.is_additional:
        return Outcome.SAME
    if outcome == Outcome.HIGHER_POG and truth.values.pre_compliance >= 98.0:
        return Outcome.SAME
    return outcome


def choose_outcome(
    policy: RecognitionPolicy, payload: dict[str, Any], truth: ScanTruth | None, store_id: int
) -> Outcome:
    """The outcome for a new scan (deterministic; see the module docstring)."""
    if is_mapped(payload):
        return Outcome.MAPPED
    if truth is None:
        return Outcome.UNKNOWN_SOURCE
    forced = policy.forced.get(truth.source_scan_id)
    if forced is not None:
        return _feasible(forced, truth)
    rng = random.Random(f"{policy.seed}:{truth.source_scan_id}:{store_id}")
    outcomes = [o for o in AUTO_OUTCOMES if policy.weights.get(o, 0.0) > 0]
    if not outcomes:
        return Outcome.SAME
    weights = [policy.weights[o] for o in outcomes]
    return _feasible(rng.choices(outcomes, weights)[0], truth)


@dataclass(frozen=True)
class Target:
    planogram_id: int | None
    section_id: int | None
    values: ReportValues


def _with_section(
    values: ReportValues, pog: catalogue.Planogram, section: catalogue.Section
) -> ReportValues:
    return replace(
        values,
        planogram_name=pog.name,
        category_name=pog.category_name,
        section_name=section.name,
        is_additional=section.additional,
    )


def _other_planogram(conn: Conn, rng: random.Random, values: ReportValues) -> Target:
    others = [
        p
        for p in catalogue.load_catalogue(conn)
        if p.name != values.planogram_name and any(not s.additional for s in p.sections)
    ]
    if not others:
        pid = catalogue.planogram_id(conn, f"{values.planogram_name} (alt)", values.category_name)
        catalogue.section_id(conn, pid, values.section_name, additional=False)
        others = [p for p in catalogue.load_catalogue(conn) if p.id == pid]
    pog = rng.choice(others)
    section = rng.choice([s for s in pog.sections if not s.additional])
    return Target(pog.id, section.id, _with_section(values, pog, section))


def _other_section(conn: Conn, rng: random.Random, values: ReportValues,
                   avoid: frozenset[str] = frozenset()) -> Target:
    """A section of the same planogram with another name (none of ``avoid`` either:
    the scan's other sections)."""
    pid = catalogue.planogram_id(conn, values.planogram_name, values.category_name)
    pog = next(p for p in catalogue.load_catalogue(conn) if p.id == pid)
    others = [s for s in pog.sections if s.name not in avoid | {values.section_name}]
    if not others:
        catalogue.section_id(conn, pid, f"{values.section_name} (B)", additional=False)
        pog = next(p for p in catalogue.load_catalogue(conn) if p.id == pid)
        others = [s for s in pog.sections if s.name not in avoid | {values.section_name}]
    section = rng.choice(others)
    return Target(pid, section.id, _with_section(values, pog, section))


def _same(conn: Conn, values: ReportValues) -> Target:
    pid = catalogue.planogram_id(conn, values.planogram_name, values.category_name)
    sid = catalogue.section_id(conn, pid, values.section_name, values.is_additional)
    return Target(pid, sid, values)


def _unknown(conn: Conn, rng: random.Random) -> Target:
    pogs = [p for p in catalogue.load_catalogue(conn) if p.sections]
    if not pogs:
        catalogue.ensure_catalogue(conn, [])
        pogs = [p for p in catalogue.load_catalogue(conn) if p.sections]
    pog = rng.choice(pogs)
    section = rng.choice(pog.sections)
    return Target(pog.id, section.id, random_values(rng, pog, section))


def _planogram_of_store_planogram(conn: Conn, spid: object) -> int | None:
    if not isinstance(spid, int):
        return None
    row = conn.execute(
        "SELECT planogram_id FROM planograms_implementation_planogramstore WHERE id = %s", (spid,)
    ).fetchone()
    return int(row[0]) if row else None


def _mapped(conn: Conn, rng: random.Random, rec: Recognition) -> Target:
    """Keep the payload's section and store planogram; names come from this database
    where it knows the IDs, else from the source truth."""
    base = rec.truth.values if rec.truth else _unknown(conn, rng).values
    raw_sid = rec.payload.get("section_id")
    sid = raw_sid if isinstance(raw_sid, int) else None
    pogs = {p.id: p for p in catalogue.load_catalogue(conn)}
    for pog in pogs.values():
        for section in pog.sections:
            if section.id == sid:
                return Target(pog.id, sid, _with_section(base, pog, section))
    # an unknown section has no products here, so it cannot be additional
    base = replace(base, is_additional=False)
    pid = _planogram_of_store_planogram(conn, rec.payload.get("store_planogram"))
    if pid in pogs:
        pog = pogs[pid]
        return Target(
            pid, sid, replace(base, planogram_name=pog.name, category_name=pog.category_name)
        )
    return Target(None, sid, base)


def resolve(conn: Conn, rec: Recognition, seed: int) -> Target:
    """Where a recognised scan lands in this database (creating catalogue rows as needed)."""
    rng = random.Random(f"{seed}:{rec.source_scan_id or rec.scan_id}:{rec.store_id}:resolve")
    if rec.outcome == Outcome.MAPPED:
        return _mapped(conn, rng, rec)
    if rec.truth is None:
        return _unknown(conn, rng)
    values = rec.truth.values
    if rec.outcome == Outcome.OTHER_PLANOGRAM:
        return _other_planogram(conn, rng, values)
    if rec.outcome == Outcome.OTHER_SECTION:
        avoid = frozenset(v.section_name for v in rec.truth.sections)
        return _other_section(conn, rng, values, avoid)
    if rec.outcome == Outcome.ADDITIONAL_SECTION:
        return _same(conn, replace(values, is_additional=True))
    if rec.outcome == Outcome.HIGHER_POG:
        higher = round(min(100.0, values.pre_compliance + rng.uniform(2.0, 10.0)), 2)
        return _same(conn, replace(values, pre_compliance=higher))
    return _same(conn, values)


def _store_planogram(conn: Conn, rec: Recognition, target: Target,
                     first: bool = True) -> int | None:
    kept = rec.payload.get("store_planogram")
    if first and rec.outcome == Outcome.MAPPED and isinstance(kept, int):
        return kept
    if target.planogram_id is None:
        return None
    return catalogue.store_planogram_id(conn, target.planogram_id, rec.store_id)


def scan_date(payload: dict[str, Any]) -> datetime:
    """The capture time of a payload (UTC when naive), else now."""
    return capture_time(payload.get("captured_at")) or datetime.now(UTC)


def _targets(conn: Conn, rec: Recognition, seed: int) -> list[Target]:
    """Where each section of a recognised scan lands: the first by its outcome, the
    source's other sections as they are, and (``extra_section``) one section of the
    first's planogram that the source does not have."""
    first = resolve(conn, rec, seed)
    targets = [first] + [_same(conn, v) for v in (rec.truth.extra if rec.truth else ())]
    if rec.extra_section and first.planogram_id is not None:
        rng = random.Random(f"{seed}:{rec.scan_id}:extra")
        taken = frozenset(t.values.section_name for t in targets)
        extra = _other_section(conn, rng, first.values, taken)
        targets.append(replace(extra, values=replace(
            extra.values, correct=rng.randint(20, 240), missing=rng.randint(0, 30))))
    return targets


def _one_day_figures(reports: list[tuple[int | None, Target]]) -> list[tuple[int | None, Target]]:
    """The platform keeps POG and OSA % per store planogram and day: reports of one
    store planogram show the figures of the first of them."""
    first: dict[int, ReportValues] = {}
    out = []
    for spid, target in reports:
        if spid is not None:
            shared = first.setdefault(spid, target.values)
            target = replace(target, values=_with_day_figures(target.values, shared))
        out.append((spid, target))
    return out


DayKey = tuple[int, date]  # (store planogram ID, day)


def day_figures(rec: Recognition) -> dict[DayKey, ReportValues]:
    """The figures ``rec``'s processing wrote, by store planogram and day: the platform
    keeps one row of POG and OSA % per store planogram and day, the latest scan's."""
    day = scan_date(rec.payload).date()
    return {(a.store_planogram_id, day): a.values for a in rec.applied_all
            if a.store_planogram_id is not None}


def with_current_figures(rec: Recognition, figures: dict[DayKey, ReportValues]) -> Recognition:
    """``rec`` with the figures its reports read now: a later scan of the same store
    planogram and day replaced them, so its ground truth follows."""
    day = scan_date(rec.payload).date()

    def now(report: AppliedReport) -> AppliedReport:
        spid = report.store_planogram_id
        latest = figures.get((spid, day)) if spid is not None else None
        return report if latest is None else replace(
            report, values=_with_day_figures(report.values, latest))

    current = tuple(now(a) for a in rec.applied_all)
    if current != rec.applied_all:
        rec.applied_all, rec.applied = current, current[0]
    return rec


def _with_day_figures(values: ReportValues, day: ReportValues) -> ReportValues:
    """``values`` with the POG and OSA % of ``day`` (its store planogram's row)."""
    return replace(values, pre_compliance=day.pre_compliance,
                   post_compliance=day.post_compliance, pre_osa=day.pre_osa,
                   post_osa=day.post_osa)


MAP_BY = ("majority", "section", "store_planogram")


def _log_majority(conn: Conn, rec: Recognition, spids: list[int], seed: int) -> None:
    """Majority v2 ran for each store planogram: a new newest log row that lists the
    earlier scans and, most of the time, this one (with how it was mapped)."""
    rng = random.Random(f"{seed}:{rec.scan_id}:majority")
    for spid in dict.fromkeys(spids):
        listed = rng.random() < 0.7
        map_by = rng.choice(MAP_BY)
        db.log_majority(conn, spid, rec.scan_id, map_by if listed else None)
        if listed:
            rec.map_by[spid] = map_by


def apply(conn: Conn, rec: Recognition, seed: int) -> None:
    """Write the processing result of one created scan."""
    if rec.outcome == Outcome.NO_REPORT:
        db.mark_done_without_report(conn, rec.scan_id)
        return
    if rec.outcome == Outcome.SECTION_NOT_FOUND:
        db.mark_done_without_section(conn, rec.scan_id)
        return
    targets = _targets(conn, rec, seed)
    placed = _one_day_figures([(_store_planogram(conn, rec, t, i == 0), t)
                               for i, t in enumerate(targets)])
    # The reports carry this database's section IDs (the matching goes by them).
    reports = [db.Report(t.planogram_id, spid, t.section_id,
                         replace(t.values, section_id=t.section_id)) for spid, t in placed]
    realogram = db.write_reports(conn, scan_id=rec.scan_id, reports=reports,
                                 scan_date=scan_date(rec.payload))
    rec.applied_all = tuple(AppliedReport(realogram, r.planogram_id, r.store_planogram_id,
                                          r.section_id, r.values) for r in reports)
    rec.applied = rec.applied_all[0]
    _log_majority(conn, rec, [r.store_planogram_id for r in reports
                              if r.store_planogram_id is not None], seed)


class Processor:
    """A background thread that processes created scans once their delay has passed."""

    def __init__(self, pool: ConnectionPool[Any], delay: float = 0.2) -> None:
        self.pool = pool
        self.delay = delay
        self.policy = RecognitionPolicy()
        self.errors: list[str] = []
        self._recognitions: dict[int, Recognition] = {}
        self._figures: dict[DayKey, ReportValues] = {}  # the latest, per store planogram and day
        self._due: list[tuple[float, int]] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="refserver-processing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def set_weights(self, weights: dict[Outcome, float], seed: int | None = None) -> None:
        """Outcome weights of auto recognition (e.g. ``{Outcome.SAME: 1}``)."""
        self.policy.weights = dict(weights)
        if seed is not None:
            self.policy.seed = seed

    def force(self, source_scan_id: int, outcome: Outcome) -> None:
        """Recognise copies of this source scan with ``outcome`` (where feasible)."""
        self.policy.forced[source_scan_id] = outcome

    def force_extra_section(self, source_scan_id: int) -> None:
        """Copies of this source scan get one more section than the source has."""
        self.policy.extra_sections.add(source_scan_id)

    def register(self, rec: Recognition) -> None:
        """Schedule a committed scan for processing after ``delay``."""
        rec.extra_section = (rec.truth is not None
                             and rec.truth.source_scan_id in self.policy.extra_sections)
        with self._cond:
            self._recognitions[rec.scan_id] = rec
            heapq.heappush(self._due, (time.monotonic() + self.delay, rec.scan_id))
            self._cond.notify_all()

    def recognition(self, scan_id: int) -> Recognition:
        with self._cond:
            return with_current_figures(self._recognitions[scan_id], self._figures)

    def recognitions(self) -> dict[int, Recognition]:
        with self._cond:
            return {scan_id: with_current_figures(rec, self._figures)
                    for scan_id, rec in self._recognitions.items()}

    def flush(self) -> None:
        """Make everything pending due now."""
        with self._cond:
            self._due = [(0.0, scan_id) for _, scan_id in self._due]
            heapq.heapify(self._due)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._due) + self._busy

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._due or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _next_due(self) -> int | None:
        """Under the lock: pop the next due scan, waiting for it; None when stopping."""
        while not self._stopping:
            if self._due and self._due[0][0] <= time.monotonic():
                self._busy += 1
                return heapq.heappop(self._due)[1]
            timeout = self._due[0][0] - time.monotonic() if self._due else None
            self._cond.wait(timeout)
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                scan_id = self._next_due()
            if scan_id is None:
                return
            rec = self._recognitions[scan_id]
            try:
                with self.pool.connection() as conn:
                    apply(conn, rec, self.policy.seed)
                with self._cond:
                    self._figures.update(day_figures(rec))
                rec.processed = True
            except Exception as exc:  # recorded for tests; the thread must go on
                self.errors.append(f"scan {scan_id}: {exc!r}")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()
