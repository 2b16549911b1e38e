"""The demo's second act: the sandbox's two platforms added to the demo config, and a
copy with analysis from sandbox-prod to sandbox-qa dropped into the inbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from daemon.config import Config, CopyConfig, PlatformInstanceConfig
from daemon.sandbox.app import Sandbox
from daemon.sandbox.serve import write_config
from daemon.sandbox.snippet import COPY_POLL_INTERVAL, COPY_PROFILE, copy_profile, instances_yaml

INSTANCES_FILE = "instances.yml"


def with_sandbox(config: Config, sandbox: Sandbox) -> Config:
    """``config`` plus the sandbox's instances, its copy profile and a short poll, in
    memory only (config.yml is left as it is); the block is also written to
    ``<sandbox data>/instances.yml`` for the user to paste."""
    write_config(sandbox.data_dir / INSTANCES_FILE, instances_yaml(sandbox))
    instances = {
        **config.instances,
        **{n: PlatformInstanceConfig(**c) for n, c in sandbox.instance_configs().items()},
    }
    profiles = {**config.profiles, COPY_PROFILE: copy_profile(sandbox)}
    poll = min(config.copy_.poll_interval, COPY_POLL_INTERVAL)
    copy = CopyConfig(**{**config.copy_.model_dump(), "poll_interval": poll})
    return config.model_copy(update={"instances": instances, "profiles": profiles,
                                     "copy_": copy})


def drop_copy(inbox: Path, name: str, sandbox: Sandbox) -> Path:
    """A copy-with-analysis request for every seeded scan, renamed into the inbox."""
    request = {"profile": COPY_PROFILE, "scan_ids": sandbox.scan_ids,
               "label": "demo: sandbox-prod to sandbox-qa, with analysis"}
    path = inbox / name
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(json.dumps(request), encoding="utf-8")
    tmp.replace(path)
    return path


def show_analysis(console: Console, root: Path, result: dict[str, Any],
                  sandbox: Sandbox) -> bool:
    """Print the analysis counts and where to look; True when the analysis is done."""
    analysis = result.get("analysis") or {}
    run_dir = root / str(result.get("run_dir"))
    console.print(f"analysis: [bold]{analysis.get('status')}[/bold] "
                  f"{analysis.get('reason') or ''}")
    for comment, count in (analysis.get("counts") or {}).items():
        console.print(f"  {count:>4}  {comment}")
    workbook = run_dir / "analysis.xlsx"
    if workbook.exists():
        console.print(f"open {workbook.relative_to(root)} (colour-coded; Summary and Legend "
                      "sheets)")
    blob = sandbox.data_dir / INSTANCES_FILE
    console.print(f"the sandbox's instances (to paste into config.yml): {blob}")
    ids = sandbox.scan_ids
    console.print(f"try your own: drop a CSV with a scan_id column ({ids[0]}..{ids[-1]}) "
                  f"into inbox/{COPY_PROFILE}/")
    return analysis.get("status") == "done" and workbook.exists()
