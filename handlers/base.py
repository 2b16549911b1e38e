"""The Handler contract: what a run gives an action, and what the action gives back.

A handler is a function ``run(ctx: RunContext) -> HandlerResult``. It raises
``FatalError`` when the whole run cannot go on and ``Interrupted`` when ``ctx.stop`` is
set (it checkpoints first); per-item failures go into the result, never up.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from daemon.config import Config
from daemon.errors import Interrupted
from daemon.instances.base import Instance
from daemon.request import Request
from daemon.store.abc import CheckpointStore, CopyStore


class ItemStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one scan (or pair) of a run."""

    scan_id: int
    status: ItemStatus
    error: str | None = None
    transient: bool = False  # failed only because retries ran out: a rerun may succeed


@dataclass
class HandlerResult:
    """What a handler reports: failed items in full, successes only counted (memory stays
    flat however many scans a run has), plus action-specific counts."""

    counts: dict[str, Any] = field(default_factory=dict)
    failed: list[ItemResult] = field(default_factory=list)
    succeeded: int = 0  # ok or skipped
    # Action-specific sections for run.json and result.json, e.g. {"analysis": {...}}.
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, item: ItemResult) -> None:
        if item.status is ItemStatus.FAILED:
            self.failed.append(item)
        else:
            self.succeeded += 1

    @property
    def total(self) -> int:
        return self.succeeded + len(self.failed)


class Progress(Protocol):
    def __call__(self, done: int, total: int, **counts: Any) -> None: ...


@dataclass
class RunContext:
    """Everything a handler may use. ``instance(name)`` opens (once) an instance."""

    run_id: str
    run_dir: Path
    request: Request
    config: Config
    instance: Callable[[str], Instance]
    checkpoint: CheckpointStore
    copies: CopyStore  # the copy ledger and its key leases (the daemon's, shared by runs)
    log: Any  # a loguru logger bound to this run
    stop: threading.Event
    progress: Progress
    # Merge fields into run.json now, e.g. update(status="waiting") while a copy waits
    # for the target to process its scans, then update(status="running").
    update: Callable[..., None]
    # This execution of the run, as the owner of its copy key leases: never reused by a
    # retry or a resume (cluster mode: "host:job:random").
    owner: str = field(default_factory=lambda: f"local:{uuid.uuid4().hex}")

    def check_stop(self) -> None:
        """Raise ``Interrupted`` if the daemon is stopping (call between items)."""
        if self.stop.is_set():
            raise Interrupted(f"run {self.run_id} interrupted by shutdown")


class Handler(Protocol):
    def __call__(self, ctx: RunContext) -> HandlerResult: ...
