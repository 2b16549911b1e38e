"""Rich progress bars for ``scanrelay once``: one bar per run, fed by the runner's hook."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBars:
    def __init__(self, console: Console) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressBars:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, run_id: str, done: int, total: int, counts: dict[str, Any]) -> None:
        extra = " ".join(f"{k}={v}" for k, v in counts.items())
        if run_id not in self._tasks:
            self._tasks[run_id] = self._progress.add_task(run_id, total=total, extra=extra)
        self._progress.update(self._tasks[run_id], completed=done, total=total, extra=extra)
