"""A request's file on the shared root, seen from a job that may run on any host."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from daemon.cluster import rows
from daemon.cluster.rows import RequestRow
from daemon.cluster.runtime import Runtime
from daemon.fsutil import atomic_writer, candidate_paths
from daemon.layout import Layout
from daemon.settle import RESULT

T = TypeVar("T")


def ensure_file(layout: Layout, row: RequestRow) -> Path | None:
    """``processing/<processing_name>``, written from the row's bytes if it is not
    there (a schedule's fire has no file until its plan job runs). None if the request
    was settled already (a crash fell between its move and its row's update): it is
    never brought back."""
    path = layout.processing / row.processing_name
    if path.exists() or path.is_symlink():
        return path
    if settled_as(layout, row.name, row.claim_id) is not None:
        return None
    with atomic_writer(path, "wb") as f:
        f.write(row.body)
    return path


def settled_as(layout: Layout, name: str, claim_id: str) -> Path | None:
    """Where the request ``claim_id`` lies in ``done/`` or ``failed/``, if it was
    settled: the name (of those ``settle`` tries for ``name``) whose sidecar is its."""
    for folder in (layout.done, layout.failed):
        for path in candidate_paths(folder, name):
            sidecar = path.with_name(path.name + RESULT)
            if not sidecar.exists():
                if path.exists() or path.is_symlink():
                    continue  # someone else's, without sidecars: settle skipped it
                break
            if _owner(sidecar) == claim_id:
                return path
    return None


def _owner(sidecar: Path) -> str | None:
    try:
        return str(json.loads(sidecar.read_text(encoding="utf-8")).get("claim_id"))
    except (OSError, ValueError, AttributeError):
        return None


def under_name_lock(rt: Runtime, name: str, settle: Callable[[], T]) -> T:
    """Run ``settle`` (a move into ``done/`` or ``failed/``) holding the cluster-wide
    lock of the request's name (``rows.name_lock``)."""
    with rt.pool.connection() as conn, conn.transaction():
        rows.name_lock(conn, name)
        return settle()
