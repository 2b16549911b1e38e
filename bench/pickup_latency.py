"""Pickup latency: atomic rename into ``inbox/`` → claimed into ``processing/``.

Runs the real daemon (a subprocess) twice in one run, side by side: events mode
(inotify) and polling mode. Each request is a small valid download of one demo scan,
so runs happen while later files arrive, as in real use. The claim is observed with an
inotify watch on ``processing/`` in this process.

    .venv/bin/python bench/pickup_latency.py [--requests 200] [--gap 0.05]

Goal (events mode): median ≤ 20 ms, p99 ≤ 100 ms.
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
from pathlib import Path

import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.demo import create_demo

HERE = Path(__file__).resolve().parent.parent


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


def make_root(base: Path, mode: str) -> Path:
    root = base / mode
    root.mkdir()
    create_demo(root / "data", scans=12)
    config = {
        "paths": {"root": "."},
        "defaults": {"profile": "dl"},
        "instances": {"demo-source": {"kind": "folder", "path": "./data/demo-source"}},
        "profiles": {"dl": {"action": "download", "source": "demo-source"}},
        "intake": {"mode": mode, "poll_interval": 0.1, "settle_seconds": 0.0},
        "log": {"level": "WARNING"},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    for folder in ("inbox", "processing"):
        (root / folder).mkdir()
    return root


def measure(root: Path, requests: int, gap: float) -> list[float]:
    clock = ClaimClock()
    observer = Observer()
    observer.schedule(clock, str(root / "processing"))
    observer.start()
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c",
                               str(root / "config.yml")], cwd=HERE)
    try:
        time.sleep(2.0)  # let it start and settle
        latencies = []
        for i in range(requests):
            name = f"r{i:05d}.csv"
            tmp = root / "inbox" / f".{name}.tmp"
            tmp.write_text(f"scan_id\n{1001 + i % 12}\n")
            start = time.perf_counter()
            os.rename(tmp, root / "inbox" / name)
            claimed = clock.wait(name, timeout=30)
            if claimed is None:
                raise RuntimeError(f"{name} was not claimed within 30 s")
            latencies.append((claimed - start) * 1000)
            time.sleep(gap)
        return latencies
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
        observer.stop()
        observer.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between drops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: measure(make_root(Path(tmp), mode), args.requests, args.gap)
                   for mode in ("events", "polling")}
    print(f"pickup latency, {args.requests} requests per mode, {args.gap * 1000:.0f} ms apart")
    print(f"{'mode':<8} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for mode, values in results.items():
        print(f"{mode:<8} {statistics.median(values):>10.1f} {percentile(values, 0.99):>8.1f} "
              f"{max(values):>8.1f}")
    events = results["events"]
    ok = statistics.median(events) <= 20 and percentile(events, 0.99) <= 100
    print(f"events goal (median ≤ 20 ms, p99 ≤ 100 ms): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
