"""The one wrapper every request goes through: parse → run folder → handler → settle.

Whatever happens, the request ends with a recorded outcome: in ``done/`` or
``failed/`` with sidecars, or, when the daemon is stopping, left in ``processing/``
with its checkpoint, to be resumed at the next start.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger

from daemon import logs, metrics, outage
from daemon.config import Config
from daemon.deliver import OutsideRoots, deliver
from daemon.errors import FatalError, Interrupted, RequestError, TransientError
from daemon.fsutil import write_json
from daemon.instances.registry import Instances
from daemon.intake.claim import Claimed, profile_of
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.redact import redact
from daemon.request import Request, parse_request
from daemon.runstate import RunState, now_iso
from daemon.settle import Sidecars, settle
from daemon.store.abc import CheckpointStore, RequestStore
from daemon.store.stores import Stores
from handlers.base import HandlerResult, RunContext
from handlers.registry import handler_for

ProgressHook = Callable[[str, int, int, dict[str, Any]], None]
MAX_ERRORS_IN_RUN_JSON = 200


class Runner:
    """Processes claimed requests; safe to call from several worker threads."""

    def __init__(self, config: Config, layout: Layout, stores: Stores, instances: Instances,
                 stop: threading.Event, on_progress: ProgressHook | None = None) -> None:
        self.config = config
        self.layout = layout
        self.stores = stores
        self.ledger = stores.requests
        self.instances = instances
        self.stop = stop
        self.on_progress = on_progress

    def process(self, claimed: Claimed) -> RunStatus:
        log = logger.bind(run=claimed.claim_id, request=claimed.name)
        self.ledger.claimed(claimed.claim_id, claimed.name, claimed.profile)
        try:
            request, run_dir = self._prepare(claimed)
        except RequestError as exc:
            log.warning("invalid request {}: {}", claimed.name, exc)
            return self._settle_invalid(claimed, exc.problems)
        except Exception as exc:  # a reader bug must not strand the request in processing/
            log.exception("cannot read request {}", claimed.name)
            return self._settle_invalid(claimed, [
                f"file: could not be read ({type(exc).__name__}: {exc}); check its format"])
        return self._run(claimed, request, run_dir)

    def _prepare(self, claimed: Claimed) -> tuple[Request, Path]:
        """The request of a run folder from before (resume), or freshly parsed."""
        earlier = claimed.run_dir(self.layout.runs)
        if earlier is not None and (earlier / "request.json").exists():
            request = Request.model_validate_json((earlier / "request.json").read_bytes())
            return request, earlier
        request = parse_request(claimed.path, self.config, folder_profile=claimed.profile)
        return request, self.layout.runs / claimed.run_id(request.action)

    def _run(self, claimed: Claimed, request: Request, run_dir: Path) -> RunStatus:
        run_id = run_dir.name
        log = logger.bind(run=run_id, request=claimed.name)
        self._create_run_dir(claimed, request, run_dir)
        state = RunState(run_dir, {"run_id": run_id, "claim_id": claimed.claim_id,
                                   "request": claimed.name, "action": request.action,
                                   "label": request.label})
        if RunStatus(state.data.get("status", "running")).terminal and "result" in state.data:
            log.info("run already finished before a restart; settling it")
            return self._settle_run(claimed, request, state)
        self.ledger.started(claimed.claim_id, run_id, request.action, request.label)
        sink = logs.add_run_sink(run_id, run_dir / "run.log")
        try:
            return self._execute(claimed, request, run_dir, state, log)
        finally:
            logs.remove_sink(sink)

    def _execute(self, claimed: Claimed, request: Request, run_dir: Path, state: RunState,
                 log: Any) -> RunStatus:
        state.start()
        log.info("run started: {} {} (attempt {})", request.action, claimed.name,
                 state.data["attempts"])
        checkpoint = self.stores.checkpoints.open(run_dir.name, run_dir)
        try:
            with logger.contextualize(run=run_dir.name), \
                    outage.watch([request.source, request.target], _waiting(state, log)):
                result = handler_for(request.action)(self._context(request, run_dir, state,
                                                                    checkpoint, log))
                if request.deliver_to is not None:
                    result.extra["delivered_to"] = self._deliver(request, run_dir, log)
        except Interrupted:
            state.interrupted()
            log.warning("run interrupted by shutdown; it resumes at the next start")
            return RunStatus.INTERRUPTED
        except RequestError as exc:
            log.warning("invalid request: {}", exc)
            self._record(state, RunStatus.INVALID, HandlerResult(), exc.problems, False)
            return self._settle_run(claimed, request, state)
        except (FatalError, TransientError) as exc:
            log.error("run failed: {}", exc)
            transient = isinstance(exc, TransientError) or \
                (isinstance(exc, FatalError) and exc.transient)
            self._record(state, RunStatus.FAILED, HandlerResult(), [str(exc)], transient)
            return self._settle_run(claimed, request, state)
        except Exception as exc:  # the wrapper's promise: every run gets an outcome
            log.exception("run failed on an internal error")
            problem = f"internal error: {type(exc).__name__}: {exc}"
            self._record(state, RunStatus.FAILED, HandlerResult(), [problem], False)
            return self._settle_run(claimed, request, state)
        finally:
            checkpoint.close()
        self._record(state, _status_of(result), result, [], False)
        log.info("run finished: {} ({})", state.data["status"], state.data["counts"])
        return self._settle_run(claimed, request, state)

    def _deliver(self, request: Request, run_dir: Path, log: Any) -> str:
        """The run's results also into ``deliver_to`` (``daemon.deliver``). A folder
        that left the roots since validation fails the run; one that cannot be written
        fails it transiently (a rerun delivers)."""
        assert request.deliver_to is not None
        try:
            final = deliver(run_dir, request.action, request.deliver_to,
                            self.config.delivery_roots)
        except OutsideRoots as exc:
            raise FatalError(f"deliver_to: {exc}") from exc
        except OSError as exc:
            raise TransientError(f"deliver_to: cannot write {request.deliver_to}: {exc}") \
                from exc
        log.info("results delivered to {}", final)
        return str(final)

    def _context(self, request: Request, run_dir: Path, state: RunState,
                 checkpoint: CheckpointStore, log: Any) -> RunContext:
        def progress(done: int, total: int, **counts: Any) -> None:
            state.progress(done, total, **counts)
            if self.on_progress:
                self.on_progress(run_dir.name, done, total, counts)

        return RunContext(run_id=run_dir.name, run_dir=run_dir, request=request,
                          config=self.config, instance=self.instances.get,
                          checkpoint=checkpoint, copies=self.stores.copies, log=log,
                          stop=self.stop, progress=progress, update=state.update,
                          owner=f"local:{run_dir.name}:{uuid.uuid4().hex[:8]}")

    def _create_run_dir(self, claimed: Claimed, request: Request, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        original = run_dir / f"request.orig{claimed.path.suffix.lower()}"
        if not original.exists():
            shutil.copyfile(claimed.path, original, follow_symlinks=False)
        if not (run_dir / "request.json").exists():
            write_json(run_dir / "request.json", request.normalised())

    @staticmethod
    def _record(state: RunState, status: RunStatus, result: HandlerResult,
                problems: list[str], transient: bool) -> None:
        """The outcome into run.json. Every message passes ``redact`` here: this is
        where run.json, result.json and error.txt get their text."""
        problems = [redact(p) for p in problems]
        failed = [{"scan_id": i.scan_id, "error": redact(i.error or ""),
                   "transient": i.transient} for i in result.failed]
        errors = problems + [f"scan {f['scan_id']}: {f['error']}" for f in failed]
        transient = transient or (bool(failed) and all(f["transient"] for f in failed))
        state.finish(status, counts={**result.counts, "items": result.total,
                                     "failed": len(failed)},
                     errors=errors[:MAX_ERRORS_IN_RUN_JSON], **result.extra,
                     extra_keys=sorted(result.extra),
                     result={"failed": failed, "problems": problems, "transient": transient})

    def _settle_run(self, claimed: Claimed, request: Request, state: RunState) -> RunStatus:
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
        retry = _retry_request(request, data["run_id"], failed) if failed else None
        text = None if ok else _error_text(claimed.name, status, problems, failed, retry)
        folder = self.layout.done if ok else self.layout.failed
        final = settle(claimed.path, folder, claimed.name, Sidecars(result, text, retry))
        self.ledger.finished(claimed.claim_id, status.value, final,
                             problems[0] if problems else None, data.get("counts", {}))
        metrics.record_run(request.action, status.value, data.get("counts", {}),
                           _seconds(data.get("started_at"), data.get("finished_at")))
        logger.bind(run=data["run_id"]).info("request {} → {}/{}", claimed.name,
                                             folder.name, final.name)
        return status

    def _settle_invalid(self, claimed: Claimed, problems: list[str]) -> RunStatus:
        settle_invalid(claimed.path, claimed.name, claimed.profile, claimed.claim_id,
                       problems, self.layout, self.ledger)
        return RunStatus.INVALID


def refuse(path: Path, layout: Layout, ledger: RequestStore, reason: str, claim_id: str) -> Path:
    """Put a file that cannot be a request straight into ``failed/`` with the reason."""
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
    text = _error_text(name, RunStatus.INVALID, problems, [], None)
    final = settle(src, layout.failed, name, Sidecars(result, text, None))
    ledger.finished(claim_id, RunStatus.INVALID.value, final, problems[0], {})
    metrics.record_run(None, RunStatus.INVALID.value, {}, None)
    return final


def _waiting(state: RunState, log: Any) -> Callable[[list[outage.Health]], None]:
    """What a run does when its instances go down or come back: ``run.json`` says
    ``waiting`` and why, then ``running`` again."""
    def changed(down: list[outage.Health]) -> None:
        if down:
            reason = "; ".join(h.reason() for h in down)
            state.update(status=RunStatus.WAITING.value, waiting=redact(reason),
                         waiting_for=[h.instance for h in down])
            log.warning("run waits: {}", reason)
        else:
            state.update(status=RunStatus.RUNNING.value, waiting=None, waiting_for=None)
            log.info("run resumes: its instances answer again")
    return changed


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _status_of(result: HandlerResult) -> RunStatus:
    if not result.failed:
        return RunStatus.DONE
    return RunStatus.PARTIAL if result.succeeded else RunStatus.FAILED


def _retry_request(request: Request, run_id: str, failed: list[dict[str, Any]]
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


def _error_text(name: str, status: RunStatus, problems: list[str],
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
