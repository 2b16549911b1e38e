"""The settle job: a run's batches made one outcome, and the request settled.

Once every batch has finished (done or abandoned), the last one defers this job. It
merges the batches' results and artefacts into the run folder (``merge``), runs what
needs the whole run (the analysis after a copy split in batches; ``deliver_to``), then
records and settles exactly as one host's Runner does (``daemon.runsettle``), holding
the request name's lock so that two hosts never pick one name in ``done/``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from loguru import logger

from daemon import logs
from daemon.cluster import duplicates, merge, rows, stages
from daemon.cluster.files import settled_as, under_name_lock
from daemon.cluster.rows import RequestRow
from daemon.cluster.runtime import Again, Runtime
from daemon.errors import FatalError, Interrupted, TransientError
from daemon.intake.claim import Claimed
from daemon.outcomes import RunStatus
from daemon.request import Request
from daemon.runner import deliver_results, run_base, run_context
from daemon.runsettle import Outcome, record, settle_run
from daemon.runstate import RunState
from handlers.copy_analysis import analyze_after_copy
from handlers.mapping import read_mapping


def settle(rt: Runtime, job_id: int | None, claim_id: str) -> None:
    with rt.pool.connection() as conn:
        row = rows.load(conn, claim_id)
        attempt = rows.begin_stage(conn, claim_id, "settling", rt.host_id) \
            if row is not None and row.status == "settling" else None
        batches = stages.batches_of(conn, row.run_id) if row and row.run_id else []
    if row is None or row.run_id is None or attempt is None:
        return  # settled already (a late duplicate of this job)
    log = logger.bind(run=row.run_id, request=row.name)
    if _settled_before(rt, row):
        return
    run_dir = rt.layout.runs / row.run_id
    if attempt > rt.cluster.max_attempts:
        message = f"settling failed {attempt - 1} times (its host died each time)"
        log.error("request {}: {}", row.name, message)
        _give_up(rt, row, run_dir, message)
        return
    sink = logs.add_run_sink(row.run_id, run_dir / "run.log")
    try:
        with rt.executions.run(rt.owner_token(job_id)) as stop:
            _settle(rt, row, run_dir, batches, stop, log)
    finally:
        logs.remove_sink(sink)


def _settled_before(rt: Runtime, row: RequestRow) -> bool:
    """The request left ``processing/`` before a crash cut its row's update: finish the
    row from where it lies."""
    claimed = row.claimed(rt.layout)
    if claimed.path.exists() or claimed.path.is_symlink():
        return False
    final = settled_as(rt.layout, row.name, row.claim_id)
    if final is None:
        with rt.pool.connection() as conn:
            stages.fail_open_request(conn, row.claim_id, "its file left processing/ "
                                     "unsettled (moved away by hand?)")
        return True
    status = RunState.load(rt.layout.runs / str(row.run_id)) or {}
    rt.requests.finished(row.claim_id, status.get("status", RunStatus.FAILED.value), final,
                     None, status.get("counts", {}))
    return True


def _give_up(rt: Runtime, row: RequestRow, run_dir: Path, message: str) -> None:
    """Settle as failed without the steps that killed each host that tried them
    (merging, the analysis, ``deliver_to``): the file goes to ``failed/`` with its
    sidecar, as every request ends."""
    claimed = row.claimed(rt.layout)
    request = Request.model_validate_json((run_dir / "request.json").read_bytes())
    state = RunState(run_dir, run_base(claimed, request, run_dir.name))
    record(state, Outcome(RunStatus.FAILED, problems=[message]))
    _move(rt, row, claimed, request, state)


def _move(rt: Runtime, row: RequestRow, claimed: Claimed, request: Request,
          state: RunState) -> None:
    """The recorded run's file into ``done/`` or ``failed/``, under its name's lock."""
    def move() -> None:
        if claimed.path.exists() or claimed.path.is_symlink():  # else: settled meanwhile
            settle_run(rt.layout, rt.requests, claimed, request, state)

    under_name_lock(rt, row.name, move)


def _settle(rt: Runtime, row: RequestRow, run_dir: Path, batches: list[dict[str, Any]],
            stop: threading.Event, log: Any) -> None:
    claimed = row.claimed(rt.layout)
    request = Request.model_validate_json((run_dir / "request.json").read_bytes())
    whole = len(batches) == 1 and not batches[0]["scan_ids"]
    outcome = merge.merge_results(batches)
    if not whole:
        merge.merge_artefacts(run_dir, request.action, batches)
    state = RunState(run_dir, run_base(claimed, request, run_dir.name))
    try:
        outcome = _whole_run_steps(rt, request, run_dir, state, stop, log, outcome, whole)
    except Interrupted:
        raise Again(f"settling {run_dir.name} interrupted: back to the queue") from None
    if request.action == "copy" and outcome.status is not RunStatus.INVALID:
        assert request.target is not None  # validated
        field = getattr(rt.config.instances[request.target], "marker_field", None)
        with rt.pool.connection() as conn:  # the post-run check: loud, never silent
            outcome.result.extra["duplicates"] = duplicates.check(
                conn, run_dir.name, request.target, rt.instances.get(request.target), field,
                log)
    record(state, outcome)
    log.info("run finished: {} ({})", state.data["status"], state.data["counts"])
    _move(rt, row, claimed, request, state)


def _whole_run_steps(rt: Runtime, request: Request, run_dir: Path, state: RunState,
                     stop: threading.Event, log: Any, outcome: Outcome, whole: bool
                     ) -> Outcome:
    """What one host's run does after its handler, for a run that was split: the
    analysis after a copy, then ``deliver_to``. Raises ``Interrupted``."""
    if outcome.status is RunStatus.INVALID or (whole and outcome.problems):
        return outcome
    if not whole and request.action == "copy" and request.analyze:
        outcome.result.extra["analysis"] = _analysis(rt, request, run_dir, state, stop, log)
    if request.deliver_to is None:
        return outcome
    try:
        outcome.result.extra["delivered_to"] = deliver_results(rt.config, request, run_dir,
                                                               log)
    except (FatalError, TransientError) as exc:
        log.error("run failed: {}", exc)
        return Outcome(RunStatus.FAILED, problems=[str(exc)],
                       transient=isinstance(exc, TransientError))
    return outcome


def _analysis(rt: Runtime, request: Request, run_dir: Path, state: RunState,
              stop: threading.Event, log: Any) -> dict[str, Any]:
    if request.dry_run:
        return {"status": "skipped", "reason": "dry run"}
    assert request.source is not None and request.target is not None  # validated
    pairs = [(r.source_scan_id, r.target_scan_id) for r in read_mapping(run_dir)]
    checkpoint = rt.stores.checkpoints.open(run_dir.name, run_dir)
    try:
        ctx = run_context(rt.config, rt.instances, rt.stores.copies, request, run_dir.name,
                          run_dir, state, checkpoint, stop, log)
        analysis = analyze_after_copy(ctx, rt.instances.get(request.source),
                                      rt.instances.get(request.target), pairs)
    finally:
        checkpoint.close()
    log.info("analysis after the copy: {}", analysis)
    return analysis
