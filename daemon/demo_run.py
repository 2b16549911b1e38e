"""``scanrelay demo --run``: the daemon on the demo instances, with a sample request
dropped into the inbox and followed until it lands in ``done/`` or ``failed/``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from rich.console import Console

from daemon.config import Config
from daemon.service import Service
from daemon.submit import write_csv_request

SAMPLE_IDS = list(range(1001, 1013))
TIMEOUT = 120.0


def run_demo(config: Config, *, keep: bool, console: Console) -> int:
    service = Service(config)
    thread = threading.Thread(target=lambda: service.run(handle_signals=False), name="daemon",
                              daemon=True)
    thread.start()
    sample = write_csv_request(service.layout.inbox, "sample-download.csv", SAMPLE_IDS)
    console.print(f"dropped {sample.relative_to(config.root)} "
                  f"({len(SAMPLE_IDS)} scans, profile {config.defaults.profile})")
    result = _wait_for_result(service.layout.root, sample.name)
    if result is None:
        console.print("[red]the sample request did not finish in time[/red]")
    else:
        _show(console, config.root, result)
    if keep:
        console.print("daemon running; press Ctrl-C to stop")
        try:
            while thread.is_alive():
                thread.join(timeout=1)
        except KeyboardInterrupt:
            pass
    service.stop.set()
    thread.join(timeout=15)
    return 0 if result is not None and result[1].get("status") == "done" else 1


def _wait_for_result(root: Path, name: str) -> tuple[Path, dict[str, object]] | None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for folder in ("done", "failed"):
            sidecar = root / folder / f"{name}.result.json"
            if sidecar.exists():
                return sidecar, json.loads(sidecar.read_text(encoding="utf-8"))
        time.sleep(0.1)
    return None


def _show(console: Console, root: Path, found: tuple[Path, dict[str, object]]) -> None:
    sidecar, result = found
    console.print(f"[bold]{result['status']}[/bold]: {sidecar.relative_to(root)}")
    run_dir = root / str(result.get("run_dir"))
    console.print(f"counts: {result.get('counts')}")
    console.print(f"run folder {run_dir.relative_to(root)}:")
    for path in sorted(run_dir.iterdir()):
        size = sum(1 for _ in path.iterdir()) if path.is_dir() else path.stat().st_size
        console.print(f"  {path.name}{'/' if path.is_dir() else ''}  "
                      f"({size} {'files' if path.is_dir() else 'bytes'})")
