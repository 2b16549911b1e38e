"""The Handler contract: what a run gives an action, and what the action gives back.

A handler is a function ``run(ctx: RunContext) -> HandlerResult``. It raises
``FatalError`` when the whole run cannot go on and ``Interrupted`` when ``ctx.stop`` is
set (it checkpoints first); per-item failures go into the result, never up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from daemon.checkpoint import Checkpoint
from daemon.config import Config
from daemon.errors import Interrupted
from daemon.instances.base import Instance
from daemon.request import Request


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
    """What a handler reports: one entry per item, plus action-specific counts."""

    items: list[ItemResult] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[ItemResult]:
        return [i for i in self.items if i.status is ItemStatus.FAILED]


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
    checkpoint: Checkpoint
    log: Any  # a loguru logger bound to this run
    stop: threading.Event
    progress: Progress

    def check_stop(self) -> None:
        """Raise ``Interrupted`` if the daemon is stopping (call between items)."""
        if self.stop.is_set():
            raise Interrupted(f"run {self.run_id} interrupted by shutdown")


class Handler(Protocol):
    def __call__(self, ctx: RunContext) -> HandlerResult: ...
