"""The APScheduler job store: in memory, with each job's next run time written through
to ``state/scheduler.sqlite``.

Jobs are rebuilt from the config at every start: the config is the truth about *what*
is scheduled. What must survive a restart is *when* each job is next due, so that a fire
that fell due while the daemon was down is seen at start (and caught up or skipped by
its misfire grace). Persisting that, instead of pickled jobs as APScheduler's
SQLAlchemy store does, needs no new dependency, keeps pickles out of ``state/``, and
lets a job's callable be a bound method.
"""

from __future__ import annotations

from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.triggers.base import BaseTrigger

from daemon.schedule.state import SchedulerState


def fingerprint(trigger: BaseTrigger) -> str:
    """What a saved next run time was computed from; a changed cron or time zone makes
    the saved time meaningless (``repr`` of a ``CronTrigger`` names both)."""
    return repr(trigger)


class StateJobStore(MemoryJobStore):
    def __init__(self, state: SchedulerState) -> None:
        super().__init__()
        self._state = state

    def add_job(self, job: Job) -> None:
        super().add_job(job)
        self._save(job)

    def update_job(self, job: Job) -> None:
        super().update_job(job)
        self._save(job)

    def remove_job(self, job_id: str) -> None:
        super().remove_job(job_id)
        self._state.forget_jobs_except({j.id for j in self.get_all_jobs()})

    # remove_all_jobs() and shutdown() only empty the memory: the saved times must
    # outlive the process, that is their point.

    def _save(self, job: Job) -> None:
        self._state.save_job(job.id, fingerprint(job.trigger), job.next_run_time)
