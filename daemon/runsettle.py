"""A run's outcome on record: ``run.json``, the ledger, and the request in ``done/`` or
``failed/`` with its sidecars. One host's ``Runner`` and the cluster's settle job both
end here, so a request ends the same way whichever mode ran it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger

from daemon import metrics
from daemon.intake.claim import Claimed, profile_of
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.redact import redact
from daemon.request import Request
from daemon.runstate import RunState, now_iso
from daemon.settle import Sidecars, settle
from daemon.store.abc import RequestStore
from handlers.base import HandlerResult

MAX_ERRORS_IN_RUN_JSON = 200


@dataclass
class Outcome:
    """How a handler's run ended: ``INTERRUPTED`` (the daemon stops; nothing to record),
    ``INVALID``, ``FAILED`` with ``problems``, or done/partial/failed by its items."""

    status: RunStatus
    result: HandlerResult = field(default_factory=HandlerResult)
    problems: list[str] = field(default_factory=list)
    transient: bool = False  # a later rerun may succeed
    error: BaseException | None = None  # what stopped the run, if anything did


def record(state: RunState, outcome: Outcome) -> None:
    """The outcome into run.json. Every message passes ``redact`` here: this is where
    run.json, result.json and error.txt get their text."""
    result = outcome.result
    problems = [redact(p) for p in outcome.problems]
    failed = [{"scan_id": i.scan_id, "error": redact(i.error or ""),
               "transient": i.transient} for i in result.failed]
    errors = problems + [f"scan {f['scan_id']}: {f['error']}" for f in failed]
    transient = outcome.transient or (bool(failed) and all(f["transient"] for f in failed))
    state.finish(outcome.status, counts={**result.counts, "items": result.total,
                                         "failed": len(failed)},
                 errors=errors[:MAX_ERRORS_IN_RUN_JSON], **result.extra,
                 extra_keys=sorted(result.extra),
                 result={"failed": failed, "problems": problems, "transient": transient})


def settle_run(layout: Layout, ledger: RequestStore, claimed: Claimed, request: Request,
               state: RunState) -> RunStatus:
    """The recorded run (``record``) into ``done/`` or ``failed/`` with its sidecars."""
    data = state.data
    status = RunStatus(data["status"])
    failed = data["result"]["failed"]
    problems = data["result"]["problems"]
    result = {"claim_id": claimed.claim_id, "run_id": data["run_id"],
              "request": claimed.name, "profile": claimed.profile,
              "action": request.action, "label": request.label, "status": status.value,
              "counts": data.get("counts", {}), "problems": problems, "failed": failed,
              "transient": data["result"]["transient"], "attempt": request.attempt,
              "run_dir": f"runs/{data['run_id']}", "started_at": data.get("started_at"),
              "finished_at": data.get("finished_at"),
              **{key: data[key] for key in data.get("extra_keys", [])}}
    ok = status is RunStatus.DONE
    retry = retry_request(request, data["run_id"], failed) if failed else None
    text = None if ok else error_text(claimed.name, status, problems, failed, retry)
    folder = layout.done if ok else layout.failed
    final = settle(claimed.path, folder, claimed.name, Sidecars(result, text, retry))
    ledger.finished(claimed.claim_id, status.value, final,
                    problems[0] if problems else None, data.get("counts", {}))
    metrics.record_run(request.action, status.value, data.get("counts", {}),
                       _seconds(data.get("started_at"), data.get("finished_at")))
    logger.bind(run=data["run_id"]).info("request {} → {}/{}", claimed.name,
                                         folder.name, final.name)
    return status


def refuse(path: Path, layout: Layout, ledger: RequestStore, reason: str, claim_id: str) -> Path:
    """Put a file of the inbox that cannot be a request straight into ``failed/`` with
    the reason."""
    profile = profile_of(path, layout.inbox) if path.parent != layout.inbox else None
    ledger.claimed(claim_id, path.name, profile)
    final = settle_invalid(path, path.name, profile, claim_id, [f"file: {reason}"], layout,
                           ledger)
    logger.warning("refused {}: {}", path.name, reason)
    return final


def settle_invalid(src: Path, name: str, profile: str | None, claim_id: str,
                   problems: list[str], layout: Layout, ledger: RequestStore) -> Path:
    """An invalid request, or a file that cannot be one, into ``failed/`` with its
    problems (redacted); nothing ran, so there is no run folder."""
    problems = [redact(p) for p in problems]
    result = {"claim_id": claim_id, "run_id": None, "request": name, "profile": profile,
              "status": RunStatus.INVALID.value, "problems": problems, "transient": False,
              "finished_at": now_iso()}
    text = error_text(name, RunStatus.INVALID, problems, [], None)
    final = settle(src, layout.failed, name, Sidecars(result, text, None))
    ledger.finished(claim_id, RunStatus.INVALID.value, final, problems[0], {})
    metrics.record_run(None, RunStatus.INVALID.value, {}, None)
    return final


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def retry_request(request: Request, run_id: str, failed: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """A request for just the failed scans, ready to drop back into the inbox."""
    ids = [f["scan_id"] for f in failed]
    retry = request.normalised()
    retry.update(select=None, retry_of=run_id, attempt=request.attempt + 1)
    if request.action == "analyze" and request.pairs:
        wanted = set(ids)
        retry["pairs"] = [p for p in retry["pairs"] if p[0] in wanted]
    elif request.action == "analyze" and request.target_scan_ids:
        # The two lists pair by position: keep each failed source with its own target.
        wanted = set(ids)
        kept = [(s, t) for s, t in zip(request.scan_ids, request.target_scan_ids,
                                       strict=True) if s in wanted]
        retry["scan_ids"] = [s for s, _ in kept]
        retry["target_scan_ids"] = [t for _, t in kept]
    else:
        retry["scan_ids"] = list(dict.fromkeys(ids))  # analyze: one per source, not pair
    return {k: v for k, v in retry.items() if v not in (None, [], {})}


def error_text(name: str, status: RunStatus, problems: list[str],
               failed: list[dict[str, Any]], retry: dict[str, Any] | None) -> str:
    lines = [f"Request {name}: {status.value}."]
    if status is RunStatus.INVALID:
        lines.append("The request was not run. Fix the following and drop it in again:")
    lines += [f"  - {p}" for p in problems]
    if failed:
        lines.append(f"{len(failed)} scan(s) failed:")
        lines += [f"  - scan {f['scan_id']}: {f['error']}" for f in failed[:200]]
        if len(failed) > 200:
            lines.append(f"  ... and {len(failed) - 200} more (see the run's run.json)")
    if retry is not None:
        lines.append(f"To retry just these scans, drop {name}.retry.json into the inbox "
                     "(or run: scanrelay retry RUN_ID).")
    return "\n".join(lines) + "\n"
