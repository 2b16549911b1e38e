"""procrastinate in cluster mode: the queue, the task names, and the two Apps.

- ``defer(conn, task, **kwargs)``: defers a job inside the caller's open transaction
  (``configure(connection=conn)``), so that "what was recorded" and "its job exists" are
  one commit. It goes through an App over a ``SyncPsycopgConnector`` that is never opened:
  with ``connection=`` procrastinate runs its INSERT on that connection only.
- ``worker_app(dsn, name)``: the App a host's worker runs (an async pool of its own);
  ``daemon.cluster.jobs`` registers the tasks on it.

Task names are fixed strings, not dotted paths: a job deferred by one version of the
daemon must be found by the next.
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg
from procrastinate import App, PsycopgConnector, SyncPsycopgConnector

QUEUE = "scanrelay"
TASK_PLAN = "scanrelay.plan"  # parse a request, make its run folder, split it in batches
TASK_BATCH = "scanrelay.batch"  # run the handler on one batch of a run's scans
TASK_SETTLE = "scanrelay.settle"  # merge the batches, settle into done/ or failed/
TASK_SWEEP = "scanrelay.sweep"  # stalled jobs, orphan claims, stages without a job
TASK_RETENTION = "scanrelay.retention"  # retention.days, hourly, once in the cluster
TASKS = (TASK_PLAN, TASK_BATCH, TASK_SETTLE, TASK_SWEEP, TASK_RETENTION)


@functools.cache
def _deferrer() -> App:
    return App(connector=SyncPsycopgConnector())


def defer(conn: psycopg.Connection[Any], task: str, **kwargs: Any) -> int:
    """Defer ``task`` with ``kwargs`` (JSON values) in ``conn``'s open transaction;
    returns the job ID. Nothing is visible to any worker before the caller commits."""
    require_transaction(conn)
    deferrer = _deferrer().configure_task(task, connection=conn, queue=QUEUE)
    return deferrer.defer(**kwargs)


def defer_many(conn: psycopg.Connection[Any], task: str, kwargs: list[dict[str, Any]]
               ) -> list[int]:
    """``defer`` of one job per item of ``kwargs``, in one statement; the job IDs."""
    require_transaction(conn)
    if not kwargs:
        return []
    deferrer = _deferrer().configure_task(task, connection=conn, queue=QUEUE)
    return deferrer.batch_defer(*kwargs)


def require_transaction(conn: psycopg.Connection[Any]) -> None:
    """Raise ``ValueError`` unless ``conn`` is inside a transaction (``conn.transaction()``)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise ValueError("the caller must hold an open transaction on conn")


def worker_app(dsn: str, *, name: str, pool_size: int = 4, timeout: float = 5) -> App:
    """A worker's App on its own async pool (opened by the worker itself). A query
    waits at most ``timeout`` seconds for a connection: a worker that lost PostgreSQL
    ends soon, and the service starts another once it is back."""
    connector = PsycopgConnector(conninfo=dsn, min_size=1, max_size=pool_size,
                                 timeout=timeout, kwargs={"application_name": name})
    return App(connector=connector)
