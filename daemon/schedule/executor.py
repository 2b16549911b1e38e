"""The executor of scheduled jobs: each due fire runs in the scheduler's own thread and
is told which fire it is.

APScheduler 3's executors call ``func(*args, **kwargs)`` without the scheduled time,
but a fire needs it: its request is labelled with it, relative dates resolve on its
day, and it keys the exactly-once bookkeeping. So this executor (shaped like
APScheduler's ``DebugExecutor``) fills in the keyword argument ``fire_time``: a job is
added with ``kwargs={"fire_time": None}`` (APScheduler checks a job's arguments against
its callable when it is added) and called with the fire's scheduled time there.

Running inline also orders things safely: a fire's request is written before the
scheduler records the job's next run time, so a crash in between can only repeat a
fire at the next start (which the drop log absorbs), never lose one. Fires are quick
(writing one file; a rerun window reading ``failed/``), so inline costs nothing.

The misfire rule is APScheduler's own: a fire later than the job's
``misfire_grace_time`` is skipped and reported as ``EVENT_JOB_MISSED``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from loguru import logger

FIRE_TIME = "fire_time"  # the keyword argument a job's callable gets its fire time in


class InlineExecutor(BaseExecutor):
    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        events = [self._run(job, fire_time) for fire_time in run_times]
        self._run_job_success(job.id, events)

    @staticmethod
    def _run(job: Job, fire_time: datetime) -> Any:
        alias = job._jobstore_alias
        late = datetime.now(UTC) - fire_time
        if job.misfire_grace_time is not None and \
                late > timedelta(seconds=job.misfire_grace_time):
            return JobExecutionEvent(EVENT_JOB_MISSED, job.id, alias, fire_time)
        try:
            job.func(*job.args, **{**job.kwargs, FIRE_TIME: fire_time})
        except Exception as exc:  # a job's failure must not stop the scheduler thread
            logger.exception("scheduled job {} failed at its fire of {}", job.id,
                             fire_time.isoformat())
            return JobExecutionEvent(EVENT_JOB_ERROR, job.id, alias, fire_time, exception=exc)
        return JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, alias, fire_time)
