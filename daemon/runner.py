"""The one wrapper every request goes through: parse → run folder → handler → settle.

Whatever happens, the request ends with a recorded outcome: in ``done/`` or
``failed/`` with sidecars, or, when the daemon is stopping, left in ``processing/``
with its checkpoint, to be resumed at the next start.

The steps are functions of their own (``prepare``, ``create_run_dir``, ``execute``, and
``daemon.runsettle``'s ``record`` and ``settle_run``) so that cluster mode, which runs
them as separate jobs on any host (``daemon.cluster``), runs the same code.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from daemon import logs, outage
from daemon.config import Config
from daemon.deliver import OutsideRoots, deliver
from daemon.errors import FatalError, Interrupted, RequestError, TransientError
from daemon.fsutil import write_json
from daemon.instances.registry import Instances
from daemon.intake.claim import Claimed
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.redact import redact
from daemon.request import Request, parse_request
from daemon.runsettle import Outcome, record, refuse, settle_invalid, settle_run
from daemon.runstate import RunState
from daemon.store.abc import CheckpointStore, CopyStore
from daemon.store.stores import Stores
from handlers.base import HandlerResult, RunContext
from handlers.registry import handler_for

__all__ = ["Runner", "create_run_dir", "deliver_results", "execute", "prepare", "refuse",
           "run_context"]

ProgressHook = Callable[[str, int, int, dict[str, Any]], None]


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
            request, run_dir = prepare(claimed, self.config, self.layout)
        except RequestError as exc:
            log.warning("invalid request {}: {}", claimed.name, exc)
            return self._settle_invalid(claimed, exc.problems)
        except Exception as exc:  # a reader bug must not strand the request in processing/
            log.exception("cannot read request {}", claimed.name)
            return self._settle_invalid(claimed, [unreadable(exc)])
        return self._run(claimed, request, run_dir)

    def _run(self, claimed: Claimed, request: Request, run_dir: Path) -> RunStatus:
        run_id = run_dir.name
        log = logger.bind(run=run_id, request=claimed.name)
        create_run_dir(claimed, request, run_dir)
        state = RunState(run_dir, run_base(claimed, request, run_id))
        if RunStatus(state.data.get("status", "running")).terminal and "result" in state.data:
            log.info("run already finished before a restart; settling it")
            return settle_run(self.layout, self.ledger, claimed, request, state)
        self.ledger.started(claimed.claim_id, run_id, request.action, request.label)
        sink = logs.add_run_sink(run_id, run_dir / "run.log")
        try:
            state.start()
            log.info("run started: {} {} (attempt {})", request.action, claimed.name,
                     state.data["attempts"])
            outcome = execute(self.config, self.instances, self.stores, request, run_id,
                              run_dir, state, self.stop, log, on_progress=self.on_progress)
            if outcome.status is RunStatus.INTERRUPTED:
                return RunStatus.INTERRUPTED
            record(state, outcome)
            if not outcome.problems:
                log.info("run finished: {} ({})", state.data["status"], state.data["counts"])
            return settle_run(self.layout, self.ledger, claimed, request, state)
        finally:
            logs.remove_sink(sink)

    def _settle_invalid(self, claimed: Claimed, problems: list[str]) -> RunStatus:
        settle_invalid(claimed.path, claimed.name, claimed.profile, claimed.claim_id,
                       problems, self.layout, self.ledger)
        return RunStatus.INVALID


def prepare(claimed: Claimed, config: Config, layout: Layout) -> tuple[Request, Path]:
    """The request of a run folder from before (resume), or freshly parsed, and its run
    folder. Raises ``RequestError`` for an invalid request (and whatever a reader raises
    on a file it cannot read: see ``unreadable``)."""
    earlier = claimed.run_dir(layout.runs)
    if earlier is not None and (earlier / "request.json").exists():
        request = Request.model_validate_json((earlier / "request.json").read_bytes())
        return request, earlier
    request = parse_request(claimed.path, config, folder_profile=claimed.profile)
    return request, layout.runs / claimed.run_id(request.action)


def unreadable(exc: Exception) -> str:
    """The problem of a request file a reader failed on (a bug must not strand it)."""
    return f"file: could not be read ({type(exc).__name__}: {exc}); check its format"


def create_run_dir(claimed: Claimed, request: Request, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    original = run_dir / f"request.orig{claimed.path.suffix.lower()}"
    if not original.exists():
        shutil.copyfile(claimed.path, original, follow_symlinks=False)
    if not (run_dir / "request.json").exists():
        write_json(run_dir / "request.json", request.normalised())


def run_base(claimed: Claimed, request: Request, run_id: str) -> dict[str, Any]:
    """What ``run.json`` says of every run, whatever its state."""
    return {"run_id": run_id, "claim_id": claimed.claim_id, "request": claimed.name,
            "action": request.action, "label": request.label}


def execute(config: Config, instances: Instances, stores: Stores, request: Request,
            run_id: str, run_dir: Path, state: RunState, stop: threading.Event, log: Any, *,
            batch: int = 0, owner: str | None = None, on_progress: ProgressHook | None = None,
            deliver: bool = True) -> Outcome:
    """Run the request's handler in ``run_dir`` (its artefacts; its checkpoint is run
    ``run_id``'s, or its batch ``batch``'s) and say how it ended; never raises: an
    exception becomes an outcome (``INTERRUPTED`` when ``stop`` was set). ``owner``:
    this execution, as the owner of its copy key leases (default: a new local one).
    ``deliver``: also place the results in ``deliver_to``."""
    checkpoint = stores.checkpoints.open(run_id, run_dir, batch)
    try:
        with logger.contextualize(run=run_id), \
                outage.watch([request.source, request.target], _waiting(state, log)):
            context = run_context(config, instances, stores.copies, request, run_id,
                                  run_dir, state, checkpoint, stop, log, owner, on_progress)
            result = handler_for(request.action)(context)
            if deliver and request.deliver_to is not None:
                result.extra["delivered_to"] = deliver_results(config, request, run_dir, log)
    except Interrupted:
        state.interrupted()
        log.warning("run interrupted by shutdown; it resumes at the next start")
        return Outcome(RunStatus.INTERRUPTED)
    except RequestError as exc:
        log.warning("invalid request: {}", exc)
        return Outcome(RunStatus.INVALID, problems=exc.problems)
    except (FatalError, TransientError) as exc:
        log.error("run failed: {}", exc)
        transient = isinstance(exc, TransientError) or \
            (isinstance(exc, FatalError) and exc.transient)
        return Outcome(RunStatus.FAILED, problems=[str(exc)], transient=transient,
                       error=exc)
    except Exception as exc:  # the wrapper's promise: every run gets an outcome
        log.exception("run failed on an internal error")
        return Outcome(RunStatus.FAILED,
                       problems=[f"internal error: {type(exc).__name__}: {exc}"], error=exc)
    finally:
        checkpoint.close()
    return Outcome(status_of(result), result)


def deliver_results(config: Config, request: Request, run_dir: Path, log: Any) -> str:
    """The run's results also into ``deliver_to`` (``daemon.deliver``). A folder
    that left the roots since validation fails the run; one that cannot be written
    fails it transiently (a rerun delivers)."""
    assert request.deliver_to is not None
    try:
        final = deliver(run_dir, request.action, request.deliver_to, config.delivery_roots)
    except OutsideRoots as exc:
        raise FatalError(f"deliver_to: {exc}") from exc
    except OSError as exc:
        raise TransientError(f"deliver_to: cannot write {request.deliver_to}: {exc}") \
            from exc
    log.info("results delivered to {}", final)
    return str(final)


def run_context(config: Config, instances: Instances, copies: CopyStore, request: Request,
                run_id: str, run_dir: Path, state: RunState, checkpoint: CheckpointStore,
                stop: threading.Event, log: Any, owner: str | None = None,
                on_progress: ProgressHook | None = None) -> RunContext:
    """What a handler gets: ``run.json`` (``state``) takes its progress and updates."""
    def progress(done: int, total: int, **counts: Any) -> None:
        state.progress(done, total, **counts)
        if on_progress:
            on_progress(run_id, done, total, counts)

    return RunContext(run_id=run_id, run_dir=run_dir, request=request, config=config,
                      instance=instances.get, checkpoint=checkpoint, copies=copies, log=log,
                      stop=stop, progress=progress, update=state.update,
                      owner=owner or f"local:{run_id}:{uuid.uuid4().hex[:8]}")


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


def status_of(result: HandlerResult) -> RunStatus:
    if not result.failed:
        return RunStatus.DONE
    return RunStatus.PARTIAL if result.succeeded else RunStatus.FAILED
