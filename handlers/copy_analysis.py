"""Copy with ``analyze``: wait for the target to process the copies, then analyse them
into the same run folder (SPEC §8: bounded; past the bound the analysis is deferred
and the copy still completes).

The wait is bounded by ``copy.wait_for_processing`` seconds from when this run first
began waiting (journalled as ``copy:wait``, so a restart does not start the clock
again) and polls every ``copy.poll_interval``. Meanwhile ``run.json`` says
``status: waiting``. A target scan that does not exist is not waited for (the analysis
reports it missing).

The result is the ``analysis`` section of the run's result: ``{"status": "done",
"counts": {...}}``, ``{"status": "deferred", "reason": ...}`` (the scheduler re-drops
it as an analyze request with ``from_run`` at the rerun window) or ``{"status":
"failed", "reason": ...}``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from daemon.errors import FatalError, PermanentError, TransientError
from daemon.instances.base import Instance
from handlers.base import RunContext

WAIT_KEY = "copy:wait"
QUERY_CHUNK = 1000
Pairs = Sequence[tuple[int, int | None]]


def analyze_after_copy(ctx: RunContext, source: Instance, target: Instance,
                       pairs: Pairs) -> dict[str, Any]:
    """Wait for the targets of ``pairs``, then analyse; the ``analysis`` section.
    Raises only ``Interrupted`` (the daemon is stopping)."""
    targets = sorted({t for _, t in pairs if t is not None})
    try:
        pending = wait_processed(ctx, target, targets)
    except (TransientError, PermanentError, FatalError) as exc:
        return {"status": "deferred", "reason": f"cannot read the target scans: {exc}"}
    if pending:
        bound = ctx.config.copy_.wait_for_processing
        return {"status": "deferred", "pending": len(pending),
                "reason": f"{len(pending)} of {len(targets)} target scans were not "
                          f"processed within {bound:g} s"}
    return run_analysis(ctx, source, target, pairs)


def wait_processed(ctx: RunContext, target: Instance, scan_ids: Sequence[int]) -> list[int]:
    """Poll until every scan of ``scan_ids`` is processed or the bound has passed; the
    IDs still unprocessed ([] when all are). Raises ``Interrupted`` when stopping, and
    what ``target.get_scans`` raises other than ``TransientError`` (retried at the next
    poll)."""
    cfg = ctx.config.copy_
    deadline = _wait_started(ctx) + cfg.wait_for_processing
    pending = list(scan_ids)
    waiting = False
    try:
        while True:
            pending = _unprocessed(ctx, target, pending)
            now = time.time()
            if not pending or now >= deadline:
                return pending
            if not waiting:
                ctx.log.info("waiting for {} to process {} of {} copies (until {})",
                             target.name, len(pending), len(scan_ids), _iso(deadline))
                waiting = True
            ctx.update(status="waiting", waiting={
                "scans": len(scan_ids), "unprocessed": len(pending), "until": _iso(deadline)})
            ctx.stop.wait(min(cfg.poll_interval, deadline - now))
            ctx.check_stop()
    finally:
        if waiting:
            ctx.update(status="running", waiting={
                "scans": len(scan_ids), "unprocessed": len(pending), "until": _iso(deadline)})


def run_analysis(ctx: RunContext, source: Instance, target: Instance,
                 pairs: Pairs) -> dict[str, Any]:
    """``handlers.analyze.analyze_pairs`` into this run folder; the ``analysis``
    section. Imported here, late: the analyze action is built separately."""
    try:
        from handlers.analyze import analyze_pairs
    except ImportError as exc:
        return {"status": "deferred",
                "reason": f"the analyze action is not available in this version ({exc})"}
    try:
        summary = analyze_pairs(ctx, source, target, pairs)
    except TransientError as exc:
        return {"status": "deferred", "reason": f"the analysis failed transiently: {exc}"}
    except (PermanentError, FatalError, OSError) as exc:
        ctx.log.error("the analysis after the copy failed: {}", exc)
        return {"status": "failed", "reason": str(exc)}
    return {**summary, "status": "done", "counts": summary.get("counts", {})}


def _unprocessed(ctx: RunContext, target: Instance, scan_ids: list[int]) -> list[int]:
    still: list[int] = []
    for start in range(0, len(scan_ids), QUERY_CHUNK):
        chunk = scan_ids[start:start + QUERY_CHUNK]
        try:
            scans = target.get_scans(chunk)
        except TransientError as exc:
            ctx.log.warning("cannot read the target scans now ({}); asking again later", exc)
            still += chunk
            continue
        done = {s.id for s in scans if s.processed}
        exists = {s.id for s in scans}
        still += [i for i in chunk if i in exists and i not in done]
    return still


def _wait_started(ctx: RunContext) -> float:
    record = ctx.checkpoint.get(WAIT_KEY)
    if record is not None:
        return float(record["started"])
    started = time.time()
    ctx.checkpoint.record(WAIT_KEY, started=started)
    return started


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
