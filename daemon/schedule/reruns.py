"""The rerun window (``reruns`` of the config): at its cron, the scheduler

- re-drops every request in ``failed/`` whose failure was transient (network, 5xx,
  timeouts, an instance down), as its ``retry.json`` with the attempt counter raised;
  once a request's attempt reaches ``max_attempts`` it stays in ``failed/`` and its
  ``error.txt`` says so. Failures that are not transient (validation, 4xx) are never
  re-dropped. Where a run failed partly transiently and partly not, only the scans that
  failed transiently are re-dropped.
- drops the analysis of every copy run whose analysis was deferred (its target scans
  were not processed within the wait bound): an ``analyze`` request with ``from_run``.

Each failed run is re-dropped once, and each deferred analysis dropped once: the keys
``rerun:<run_id>`` and ``analysis:<run_id>`` in the drop log (``state``) make a second
window, or a restart, skip them. ``plan_rerun`` is the pure decision.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from daemon.config import RerunsConfig
from daemon.fsutil import write_text
from daemon.layout import Layout
from daemon.schedule.produce import Drops
from daemon.schedule.state import ANALYSIS, EXHAUSTED, RAN, RERUN, WINDOW, iso
from daemon.settle import ERROR, RESULT, RETRY

JOB = "reruns"
ATTEMPT_SUFFIX = re.compile(r"\.(attempt\d+|analysis)-[0-9a-f]{6}$")


@dataclass(frozen=True)
class Settled:
    """A request at rest in ``done/`` or ``failed/``, with its ``result.json``."""

    path: Path
    result: dict[str, Any]

    def sidecar(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def run_id(self) -> str | None:
        run_id = self.result.get("run_id")
        return run_id if isinstance(run_id, str) else None


@dataclass(frozen=True)
class Plan:
    verdict: Literal["rerun", "exhausted", "permanent"]
    attempt: int  # the attempt that failed
    request: dict[str, Any] | None = None  # for "rerun": what to drop


def settled_requests(folder: Path) -> Iterator[Settled]:
    """Requests settled in ``folder``, by name. One still being settled (sidecars
    written, the request not yet linked beside them) is left for the next window."""
    for sidecar in sorted(folder.glob("*" + RESULT)):
        if not sidecar.name.startswith("."):
            item = settled_at(sidecar.with_name(sidecar.name[:-len(RESULT)]))
            if item is not None:
                yield item


def settled_at(request: Path) -> Settled | None:
    """The settled request at ``request`` with its ``result.json``; None while it is
    still being settled (or its result is unreadable)."""
    if not (request.exists() or request.is_symlink()):
        return None
    result = _read_json(request.with_name(request.name + RESULT))
    return None if result is None else Settled(request, result)


def plan_rerun(result: dict[str, Any], retry: dict[str, Any] | None,
               original: dict[str, Any] | None, max_attempts: int) -> Plan:
    """What the rerun window does with one failed request, from its ``result.json``,
    its ``retry.json`` and its run's normalised ``request.json`` (either may be None)."""
    attempt = int(result.get("attempt") or 1)
    base = _rerun_base(result, retry, original)
    if base is None:
        return Plan("permanent", attempt)
    if attempt >= max_attempts:
        return Plan("exhausted", attempt)
    request = {**base, "retry_of": result["run_id"], "attempt": attempt + 1}
    return Plan("rerun", attempt, {k: v for k, v in request.items() if v not in (None, [], {})})


def _rerun_base(result: dict[str, Any], retry: dict[str, Any] | None,
                original: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request to run again, or None when nothing failed transiently."""
    if not isinstance(result.get("run_id"), str):
        return None  # refused or invalid: it never ran
    failed = result.get("failed") or []
    if not failed:  # the run as a whole failed, e.g. its instance was down
        return original if result.get("transient") is True else None
    transient = {f["scan_id"] for f in failed if f.get("transient")}
    base = retry or original
    if not transient or base is None:
        return None
    return _narrowed(base, transient, original)


def _narrowed(request: dict[str, Any], scan_ids: set[int],
              original: dict[str, Any] | None) -> dict[str, Any]:
    """``request`` for just ``scan_ids`` (pairs by their source scan)."""
    out = dict(request)
    out["select"] = None
    if out.get("pairs"):
        out["pairs"] = [p for p in out["pairs"] if p[0] in scan_ids]
    elif original and original.get("target_scan_ids"):
        # scan_ids and target_scan_ids go position by position: narrow both together,
        # from the original request where they are still aligned.
        kept = [(s, t) for s, t in zip(original["scan_ids"], original["target_scan_ids"],
                                       strict=False) if s in scan_ids]
        out["scan_ids"], out["target_scan_ids"] = [s for s, _ in kept], [t for _, t in kept]
    else:
        listed = out.get("scan_ids") or sorted(scan_ids)
        out["scan_ids"] = [i for i in listed if i in scan_ids]
    return out


def rerun_name(name: str, run_id: str, attempt: int) -> str:
    """``prod.csv`` → ``prod.attempt2-3f9a1c.json`` (the run ID's hex keeps it unique);
    a rerun of a rerun keeps the original stem."""
    return f"{_base_stem(name)}.attempt{attempt}-{run_id[-6:]}.json"


def analysis_name(name: str, run_id: str) -> str:
    return f"{_base_stem(name)}.analysis-{run_id[-6:]}.json"


def _base_stem(name: str) -> str:
    return ATTEMPT_SUFFIX.sub("", Path(name).stem)


def deferred_analysis(item: Settled) -> bool:
    """True for a copy run whose analysis was deferred past its wait bound."""
    analysis = item.result.get("analysis")
    return item.run_id is not None and isinstance(analysis, dict) and \
        analysis.get("status") == "deferred"


def analysis_request(copy_request: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The ``analyze`` request for the mapping of copy run ``run_id``."""
    return {"action": "analyze", "source": copy_request.get("source"),
            "target": copy_request.get("target"), "from_run": run_id,
            "label": f"deferred analysis of {run_id}"}


def exhausted_note(name: str, attempt: int, max_attempts: int) -> str:
    return (f"\nNot re-dropped by the rerun window: this was attempt {attempt} and "
            f"reruns.max_attempts is {max_attempts}. Once the cause is fixed, drop "
            f"{name}.retry.json into the inbox to try again.\n")


Listing = Callable[[Path], Iterable[Settled]]  # the requests settled in a folder


class RerunWindow:
    """The rerun window's job: ``window(fire_time)``. It produces through ``producer``
    and finds the settled requests through ``listing`` (``settled_requests`` reads the
    folders; a cluster reads its ``requests`` table)."""

    def __init__(self, config: RerunsConfig, layout: Layout, producer: Drops,
                 stop: threading.Event, listing: Listing = settled_requests) -> None:
        self.config = config
        self.layout = layout
        self.producer = producer
        self.stop = stop
        self.listing = listing

    def __call__(self, fire_time: datetime) -> None:
        counts: Counter[str] = Counter()
        for item in self.listing(self.layout.failed):
            if self.stop.is_set():
                break  # the next window (or a restart's catch-up) takes the rest
            counts[self._rerun(item, fire_time)] += 1
        for folder in (self.layout.done, self.layout.failed):
            for item in self.listing(folder):
                if self.stop.is_set():
                    break
                if deferred_analysis(item):
                    counts["analysis " + self._analysis(item, fire_time)] += 1
        summary = {k: v for k, v in counts.items() if not k.endswith("seen before")}
        self.producer.record(f"{JOB}@{iso(fire_time)}", JOB, WINDOW, fire_time, RAN,
                             detail=summary)
        logger.bind(run=JOB).info("rerun window of {}: {}", fire_time.isoformat(),
                    ", ".join(f"{v} {k}" for k, v in sorted(summary.items())) or "nothing to do")

    def _rerun(self, item: Settled, fire_time: datetime) -> str:
        run_id = item.run_id
        key = f"{RERUN}:{run_id}"
        if run_id is None or self.producer.done(key):
            return "seen before"
        retry = _read_json(item.sidecar(RETRY))
        plan = plan_rerun(item.result, retry, self._run_request(run_id),
                          self.config.max_attempts)
        log = logger.bind(run=run_id)
        if plan.verdict == "permanent":
            return "not transient"
        if plan.verdict == "exhausted":
            if self.producer.record(key, JOB, RERUN, fire_time, EXHAUSTED, source=run_id):
                self._note_exhausted(item, plan.attempt)
                log.warning("{} stays in failed/: attempt {} of {} failed", item.path.name,
                            plan.attempt, self.config.max_attempts)
            return "exhausted"
        assert plan.request is not None
        name = rerun_name(item.path.name, run_id, plan.attempt + 1)
        path = self.producer.produce(key, JOB, RERUN, fire_time, name, plan.request,
                                     source=run_id)
        if path is not None:
            log.info("re-dropped {} as {} (attempt {} of {})", item.path.name, path.name,
                     plan.attempt + 1, self.config.max_attempts)
        return "re-dropped"

    def _analysis(self, item: Settled, fire_time: datetime) -> str:
        run_id = item.run_id
        assert run_id is not None
        key = f"{ANALYSIS}:{run_id}"
        if self.producer.done(key):
            return "seen before"
        copy_request = self._run_request(run_id)
        if copy_request is None:
            logger.bind(run=run_id).warning("deferred analysis of {}: its request.json is "
                                            "gone; not dropped", run_id)
            return "skipped"
        raw = analysis_request(copy_request, run_id)
        path = self.producer.produce(key, JOB, ANALYSIS, fire_time,
                                     analysis_name(item.path.name, run_id), raw, source=run_id)
        if path is not None:
            logger.bind(run=run_id).info("deferred analysis of {} dropped as {}", run_id,
                                         path.name)
        return "dropped"

    def _run_request(self, run_id: str) -> dict[str, Any] | None:
        return _read_json(self.layout.runs / run_id / "request.json")

    def _note_exhausted(self, item: Settled, attempt: int) -> None:
        error = item.sidecar(ERROR)
        try:
            text = error.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        write_text(error, text + exhausted_note(item.path.name, attempt,
                                                self.config.max_attempts))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
