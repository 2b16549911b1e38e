"""Does the web page cost the daemon anything? Pickup latency and copy throughput with
the page off, and with the page on and a browser tab (Debian's Chromium, headless)
open on the overview, which refreshes itself every second. Side by side in one run,
the variants alternating round by round so that machine drift hits both alike.

Each round starts a fresh daemon (a subprocess) on a fresh root with folder instances:
``--requests`` one-scan downloads dropped ``--gap`` s apart (pickup: rename into
``inbox/`` → claimed into ``processing/``, seen by an inotify watch here), then one
copy of ``--scans`` scans between the folder instances (rate from ``run.json``).

    .venv/bin/python bench/web_overhead.py [--rounds 3] [--requests 100] [--scans 300]

Goal: with the page on, pickup median and copy rate within noise of the page off
(the ratios printed are on / off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE / "bench"))

from helpers import DaemonProcess, drop, make_root, wait_settled  # noqa: E402
from pickup_latency import ClaimClock, percentile  # noqa: E402
from watchdog.observers import Observer  # noqa: E402
from web_support import browser, free_port  # noqa: E402

from daemon.demo import create_demo  # noqa: E402


def fresh_root(base: Path, name: str, scans: int, web: bool) -> tuple[Path, str | None]:
    port = free_port()
    sections = {"log": {"level": "INFO"}, "intake": {"mode": "events"},
                "defaults": {"profile": "demo-download", "batch_size": 25}}
    if web:
        sections["web"] = {"listen": f"127.0.0.1:{port}"}
    root = make_root(base, folder=name, **sections)
    create_demo(root / "data", scans=scans + 1)  # the newest has no report: not copied
    return root, f"http://127.0.0.1:{port}" if web else None


def pickups(root: Path, requests: int, gap: float) -> list[float]:
    clock = ClaimClock()
    observer = Observer()
    observer.schedule(clock, str(root / "processing"))
    observer.start()
    try:
        latencies = []
        for i in range(requests):
            name = f"r{i:05d}.csv"
            tmp = root / "inbox" / f".{name}.tmp"
            tmp.write_text(f"scan_id\n{1001 + i % 12}\n")
            started = time.perf_counter()
            tmp.rename(root / "inbox" / name)
            claimed = clock.wait(name, timeout=30)
            if claimed is None:
                raise RuntimeError(f"{name} was not claimed within 30 s")
            latencies.append((claimed - started) * 1000)
            time.sleep(gap)
        wait_settled(root, [f"r{i:05d}.csv" for i in range(requests)], timeout=300)
        return latencies
    finally:
        observer.stop()
        observer.join()


def copy_rate(root: Path, scans: int) -> float:
    ids = "".join(f"{i}\n" for i in range(1001, 1001 + scans) if i != 1012)
    drop(root / "inbox" / "demo-copy", "copy.csv", "scan_id\n" + ids)
    result = wait_settled(root, ["copy.csv"], timeout=600)["copy.csv"][1]
    data = json.loads((root / result["run_dir"] / "run.json").read_text())
    seconds = (datetime.fromisoformat(data["finished_at"])
               - datetime.fromisoformat(data["started_at"])).total_seconds()
    return int(data["counts"]["items"]) / seconds


def one_round(base: Path, n: int, web: bool, args: argparse.Namespace
              ) -> tuple[list[float], float]:
    root, url = fresh_root(base, f"{'on' if web else 'off'}-{n}", args.scans, web)
    with ExitStack() as stack:
        stack.enter_context(DaemonProcess(root))
        if url:
            tab = stack.enter_context(browser()).new_page()
            tab.goto(url + "/")
            tab.wait_for_selector("#live[data-updated]", state="attached")
        time.sleep(1.0)
        return pickups(root, args.requests, args.gap), copy_rate(root, args.scans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.05)
    parser.add_argument("--scans", type=int, default=300)
    args = parser.parse_args()
    lat: dict[bool, list[float]] = {False: [], True: []}
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for web in (False, True) if n % 2 == 0 else (True, False):
                latencies, rate = one_round(Path(tmp), n, web, args)
                lat[web] += latencies
                rates[web].append(rate)
    print(f"web page overhead: {args.rounds} rounds; per round {args.requests} pickups "
          f"{args.gap * 1000:.0f} ms apart and a copy of {args.scans} scans")
    print(f"{'variant':<22} {'pickup median ms':>17} {'p99 ms':>8} {'copy scans/s':>13}")
    for web, name in ((False, "page off"), (True, "page on + tab open")):
        print(f"{name:<22} {statistics.median(lat[web]):>17.1f} "
              f"{percentile(lat[web], 0.99):>8.1f} {statistics.median(rates[web]):>13.1f}")
    pickup_ratio = statistics.median(lat[True]) / statistics.median(lat[False])
    rate_ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    print(f"on/off: pickup median x{pickup_ratio:.2f}, copy rate x{rate_ratio:.2f} "
          f"(copy rates per round: off {[round(r, 1) for r in rates[False]]}, "
          f"on {[round(r, 1) for r in rates[True]]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
