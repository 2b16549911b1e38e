"""The cluster's part of ``scanrelay status`` and ``show``: the in-flight runs as the
``requests`` table has them (with their hosts), this host's daemon from its row, and
the lines the command line prints. Computed from ``ClusterView`` answers; formats
nothing the web page needs (its templates format the same dicts)."""

from __future__ import annotations

from typing import Any

from daemon.layout import Layout
from daemon.runstate import RunState


def in_flight(layout: Layout, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The requests claimed and not settled, with the keys of ``status._in_flight``
    (``run.json`` is read from the shared ``runs/`` for the progress), plus ``host`` (the
    host running it), ``claimed_by`` and ``batches`` (counts by status)."""
    out = []
    for row in summary["running"]:
        data = RunState.load(layout.runs / row["run_id"]) if row["run_id"] else None
        out.append({"request": row["name"], "profile": row["profile"],
                    "run_id": row["run_id"],
                    "status": (data or {}).get("status") or _queued(row["status"]),
                    "label": (data or {}).get("label") or row["label"],
                    "waiting": data.get("waiting") if data else None,
                    "instances": data.get("waiting_for") if data else None,
                    "progress": data.get("progress") if data else None,
                    "host": row["host"], "claimed_by": row["claimed_by"],
                    "batches": row["batches"]})
    return out


def _queued(status: str) -> str:
    return "queued" if status == "claimed" else status  # as on one host: no run yet


def this_host(daemon: dict[str, Any], summary: dict[str, Any],
              host_id: str) -> dict[str, Any]:
    """The local heartbeat file's verdict, else this host's row: up while its row's
    heartbeat is fresh by the server's clock."""
    daemon = {**daemon, "host_id": host_id}
    if daemon.get("up"):
        return daemon
    row = next((h for h in summary.get("hosts") or [] if h["host_id"] == host_id), None)
    if row is None or not row["alive"]:
        return daemon
    return {**daemon, "up": True, "pid": row["pid"], "started_at": row["started_at"]}


def status_lines(cluster: dict[str, Any]) -> list[str]:
    """``scanrelay status``'s cluster block: hosts alive, the queue, each host."""
    if not cluster["reachable"]:
        return [f"cluster: {cluster['error']}"]
    hosts, queue = cluster["hosts"], cluster["queue"]
    oldest = queue["oldest_waiting_seconds"]
    lines = [f"cluster: {cluster['hosts_alive']} of {len(hosts)} hosts alive; jobs "
             f"{queue['todo']} waiting, {queue['doing']} running"
             + (f", {queue['later']} later" if queue["later"] else "")
             + (f"; oldest waiting {oldest} s" if oldest is not None else "")]
    for host in hosts:
        runs = f" runs {', '.join(host['runs'])}" if host["runs"] else ""
        lines.append(f"  host {host['host_id']:<12} {host['state']:<8} heartbeat "
                     f"{host['heartbeat_age_seconds']} s ago{runs}")
    for task in queue["tasks"]:
        lines.append(f"  jobs {task['task']}: {task['todo']} waiting, {task['doing']} "
                     "running" + (f", {task['later']} later" if task["later"] else ""))
    for slot in cluster.get("slots") or []:
        lines.append(f"  slots {slot['instance']}: {slot['held']} held by {slot['host']}")
    return lines


def in_flight_suffix(run: dict[str, Any]) -> str:
    """`` on <host>`` after an in-flight line, and the batches by status."""
    if not run.get("host") and not run.get("batches"):
        return ""
    batches = ", ".join(f"{n} {s}" for s, n in sorted((run.get("batches") or {}).items()))
    return (f" on {run['host']}" if run.get("host") else "") + \
        (f" (batches: {batches})" if batches else "")


def run_lines(extras: dict[str, Any]) -> list[str]:
    """``scanrelay show``'s cluster lines: the host, and each batch."""
    lines = [f"{'host':>12}: {extras['host'] or '-'}"
             + (f" (claimed by {extras['claimed_by']})"
                if extras["claimed_by"] != extras["host"] else "")]
    if extras["batches"]:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(extras["batch_counts"].items()))
        lines.append(f"{'batches':>12}: {counts}")
        lines += [f"{'batch ' + str(b['number']):>12}: {b['status']}"
                  + (f" on {b['host']}" if b["host"] else "")
                  + f", {b['scans']} scans, {b['attempts']} attempts"
                  for b in extras["batches"]]
    return lines
