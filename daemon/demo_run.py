"""``scanrelay demo --run``: the daemon on the demo instances, with a sample download
dropped into the inbox and followed until it lands in ``done/`` or ``failed/``; then,
with the sandbox, a copy with analysis from sandbox-prod to sandbox-qa, followed the
same way until its ``analysis.xlsx`` is written."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from rich.console import Console

from daemon.config import Config
from daemon.sandbox.app import Sandbox, SandboxOptions
from daemon.service import Service
from daemon.submit import write_csv_request

SAMPLE_IDS = list(range(1001, 1013))
TIMEOUT = 120.0
Found = tuple[Path, dict[str, object]]


def run_demo(config: Config, *, keep: bool, console: Console,
             sandbox: SandboxOptions | None = None) -> int:
    """0 when the sample (and the sandbox copy with its analysis) ended done.
    Raises ``SandboxError`` when the sandbox cannot start."""
    box = Sandbox(sandbox).start() if sandbox is not None else None
    try:
        if box is not None:
            from daemon.demo_sandbox import with_sandbox

            console.print(f"sandbox running: sandbox-prod and sandbox-qa on loopback, "
                          f"data in {box.data_dir}")
            config = with_sandbox(config, box)
        return _run(config, keep, console, box)
    finally:
        if box is not None:
            box.stop()


def _run(config: Config, keep: bool, console: Console, box: Sandbox | None) -> int:
    service = Service(config)
    thread = threading.Thread(target=lambda: service.run(handle_signals=False), name="daemon",
                              daemon=True)
    thread.start()
    if config.web.listen:
        console.print(f"web page: {_page(config)} (queue, live progress, runs and reports)")
    ok = _sample_download(config, service, console)
    if box is not None:
        ok = _sandbox_copy(config, service, console, box) and ok
    if keep:
        running = "daemon and sandbox" if box is not None else "daemon"
        console.print(f"{running} running; press Ctrl-C to stop")
        signal.signal(signal.SIGTERM, lambda *_: service.stop.set())  # stop cleanly too
        try:
            while thread.is_alive():
                thread.join(timeout=1)
        except KeyboardInterrupt:
            pass
    service.stop.set()
    thread.join(timeout=15)
    return 0 if ok else 1


def _sample_download(config: Config, service: Service, console: Console) -> bool:
    name = fresh_name(config.root, "sample-download.csv")
    sample = write_csv_request(service.layout.inbox, name, SAMPLE_IDS)
    console.print(f"dropped {sample.relative_to(config.root)} "
                  f"({len(SAMPLE_IDS)} scans, profile {config.defaults.profile})")
    result = _wait_for_result(service.layout.root, sample.name, TIMEOUT)
    if result is None:
        console.print("[red]the sample request did not finish in time[/red]")
        return False
    _show(console, config.root, result)
    return result[1].get("status") == "done"


def _sandbox_copy(config: Config, service: Service, console: Console, box: Sandbox) -> bool:
    from daemon.demo_sandbox import drop_copy, show_analysis

    request = drop_copy(service.layout.inbox, fresh_name(config.root, "sandbox-copy.json"), box)
    console.print(f"dropped {request.relative_to(config.root)} ({len(box.scan_ids)} scans: "
                  "copy sandbox-prod → sandbox-qa, then wait for processing and analyse)")
    timeout = TIMEOUT + config.copy_.wait_for_processing
    result = _wait_for_result(service.layout.root, request.name, timeout)
    if result is None:
        console.print("[red]the sandbox copy did not finish in time[/red]")
        return False
    _show(console, config.root, result)
    analysed = show_analysis(console, config.root, result[1], box)
    run_id = result[1].get("run_id")
    if config.web.listen and run_id:
        console.print(f"its report on the web page: {_page(config)}runs/{run_id}/analysis")
    return result[1].get("status") == "done" and analysed


def _page(config: Config) -> str:
    return f"http://{config.web.listen}/"


def fresh_name(root: Path, name: str) -> str:
    """``name``, or ``stem-2.ext`` …: one that no earlier demo left in done/ or failed/,
    so the sidecar waited for is this run's."""
    stem, dot, ext = name.partition(".")
    n = 1
    while any((root / f / name).exists() for f in ("done", "failed")):
        n += 1
        name = f"{stem}-{n}{dot}{ext}"
    return name


def _wait_for_result(root: Path, name: str, timeout: float) -> Found | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in ("done", "failed"):
            sidecar = root / folder / f"{name}.result.json"
            if sidecar.exists():
                return sidecar, json.loads(sidecar.read_text(encoding="utf-8"))
        time.sleep(0.1)
    return None


def _show(console: Console, root: Path, found: Found) -> None:
    sidecar, result = found
    console.print(f"[bold]{result['status']}[/bold]: {sidecar.relative_to(root)}")
    run_dir = root / str(result.get("run_dir"))
    console.print(f"counts: {result.get('counts')}")
    console.print(f"run folder {run_dir.relative_to(root)}:")
    for path in sorted(run_dir.iterdir()):
        size = sum(1 for _ in path.iterdir()) if path.is_dir() else path.stat().st_size
        console.print(f"  {path.name}{'/' if path.is_dir() else ''}  "
                      f"({size} {'files' if path.is_dir() else 'bytes'})")
