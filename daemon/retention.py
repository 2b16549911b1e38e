"""``retention.days``: prune settled requests (``done/``, ``failed/``) and run folders.

A settled request is aged by its ``.result.json`` (when it settled, not when it was
dropped) and goes with all its sidecars; a run folder is aged by its ``run.json`` and
is kept while its request is still in ``processing/`` (it will resume).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from loguru import logger

from daemon.intake.claim import pending_claims
from daemon.layout import Layout
from daemon.settle import ERROR, RESULT, RETRY

DAY = 86400.0


def prune(layout: Layout, days: int, now: float | None = None) -> dict[str, int]:
    """Delete what is older than ``days``; returns how many requests and runs went."""
    cutoff = (now or time.time()) - days * DAY
    removed = {"requests": 0, "runs": 0}
    for folder in (layout.done, layout.failed):
        for result in folder.glob(f"*{RESULT}"):
            if _mtime(result) < cutoff:
                _remove_request(folder, result.name[: -len(RESULT)])
                removed["requests"] += 1
    claims = pending_claims(layout, repair=False) if layout.processing.exists() else []
    active = {c.run_dir(layout.runs) for c in claims}
    for run_dir in layout.runs.iterdir() if layout.runs.exists() else []:
        if run_dir in active:
            continue
        if run_dir.is_dir() and _mtime(run_dir / "run.json", run_dir) < cutoff:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed["runs"] += 1
    if any(removed.values()):
        logger.info("retention: pruned {} requests and {} runs older than {} days",
                    removed["requests"], removed["runs"], days)
    return removed


def _remove_request(folder: Path, name: str) -> None:
    for suffix in ("", ERROR, RETRY, RESULT):  # the result last: it marks the group
        (folder / f"{name}{suffix}").unlink(missing_ok=True)


def _mtime(path: Path, fallback: Path | None = None) -> float:
    for candidate in (path, fallback):
        if candidate is not None:
            try:
                return candidate.stat().st_mtime
            except OSError:
                continue
    return float("inf")  # unknown age: keep it
