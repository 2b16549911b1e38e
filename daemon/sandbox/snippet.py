"""What ``scanrelay sandbox`` tells the user: the ``instances:`` block for config.yml,
with a profile to try and the settings that make a copy with analysis quick."""

from __future__ import annotations

from typing import Any

import yaml

from .app import PROD, QA, Sandbox

COPY_PROFILE = "sandbox-copy"
# The sandbox processes a copy within seconds; the default 30 s poll would hide that.
COPY_POLL_INTERVAL = 2.0


def copy_profile(sandbox: Sandbox) -> dict[str, Any]:
    """A copy-with-analysis profile from prod into QA's first store. Copies keep their
    source's capture day (``captured_at: source``): with ``now`` they would all share
    today's store planogram compliance row on QA, and the showcase of every comment
    would not hold."""
    return {
        "action": "copy",
        "source": PROD,
        "target": QA,
        "target_store_id": sandbox.state.stores[0],
        "mode": "auto",
        "analyze": True,
        "captured_at": "source",
    }


def _flow(mapping: dict[str, Any]) -> str:
    text = yaml.safe_dump(
        mapping, default_flow_style=True, sort_keys=False, allow_unicode=True, width=200
    )
    return text.strip()


def instances_yaml(sandbox: Sandbox) -> str:
    """The block to paste into config.yml (comments say what else helps)."""
    ids = sandbox.scan_ids
    scans = f"scans {ids[0]}..{ids[-1]}" if ids else "no scans"
    profile = _flow({COPY_PROFILE: copy_profile(sandbox)})
    header = [
        f"# scanrelay sandbox (seed {sandbox.state.seed}): paste these instances into config.yml.",
        f"# Both have stores {', '.join(map(str, sandbox.state.stores))}; {PROD} has {scans},",
        f"# {QA} none (a copy target). Passwords are in the files named below (mode 0600).",
        "# To try a copy with analysis, also add (under profiles:, and copy:):",
        f"#   {profile}",
        f"#   copy: {{poll_interval: {COPY_POLL_INTERVAL:g}}}",
    ]
    body = yaml.safe_dump(
        {"instances": sandbox.instance_configs()}, sort_keys=False, allow_unicode=True
    )
    return "\n".join(header) + "\n" + body
