"""Copy throughput: ours against the target's measured ceiling and against the old
workflow, side by side in one run, without faults and under faults.

Two reference servers (``daemon/sandbox``, each on a fresh PostgreSQL database dropped
at the end): prod holds ``--scans`` scans of ``--files`` files and runs in a process of
its own (``source_server``), as a separate platform would; qa is the target. Every
listener (both APIs, both blob hosts) serves at most ``--capacity`` calls at once, each
``--latency`` s (``set_limits``). A scan costs its F uploads and 1 create on qa's API,
the busiest listener. qa never processes the copies during the benchmark (processing
delay 1 h), so every run meets the same idle server. Per condition (no faults, then
``--faults`` of every transient kind on file metadata, file bytes, uploads and creates
of both servers; a stall holds its server slot ``--stall`` s), each in a child process
of its own, each into a target store of its own:

* ``ceiling``: ``copy_ceiling.py``, an ideal client doing only each scan's uploads and
  create from bytes prebuilt in memory, resending failures at once: what qa can take.
  Measured before and after the others; their mean is the ceiling.
* ``ours``: ``python -m daemon once`` on a copy request in a fresh daemon root (runner,
  pipeline, checkpoint fsyncs, copy ledger, mapping), timed by its own ``run.json``.
* ``old``: ``copy_baseline.py``, a faithful model of the old workflow's last copy
  script (batches of 10 with barriers, 20/20/15 threads, retries of 502/503 only).

Every copy is checked on qa, scan by scan (the files carry their source scan): a source
scan is ``complete`` when a target scan has all its files, ``lost`` otherwise;
``incomplete`` counts target scans missing files and ``duplicates`` extra target scans.
Rates count complete scans only.

    .venv/bin/python bench/copy_throughput.py [--scans 300] [--faults 0.05]

Goals: ours ≥ 0.9 x ceiling without faults, ≥ 0.85 x ceiling under 5 % faults; every
scan complete exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):  # `daemon` (with its sandbox platform) and the tests' `pg`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from peak import daemon_argv, run_measured  # noqa: E402 - after the path is set
from source_server import FAULTY, SourceServer  # noqa: E402

GOALS = {False: 0.90, True: 0.85}  # ours / ceiling, by "under faults"
PASSWORD_ENV = "SCANRELAY_BENCH_API_PASSWORD"
DB_PASSWORD_ENV = "SCANRELAY_BENCH_DB_PASSWORD"
SPEC_ENV = "SCANRELAY_BENCH_SPEC"  # a child client's spec (copy_ceiling, copy_baseline)


@dataclass(frozen=True)
class Check:
    """What qa holds for one run, scan by scan."""

    complete: int
    lost: int
    incomplete: int
    duplicates: int


@dataclass(frozen=True)
class Row:
    faults: float
    name: str
    seconds: float
    check: Check
    maxrss_mb: float
    cpu_s: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.check.complete / self.seconds


@dataclass
class Bench:
    args: argparse.Namespace
    prod: SourceServer
    qa: Any
    ids: list[int]
    wanted: dict[int, int]  # files per source scan
    stores: list[int]
    base: Path
    rows: list[Row] = field(default_factory=list)

    def store(self) -> int:
        return self.stores.pop(0)


def measured(argv: list[str], env: dict[str, str]) -> tuple[str, int, float, float]:
    """Run ``argv`` to the end: (stdout and stderr, exit code, its own peak RSS in MB,
    CPU s)."""
    proc = run_measured(argv, env=env, cwd=REPO, stderr=subprocess.STDOUT)
    if proc.maxrss_mb is None:
        raise RuntimeError(f"{argv[1]} reported no peak RSS: {proc.stdout[-2000:]}")
    return proc.stdout, proc.returncode, proc.maxrss_mb, proc.cpu_s


def last_json(out: str, code: int, what: str) -> dict[str, Any]:
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {out[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


@contextmanager
def reference_server(base: Path, name: str, **kwargs: Any) -> Iterator[Any]:
    """A ``RefServer`` in this process, on a fresh database dropped at the end."""
    import pg

    from daemon.sandbox import RefServer

    dsn = pg.create_database(f"bench_copy_{name}")
    try:
        with RefServer(dsn, base / name, pool_size=48, **kwargs) as server:
            yield server
            if server.errors:
                raise RuntimeError(f"{name}: reference server errors: {server.errors[:3]}")
    finally:
        pg.drop_database(dsn)


def check(bench: Bench, store: int) -> Check:
    """Complete, lost, incomplete and duplicate copies in ``store`` of qa."""
    copies = [r for r in bench.qa.recognitions().values() if r.store_id == store]
    whole = [len(r.payload.get("files", [])) == bench.wanted.get(r.source_scan_id)
             for r in copies]
    complete = {r.source_scan_id for r, ok in zip(copies, whole, strict=True) if ok}
    per_source = Counter(r.source_scan_id for r in copies)
    return Check(len(complete & set(bench.ids)), len(set(bench.ids) - complete),
                 whole.count(False), sum(n - 1 for n in per_source.values() if n > 1))


# --- the three clients ---------------------------------------------------------------


def source_spec(bench: Bench, store: int) -> dict[str, Any]:
    return {"source_api": bench.prod.api_url, "target_api": bench.qa.api_url,
            "source_dsn": bench.prod.dsn, "username": bench.prod.username,
            "password": bench.prod.password, "store": store, "scan_ids": bench.ids}


def spec_env(spec: dict[str, Any]) -> dict[str, str]:
    """A child's environment with its spec, which holds the API password: an
    environment is readable by its owner only, a command line by every user."""
    return {**os.environ, SPEC_ENV: json.dumps(spec)}


def run_ceiling(bench: Bench, faults: float) -> Row:
    store = bench.store()
    spec = {**source_spec(bench, store), "threads": 2 * bench.args.capacity}
    out, code, rss, cpu = measured([sys.executable, str(REPO / "bench" / "copy_ceiling.py")],
                                   spec_env(spec))
    result = last_json(out, code, "ceiling")
    return Row(faults, "ceiling", float(result["seconds"]), check(bench, store), rss, cpu,
               f"{result['resent']} calls resent")


def run_old(bench: Bench, faults: float) -> Row:
    store = bench.store()
    out, code, rss, cpu = measured([sys.executable, str(REPO / "bench" / "copy_baseline.py")],
                                   spec_env(source_spec(bench, store)))
    result = last_json(out, code, "old")
    printed = "printed success" if "Script completed successfully!" in out else ""
    note = f"{printed}; claimed {len(result['mapping'])} created, {result['failed']} failed"
    return Row(faults, "old", float(result["seconds"]), check(bench, store), rss, cpu, note)


def run_ours(bench: Bench, faults: float) -> Row:
    import yaml

    store = bench.store()
    root = Path(tempfile.mkdtemp(prefix="ours-", dir=bench.base))
    connections = 2 * bench.args.capacity  # the excess waits in the server's queue
    config = {"paths": {"root": "."}, "log": {"level": "WARNING"},
              "defaults": {"batch_size": 10},
              "instances": {"prod": instance_config(bench.prod, connections),
                            "qa": instance_config(bench.qa, connections)}}
    (root / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    request = root / "copy.json"
    request.write_text(json.dumps({"action": "copy", "source": "prod", "target": "qa",
                                   "target_store_id": store, "scan_ids": bench.ids}))
    out, code, rss, cpu = measured(daemon_argv("once", str(request), "-c",
                                               str(root / "config.yml")), child_env(bench.prod))
    runs = list(root.glob("runs/*/run.json"))
    if not runs:
        raise RuntimeError(f"ours left no run.json ({code}): {out[-2000:]}")
    run = json.loads(runs[0].read_text())
    seconds = (datetime.fromisoformat(run["finished_at"])
               - datetime.fromisoformat(run["started_at"])).total_seconds()
    shutil.rmtree(root)
    return Row(faults, "ours", seconds, check(bench, store), rss, cpu, f"status {run['status']}")


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


# --- one condition -------------------------------------------------------------------


def set_faults(bench: Bench, rate: float, seed: int) -> None:
    bench.prod.set_faults(rate, seed, bench.args.stall)
    bench.qa.faults.clear()
    bench.qa.faults.timeout_sleep = bench.args.stall
    if rate > 0:
        bench.qa.faults.set(rate, seed=seed + 1, endpoints=FAULTY)


def condition(bench: Bench, rate: float) -> None:
    for n, run in enumerate((run_ceiling, run_ours, run_old, run_ceiling)):
        set_faults(bench, rate, seed=100 * n + 7)  # the same fault sequence per client
        bench.rows.append(run(bench, rate))
        row = bench.rows[-1]
        print(f"  {rate:.0%} faults, {row.name}: {row.seconds:.1f} s, {row.check}",
              file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--files", type=int, default=2, help="files per scan")
    parser.add_argument("--file-size", type=int, default=64 * 1024)
    parser.add_argument("--capacity", type=int, default=4, help="calls at once per listener")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call")
    parser.add_argument("--faults", type=float, default=0.05, help="share of calls failed")
    parser.add_argument("--stall", type=float, default=1.0,
                        help="seconds a stall ('timeout' fault) holds its server slot")
    return parser.parse_args()


def open_bench(args: argparse.Namespace, tmp: Path, stack: ExitStack,
               target_stores: int) -> Bench:
    """The two platforms a copy benchmark runs against, closed with ``stack``: prod
    (seeded, in a process of its own) and qa (``target_stores`` empty stores, never
    processing a copy), both serving ``args.capacity`` calls at once, ``args.latency`` s
    each."""
    password = secrets.token_urlsafe(16)  # one API user on both servers
    prod = SourceServer(tmp, password, {
        "scans": args.scans, "files": args.files, "file_size": args.file_size,
        "capacity": args.capacity, "latency": args.latency})
    stack.callback(prod.close)
    qa = stack.enter_context(reference_server(tmp, "qa", password=password,
                                              processing_delay=3600))
    stores = qa.seed(scans=0, stores=target_stores).store_ids
    qa.set_limits(args.capacity, args.latency, blob_max_concurrent=args.capacity,
                  blob_latency=args.latency)
    return Bench(args, prod, qa, prod.scan_ids, prod.wanted, list(stores), tmp)


def main() -> int:
    args = parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scanrelay-bench-copy-") as tmp, \
            ExitStack() as stack:
        bench = open_bench(args, Path(tmp), stack, target_stores=8)
        for rate in (0.0, args.faults):
            condition(bench, rate)
    ok = report(bench.rows, args)
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (servers and clients share these CPUs)")
    return 0 if ok else 1


def report(rows: list[Row], args: argparse.Namespace) -> bool:
    print(f"\ncopy prod → qa: {args.scans} scans x {args.files} files of "
          f"{args.file_size // 1024} KiB; every listener serves {args.capacity} calls at "
          f"once, {args.latency * 1000:.0f} ms each")
    print(f"{'faults':>6}  {'run':<8}{'seconds':>8}{'scans/s':>9}{'x ceiling':>10}"
          f"{'complete':>9}{'lost':>5}{'incomplete':>11}{'dupl.':>6}{'RSS MB':>8}"
          f"{'CPU s':>7}  note")
    ok = True
    for rate in sorted({r.faults for r in rows}):
        here = [r for r in rows if r.faults == rate]
        ceiling = sum(r.rate for r in here if r.name == "ceiling") / 2
        for r in here:
            c = r.check
            print(f"{rate:>6.0%}  {r.name:<8}{r.seconds:>8.2f}{r.rate:>9.1f}"
                  f"{r.rate / ceiling:>10.2f}{c.complete:>9}{c.lost:>5}{c.incomplete:>11}"
                  f"{c.duplicates:>6}{r.maxrss_mb:>8.1f}{r.cpu_s:>7.1f}  {r.note}")
        ok = summary(here, rate, ceiling) and ok
    return ok


def summary(rows: list[Row], rate: float, ceiling: float) -> bool:
    ours = next(r for r in rows if r.name == "ours")
    old = next(r for r in rows if r.name == "old")
    goal = GOALS[rate > 0]
    exact = ours.check.lost == ours.check.incomplete == ours.check.duplicates == 0
    met = ours.rate / ceiling >= goal and exact
    print(f"  {rate:.0%} faults: ours / ceiling {ours.rate / ceiling:.2f} (goal ≥ {goal:.2f}"
          f", every scan exactly once): {'met' if met else 'NOT met'}; ours / old "
          f"{ours.rate / old.rate if old.rate else float('inf'):.2f}x; old lost "
          f"{old.check.lost}, "
          f"{old.check.duplicates} duplicate(s) ({old.note})")
    return met


if __name__ == "__main__":
    sys.exit(main())
