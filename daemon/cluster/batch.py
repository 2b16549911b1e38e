"""The batch job: one batch of a run's scans through the request's own handler.

The batch runs a sub-request (the request with just its scans) through
``daemon.runner.execute`` in its own folder, ``runs/<run>/batches/<n>/`` (checkpoint,
run.json, run.log, artefacts); a batch that is the whole request runs in the run folder
itself. Its outcome goes into ``batches.result`` if this execution still owns the batch
(``stages.finish_batch``); the last batch to finish defers the settle job.

Attempts: each execution is one; one stopped by its host (SIGTERM, PostgreSQL gone), or
by the cluster's database failing under it (``StoreError``), gives its attempt back and
its job returns to the queue (``Again``, or a retry after a wait). Past
``cluster.max_attempts`` executions that all ended without an answer (their host died
each time), the batch is abandoned: its scans fail with that reason.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from daemon import logs
from daemon.cluster import fencing, merge, rows, stages
from daemon.cluster.runtime import Again, Runtime
from daemon.intake.claim import Claimed
from daemon.outcomes import RunStatus
from daemon.request import Request
from daemon.runner import execute, run_base
from daemon.runsettle import Outcome
from daemon.runstate import RunState
from daemon.store.abc import StoreError

# Test hook: a batch holding this scan ID kills its host at start (issue 15, test 6).
CRASH_ON_SCAN_ENV = "SCANRELAY_TEST_CRASH_ON_SCAN"


def run_batch(rt: Runtime, job_id: int | None, run_id: str, number: int) -> None:
    owner = rt.owner_token(job_id)
    claim = fencing.claim(rt, run_id, number, owner)
    with rt.pool.connection() as conn:
        row = rows.by_run(conn, run_id) if claim is not None else None
    if claim is None or row is None:
        return  # finished already (a late duplicate of this job)
    log = logger.bind(run=run_id, request=row.name, batch=number)
    if claim.attempts > rt.cluster.max_attempts:
        log.error("batch {} abandoned after {} attempts: its host died each time", number,
                  claim.attempts - 1)
        _finish(rt, run_id, number, owner, "abandoned",
                merge.abandoned(number, claim.attempts - 1), log)
        return
    _crash_hook(claim.scan_ids)
    run_dir = rt.layout.runs / run_id
    request = Request.model_validate_json((run_dir / "request.json").read_bytes())
    whole = not claim.scan_ids
    sub = request if whole else request.model_copy(update={
        "scan_ids": claim.scan_ids, "select": None, "analyze": False})
    folder = run_dir if whole else merge.batch_dir(run_dir, number)
    folder.mkdir(parents=True, exist_ok=True)
    with rt.executions.run(owner) as stop, \
            fencing.watch(rt, run_id, number, owner, stop, log) as watch:
        outcome = _execute(rt, row.claimed(rt.layout), sub, run_id, folder, number, owner,
                           stop, log)
    if watch.superseded.is_set():  # another execution has it: not back to the queue
        log.warning("batch {} was taken over by another execution; its result from here "
                    "is dropped", number)
        return
    if outcome.status is RunStatus.INTERRUPTED:
        with rt.pool.connection() as conn:
            stages.release_batch(conn, run_id, number, owner)
        raise Again(f"batch {number} of {run_id} interrupted: back to the queue")
    if isinstance(outcome.error, StoreError) and outcome.error.transient:
        # The cluster's database failed under the batch (its checkpoint records, its
        # copy ledger): not the request's fault. The job is retried (``jobs``), and the
        # next execution resumes from the records that did commit.
        log.warning("batch {} stopped: {}; it is retried", number, outcome.error)
        with rt.pool.connection() as conn:
            stages.release_batch(conn, run_id, number, owner)
        raise outcome.error
    _finish(rt, run_id, number, owner, "done", merge.payload(outcome), log)


def _execute(rt: Runtime, claimed: Claimed, request: Request, run_id: str, folder: Path,
             number: int, owner: str, stop: threading.Event, log: Any) -> Outcome:
    whole = folder == rt.layout.runs / run_id
    sink = logs.add_run_sink(run_id, folder / "run.log", batch=number)
    try:
        with logger.contextualize(batch=number):
            state = RunState(folder, {**run_base(claimed, request, run_id), "batch": number})
            state.start()
            log.info("batch {} started on {}: {} scans (attempt {})", number, rt.host_id,
                     len(request.scan_ids) or "all", state.data["attempts"])
            outcome = execute(rt.config, rt.instances, rt.stores, request, run_id, folder,
                              state, stop, log, batch=0 if whole else number, owner=owner,
                              deliver=False)
            if not whole and outcome.status is not RunStatus.INTERRUPTED:
                state.update(status=outcome.status.value)  # the batch's own run.json
            return outcome
    finally:
        logs.remove_sink(sink)


def _finish(rt: Runtime, run_id: str, number: int, owner: str, status: str,
            result: dict[str, Any], log: Any) -> None:
    with rt.pool.connection() as conn:
        if stages.finish_batch(conn, run_id, number, owner, status, result):
            log.info("batch {} {}", number, status)
        else:  # this host was paused, or lost PostgreSQL, while the batch moved on
            log.warning("batch {} was taken over by another execution; its result from "
                        "here is dropped", number)


def _crash_hook(scan_ids: list[int]) -> None:
    crash_on = os.environ.get(CRASH_ON_SCAN_ENV)
    if crash_on and int(crash_on) in scan_ids:
        os._exit(70)
