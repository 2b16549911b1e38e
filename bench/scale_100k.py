"""100,000-scan download and copy requests against the reference platform: peak memory,
resume after ``kill -9``, and linearity, measured side by side in one run.

For each action (``download`` prod → disk, ``copy`` prod → qa), on reference servers
(``daemon/sandbox``, fresh PostgreSQL databases dropped at the end; ``--scans`` scans
seeded with COPY, files generated on the fly), the real daemon (``python -m daemon run``,
a subprocess) gets a CSV request dropped into its inbox:

* ``base``: the first ``--base`` scans, uninterrupted; time = ``run.json`` started →
  finished;
* ``full``: all ``--scans`` scans; at ``--kill-at`` of them done (``run.json`` progress)
  the daemon gets ``kill -9`` and is started again. ``resume s`` is the time from that
  restart (process start) to the first record the resumed run writes to its checkpoint
  journal, i.e. its first new step done; time = both runs' active time (killed run:
  started → kill; resumed run: started → finished), the restart itself left out.

Peak RSS is each daemon process's own maximum (``VmHWM``, read just before it is
stopped; not ``wait4``'s, which includes this script's own), the larger of the two for
``full``; ``CPU ms/scan`` the daemon's own CPU time (both processes for ``full``, with
two start-ups and the resume), which a loaded machine inflates far less than wall time.
Every run is checked: the request ends in ``done/``; a download's manifest has every
file ``ok``; a copy made exactly one target scan per source scan, kill or not.

    .venv/bin/python bench/scale_100k.py [--scans 100000] [--base 1000] [--actions download,copy]

Goals: peak RSS < 200 MB; resume < 5 s; full time ≤ 1.1 x (scans / base) x base time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):  # `daemon` (with its sandbox platform) and the tests' `pg`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

PASSWORD_ENV = "SCANRELAY_BENCH_{}_API_PASSWORD"  # each server has a password of its own
DB_PASSWORD_ENV = "SCANRELAY_BENCH_{}_DB_PASSWORD"
RSS_GOAL_MB = 200.0
RESUME_GOAL_S = 5.0
LINEAR_GOAL = 1.10
READY_LINE = "scanrelay watching"


@dataclass(frozen=True)
class Row:
    action: str
    run: str
    scans: int
    seconds: float
    peak_rss_mb: float
    cpu_s: float  # the daemon's own CPU time (user + system): far less load-bound than wall
    server_cpu_s: float = 0.0  # this script's CPU time meanwhile: the reference servers
    resume_s: float | None = None
    resume_cpu_s: float | None = None  # the restarted daemon's CPU time by then

    @property
    def rate(self) -> float:
        return self.scans / self.seconds


class Daemon:
    """``python -m daemon run`` on a root, with its own peak RSS at exit."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.log = root / f"daemon-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "-c", str(self.root / "config.yml")],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.01)

    def stop_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cpu_s(self) -> float:
        """The process's CPU time so far (user + system), from ``/proc``."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The process's own peak RSS so far (``VmHWM``). Not ``wait4``'s ``ru_maxrss``:
        Linux folds the parent's peak RSS into a child's at its exec, and this script,
        holding two reference servers and 100,000 seeded scans, is the bigger one."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) / 1024  # kB

    def end(self, sig: int) -> tuple[float, float]:
        """Send ``sig``, reap the process: its peak RSS in MB (read just before; its
        shutdown allocates next to nothing) and its CPU seconds."""
        assert self.proc is not None
        peak = self.peak_rss_mb()
        self.proc.send_signal(sig)
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0  # reaped here: keep Popen from waiting again
        return peak, usage.ru_utime + usage.ru_stime


@contextmanager
def reference_server(base: Path, name: str) -> Iterator[Any]:
    import pg

    from daemon.sandbox import RefServer

    dsn = pg.create_database(f"bench_scale_{name}")
    try:
        with RefServer(dsn, base / name, pool_size=32) as server:
            yield server
            if server.errors:
                raise RuntimeError(f"{name}: reference server errors: {server.errors[:3]}")
    finally:
        pg.drop_database(dsn)


def instance_config(name: str, server: Any, connections: int) -> dict[str, Any]:
    import pg

    params = pg.dsn_params(server.dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    cfg: dict[str, Any] = {"kind": "platform", "api_url": server.api_url, "db": db,
                           "api_username": server.username,
                           "api_password_env": PASSWORD_ENV.format(name.upper()),
                           "max_connections": connections}
    if params.get("password"):
        cfg["db_password_env"] = DB_PASSWORD_ENV.format(name.upper())
    return cfg


def child_env(servers: dict[str, Any], pycache: Path) -> dict[str, str]:
    """The daemon's environment: the servers' secrets, and bytecode cached in
    ``pycache`` as an installed daemon has it (with PYTHONDONTWRITEBYTECODE, which this
    machine sets, every start compiled the daemon's modules anew: ~0.25 s of CPU)."""
    import pg

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    for name, server in servers.items():
        env[PASSWORD_ENV.format(name.upper())] = server.password
        password = pg.dsn_params(server.dsn).get("password")
        if password:
            env[DB_PASSWORD_ENV.format(name.upper())] = password
    return env


def warm_bytecode(env: dict[str, str]) -> None:
    """Compile the daemon's modules into ``env``'s bytecode cache before any measured
    start (the first start would compile the libraries too: seconds of CPU)."""
    modules = ("daemon.cli", "daemon.service", "handlers.download", "handlers.copy",
               "daemon.instances.platform", "daemon.checkpoint_index", "numpy")
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], cwd=REPO,
                   env=env, check=True)


def count_scans(server: Any) -> int:
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM realograms_implementation_scan").fetchone()
    return int(row[0])


def make_root(base: Path, name: str, instances: dict[str, Any], batch_size: int) -> Path:
    root = base / name
    root.mkdir()
    config = {"paths": {"root": "."}, "log": {"level": "INFO"},
              "defaults": {"batch_size": batch_size}, "runs": {"max_parallel": 1},
              "instances": instances}
    (root / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def drop_request(root: Path, name: str, ids: list[int]) -> None:
    """A CSV request for ``ids``, renamed into the inbox whole (profiles set the rest)."""
    inbox = root / "inbox"
    inbox.mkdir(exist_ok=True)
    tmp = inbox / f".{name}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scan_id"])
        writer.writerows([i] for i in ids)
    tmp.rename(inbox / name)


def run_json(root: Path) -> dict[str, Any] | None:
    for path in root.glob("runs/*/run.json"):
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None  # being replaced: look again
    return None


def wait_for(root: Path, done: int | None, timeout: float) -> dict[str, Any]:
    """Until ``done`` items are done (or, None, the request settled); run.json then."""
    deadline, last_print = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        run = run_json(root) or {}
        progress = run.get("progress") or {}
        if done is None and any(root.glob("*/*.result.json")):
            return run_json(root) or run
        if done is not None and progress.get("done", 0) >= done:
            return run
        if time.monotonic() - last_print > 60:
            print(f"    … {progress.get('done', 0)}/{progress.get('total', '?')}", flush=True)
            last_print = time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"timed out in {root}: {run_json(root)}")


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def journal_of(root: Path) -> Path:
    (path,) = root.glob("runs/*/checkpoint.jsonl")
    return path


def first_new_record(journal: Path, size_at_kill: int, timeout: float = 600.0) -> None:
    """Until the resumed run appends to its journal (its torn tail, if any, cut off)."""
    deadline = time.monotonic() + timeout
    while journal.stat().st_size <= size_at_kill:
        if time.monotonic() > deadline:
            raise RuntimeError("the resumed run wrote nothing")
        time.sleep(0.005)


def measure(action: str, name: str, root: Path, ids: list[int], env: dict[str, str],
            kill_at: float | None, timeout: float) -> Row:
    daemon = Daemon(root, env)
    servers_before = own_cpu_s()
    try:
        daemon.start()
        drop_request(root, f"{name}.csv", ids)
        first_part, rss, cpu = 0.0, 0.0, 0.0
        resumed: tuple[float | None, float | None] = (None, None)
        if kill_at is not None:
            run = wait_for(root, int(len(ids) * kill_at), timeout)
            killed_at = time.time()
            rss, cpu = daemon.end(signal.SIGKILL)
            first_part = killed_at - datetime.fromisoformat(run["started_at"]).timestamp()
            print(f"    kill -9 at {run['progress']['done']}/{len(ids)} after "
                  f"{first_part:.0f} s (peak RSS so far {rss:.1f} MB)", flush=True)
            daemon, resumed = resume(root, env)
        run = wait_for(root, None, timeout)
        last_rss, last_cpu = daemon.end(signal.SIGTERM)
        rss, cpu = max(rss, last_rss), cpu + last_cpu
    finally:
        daemon.stop_if_running()
    if run.get("status") != "done":
        results = [p.read_text() for p in root.glob("*/*.result.json")]
        raise RuntimeError(f"{action} {name} ended {run.get('status')}: {results}")
    seconds = seconds_between(run["started_at"], run["finished_at"]) + first_part
    return Row(action, name, len(ids), seconds, rss, cpu, own_cpu_s() - servers_before,
               *resumed)


def own_cpu_s() -> float:
    """This script's CPU time (user + system, every thread): the reference servers
    serving the daemon, and this script's polling of run.json (a few ms a second)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resume(root: Path, env: dict[str, str]) -> tuple[Daemon, tuple[float, float]]:
    """Restart the daemon after the kill: (it, (seconds to its first journal record,
    its CPU seconds by then))."""
    journal = journal_of(root)
    size_at_kill = journal.stat().st_size
    daemon = Daemon(root, env)
    restarted = time.monotonic()
    daemon.start()
    ready = time.monotonic() - restarted
    first_new_record(journal, size_at_kill)
    resume_s, resume_cpu = time.monotonic() - restarted, daemon.cpu_s()
    print(f"    after the restart the daemon was ready in {ready:.2f} s and wrote its first "
          f"new record in {resume_s:.2f} s ({resume_cpu:.2f} s of CPU)", flush=True)
    return daemon, (resume_s, resume_cpu)


def check_download(root: Path, scans: int, files: int) -> None:
    (manifest,) = root.glob("runs/*/manifest.csv")
    with manifest.open(newline="") as f:  # streamed: 100,000 rows as dicts are ~100 MB
        statuses = Counter(row["status"] for row in csv.DictReader(f))
    if statuses != Counter(ok=scans * files):
        raise RuntimeError(f"manifest: {dict(statuses)}, expected {scans * files} ok")


def check_disk(base: Path, args: argparse.Namespace) -> None:
    """Refuse to start without room for what the runs leave in ``base``: the
    downloaded files and the copies' uploads (on the qa server's disk), each rounded
    up to a 4 KiB block, and ~3 KB a scan of journals, manifests and mappings."""
    scans = args.scans + args.base
    per_file = -(-args.file_size // 4096) * 4096
    need = 2 * scans * args.files * per_file + 3000 * scans
    free = shutil.disk_usage(base).free
    print(f"disk: ~{need / 1e9:.1f} GB needed in {base.parent}, {free / 1e9:.0f} GB free "
          "(the databases come on top, on the PostgreSQL server's disk)", flush=True)
    if free < 1.5 * need:
        raise SystemExit(f"not enough free disk in {base.parent} for {scans} scans")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=100_000)
    parser.add_argument("--base", type=int, default=1000, help="scans of the base run")
    parser.add_argument("--actions", default="download,copy")
    parser.add_argument("--files", type=int, default=1, help="files per scan")
    parser.add_argument("--file-size", type=int, default=4096)
    parser.add_argument("--connections", type=int, default=8, help="max_connections")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    actions = args.actions.split(",")
    rows: list[Row] = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scanrelay-bench-scale-") as tmp, \
            ExitStack() as stack:
        base = Path(tmp)
        check_disk(base, args)
        prod = stack.enter_context(reference_server(base, "prod"))
        qa = stack.enter_context(reference_server(base, "qa"))
        started = time.perf_counter()
        seeded = prod.seed(scans=args.scans, files_per_scan=args.files,
                           file_size=args.file_size, seed=1, lazy_above=0)
        store = qa.seed(scans=0).store_ids[0]
        print(f"seeded {args.scans} scans in {time.perf_counter() - started:.0f} s",
              flush=True)
        servers = {"prod": prod, "qa": qa}
        instances = {name: instance_config(name, server, args.connections)
                     for name, server in servers.items()}
        env = child_env(servers, base / "pycache")
        warm_bytecode(env)
        for action in actions:
            profile = {"action": action, "source": "prod"}
            if action == "copy":
                profile.update(target="qa", target_store_id=store)
            for name, count, kill_at in (("base", args.base, None),
                                         ("full", args.scans, args.kill_at)):
                root = make_root(base, f"{action}-{name}", instances, args.batch_size)
                config = yaml.safe_load((root / "config.yml").read_text())
                config.update(profiles={"p": profile}, defaults={
                    "profile": "p", "batch_size": args.batch_size})
                (root / "config.yml").write_text(yaml.safe_dump(config))
                before = count_scans(qa)
                print(f"  {action} {name}: {count} scans", flush=True)
                row = measure(action, name, root, seeded.scan_ids[:count], env, kill_at,
                              args.timeout)
                if action == "download":
                    check_download(root, count, args.files)
                elif count_scans(qa) - before != count:
                    raise RuntimeError(f"copy {name}: {count_scans(qa) - before} target "
                                       f"scans for {count} source scans")
                rows.append(row)
                print(f"  {row}", flush=True)
                if name == "base":
                    print(f"  {action} full: about {args.scans / row.rate / 60:.0f} min at "
                          "the base run's rate", flush=True)
    report(rows, args, load)
    return 0


def report(rows: list[Row], args: argparse.Namespace, load: float) -> None:
    print(f"\n{args.scans} scans, {args.files} file(s) of {args.file_size} bytes each, "
          f"batch size {args.batch_size}, max_connections {args.connections}; load average "
          f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at the end (2 cores: shared); "
          f"this script (the reference servers) peaked at "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"{'action':<10}{'run':<6}{'scans':>8}{'seconds':>10}{'scans/s':>9}"
          f"{'CPU ms/scan':>13}{'servers ms/scan':>17}{'peak RSS MB':>13}{'resume s':>10}"
          f"{'(CPU s)':>9}")
    for r in rows:
        resume = f"{r.resume_s:.2f}" if r.resume_s is not None else "-"
        resume_cpu = f"{r.resume_cpu_s:.2f}" if r.resume_cpu_s is not None else "-"
        print(f"{r.action:<10}{r.run:<6}{r.scans:>8}{r.seconds:>10.1f}{r.rate:>9.1f}"
              f"{1000 * r.cpu_s / r.scans:>13.2f}{1000 * r.server_cpu_s / r.scans:>17.2f}"
              f"{r.peak_rss_mb:>13.1f}{resume:>10}"
              f"{resume_cpu:>9}")
    for action in dict.fromkeys(r.action for r in rows):
        base = next(r for r in rows if r.action == action and r.run == "base")
        full = next(r for r in rows if r.action == action and r.run == "full")
        ratio = full.seconds / (full.scans / base.scans * base.seconds)
        cpu_ratio = (full.cpu_s / full.scans) / (base.cpu_s / base.scans)
        server_ratio = (full.server_cpu_s / full.scans) / (base.server_cpu_s / base.scans)
        rss = max(base.peak_rss_mb, full.peak_rss_mb)
        assert full.resume_s is not None
        print(f"{action}: time / ({full.scans // base.scans} x base) = {ratio:.2f} (goal ≤ "
              f"{LINEAR_GOAL}: {_met(ratio <= LINEAR_GOAL)}); CPU per scan full / base = "
              f"{cpu_ratio:.2f}, the servers' {server_ratio:.2f}; peak RSS {rss:.0f} MB (goal < "
              f"{RSS_GOAL_MB:.0f}: {_met(rss < RSS_GOAL_MB)}); resume {full.resume_s:.2f} s "
              f"(goal < {RESUME_GOAL_S:g}: {_met(full.resume_s < RESUME_GOAL_S)})")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
