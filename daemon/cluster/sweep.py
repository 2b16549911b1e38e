"""The sweeps, run by any host as one periodic job (declared with ``queueing_lock``,
never ``lock``: a sweep whose host died would hold a lock for good, and only a sweep
could free it):

1. stalled jobs: a job whose worker stopped heartbeating (its host died or froze) goes
   back to the queue (procrastinate leaves that to us);
2. half claims: a private claim name left in the inbox by a host that died between its
   rename and its publish is published (``Claimer.publish_stale``);
3. orphan claims: a file in ``processing/`` older than ``cluster.claim_orphan_seconds``
   without a row (a crash between the claim and its commit) gets its row and its plan
   job, once in the cluster (``enqueue`` is idempotent by claim ID);
4. stages without a job: an open batch, or a request being planned or settled, whose job
   ended without moving it on (it failed, or a paused host's late finish marked it done)
   gets a new job. Each new execution counts as an attempt, so this ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger
from procrastinate import exceptions
from procrastinate.manager import JobManager

from daemon.cluster.app import TASK_BATCH, TASK_PLAN, TASK_SETTLE, defer
from daemon.cluster.enqueue import enqueue
from daemon.cluster.runtime import Runtime
from daemon.fsutil import is_ignored_name
from daemon.intake.claim import Claimed, file_refusal
from daemon.intake.claimer import Claimer


async def sweep(rt: Runtime, jobs: JobManager) -> None:
    await retry_stalled(rt, jobs)
    await asyncio.to_thread(sweep_files_and_stages, rt)


async def retry_stalled(rt: Runtime, jobs: JobManager) -> int:
    """Put the jobs of dead workers back in the queue; how many."""
    stalled = await jobs.get_stalled_jobs(seconds_since_heartbeat=rt.cluster.stalled_seconds)
    retried = 0
    for job in stalled:
        try:  # due now by the server's clock, whatever this host's says
            await jobs.retry_job(job, retry_at=rt.server_now())
        except exceptions.ConnectorException:
            continue  # another sweep was first, or it finished meanwhile
        retried += 1
        logger.warning("job {} ({}) was running on a worker that stopped answering; "
                       "it goes back to the queue", job.id, job.task_name)
    return retried


def sweep_files_and_stages(rt: Runtime) -> None:
    published = Claimer(rt.layout, tag=rt.host_id).publish_stale(
        rt.cluster.claim_orphan_seconds)
    if published:
        logger.warning("published {} claim(s) a host left half made", published)
    adopt_orphans(rt)
    redefer_stages(rt)
    close_refusals(rt)


def adopt_orphans(rt: Runtime, now: float | None = None) -> int:
    """Rows and plan jobs for the files in ``processing/`` that have none."""
    limit = (time.time() if now is None else now) - rt.cluster.claim_orphan_seconds
    claims = [c for c in _claims(rt.layout.processing) if _ctime(c.path) <= limit]
    if not claims:
        return 0
    with rt.pool.connection() as conn:
        known = {r[0] for r in conn.execute(
            "SELECT claim_id FROM requests WHERE claim_id = ANY(%s)",
            ([c.claim_id for c in claims],)).fetchall()}
        adopted = 0
        for claimed in (c for c in claims if c.claim_id not in known):
            body = _body(claimed.path, rt.config.limits.max_request_bytes)
            if body is None:
                continue  # settled meanwhile
            with conn.transaction():
                if enqueue(conn, claim_id=claimed.claim_id, name=claimed.name,
                           profile=claimed.profile, body=body,
                           processing_name=claimed.path.name, claimed_by=rt.host_id):
                    adopted += 1
                    logger.bind(run=claimed.claim_id).warning(
                        "{} was claimed by a host that died before recording it; it runs "
                        "now", claimed.name)
    return adopted


def _claims(processing: Path) -> list[Claimed]:
    try:
        names = os.listdir(processing)
    except OSError:
        return []
    found = (Claimed.from_path(processing / n) for n in names if not is_ignored_name(n))
    return [c for c in found if c is not None]


def _ctime(path: Path) -> float:
    try:
        return path.lstat().st_ctime
    except OSError:
        return float("inf")


def _body(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes; b"" for one that cannot be a request (its plan job refuses it);
    None if it is gone."""
    try:
        if file_refusal(path.lstat(), max_bytes) is not None:
            return b""
        return path.read_bytes()
    except FileNotFoundError:
        return None


def redefer_stages(rt: Runtime) -> int:
    """A new job for each open stage whose job ended without moving it on."""
    redeferred = 0
    with rt.pool.connection() as conn:
        for run_id, number, job_id in conn.execute(_OPEN_BATCHES).fetchall():
            redeferred += _redefer(conn, TASK_BATCH, "UPDATE batches SET job_id = %s"
                                   " WHERE run_id = %s AND number = %s"
                                   " AND job_id IS NOT DISTINCT FROM %s"
                                   " AND status IN ('pending', 'running')",
                                   {"run_id": run_id, "number": number},
                                   (run_id, number, job_id))
        bound = rt.cluster.claim_orphan_seconds
        for claim_id, status, job_id in conn.execute(_OPEN_STAGES, (bound,)).fetchall():
            task = TASK_PLAN if status == "claimed" else TASK_SETTLE
            redeferred += _redefer(conn, task, "UPDATE requests SET job_id = %s"
                                   " WHERE claim_id = %s AND status = %s"
                                   " AND job_id IS NOT DISTINCT FROM %s",
                                   {"claim_id": claim_id}, (claim_id, status, job_id))
    return redeferred


# Whose job is neither waiting nor running (failed, finished by a late duplicate, gone).
_DEAD_JOB = "(j.id IS NULL OR j.status NOT IN ('todo', 'doing'))"
_OPEN_BATCHES = ("SELECT b.run_id, b.number, b.job_id FROM batches b"
                 " LEFT JOIN procrastinate_jobs j ON j.id = b.job_id"
                 f" WHERE b.status IN ('pending', 'running') AND {_DEAD_JOB}")
# A request being planned or settled. (A row with no file name is a file refused from
# the inbox, which never has a job: see ``close_refusals``.)
_OPEN_STAGES = ("SELECT r.claim_id, r.status, r.job_id FROM requests r"
                " LEFT JOIN procrastinate_jobs j ON j.id = r.job_id"
                f" WHERE r.status IN ('claimed', 'settling') AND {_DEAD_JOB}"
                " AND r.processing_name <> ''"
                " AND (r.job_id IS NOT NULL"
                "      OR r.claimed_at < extract(epoch FROM now()) - %s)")
REFUSAL_SECONDS = 300  # far longer than a refusal takes (its name lock waits 30 s)


def close_refusals(rt: Runtime) -> int:
    """A file refused from the inbox gets its row (``claimed``) just before it moves to
    ``failed/`` (``finished``); a crash in between leaves the file in the inbox, to be
    refused again under a new claim, and this row open: it is closed as ``invalid``."""
    with rt.pool.connection() as conn:
        cursor = conn.execute(
            "UPDATE requests SET status = 'invalid', finished_at = extract(epoch FROM now()),"
            " message = 'refused, but cut short by a crash; refused again under a new claim'"
            " WHERE status = 'claimed' AND processing_name = '' AND job_id IS NULL"
            " AND claimed_at < extract(epoch FROM now()) - %s", (REFUSAL_SECONDS,))
    return cursor.rowcount


def _redefer(conn: psycopg.Connection[Any], task: str, update: str,
             kwargs: dict[str, Any], params: tuple[Any, ...]) -> int:
    """Defer ``task`` and point the stage at it, unless another sweep was first."""
    with conn.transaction():
        job_id = defer(conn, task, **kwargs)
        if conn.execute(update, (job_id, *params)).rowcount != 1:
            raise psycopg.Rollback()
        logger.warning("{} {}: its job ended without an answer; job {} takes over", task,
                       kwargs, job_id)
        return 1
    return 0
