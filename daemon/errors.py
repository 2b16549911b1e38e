"""The error classes every layer raises. Errors are classified once, where they arise:

- ``TransientError``: worth retrying (network, timeouts, 408/429/5xx, an instance down).
- ``PermanentError``: this one item (scan, file) cannot succeed; record it, continue.
- ``FatalError``: the run cannot go on (missing instance, bad credentials); stop, record.
- ``RequestError``: the request file itself is invalid; nothing runs.
- ``Interrupted``: the daemon is shutting down; the run is checkpointed and resumed later.
"""

from __future__ import annotations


class ScanrelayError(Exception):
    """Base class of scanrelay's own errors."""


class TransientError(ScanrelayError):
    """A failure that may go away on retry. ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ScanrelayError):
    """A failure of one item that a retry cannot fix (a 4xx, a missing scan or file)."""


class FatalError(ScanrelayError):
    """A failure that stops the whole run (unknown instance, login refused, config broken).
    ``transient``: a later rerun may succeed (an instance down too long)."""

    transient = False


class Interrupted(ScanrelayError):  # noqa: N818 - it is a signal, not a failure
    """The daemon is stopping: the run checkpoints and stays in processing/ for resume."""


class RequestError(ScanrelayError):
    """An invalid request file. ``problems`` lists each one, naming the field or row."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
