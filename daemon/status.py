"""``scanrelay status``: what the daemon is doing, read from files any user can see.

The service rewrites ``state/daemon.json`` (pid, start, heartbeat) every second from
its main loop; the daemon counts as up while that pid lives and the heartbeat is fresh.
Everything else comes from the folders, the run folders and the ledger.

In cluster mode (``config.cluster``) the in-flight runs, the last results and the
schedules' fires come from the cluster's PostgreSQL instead (``daemon.cluster.views``),
and ``cluster`` adds the hosts, the job queue and who runs what.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.errors import ScanrelayError
from daemon.health import instance_health
from daemon.intake.claim import pending_claims, profile_of
from daemon.intake.inbox import is_request_name, last_change, list_inbox
from daemon.layout import Layout
from daemon.runstate import RunState
from daemon.schedule.report import next_schedules
from daemon.store.sqlite_copies import FILE_NAME as COPY_LEDGER_FILE
from daemon.store.sqlite_requests import read_ledger

if TYPE_CHECKING:
    from daemon.cluster.history import HistoryReader
    from daemon.cluster.views import ClusterView

HEARTBEAT_FILE = "daemon.json"
STALE_AFTER = 30.0  # seconds without a heartbeat: the daemon is hung or gone
QUEUE_SHOWN = 100  # inbox entries listed (the count covers them all)


def heartbeat_path(layout: Layout) -> Path:
    return layout.state / HEARTBEAT_FILE


def collect(config: Config, view: ClusterView | None = None) -> dict[str, Any]:
    """Everything ``scanrelay status`` and the overview page show. ``view``: the
    cluster's read side, kept by a long-lived reader (the web page); in cluster mode
    without one, one is opened for this call."""
    if config.cluster is not None and view is None:
        from daemon.cluster.views import ClusterView

        opened = ClusterView(config.cluster)
        try:
            return collect(config, opened)
        finally:
            opened.close()
    layout = Layout.of(config)
    now = time.time()
    queue = inbox_queue(layout, now)
    cluster = view.summary() if view is not None else None
    in_flight = _in_flight(layout) if cluster is None or not cluster["reachable"] \
        else _cluster_in_flight(layout, cluster)
    waiting: dict[str, list[str]] = {}  # instance → runs waiting for it (an outage)
    for run in in_flight:
        for name in run.get("instances") or [] if run["status"] == "waiting" else []:
            waiting.setdefault(name, []).append(run["run_id"])
    daemon = _daemon(layout, now)
    if cluster is not None and config.cluster is not None:
        from daemon.cluster.overview import this_host

        daemon = this_host(daemon, cluster, config.cluster.host_id)
    status: dict[str, Any] = {
        "daemon": daemon,
        "inbox": {"waiting": len(queue),
                  "oldest_age_seconds": max(q["age_seconds"] for q in queue) if queue else None,
                  "queue": queue[:QUEUE_SHOWN], "not_requests": not_requests(layout)},
        "in_flight": in_flight,
        "last_results": _last_results(layout, view),
        "schedules": next_schedules(config, view),
        "instances": instance_health(config, waiting, daemon.get("instances") or []),
        "markers_dropped": _markers_dropped(layout),
    }
    if cluster is not None:
        status["cluster"] = cluster
    return status


def _cluster_in_flight(layout: Layout, cluster: dict[str, Any]) -> list[dict[str, Any]]:
    from daemon.cluster.overview import in_flight

    return in_flight(layout, cluster)


def inbox_queue(layout: Layout, now: float) -> list[dict[str, Any]]:
    """Requests waiting in the inbox, oldest first: name, profile, and age since they
    arrived or last changed (a file moved in keeps its old mtime). Other names are not
    requests (yet): ``not_requests`` counts them."""
    waiting = sorted(((p, st) for p, st in list_inbox(layout.inbox)
                      if is_request_name(p.name) and p.is_file()),
                     key=lambda item: last_change(item[1]))
    return [{"name": p.name, "profile": profile_of(p, layout.inbox),
             "age_seconds": round(now - last_change(st), 1)} for p, st in waiting]


def not_requests(layout: Layout) -> int:
    """Files in the inbox whose names cannot be requests (refused once still)."""
    return sum(1 for p, _ in list_inbox(layout.inbox) if not is_request_name(p.name))


def _markers_dropped(layout: Layout) -> list[dict[str, Any]]:
    """Copy targets found to drop the exactly-once marker (the copy ledger's read-back):
    exactly once rests on the upload IDs alone there."""
    path = layout.state / COPY_LEDGER_FILE
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT target, field, checked_at FROM target_markers"
                              " WHERE kept = 0 ORDER BY target").fetchall()
    except sqlite3.Error:
        return []  # an older ledger without the table, or one being created
    return [{"target": t, "field": f, "checked_at": at} for t, f, at in rows]


def _daemon(layout: Layout, now: float) -> dict[str, Any]:
    try:
        beat = json.loads(heartbeat_path(layout).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"up": False}
    alive = _pid_alive(int(beat.get("pid", 0)))
    fresh = now - float(beat.get("heartbeat", 0)) < STALE_AFTER
    return {**beat, "up": alive and fresh}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by the service user
    return True


def _in_flight(layout: Layout) -> list[dict[str, Any]]:
    out = []
    for claimed in pending_claims(layout, repair=False) if layout.processing.exists() else []:
        run_dir = claimed.run_dir(layout.runs)
        data = RunState.load(run_dir) if run_dir else None
        out.append({"request": claimed.name, "profile": claimed.profile,
                    "run_id": data.get("run_id") if data else None,
                    "status": data.get("status") if data else "queued",
                    "label": data.get("label") if data else None,
                    "waiting": data.get("waiting") if data else None,
                    "instances": data.get("waiting_for") if data else None,
                    "progress": data.get("progress") if data else None})
    return out


def _last_results(layout: Layout, view: ClusterView | None = None,
                  limit: int = 5) -> list[dict[str, Any]]:
    ledger: HistoryReader | None = read_ledger(layout.state) if view is None \
        else view.history()
    if ledger is None:
        return []
    try:
        return [{"run_id": r.run_id or r.claim_id, "request": r.name, "status": r.status,
                 "action": r.action, "label": r.label,
                 "finished_at": r.finished_at, "counts": r.counts}
                for r in ledger.recent(limit) if r.finished_at]
    except ScanrelayError:  # the cluster's database is away: ``cluster`` says so
        return []
    finally:
        ledger.close()
