"""``scanrelay schedules`` and the schedule lines of ``scanrelay status``: each cron job
of the config with its next fire, its last fire and that fire's outcome.

Read from files only (the daemon need not be up): the next fire is the one the job
store saved (if the cron is unchanged), else computed from the cron; the last fire and
its request come from the drop log, the outcome from the ledger, following reruns.

In cluster mode the last fire and its request come from the cluster's ``schedule_fires``
and ``requests`` (any host may have fired it), and the next fire is the cron's first
after that fire: overdue while no host has fired it yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.layout import Layout
from daemon.schedule.cron import cron_trigger
from daemon.schedule.lineage import outcome
from daemon.schedule.scheduler import job_specs
from daemon.schedule.state import FILE, FIRE, MISSED, RAN, RESERVED, WINDOW, Drop, SchedulerState
from daemon.schedule.store import fingerprint
from daemon.store.abc import RequestStore
from daemon.store.sqlite_requests import read_ledger

if TYPE_CHECKING:
    from daemon.cluster.views import ClusterView


@dataclass(frozen=True)
class ScheduleRow:
    job: str  # schedule:<name>, or reruns
    cron: str
    timezone: str
    next_fire: str | None  # ISO 8601 in the job's time zone
    overdue: bool  # the next fire is past: the daemon is down (it catches up at start)
    last_fire: str | None
    last_request: str | None  # the request file the last fire dropped
    outcome: str | None  # how that request ended (reruns followed), or why none

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_rows(config: Config, now: datetime | None = None,
                  view: ClusterView | None = None) -> list[ScheduleRow]:
    """One row per schedule, then the rerun window. Raises nothing for a daemon that
    never ran (no state yet): next fires are then computed from the crons. ``view``:
    the cluster's read side (cluster mode)."""
    now = now or datetime.now(UTC)
    if view is not None:
        return _cluster_rows(config, now, view)
    layout = Layout.of(config)
    # A reader must not create the daemon's files: a missing one means "never ran".
    state = SchedulerState(layout.state / FILE) if (layout.state / FILE).exists() else None
    ledger = read_ledger(layout.state)
    try:
        saved = state.saved_jobs() if state else {}
        rows = []
        for job, cron, tz, _grace in job_specs(config):
            trigger = cron_trigger(cron, tz)
            kept = saved.get(job)
            next_fire = kept.next_run_time if kept and \
                kept.fingerprint == fingerprint(trigger) else trigger.get_next_fire_time(None, now)
            last = state.last(job, (FIRE, WINDOW)) if state else None
            local = next_fire.astimezone(trigger.timezone) if next_fire else None
            rows.append(ScheduleRow(
                job, cron, tz, local.isoformat() if local else None,
                bool(next_fire and next_fire < now), last.fire_time if last else None,
                last.name if last else None,
                _outcome(last, layout, ledger, state) if last and state else None))
        return rows
    finally:
        for db in (state, ledger):
            if db is not None:
                db.close()


def next_schedules(config: Config, view: ClusterView | None = None) -> list[dict[str, Any]]:
    """For ``scanrelay status``: the jobs by next fire, soonest first."""
    rows = sorted((r for r in schedule_rows(config, view=view) if r.next_fire),
                  key=lambda r: datetime.fromisoformat(r.next_fire or ""))
    return [{"job": r.job, "next_fire": r.next_fire, "overdue": r.overdue} for r in rows]


def _outcome(last: Drop, layout: Layout, ledger: RequestStore | None,
             state: SchedulerState) -> str:
    if last.state == MISSED:
        late = (last.detail or {}).get("late_seconds")
        return f"missed ({late} s late: the daemon was down past its misfire_grace)"
    if last.state == RAN:
        done = ", ".join(f"{v} {k}" for k, v in sorted((last.detail or {}).items()))
        return done or "nothing to do"
    if last.state == RESERVED or last.name is None:
        return "being written"
    if ledger is None:
        return "waiting"
    return outcome(last.name, layout, ledger, state).describe()



def _cluster_rows(config: Config, now: datetime, view: ClusterView) -> list[ScheduleRow]:
    from daemon.cluster.views import ClusterUnavailable

    specs = job_specs(config)
    unknown: str | None = None  # the outcome shown while the fires cannot be read
    try:
        fires = view.last_fires([job for job, *_ in specs])
    except ClusterUnavailable as exc:
        fires, unknown = {}, f"unknown: {exc}"
    rows = []
    for job, cron, tz, _grace in specs:
        trigger = cron_trigger(cron, tz)
        last = fires.get(job)
        fired = last["fire_time"] if last else None
        next_fire = trigger.get_next_fire_time(fired, now)
        rows.append(ScheduleRow(
            job, cron, tz, next_fire.astimezone(trigger.timezone).isoformat()
            if next_fire else None, bool(next_fire and next_fire < now),
            fired.astimezone(trigger.timezone).isoformat() if fired else None,
            last["name"] if last else None, _fire_outcome(last) if last else unknown))
    return rows


def _fire_outcome(fire: dict[str, Any]) -> str:
    if fire["status"] == "missed":
        return "missed (no host was up within its misfire_grace)"
    if fire["request_status"] is None:
        return str(fire["status"])
    return fire["request_status"] + (f" ({fire['run_id']})" if fire["run_id"] else "")
