"""The scheduler as the service runs it: APScheduler 3 with

- one cron job per entry of ``schedules`` (``schedule:<name>``), writing that
  schedule's request at each fire;
- the rerun window (``reruns``), if configured;
- a light follow-up every few seconds that points copy runs at their deferred analyses.

Jobs are coalesced (a run of missed fires becomes one) and have their ``misfire_grace``:
a fire missed while the daemon was down runs once at start if it is within the grace,
and is skipped, logged and recorded as missed if not. The job store keeps each job's
next run time in ``state/scheduler.sqlite`` across restarts; the drop log there makes
every fire write its request at most once, even if it fires again after a crash.

In cluster mode (``cluster``: the cluster's fires in PostgreSQL) the producer and the
clock change, nothing else: ``daemon.cluster.fireclock`` decides what is due by the
database server's clock (same crons, time zones, coalescing and grace), each fire is
made once for the cluster (``daemon.cluster.fires``: a row and the request's job in
one transaction), and the rerun window produces through the same, reading the
cluster's settled requests. Nothing is kept under this host's ``state/``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger

from daemon.config import Config, ScheduleConfig
from daemon.layout import Layout
from daemon.schedule.cron import cron_trigger
from daemon.schedule.executor import FIRE_TIME, InlineExecutor
from daemon.schedule.fires import job_id, request_name, scheduled_request
from daemon.schedule.lineage import follow_up_analyses
from daemon.schedule.produce import Drops, Producer
from daemon.schedule.reruns import JOB as RERUNS_JOB
from daemon.schedule.reruns import Listing, RerunWindow, settled_requests
from daemon.schedule.state import FILE, FIRE, MISSED, WINDOW, SavedJob, SchedulerState, iso
from daemon.schedule.store import StateJobStore, fingerprint
from daemon.store.abc import RequestStore

if TYPE_CHECKING:  # cluster mode's modules (and psycopg) load only in cluster mode
    from daemon.cluster.fireclock import ClockJob, FireClock
    from daemon.cluster.fires import ClusterFires

FOLLOW_UP_JOB = "follow-ups"
FOLLOW_UP_SECONDS = 5.0
LATE_AFTER = 5.0  # seconds: a fire running later than this is a catch-up; say so
MAX_COUNTED = 100_000  # missed fires counted for the start-up log line


@dataclass(frozen=True)
class JobSpec:
    id: str
    trigger: BaseTrigger
    func: Callable[..., None]
    grace: int | None  # seconds; None: however late
    args: tuple[Any, ...] = field(default=())


def job_specs(config: Config) -> list[tuple[str, str, str, int]]:
    """``(job ID, cron, timezone, misfire grace)`` of each configured cron job (the
    report lists them; the scheduler builds its jobs from the same)."""
    specs = [(job_id(s.name), s.cron, s.timezone, s.misfire_grace) for s in config.schedules]
    if config.reruns is not None:
        r = config.reruns
        specs.append((RERUNS_JOB, r.cron, r.timezone, r.misfire_grace))
    return specs


class Scheduler:
    """Start with ``start()`` (after the watcher, before READY), stop with ``stop()``.
    One host: ``ledger`` given. Cluster mode: ``cluster`` given (``ledger`` unused)."""

    def __init__(self, config: Config, layout: Layout, ledger: RequestStore | None,
                 stop: threading.Event, *, cluster: ClusterFires | None = None) -> None:
        self.config = config
        self.layout = layout
        self.schedules = {job_id(s.name): s for s in config.schedules}
        self.cluster = cluster
        drops: Drops
        listing: Listing
        if cluster is None:
            assert ledger is not None, "one host: the scheduler needs the ledger"
            self.ledger = ledger
            self.state = SchedulerState(layout.state / FILE)
            self.producer = Producer(config, layout, self.state, ledger)
            drops, listing = self.producer, settled_requests
        else:
            drops, listing = cluster, cluster.settled
        self.window = None if config.reruns is None else \
            RerunWindow(config.reruns, layout, drops, stop, listing)
        self._aps: BackgroundScheduler | None = None
        self._clock: FireClock | None = None

    def start(self) -> None:
        """Repair what a crash interrupted, load the jobs (keeping their saved next run
        times), and start APScheduler's thread. Nothing runs without schedules or
        reruns. Raises ``OSError`` if ``state/`` cannot be written. In cluster mode:
        start the fire clock instead."""
        if self.cluster is not None:
            from daemon.cluster.fireclock import FireClock

            self._clock = FireClock(self.cluster, self._clock_jobs())
            self._clock.start()
            return
        self.producer.recover()
        specs = self._specs()
        if not specs:
            return
        # APScheduler logs through the standard library; its errors reach our log, its
        # chatter (every job run) does not.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        aps = BackgroundScheduler(timezone=UTC, jobstores={"default": StateJobStore(self.state)},
                                  executors={"default": InlineExecutor()},
                                  job_defaults={"coalesce": True, "max_instances": 1})
        saved = self.state.saved_jobs()
        for spec in specs:
            self._add(aps, spec, saved.get(spec.id))
        self.state.forget_jobs_except({spec.id for spec in specs})
        aps.add_listener(self._on_missed, EVENT_JOB_MISSED)
        aps.start()
        self._aps = aps
        for job in aps.get_jobs():
            if job.id != FOLLOW_UP_JOB:
                logger.info("scheduled {}: next at {}", job.id, _when(job.next_run_time))

    def stop(self) -> None:
        """Stop firing. A fire in progress finishes first (a window stops early)."""
        if self._clock is not None:
            self._clock.stop()
            self._clock = None
        if self.cluster is not None:
            return
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
        self.state.close()

    # ---- jobs ----------------------------------------------------------------------

    def _specs(self) -> list[JobSpec]:
        specs = [JobSpec(job_id(s.name), cron_trigger(s.cron, s.timezone), self._fire,
                         s.misfire_grace, (job_id(s.name),)) for s in self.schedules.values()]
        if self.window is not None and self.config.reruns is not None:
            reruns = self.config.reruns
            specs.append(JobSpec(RERUNS_JOB, cron_trigger(reruns.cron, reruns.timezone),
                                 self.window, reruns.misfire_grace))
            specs.append(JobSpec(FOLLOW_UP_JOB, IntervalTrigger(seconds=FOLLOW_UP_SECONDS),
                                 self._follow_up, None))
        return specs

    def _clock_jobs(self) -> list[ClockJob]:
        """The cron jobs as the cluster's fire clock runs them (the follow-up of
        deferred analyses is single-host only for now)."""
        from daemon.cluster.fireclock import ClockJob

        jobs = [ClockJob(job_id(s.name), s.cron, s.timezone, s.misfire_grace,
                         request=partial(_fire_request, s)) for s in self.schedules.values()]
        if self.window is not None and self.config.reruns is not None:
            r = self.config.reruns
            jobs.append(ClockJob(RERUNS_JOB, r.cron, r.timezone, r.misfire_grace,
                                 then=self.window))
        return jobs

    def _add(self, aps: BackgroundScheduler, spec: JobSpec, saved: SavedJob | None) -> None:
        """Add ``spec``, due when the store says it is: a saved next run time in the
        past makes APScheduler fire (or skip as missed) at once, which is the catch-up.
        A changed cron or time zone makes the saved time meaningless: recomputed."""
        kwargs: dict[str, Any] = {}
        if saved is not None and saved.fingerprint == fingerprint(spec.trigger):
            kwargs["next_run_time"] = saved.next_run_time
            if saved.next_run_time is not None and spec.grace is not None:
                _log_missed(spec, saved.next_run_time)
        elif saved is not None and spec.id != FOLLOW_UP_JOB:
            logger.info("{}: cron or time zone changed; next fire recomputed", spec.id)
        aps.add_job(spec.func, spec.trigger, id=spec.id, args=spec.args,
                    kwargs={FIRE_TIME: None}, misfire_grace_time=spec.grace, **kwargs)

    def _fire(self, job: str, fire_time: datetime) -> None:
        schedule = self.schedules[job]
        late = (datetime.now(UTC) - fire_time).total_seconds()
        log = logger.bind(run=job)
        if late > LATE_AFTER:
            log.info("{}: catching up the fire of {} ({:.0f} s late, within misfire_grace "
                     "{} s)", job, fire_time.isoformat(), late, schedule.misfire_grace)
        path = self.producer.produce(f"{job}@{iso(fire_time)}", job, FIRE, fire_time,
                                     request_name(schedule.name, fire_time),
                                     scheduled_request(schedule, fire_time))
        if path is None:
            log.info("{}: the fire of {} was dropped before; not again", job,
                     fire_time.isoformat())
        else:
            log.info("{}: fired for {}: dropped {}", job, fire_time.isoformat(), path.name)

    def _follow_up(self, fire_time: datetime) -> None:  # every job gets its fire time
        follow_up_analyses(self.layout, self.ledger, self.state)

    def _on_missed(self, event: JobExecutionEvent) -> None:
        fire_time: datetime = event.scheduled_run_time
        late = (datetime.now(UTC) - fire_time).total_seconds()
        grace = self._grace(event.job_id)
        kind = WINDOW if event.job_id == RERUNS_JOB else FIRE
        self.state.record(f"{event.job_id}@{iso(fire_time)}", event.job_id, kind, fire_time,
                          MISSED, detail={"late_seconds": round(late)})
        logger.bind(run=event.job_id).warning(
            "{}: the fire of {} was missed by {:.0f} s (the daemon was down), more than its "
            "misfire_grace of {} s: skipped", event.job_id, fire_time.isoformat(), late,
            grace)

    def _grace(self, job: str) -> int:
        schedule: ScheduleConfig | None = self.schedules.get(job)
        if schedule is not None:
            return schedule.misfire_grace
        return self.config.reruns.misfire_grace if self.config.reruns else 0


def _fire_request(schedule: ScheduleConfig, fire_time: datetime) -> tuple[str, dict[str, Any]]:
    """What ``schedule`` produces at ``fire_time``: its request's name and content."""
    return request_name(schedule.name, fire_time), scheduled_request(schedule, fire_time)


def missed_fires(trigger: BaseTrigger, first: datetime, now: datetime) -> tuple[int, datetime]:
    """How many fires from ``first`` (a fire time) up to ``now``, and the last of them;
    counting stops at ``MAX_COUNTED`` (a per-second cron down for days)."""
    count, last, fire = 0, first, first
    while fire is not None and fire <= now and count < MAX_COUNTED:
        count, last = count + 1, fire
        fire = trigger.get_next_fire_time(fire, now)
    return count, last


def _log_missed(spec: JobSpec, due: datetime) -> None:
    """Say at start what the catch-up will do; APScheduler then does it (coalesced: the
    last missed fire runs if within the grace, see the executor)."""
    now = datetime.now(UTC)
    if due > now or spec.grace is None:
        return
    count, last = missed_fires(spec.trigger, due, now)
    late = (now - last).total_seconds()
    verdict = (f"within misfire_grace ({spec.grace} s): it runs once now" if late <= spec.grace
               else f"beyond misfire_grace ({spec.grace} s): skipped")
    logger.bind(run=spec.id).info("{}: {}{} fire(s) missed while the daemon was down, the last "
                                  "at {} ({:.0f} s ago), {}", spec.id,
                                  "at least " if count >= MAX_COUNTED else "", count,
                                  last.isoformat(), late, verdict)


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "never"
