"""The plan job: a claimed request becomes a run folder and its batches.

It parses the request (the file in ``processing/``, written from the row's bytes if
absent), creates the run folder as one host's Runner does, and splits a copy or a
download of more than ``cluster.batch_size`` scans into batches of that size; anything
else (an analysis, a small request, a selection the source could not answer now) is one
batch that runs the request whole. The batches and their jobs are one transaction
(``stages.commit_plan``). An invalid request goes to ``failed/`` from here.
"""

from __future__ import annotations

import os
from typing import Any

from loguru import logger

from daemon.cluster import rows, stages
from daemon.cluster.files import ensure_file, under_name_lock
from daemon.cluster.runtime import Runtime
from daemon.errors import RequestError
from daemon.intake.claim import Claimed, file_refusal
from daemon.request import Request
from daemon.runner import create_run_dir, prepare, run_base, unreadable
from daemon.runsettle import settle_invalid
from daemon.runstate import RunState, now_iso

SPLIT_ACTIONS = ("copy", "download")


def plan(rt: Runtime, claim_id: str) -> None:
    with rt.pool.connection() as conn:
        row = rows.load(conn, claim_id)
        attempt = rows.begin_stage(conn, claim_id, "claimed", rt.host_id) \
            if row is not None and row.status == "claimed" else None
    if row is None or attempt is None or not row.processing_name:
        return  # planned already (a late duplicate of this job), or never a request
    log = logger.bind(run=claim_id, request=row.name)
    path = ensure_file(rt.layout, row)
    claimed = row.claimed(rt.layout)
    if path is None:  # settled as invalid before a crash cut the row's update
        rt.requests.finished(claim_id, "invalid", claimed.path, "settled before a restart", {})
        return
    if attempt > rt.cluster.max_attempts:
        _invalid(rt, claimed, [f"the request could not be planned: its plan job ended "
                               f"without an answer {attempt - 1} times"])
        return
    problem = file_refusal(os.lstat(path), rt.config.limits.max_request_bytes)
    if problem is not None:
        _invalid(rt, claimed, [f"file: {problem}"])
        return
    try:
        request, run_dir = prepare(claimed, rt.config, rt.layout)
    except RequestError as exc:
        log.warning("invalid request {}: {}", row.name, exc)
        _invalid(rt, claimed, exc.problems)
        return
    except Exception as exc:  # a reader bug must not strand the request in processing/
        log.exception("cannot read request {}", row.name)
        _invalid(rt, claimed, [unreadable(exc)])
        return
    create_run_dir(claimed, request, run_dir)
    chunks = split(rt, request, log)
    state = RunState(run_dir, run_base(claimed, request, run_dir.name))
    # the run starts with its plan (its batches' own run.json say when each ran)
    state.update(status="running", batches=len(chunks),
                 started_at=state.data.get("started_at") or now_iso())
    with rt.pool.connection() as conn:
        if stages.commit_plan(conn, claim_id, run_dir.name, request.action, request.label,
                              chunks, rt.host_id):
            log.bind(run=run_dir.name).info("planned {} {}: {} batch(es)", request.action,
                                            row.name, len(chunks))


def split(rt: Runtime, request: Request, log: Any) -> list[list[int]]:
    """The request's batches of scan IDs; ``[[]]``: one batch, the request whole."""
    size = rt.cluster.batch_size
    if request.action not in SPLIT_ACTIONS:
        return [[]]
    ids = _scan_ids(rt, request, log)
    if ids is None or len(ids) <= size:
        return [[]]
    return [ids[start:start + size] for start in range(0, len(ids), size)]


def _scan_ids(rt: Runtime, request: Request, log: Any) -> list[int] | None:
    """The request's scans, or None when only its handler can say (a selection the
    source cannot answer now, or that is empty or too large: the handler reports it
    as on one host)."""
    if request.scan_ids:
        return list(request.scan_ids)
    if request.select is None or request.source is None:
        return None
    try:
        ids = rt.instances.get(request.source).select_scans(request.select.selection())
    except Exception as exc:  # the whole batch will select again and report it
        log.warning("select for the plan failed ({}); the request runs as one batch", exc)
        return None
    return ids if 0 < len(ids) <= rt.config.limits.max_scans else None


def _invalid(rt: Runtime, claimed: Claimed, problems: list[str]) -> None:
    def settle() -> None:
        if claimed.path.exists() or claimed.path.is_symlink():  # else: another execution
            settle_invalid(claimed.path, claimed.name, claimed.profile, claimed.claim_id,
                           problems, rt.layout, rt.requests)

    under_name_lock(rt, claimed.name, settle)
