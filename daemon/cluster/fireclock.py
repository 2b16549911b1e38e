"""When a cluster's schedules are due: judged by the database server's clock.

On one host APScheduler decides when a job is due, by the host's clock. In a cluster the
hosts' clocks may disagree (one may run minutes ahead), yet each fire must happen once
and never early. So each host runs this loop instead, with "now" read from PostgreSQL:

- for each job, the latest nominal fire in (the last fire it handled, now]: fired if
  within its ``misfire_grace``, recorded as missed beyond (``ClusterFires``, once per
  cluster whichever hosts see it); earlier fires in that span are coalesced into it,
  as on one host;
- then sleep until the next nominal fire of any job by the server's clock (at most
  ``MAX_SLEEP``, so a drifting host reads it again). A host's own clock enters only as
  durations, so a shifted one computes the same fires at the same moments.

At start a job's last fire is the cluster's last recorded one: fires that fell due
while every host was down are caught up once (coalesced), or recorded once as missed.
A job the cluster never fired starts from now (as on one host, no catch-up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from apscheduler.triggers.base import BaseTrigger
from loguru import logger

from daemon.cluster.fires import ClusterFires, Due
from daemon.schedule.cron import cron_trigger

MAX_SLEEP = 30.0  # seconds between readings of the server's clock, at most
RETRY_SECONDS = 5.0  # after PostgreSQL failed to answer
LATE_AFTER = 5.0  # seconds: a fire made later than this is a catch-up; say so
FIRST_SPAN = timedelta(minutes=1)  # ``last_due`` looks back this far first

Request = Callable[[datetime], tuple[str, dict[str, Any]]]  # a fire's (name, request)


@dataclass(frozen=True)
class ClockJob:
    """A cron job of the cluster: a schedule (``request``: its request at a fire) or
    the rerun window (``then``: run by the host that made the fire)."""

    id: str
    cron: str
    timezone: str
    grace: int  # seconds: misfire_grace
    request: Request | None = None
    then: Callable[[datetime], None] | None = None


def next_after(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """The first nominal fire strictly after ``moment``."""
    return trigger.get_next_fire_time(moment, moment)


def last_due(trigger: BaseTrigger, after: datetime, now: datetime) -> datetime | None:
    """The latest nominal fire in ``(after, now]``, or None. Looks back from ``now``
    over growing spans, so a per-second cron after days down costs a few steps."""
    span = FIRST_SPAN
    while True:
        start = max(after, now - span)
        fire = next_after(trigger, start)
        if fire is not None and fire <= now:
            while (following := next_after(trigger, fire)) is not None and following <= now:
                fire = following
            return fire
        if start == after:
            return None
        span *= 16


class FireClock:
    """Start with ``start()``, stop with ``stop()``; ``tick()`` is one round."""

    def __init__(self, fires: ClusterFires, jobs: list[ClockJob]) -> None:
        self.fires = fires
        self.jobs = jobs
        self.triggers = {job.id: cron_trigger(job.cron, job.timezone) for job in jobs}
        self.last: dict[str, datetime] = {}  # the latest fire handled, per job
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.jobs:
            self._thread = threading.Thread(target=self._run, name="fire-clock", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop firing; a fire in progress finishes first (within ``timeout``)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                wait = self.tick()
            except psycopg.Error as exc:  # the pool's timeout is one too
                logger.warning("schedules: PostgreSQL did not answer ({}); again in {:.0f} s",
                               type(exc).__name__, RETRY_SECONDS)
                wait = RETRY_SECONDS
            except Exception:  # a job's failure must not stop the clock
                logger.exception("schedules: a round of the fire clock failed")
                wait = RETRY_SECONDS
            self._halt.wait(wait)

    def tick(self) -> float:
        """Make every fire due now; the seconds until the next one is due."""
        for job in self.jobs:
            if self._halt.is_set():
                break
            self._tick_job(job, self.fires.db_now())
        now, read_at = self.fires.db_now(), time.monotonic()
        upcoming = [n for job in self.jobs
                    if (n := next_after(self.triggers[job.id], now)) is not None]
        if not upcoming:
            return MAX_SLEEP
        wait = (min(upcoming) - now).total_seconds() - (time.monotonic() - read_at)
        return min(max(wait, 0.0) + 0.005, MAX_SLEEP)  # a hair past: due when we wake

    def _tick_job(self, job: ClockJob, now: datetime) -> None:
        trigger = self.triggers[job.id]
        if job.id not in self.last:
            self.last[job.id] = self.fires.last_fire(job.id, job.cron, job.timezone) or now
        after = self.last[job.id]
        fire_time = last_due(trigger, after, now)
        if fire_time is None:
            return
        self._handle(job, Due(job.id, fire_time, job.cron, job.timezone, now),
                     coalesced=next_after(trigger, after) != fire_time)
        self.last[job.id] = fire_time  # not before: a failed fire is tried again

    def _handle(self, job: ClockJob, due: Due, *, coalesced: bool) -> None:
        log = logger.bind(run=job.id)
        when = due.fire_time.isoformat()
        if due.late > job.grace:
            if self.fires.miss(due):
                log.warning("{}: the fire of {} was missed by {:.0f} s (no host was up to "
                            "make it), more than its misfire_grace of {} s: skipped",
                            job.id, when, due.late, job.grace)
            return
        made = self._make(job, due)
        if made is None:
            log.debug("{}: the fire of {} was made by another host", job.id, when)
            return
        catch_up = ""
        if due.late > LATE_AFTER or coalesced:
            catch_up = (f" (catching up: {due.late:.0f} s late, within misfire_grace "
                        f"{job.grace} s{'; earlier fires coalesced into it' if coalesced else ''})")
        log.info("{}: fired for {}: {}{}", job.id, when, made, catch_up)
        if job.then is not None:
            job.then(due.fire_time)

    def _make(self, job: ClockJob, due: Due) -> str | None:
        """Make the fire (once per cluster); what it did, or None if another host had."""
        if job.request is None:
            return "this host runs it" if self.fires.claim(due) else None
        name, raw = job.request(due.fire_time)
        claim_id = self.fires.fire(due, name, raw)
        return None if claim_id is None else f"enqueued {name} (claim {claim_id})"
