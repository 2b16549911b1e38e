"""Copy throughput and memory: ``copy`` prod → qa between two reference servers, against
the servers' ideal rate and against the old scripts' way (``copy_baseline.py``), side
by side in one run.

Both reference servers (``daemon/sandbox``, each on a fresh PostgreSQL database that
is dropped at the end) get the same capacity and latency (``set_limits``): at most
``--capacity`` requests served at once per listener, each taking ``--latency`` s. A
scan with F files costs F metadata calls (source API), F downloads (source blob host)
and F uploads + 1 create (target API), so the busiest listener is the target API and

    ideal scans/s = capacity / (latency x (F + 1))

Each copy runs in a fresh process whose peak RSS comes from ``wait4``:

* ``ours``: ``python -m daemon once`` on a copy request in a fresh daemon root (the
  whole daemon path: runner, pipeline, checkpoint fsyncs, ledger, mapping), for each
  of ``--scans``; its rate is scans / the run's own time (``run.json``: started →
  finished), so process start-up is left out, as it is for the baseline;
* ``old``: ``copy_baseline.py`` with one call at a time per stage, as the old scripts
  ran; ``old xN``: the same with a pool of N per stage (barriers kept), a generous
  baseline. Both on the first ``--baseline-scans`` scans.

Every copy is checked: as many new target scans as source scans, each with its files.

    .venv/bin/python bench/copy_throughput.py [--scans 100,500,2000] [--baseline-scans 50]

Goals: ours ≥ 0.85 x ideal; ours ≥ 4 x old; peak RSS flat from 100 to 2,000 scans
(within 10 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):  # `daemon` (with its sandbox platform) and the tests' `pg`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

IDEAL_GOAL = 0.85
OLD_GOAL = 4.0
FLAT_MB = 10.0
PASSWORD_ENV = "SCANRELAY_BENCH_API_PASSWORD"
DB_PASSWORD_ENV = "SCANRELAY_BENCH_DB_PASSWORD"


@dataclass(frozen=True)
class Row:
    name: str
    scans: int
    seconds: float
    maxrss_mb: float

    @property
    def rate(self) -> float:
        return self.scans / self.seconds


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[str, int, float]:
    """Run ``argv`` to the end: (stdout, exit code, its own peak RSS in MB)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    return out, os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024  # KiB on Linux


@contextmanager
def reference_server(base: Path, name: str) -> Iterator[Any]:
    import pg

    from daemon.sandbox import RefServer

    dsn = pg.create_database(f"bench_copy_{name}")
    try:
        with RefServer(dsn, base / name, pool_size=48) as server:
            yield server
            if server.errors:
                raise RuntimeError(f"{name}: reference server errors: {server.errors[:3]}")
    finally:
        pg.drop_database(dsn)


def instance_config(server: Any, connections: int) -> dict[str, Any]:
    import pg

    params = pg.dsn_params(server.dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    cfg: dict[str, Any] = {"kind": "platform", "api_url": server.api_url, "db": db,
                           "api_username": server.username, "api_password_env": PASSWORD_ENV,
                           "max_connections": connections}
    if params.get("password"):
        cfg["db_password_env"] = DB_PASSWORD_ENV
    return cfg


def child_env(prod: Any) -> dict[str, str]:
    import pg

    env = {**os.environ, PASSWORD_ENV: prod.password}
    password = pg.dsn_params(prod.dsn).get("password")
    if password:
        env[DB_PASSWORD_ENV] = password
    return env


def count_scans(server: Any) -> int:
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM realograms_implementation_scan").fetchone()
    return int(row[0])


def run_ours(prod: Any, qa: Any, ids: list[int], store: int, base: Path,
             args: argparse.Namespace) -> Row:
    import yaml

    root = Path(tempfile.mkdtemp(prefix="ours-", dir=base))
    config = {"paths": {"root": "."}, "log": {"level": "WARNING"},
              "defaults": {"batch_size": args.batch_size},
              "instances": {"prod": instance_config(prod, 2 * args.capacity),
                            "qa": instance_config(qa, 2 * args.capacity)}}
    (root / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    request = root / "copy.json"
    request.write_text(json.dumps({"action": "copy", "source": "prod", "target": "qa",
                                   "target_store_id": store, "scan_ids": ids}))
    before = count_scans(qa)
    out, code, rss = run_measured([sys.executable, "-m", "daemon", "once", str(request),
                                   "-c", str(root / "config.yml")], child_env(prod))
    (run_json,) = root.glob("runs/*/run.json")
    run = json.loads(run_json.read_text())
    created = count_scans(qa) - before
    if code != 0 or run["status"] != "done" or created != len(ids):
        raise RuntimeError(f"ours failed ({code}, {run['status']}, {created} created): {out}")
    seconds = (datetime.fromisoformat(run["finished_at"])
               - datetime.fromisoformat(run["started_at"])).total_seconds()
    shutil.rmtree(root)
    return Row("ours", len(ids), seconds, rss)


def run_old(prod: Any, qa: Any, ids: list[int], store: int, workers: int,
            args: argparse.Namespace) -> Row:
    spec = {"source_api": prod.api_url, "target_api": qa.api_url, "source_dsn": prod.dsn,
            "username": prod.username, "password": prod.password, "store": store,
            "scan_ids": ids, "batch_size": args.batch_size, "workers": workers}
    before = count_scans(qa)
    out, code, rss = run_measured([sys.executable, str(REPO / "bench" / "copy_baseline.py"),
                                   json.dumps(spec)], dict(os.environ))
    created = count_scans(qa) - before
    if code != 0 or created != len(ids):
        raise RuntimeError(f"old failed ({code}, {created} created): {out}")
    result = json.loads(out.strip().splitlines()[-1])
    name = "old" if workers <= 1 else f"old x{workers}"
    return Row(name, len(ids), float(result["seconds"]), rss)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", default="100,500,2000",
                        help="scan counts for ours, comma-separated")
    parser.add_argument("--baseline-scans", type=int, default=50)
    parser.add_argument("--files", type=int, default=2, help="files per scan")
    parser.add_argument("--file-size", type=int, default=64 * 1024)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=10)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    counts = [int(n) for n in args.scans.split(",")]
    ideal = args.capacity / (args.latency * (args.files + 1))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scanrelay-bench-copy-") as tmp, \
            ExitStack() as stack:
        base = Path(tmp)
        prod = stack.enter_context(reference_server(base, "prod"))
        qa = stack.enter_context(reference_server(base, "qa"))
        started = time.perf_counter()
        seeded = prod.seed(scans=max(counts + [args.baseline_scans]),
                           files_per_scan=args.files, file_size=args.file_size, seed=1)
        store = qa.seed(scans=0).store_ids[0]
        print(f"seeded {len(seeded.scan_ids)} scans in {time.perf_counter() - started:.0f} s")
        for server in (prod, qa):
            server.set_limits(args.capacity, args.latency, blob_max_concurrent=args.capacity,
                              blob_latency=args.latency)
        base_ids = seeded.scan_ids[:args.baseline_scans]
        for n in counts:
            rows.append(run_ours(prod, qa, seeded.scan_ids[:n], store, base, args))
            print(f"  {rows[-1]}", flush=True)
        for workers in (1, args.capacity):
            rows.append(run_old(prod, qa, base_ids, store, workers, args))
            print(f"  {rows[-1]}", flush=True)
    report(rows, ideal, args)
    return 0


def report(rows: list[Row], ideal: float, args: argparse.Namespace) -> None:
    print(f"\ncopy prod → qa: {args.files} files of {args.file_size // 1024} KiB per scan, "
          f"capacity {args.capacity}, latency {args.latency * 1000:.0f} ms per listener, "
          f"batch size {args.batch_size}")
    print(f"ideal (target API bound): {ideal:.1f} scans/s")
    print(f"{'run':<10}{'scans':>7}{'seconds':>10}{'scans/s':>10}{'x ideal':>9}"
          f"{'peak RSS MB':>13}")
    for row in rows:
        print(f"{row.name:<10}{row.scans:>7}{row.seconds:>10.2f}{row.rate:>10.1f}"
              f"{row.rate / ideal:>9.2f}{row.maxrss_mb:>13.1f}")
    ours = [r for r in rows if r.name == "ours"]
    best = max(ours, key=lambda r: r.scans)
    old = {r.name: r for r in rows if r.name.startswith("old")}
    same_n = next((r for r in ours if r.scans == args.baseline_scans), best)
    rss = [r.maxrss_mb for r in ours]
    print(f"\nours ({best.scans} scans) / ideal: {best.rate / ideal:.2f} "
          f"(goal ≥ {IDEAL_GOAL}): {'met' if best.rate / ideal >= IDEAL_GOAL else 'MISSED'}")
    for name, row in old.items():
        ratio = same_n.rate / row.rate
        goal = f" (goal ≥ {OLD_GOAL:g}): {'met' if ratio >= OLD_GOAL else 'MISSED'}" \
            if name == "old" else ""
        print(f"ours / {name} ({row.scans} scans each): {ratio:.1f}x{goal}")
    spread = max(rss) - min(rss)
    print(f"ours peak RSS {min(rss):.1f}–{max(rss):.1f} MB over {min(r.scans for r in ours)}"
          f"–{max(r.scans for r in ours)} scans: spread {spread:.1f} MB (goal ≤ {FLAT_MB:g}):"
          f" {'met' if spread <= FLAT_MB else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
