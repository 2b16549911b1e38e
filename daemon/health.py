"""Each configured instance and how it is doing, for ``scanrelay status`` and the web
page's instances block.

This is the one place that says an instance's health: the kind, the connection limit,
the daemon's outage breaker for it (``daemon/outage.py``, published in the heartbeat
file each second), whether a folder instance's folder exists, and which active runs
wait on the instance (``run.json`` status ``waiting``, ``waiting_for`` naming it).
"""

from __future__ import annotations

from typing import Any

from daemon.config import Config, FolderInstanceConfig


def instance_health(config: Config, waiting_runs: dict[str, list[str]] | None = None,
                    breakers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One entry per instance, by name: ``name``, ``kind``, ``max_connections``,
    ``state`` (``ok``, ``missing``, ``outage`` or ``unknown``), ``reason`` and the
    ``waiting`` runs (IDs) that wait on it. ``breakers``: the heartbeat's breaker
    states (``outage.Health.as_dict``). Reads files only; never calls an instance."""
    waiting_runs = waiting_runs or {}
    by_name = {b.get("instance"): b for b in breakers or []}
    out = []
    for name, inst in sorted(config.instances.items()):
        state, reason = _breaker_state(by_name.get(name)) or _static_state(config, inst)
        waiting = waiting_runs.get(name, [])
        if waiting and state == "ok":
            state, reason = "outage", f"{len(waiting)} run(s) waiting for it"
        out.append({"name": name, "kind": inst.kind, "max_connections": inst.max_connections,
                    "state": state, "reason": reason, "waiting": waiting})
    return out


def _breaker_state(breaker: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """The outage breaker's verdict (state, reason), or None when the daemon has made
    no call to the instance yet."""
    if breaker is None:
        return None
    return ("ok", None) if breaker.get("available") else ("outage", breaker.get("reason"))


def _static_state(config: Config, inst: Any) -> tuple[str, str | None]:
    if isinstance(inst, FolderInstanceConfig):
        folder = config.instance_path(inst.path)
        return ("ok", None) if folder.is_dir() else ("missing", "its folder does not exist")
    return "unknown", "no call made yet from this page; see the runs for errors"
