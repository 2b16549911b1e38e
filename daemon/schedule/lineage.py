"""How a request the scheduler dropped ended, following its reruns; and the follow-up
that points a copy run at the analysis that was run for it later.

A dropped request is found in the ledger by its file name (the scheduler chose it).
If it failed and the rerun window re-dropped it, the rerun (found in the drop log by
the failed run's ID) is followed, and so on: the outcome is that of the last link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from daemon.fsutil import write_json
from daemon.layout import Layout
from daemon.runstate import RunState
from daemon.schedule.state import ANALYSIS, DROPPED, RERUN, SchedulerState
from daemon.store.abc import RequestStore

FINAL = ("done", "invalid")  # outcomes no rerun can change
MAX_LINKS = 100  # reruns.max_attempts is at most 100


@dataclass(frozen=True)
class Outcome:
    status: str  # a run status, or "waiting" (not claimed yet), or "unknown"
    run_id: str | None = None
    name: str | None = None  # the request file of the last link
    attempts: int = 1  # links followed

    def describe(self) -> str:
        text = self.status + (f" ({self.run_id})" if self.run_id else "")
        return text + (f" after {self.attempts} attempts" if self.attempts > 1 else "")


def outcome(name: str, layout: Layout, ledger: RequestStore, state: SchedulerState) -> Outcome:
    """How the request dropped as ``name`` ended, reruns followed."""
    attempts = 1
    for _ in range(MAX_LINKS):
        records = ledger.by_name(name)
        if not records:
            waiting = (layout.inbox / name).exists()
            return Outcome("waiting" if waiting else "unknown", None, name, attempts)
        record = records[0]
        rerun = state.by_source(RERUN, record.run_id) if record.run_id else None
        if record.status in FINAL or rerun is None or rerun.state != DROPPED \
                or rerun.name is None:
            return Outcome(record.status, record.run_id, name, attempts)
        name, attempts = rerun.name, attempts + 1
    return Outcome("unknown", None, name, attempts)


def follow_up_analyses(layout: Layout, ledger: RequestStore, state: SchedulerState) -> int:
    """For each deferred analysis the rerun window dropped, write its outcome into the
    copy run's ``run.json`` (``analysis``: ``status``, ``run_id``, ``request``), so the
    copy run leads to its analysis; how many copy runs were updated."""
    updated = 0
    for drop in state.of_kind(ANALYSIS, DROPPED):
        if drop.name is None or drop.source is None or \
                (drop.detail or {}).get("status") in FINAL:
            continue
        result = outcome(drop.name, layout, ledger, state)
        if result.status in ("waiting", "unknown", "claimed", "running") or \
                (drop.detail or {}).get("run_id") == result.run_id:
            continue
        section = {"status": result.status, "run_id": result.run_id, "request": result.name,
                   "deferred": True}
        if _update_analysis(layout, drop.source, section):
            updated += 1
        state.mark(drop.key, DROPPED, detail=section)
    return updated


def _update_analysis(layout: Layout, run_id: str, section: dict[str, Any]) -> bool:
    """Merge ``section`` into the ``analysis`` of run ``run_id``'s ``run.json``. The run
    is finished (it settled before its analysis was dropped), so nothing else writes
    that file now."""
    run_dir = layout.runs / run_id
    data = RunState.load(run_dir)
    if data is None:
        logger.bind(run=run_id).warning("deferred analysis ran, but runs/{}/run.json is "
                                        "gone", run_id)
        return False
    earlier = data.get("analysis")
    data["analysis"] = {**(earlier if isinstance(earlier, dict) else {}), **section}
    write_json(run_dir / "run.json", data)
    logger.bind(run=run_id).info("analysis of {}: {} in run {}", run_id, section["status"],
                                 section["run_id"])
    return True
