"""Pickup latency: a request arriving in ``inbox/`` → claimed into ``processing/``.

What users do, measured side by side in one run, against the real daemon (a
subprocess) in events mode (inotify) and in polling mode:

- ``rename``: an atomic rename within the inbox (a temp name, then the real one);
- ``move``: a rename from another folder of the same file system (``mv ~/ids.csv inbox/``);
- ``write``: a file written in place and closed; taken once quiet for
  ``intake.quiet_seconds`` (events) or stable across two looks (polling), so the
  latency is counted from the close.

Each request is a small valid download of one demo scan, so runs happen while later
files arrive, as in real use. The claim is observed with an inotify watch on
``processing/`` in this process.

    .venv/bin/python bench/pickup_latency.py [--requests 200] [--writes 40] [--gap 0.05]

Goals (events mode): rename and move median ≤ 20 ms, p99 ≤ 100 ms; write median ≤
quiet_seconds + 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.demo import create_demo

HERE = Path(__file__).resolve().parent.parent
MODES = ("events", "polling")
Arrive = Callable[[Path, str, str], float]  # (root, name, body) → start time


class ClaimClock(FileSystemEventHandler):
    """Records when each request name appears in processing/."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()

    def _record(self, path: str) -> None:
        name = os.path.basename(path).split("+", 2)[-1]
        with self.cond:
            self.seen.setdefault(name, time.perf_counter())
            self.cond.notify_all()

    def on_moved(self, event: FileSystemEvent) -> None:
        self._record(os.fsdecode(event.dest_path))

    def on_created(self, event: FileSystemEvent) -> None:
        self._record(os.fsdecode(event.src_path))

    def wait(self, name: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: name in self.seen, timeout)
            return self.seen.get(name)


def rename_within(root: Path, name: str, body: str) -> float:
    tmp = root / "inbox" / f".{name}.tmp"
    tmp.write_text(body)
    start = time.perf_counter()
    os.rename(tmp, root / "inbox" / name)
    return start


def move_from_elsewhere(root: Path, name: str, body: str) -> float:
    outside = root / "outgoing" / name
    outside.write_text(body)
    start = time.perf_counter()
    os.rename(outside, root / "inbox" / name)
    return start


def write_in_place(root: Path, name: str, body: str) -> float:
    with (root / "inbox" / name).open("w") as f:
        f.write(body)
    return time.perf_counter()  # from the close


SCENARIOS: dict[str, Arrive] = {
    "rename": rename_within, "move": move_from_elsewhere, "write": write_in_place}


def make_root(base: Path, mode: str, quiet: float) -> Path:
    root = base / mode
    root.mkdir()
    create_demo(root / "data", scans=12)
    config = {
        "paths": {"root": "."},
        "defaults": {"profile": "dl"},
        "instances": {"demo-source": {"kind": "folder", "path": "./data/demo-source"}},
        "profiles": {"dl": {"action": "download", "source": "demo-source"}},
        "intake": {"mode": mode, "poll_interval": 0.1, "settle_seconds": 0.0,
                   "quiet_seconds": quiet},
        "log": {"level": "WARNING"},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    for folder in ("inbox", "processing", "outgoing"):
        (root / folder).mkdir()
    return root


def measure(root: Path, counts: dict[str, int], gap: float) -> dict[str, list[float]]:
    """Latencies in ms per scenario; the scenarios take turns, so each sees the same
    background (runs of earlier requests, the machine's load)."""
    clock = ClaimClock()
    observer = Observer()
    observer.schedule(clock, str(root / "processing"))
    observer.start()
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c",
                               str(root / "config.yml")], cwd=HERE)
    results: dict[str, list[float]] = {s: [] for s in counts}
    try:
        wait_ready(root)
        for i in range(max(counts.values())):
            for scenario, arrive in SCENARIOS.items():
                if i >= counts[scenario]:
                    continue
                name = f"{scenario}-{i:05d}.csv"
                start = arrive(root, name, f"scan_id\n{1001 + i % 12}\n")
                claimed = clock.wait(name, timeout=30)
                if claimed is None:
                    raise RuntimeError(f"{name} was not claimed within 30 s")
                results[scenario].append((claimed - start) * 1000)
                time.sleep(gap)
        return results
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
        observer.stop()
        observer.join()


def wait_ready(root: Path, timeout: float = 60) -> None:
    """Until the daemon's first heartbeat (it writes it once watching), plus a moment."""
    deadline = time.monotonic() + timeout
    while not (root / "state" / "daemon.json").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not start")
        time.sleep(0.05)
    time.sleep(1.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(results: dict[str, dict[str, list[float]]], quiet: float) -> None:
    print(f"{'arrival':<8} {'mode':<8} {'n':>4} {'median ms':>10} {'p99 ms':>8} "
          f"{'max ms':>8}")
    for scenario in SCENARIOS:
        for mode in MODES:
            values = results[mode][scenario]
            print(f"{scenario:<8} {mode:<8} {len(values):>4} "
                  f"{statistics.median(values):>10.1f} {percentile(values, 0.99):>8.1f} "
                  f"{max(values):>8.1f}")
    for scenario in SCENARIOS:
        ratio = (statistics.median(results["polling"][scenario])
                 / statistics.median(results["events"][scenario]))
        print(f"{scenario}: polling median / events median = {ratio:.1f}x")
    events = results["events"]
    for scenario in ("rename", "move"):
        ok = (statistics.median(events[scenario]) <= 20
              and percentile(events[scenario], 0.99) <= 100)
        print(f"events {scenario} goal (median ≤ 20 ms, p99 ≤ 100 ms): "
              f"{'met' if ok else 'NOT met'}")
    bound = quiet * 1000 + 50
    ok = statistics.median(events["write"]) <= bound
    print(f"events write goal (median ≤ quiet_seconds + 50 ms = {bound:.0f} ms): "
          f"{'met' if ok else 'NOT met'}")
    print(f"{os.cpu_count()} CPUs; load average (1 min) {os.getloadavg()[0]:.1f} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200,
                        help="renames and moves per mode")
    parser.add_argument("--writes", type=int, default=40,
                        help="writes in place per mode (each waits out the quiet period)")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between arrivals")
    parser.add_argument("--quiet", type=float, default=1.0, help="intake.quiet_seconds")
    args = parser.parse_args()
    counts = {"rename": args.requests, "move": args.requests, "write": args.writes}
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} before")
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: measure(make_root(Path(tmp), mode, args.quiet), counts, args.gap)
                   for mode in MODES}
    print(f"pickup latency per mode: {args.requests} renames, {args.requests} moves, "
          f"{args.writes} writes in place, {args.gap * 1000:.0f} ms apart, "
          f"quiet_seconds {args.quiet}")
    report(results, args.quiet)


if __name__ == "__main__":
    main()
