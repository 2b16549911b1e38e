"""The cluster's tasks on a worker's App: plan, batch, settle, and the periodic sweep
and retention (each periodic job deferred once per tick in the cluster).

Retries: a job stopped by its host (``Again``) goes back to the queue at once; a job
that lost PostgreSQL or met another transient error is retried with a growing wait; any
other error fails the job, and the sweep's stage check gives the stage a new job, so a
stage's attempts (``cluster.max_attempts``) bound what a bug can cost.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import psycopg_pool
from procrastinate import App, JobContext, RetryDecision, exceptions
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy

from daemon import retention
from daemon.cluster import batch, finish, plan, sweep
from daemon.cluster.app import (
    QUEUE,
    TASK_BATCH,
    TASK_PLAN,
    TASK_RETENTION,
    TASK_SETTLE,
    TASK_SWEEP,
)
from daemon.cluster.runtime import Again, Runtime
from daemon.errors import TransientError
from daemon.store.abc import StoreError

TRANSIENT = (psycopg.OperationalError, psycopg.errors.LockNotAvailable,
             psycopg_pool.PoolTimeout, exceptions.ConnectorException, TransientError)
MAX_WAIT = 60  # seconds between retries of a job that meets transient errors


class TransientOnly(BaseRetryStrategy):
    """Retry ``Again`` at once and transient errors with a growing wait; never the rest.
    When is computed by the server's clock (``Runtime.server_now``): the server decides
    when a job is due, and this host's clock may be off."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def get_retry_decision(self, *, exception: BaseException, job: Job
                           ) -> RetryDecision | None:
        if isinstance(exception, Again):
            return RetryDecision(retry_at=self.rt.server_now())
        if isinstance(exception, TRANSIENT) or \
                (isinstance(exception, StoreError) and exception.transient):
            wait = min(MAX_WAIT, 2 ** min(job.attempts, 6))
            return RetryDecision(retry_at=self.rt.server_now() + timedelta(seconds=wait))
        return None


def register(app: App, rt: Runtime) -> None:
    """The tasks, bound to this host's runtime."""
    retry = TransientOnly(rt)

    @app.task(name=TASK_PLAN, queue=QUEUE, pass_context=True, retry=retry)
    def plan_task(context: JobContext, claim_id: str) -> None:
        plan.plan(rt, claim_id)

    @app.task(name=TASK_BATCH, queue=QUEUE, pass_context=True, retry=retry)
    def batch_task(context: JobContext, run_id: str, number: int) -> None:
        batch.run_batch(rt, context.job.id, run_id, number)

    @app.task(name=TASK_SETTLE, queue=QUEUE, pass_context=True, retry=retry)
    def settle_task(context: JobContext, claim_id: str) -> None:
        finish.settle(rt, context.job.id, claim_id)

    every = rt.cluster.sweep_seconds

    @app.periodic(cron=f"* * * * * */{every}", periodic_id="sweep")
    @app.task(name=TASK_SWEEP, queue=QUEUE, pass_context=True, queueing_lock=TASK_SWEEP)
    async def sweep_task(context: JobContext, timestamp: int) -> None:
        assert context.app is not None
        await sweep.sweep(rt, context.app.job_manager)

    _registered = (plan_task, batch_task, settle_task, sweep_task)  # noqa: F841
    if rt.config.retention.days:
        days = rt.config.retention.days

        @app.periodic(cron="17 * * * *", periodic_id="retention")
        @app.task(name=TASK_RETENTION, queue=QUEUE, queueing_lock=TASK_RETENTION)
        def retention_task(timestamp: int) -> None:
            retention.prune(rt.layout, days)
