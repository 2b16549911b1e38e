"""How a request ends. ``running``/``waiting`` are in-flight states of ``run.json``."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"  # every scan succeeded (or was skipped as already done)
    PARTIAL = "partial"  # some scans failed, some succeeded
    FAILED = "failed"  # nothing succeeded, or the run stopped on a fatal error
    INVALID = "invalid"  # the request file was rejected before anything ran
    INTERRUPTED = "interrupted"  # the daemon stopped; the run resumes at next start

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.INVALID)
