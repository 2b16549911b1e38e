"""Web page answer times with 10,000 runs in the ledger: the overview and the runs list
(first, middle and last pages, each filter), over real HTTP on loopback, served by the
real daemon (a subprocess) as it serves them in production.

    .venv/bin/python bench/web_pages.py [--runs 10000] [--rounds 50]

Goal: every page < 200 ms at p95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))

from helpers import DaemonProcess  # noqa: E402
from web_support import seed_ledger, web_root  # noqa: E402

GOAL_MS = 200.0


def pages(runs: int) -> list[str]:
    last = -(-runs // 50)
    return ["/", "/live/overview", "/runs", "/runs?page=2", f"/runs?page={last // 2}",
            f"/runs?page={last}", "/runs?action=copy", "/runs?status=failed&page=3",
            "/runs?q=seed-0420", "/runs?q=audit+7&status=done&page=2", "/failed",
            "/schedules"]


def measure(base: str, paths: list[str], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {p: [] for p in paths}
    with requests.Session() as session:
        for path in paths:  # warm up: first-use costs are not what a user waits for
            session.get(base + path, timeout=30).raise_for_status()
        for _ in range(rounds):
            for path in paths:
                started = time.perf_counter()
                session.get(base + path, timeout=30).raise_for_status()
                times[path].append((time.perf_counter() - started) * 1000)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, base = web_root(Path(tmp))
        seed_ledger(root, args.runs)
        with DaemonProcess(root):
            times = measure(base, pages(args.runs), args.rounds)
    print(f"web pages, {args.runs} runs in the ledger, {args.rounds} requests per page")
    print(f"{'page':<40} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'p95/goal':>9}")
    worst = 0.0
    for path, values in times.items():
        worst = max(worst, p95(values))
        print(f"{path:<40} {statistics.median(values):>10.1f} {p95(values):>8.1f} "
              f"{max(values):>8.1f} {p95(values) / GOAL_MS:>9.2f}")
    met = worst < GOAL_MS
    print(f"worst p95 {worst:.1f} ms; goal (every page < {GOAL_MS:.0f} ms at p95): "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
