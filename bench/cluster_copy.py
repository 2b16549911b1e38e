"""Cluster copy throughput (issue 15, test 9): one large copy spread over three hosts
against the target's measured ceiling, and against one host, side by side in one run.

The platforms are those of ``copy_throughput.py`` (prod in a process of its own, qa in
this one; every listener serves ``--capacity`` calls at once, ``--latency`` s each; qa
never processes copies during the run). Per run, each into a target store of its own:

* ``ceiling``: ``copy_ceiling.py``, the ideal client (uploads and creates from bytes
  prebuilt in memory): what qa can take. Measured before and after; their mean counts.
* ``cluster-N``: ``--hosts`` daemons (``python -m daemon run`` with ``cluster:``, each
  with a ``state/`` of its own) on one shared root and one fresh PostgreSQL database;
  the copy request is dropped into the shared inbox and split in batches of
  ``--batch-size`` scans that the hosts take from the queue. Each instance's
  ``max_connections`` (2 x capacity, as ``copy_throughput``'s single host) holds across
  the cluster (connection slots leased from PostgreSQL). Timed from the run's start
  (its plan) to its end (settled), by its ``run.json``; the wall time from the drop to
  the result sidecar is printed beside it.
* ``cluster-1``: the same with one host: what spreading gains.

Every copy is checked on qa scan by scan (``copy_throughput.check``): complete, lost,
incomplete, duplicates; the run's own post-run ``duplicates`` is printed too.

    .venv/bin/python bench/cluster_copy.py --scans 300     # a quick sanity check
    .venv/bin/python bench/cluster_copy.py --scans 1500    # the figure (a quiet machine)

Goal: cluster-3 ≥ 0.85 x ceiling, every scan exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests", REPO / "bench"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from copy_throughput import (  # noqa: E402 - after the path is set
    Bench,
    Row,
    check,
    child_env,
    instance_config,
    open_bench,
    run_ceiling,
)

GOAL = 0.85
DSN_ENV = "SCANRELAY_BENCH_CLUSTER_DSN"


def run_cluster(bench: Bench, hosts: int) -> Row:
    """One copy over ``hosts`` daemons; the row of its run."""
    import pg
    import yaml
    from helpers import DaemonProcess

    from daemon.layout import Layout
    from daemon.store import pg as store_pg

    store = bench.store()
    base = Path(tempfile.mkdtemp(prefix=f"cluster-{hosts}-", dir=bench.base))
    root = base / "shared"
    Layout(root).ensure([])
    dsn = pg.create_database("bench_cluster")
    daemons: list[DaemonProcess] = []
    try:
        with store_pg.open_pool(dsn, max_size=1, name="bench") as pool, \
                pool.connection() as conn:
            store_pg.migrate(conn)
        connections = 2 * bench.args.capacity  # the whole cluster's, as one host's
        env = {**child_env(bench.prod), DSN_ENV: dsn}
        for n in range(1, hosts + 1):
            config = {
                "paths": {"root": str(root), "state": str(base / f"state-{n}")},
                # INFO: a host says it is ready ("scanrelay watching") at that level
                "log": {"level": "INFO"}, "defaults": {"batch_size": 10},
                "intake": {"mode": "polling", "poll_interval": 0.2, "settle_seconds": 0.3},
                "instances": {"prod": instance_config(bench.prod, connections),
                              "qa": instance_config(bench.qa, connections)},
                "cluster": {"dsn_env": DSN_ENV, "host_id": f"host-{n}",
                            "batch_size": bench.args.batch_size}}
            path = base / f"host-{n}.yml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            daemon = DaemonProcess(root, config=path, env=env, ready_timeout=120)
            daemons.append(daemon)
            daemon.start()
        request = {"action": "copy", "source": "prod", "target": "qa",
                   "target_store_id": store, "scan_ids": bench.ids}
        dropped = time.monotonic()
        tmp = root / "inbox" / ".copy.json.tmp"
        tmp.write_text(json.dumps(request), encoding="utf-8")
        tmp.rename(root / "inbox" / "copy.json")
        result = _wait_result(root, daemons, bench.args.timeout)
        wall = time.monotonic() - dropped
        run = json.loads((root / result["run_dir"] / "run.json").read_text())
        ran_on = _hosts_used(dsn)
    finally:
        for daemon in daemons:
            daemon.__exit__(None, None, None)
        pg.drop_database(dsn)
    seconds = (datetime.fromisoformat(run["finished_at"])
               - datetime.fromisoformat(run["started_at"])).total_seconds()
    shutil.rmtree(base, ignore_errors=True)
    note = (f"status {run['status']}, {wall:.1f} s drop to settled, batches on "
            f"{ran_on} host(s), post-run duplicates {len(result.get('duplicates', []))}")
    return Row(0.0, f"cluster-{hosts}", seconds, check(bench, store), 0.0, 0.0, note)


def _wait_result(root: Path, daemons: list[Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in ("done", "failed"):
            sidecar = root / folder / "copy.json.result.json"
            if sidecar.exists():
                return dict(json.loads(sidecar.read_text()))
        dead = [d for d in daemons if not d.alive()]
        if dead:
            raise RuntimeError(f"a host died: {dead[0].log_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError("the copy did not settle in time")


def _hosts_used(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(DISTINCT host_id) FROM batches").fetchone()
    return int(row[0]) if row else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=1500)
    parser.add_argument("--files", type=int, default=2, help="files per scan")
    parser.add_argument("--file-size", type=int, default=64 * 1024)
    parser.add_argument("--capacity", type=int, default=4, help="calls at once per listener")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50, help="scans per cluster batch")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per copy")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scanrelay-bench-cluster-") as tmp, \
            ExitStack() as stack:
        bench = open_bench(args, Path(tmp), stack, target_stores=6)
        bench.prod.set_faults(0.0, 7, 1.0)
        runs = (lambda: run_ceiling(bench, 0.0), lambda: run_cluster(bench, args.hosts),
                lambda: run_cluster(bench, 1), lambda: run_ceiling(bench, 0.0))
        for run in runs:
            bench.rows.append(run())
            row = bench.rows[-1]
            print(f"  {row.name}: {row.seconds:.1f} s, {row.check}", file=sys.stderr,
                  flush=True)
    ok = report(bench.rows, args)
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (servers, hosts and PostgreSQL share these CPUs)")
    return 0 if ok else 1


def report(rows: list[Row], args: argparse.Namespace) -> bool:
    print(f"\ncluster copy prod → qa: {args.scans} scans x {args.files} files of "
          f"{args.file_size // 1024} KiB in batches of {args.batch_size}; every listener "
          f"serves {args.capacity} calls at once, {args.latency * 1000:.0f} ms each; "
          f"max_connections {2 * args.capacity} per instance across the cluster")
    print(f"{'run':<11}{'seconds':>8}{'scans/s':>9}{'x ceiling':>10}{'complete':>9}"
          f"{'lost':>5}{'incomplete':>11}{'dupl.':>6}  note")
    ceiling = sum(r.rate for r in rows if r.name == "ceiling") / 2
    for r in rows:
        c = r.check
        print(f"{r.name:<11}{r.seconds:>8.2f}{r.rate:>9.1f}{r.rate / ceiling:>10.2f}"
              f"{c.complete:>9}{c.lost:>5}{c.incomplete:>11}{c.duplicates:>6}  {r.note}")
    spread = next(r for r in rows if r.name == f"cluster-{args.hosts}")
    one = next(r for r in rows if r.name == "cluster-1")
    exact = spread.check.lost == spread.check.incomplete == spread.check.duplicates == 0
    met = spread.rate / ceiling >= GOAL and exact
    print(f"  cluster-{args.hosts} / ceiling {spread.rate / ceiling:.2f} (goal ≥ {GOAL:.2f}, "
          f"every scan exactly once): {'met' if met else 'NOT met'}; cluster-{args.hosts} / "
          f"cluster-1 {spread.rate / one.rate if one.rate else float('inf'):.2f}x")
    return met


if __name__ == "__main__":
    sys.exit(main())
