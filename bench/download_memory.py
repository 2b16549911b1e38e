"""Download memory and throughput: the daemon's download path vs curl, side by side.

One reference platform server (``daemon/sandbox``, on a fresh PostgreSQL database
that is dropped at the end) serves one lazily generated file per size: the bytes are
produced on the fly, never held in memory or on disk by the server. Per size and
repeat, each in a fresh process whose peak RSS and CPU time come from ``wait4``:

* ``once``:  ``python -m daemon once`` on a download request for the file's scan: the
  whole daemon path (config, runner, handler, database, HTTP, hashing, fsync,
  manifest). Run once per size, for memory and the end-to-end time.
* ``fetch``: ``PlatformInstance.fetch_file`` into a ``HashingSink`` over a temp file,
  as ``handlers/download.py`` does (metadata call + pre-signed blob GET, hashed while
  written); timed from the call to the flush, after login, without the fsync.
* ``curl``:  the same two requests with curl: the metadata call with the token, then
  ``curl -o FILE`` of the pre-signed URL it names; the sum of both ``time_total``.

``fetch`` and ``curl`` both write to a file in the same folder on the same disk, and
neither fsyncs: throughput compares like with like. They run back to back, in
alternating order, ``--repeat`` times; the median is reported. Every download is
checked against the file's sha256.

    .venv/bin/python bench/download_memory.py [--sizes 1M,100M,1G] [--repeat 5]

Goals: peak RSS under 150 MB for every size and flat (the largest size within 10 MB
of the smallest); fetch throughput at least 80 % of curl's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):  # `daemon` (with its sandbox platform) and the tests' `pg`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

RSS_LIMIT_MB = 150.0
FLAT_MB = 10.0
RATIO_GOAL = 0.80
MB = 1_000_000  # RSS and rates are in decimal MB; sizes in KiB, MiB, GiB
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
PASSWORD_ENV = "SCANRELAY_BENCH_API_PASSWORD"
DB_PASSWORD_ENV = "SCANRELAY_BENCH_DB_PASSWORD"


@dataclass(frozen=True)
class Proc:
    """A finished child: its output, peak RSS and CPU time (from ``wait4``)."""

    stdout: str
    returncode: int
    maxrss_mb: float
    cpu_s: float
    wall_s: float


def run_measured(argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> Proc:
    """Run ``argv`` to the end; its own rusage, not the sum over all children."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=cwd, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    # Linux reports ru_maxrss in KiB.
    return Proc(out, proc.returncode, usage.ru_maxrss * 1024 / MB,
                usage.ru_utime + usage.ru_stime, wall)


# --- the child: one fetch, as handlers/download.py does it ---------------------------


def fetch_child(spec: dict[str, Any]) -> None:
    """Fetch one file through ``PlatformInstance`` into a ``HashingSink``; print JSON."""
    import threading

    from loguru import logger

    from daemon.config import DbConfig, PlatformInstanceConfig
    from daemon.instances.base import FileRef
    from daemon.instances.platform import PlatformInstance
    from handlers.streams import HashingSink

    cfg = PlatformInstanceConfig(kind="platform", api_url=spec["api_url"],
                                 db=DbConfig(**spec["db"]), api_username=spec["username"],
                                 api_password_env=PASSWORD_ENV, max_connections=1)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    instance = PlatformInstance("bench", cfg)
    instance.api.login()  # curl gets a ready URL; our metadata call stays in the timing
    fd, tmp_name = tempfile.mkstemp(dir=spec["dir"], prefix=".fetch.", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as raw:
            sink = HashingSink(raw, threading.Event())
            start = time.perf_counter()
            fetched = instance.fetch_file(FileRef(spec["file_id"]), sink)  # type: ignore[arg-type]
            raw.flush()
            seconds = time.perf_counter() - start
    finally:
        os.unlink(tmp_name)
        instance.close()
    print(json.dumps({"seconds": seconds, "size": fetched.size, "sha256": sink.sha256}))


# --- the parent --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One seeded file on the reference server."""

    size: int
    scan_id: int
    file_id: int
    sha256: str


@dataclass
class Figures:
    once_rss: float
    once_wall: float
    fetch_rss: list[float]
    fetch_rate: list[float]  # MB/s
    fetch_cpu: list[float]
    curl_rss: list[float]
    curl_rate: list[float]
    curl_cpu: list[float]


def parse_size(text: str) -> int:
    text = text.strip().upper()
    if text[-1:] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def label(size: int) -> str:
    for unit, factor in sorted(UNITS.items(), key=lambda u: -u[1]):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}iB"
    return f"{size} B"


@contextmanager
def reference_server(base: Path) -> Iterator[Any]:
    import pg

    from daemon.sandbox import RefServer

    dsn = pg.create_database("bench_download")
    try:
        with RefServer(dsn, base / "refserver") as server:
            yield server
            if server.errors:
                raise RuntimeError(f"reference server errors: {server.errors}")
    finally:
        pg.drop_database(dsn)


def db_settings(dsn: str) -> tuple[dict[str, Any], str | None]:
    import pg

    params = pg.dsn_params(dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    return db, params.get("password")


def child_env(server: Any) -> dict[str, str]:
    env = {**os.environ, PASSWORD_ENV: server.password}
    _, db_password = db_settings(server.dsn)
    if db_password:
        env[DB_PASSWORD_ENV] = db_password
    return env


def run_once(server: Any, target: Target, base: Path) -> Proc:
    """``python -m daemon once`` on a download request in a fresh daemon root."""
    import yaml

    root = base / "once"
    root.mkdir()
    db, db_password = db_settings(server.dsn)
    instance: dict[str, Any] = {"kind": "platform", "api_url": server.api_url, "db": db,
                                "api_username": server.username,
                                "api_password_env": PASSWORD_ENV, "max_connections": 4}
    if db_password:
        instance["db_password_env"] = DB_PASSWORD_ENV
    config = {"paths": {"root": "."}, "instances": {"ref": instance},
              "log": {"level": "WARNING"}}
    (root / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    request = root / "request.json"
    request.write_text(json.dumps({"action": "download", "source": "ref",
                                   "scan_ids": [target.scan_id]}), encoding="utf-8")
    try:
        proc = run_measured([sys.executable, "-m", "daemon", "once", str(request),
                             "-c", str(root / "config.yml")], env=child_env(server), cwd=REPO)
        (manifest,) = root.glob("runs/*/manifest.csv")
        row = manifest.read_text(encoding="utf-8").splitlines()[1].split(",")
        if proc.returncode != 0 or target.sha256 not in row:
            raise RuntimeError(f"once failed ({proc.returncode}): {proc.stdout} {row}")
        return proc
    finally:
        shutil.rmtree(root)


def run_fetch(server: Any, target: Target, out: Path) -> tuple[Proc, float]:
    db, _ = db_settings(server.dsn)
    spec = {"api_url": server.api_url, "db": db, "username": server.username,
            "file_id": target.file_id, "dir": str(out)}
    proc = run_measured([sys.executable, __file__, "--fetch-child", json.dumps(spec)],
                        env=child_env(server), cwd=REPO)
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if result.get("sha256") != target.sha256 or result.get("size") != target.size:
        raise RuntimeError(f"fetch failed ({proc.returncode}): {proc.stdout}")
    return proc, target.size / result["seconds"] / MB


def login(server: Any) -> str:
    import requests

    answer = requests.post(f"{server.api_url}/api/v4/token-auth/", timeout=30,
                           json={"username": server.username, "password": server.password})
    answer.raise_for_status()
    return str(answer.json()["token"])


def run_curl(server: Any, target: Target, out: Path, token: str) -> tuple[Proc, float]:
    """curl's metadata call, then its download; (the download's process, MB/s)."""
    import hashlib

    meta = run_measured(["curl", "-sS", "--fail", "-H", f"Authorization: Token {token}",
                         "-w", "\n%{time_total}",
                         f"{server.api_url}/api/v1/master-data/file-upload/{target.file_id}/"])
    body, meta_seconds = meta.stdout.rsplit("\n", 1)
    if meta.returncode != 0:
        raise RuntimeError(f"curl metadata failed ({meta.returncode}): {meta.stdout}")
    dest = out / "curl.bin"
    proc = run_measured(["curl", "-sS", "--fail", "-o", str(dest), "-w",
                         "%{time_total} %{size_download}", json.loads(body)["file"]])
    try:
        seconds, size = proc.stdout.split()
        if proc.returncode != 0 or int(size) != target.size:
            raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stdout}")
        digest = hashlib.sha256()
        with dest.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != target.sha256:
            raise RuntimeError("curl: sha256 differs")
    finally:
        dest.unlink(missing_ok=True)
    return (Proc(proc.stdout, proc.returncode, max(meta.maxrss_mb, proc.maxrss_mb),
                 meta.cpu_s + proc.cpu_s, meta.wall_s + proc.wall_s),
            target.size / (float(meta_seconds) + float(seconds)) / MB)


def measure(server: Any, target: Target, repeat: int, base: Path) -> Figures:
    once = run_once(server, target, base)
    figures = Figures(once.maxrss_mb, once.wall_s, [], [], [], [], [], [])
    token = login(server)

    def fetch() -> None:
        proc, rate = run_fetch(server, target, base)
        figures.fetch_rss.append(proc.maxrss_mb)
        figures.fetch_rate.append(rate)
        figures.fetch_cpu.append(proc.cpu_s)

    def curl() -> None:
        proc, rate = run_curl(server, target, base, token)
        figures.curl_rss.append(proc.maxrss_mb)
        figures.curl_rate.append(rate)
        figures.curl_cpu.append(proc.cpu_s)

    for n in range(repeat):  # alternate who goes first: neither inherits the other's cache
        for step in ((fetch, curl) if n % 2 == 0 else (curl, fetch)):
            # Nothing dirty left to write back: a download of 1 GiB just before would
            # otherwise throttle the next one's writes, whoever it is.
            os.sync()
            step()
    return figures


def seed(server: Any, size: int) -> Target:
    seeded = server.seed(scans=1, files_per_scan=1, file_size=size, stores=1, lazy_above=0)
    (file,) = seeded.all_files()
    return Target(size, file.scan_id, file.file_id, seeded.sha256(file.file_id))


def report(results: dict[int, Figures], repeat: int, echo: Callable[[str], None]) -> bool:
    med = statistics.median
    echo(f"download of one file from the reference server; fetch and curl: {repeat} "
         "repeats, median (RSS: max), both writing to disk without fsync")
    echo(f"{'size':>7} | {'peak RSS MB':^23} | {'MB/s':^22} | {'CPU s':^13} | {'once':>6}")
    echo(f"{'':>7} | {'once':>7} {'fetch':>7} {'curl':>7} | {'fetch':>7} {'curl':>7} "
         f"{'ratio':>6} | {'fetch':>6} {'curl':>6} | {'wall s':>6}")
    for size, f in results.items():
        ratio = med(f.fetch_rate) / med(f.curl_rate)
        echo(f"{label(size):>7} | {f.once_rss:>7.1f} {max(f.fetch_rss):>7.1f} "
             f"{max(f.curl_rss):>7.1f} | {med(f.fetch_rate):>7.0f} {med(f.curl_rate):>7.0f} "
             f"{ratio:>6.0%} | {med(f.fetch_cpu):>6.2f} {med(f.curl_cpu):>6.2f} | "
             f"{f.once_wall:>6.2f}")
    peaks = {size: max(f.once_rss, max(f.fetch_rss)) for size, f in results.items()}
    first = results[min(results)]
    flat = all(abs(f.once_rss - first.once_rss) <= FLAT_MB
               and abs(max(f.fetch_rss) - max(first.fetch_rss)) <= FLAT_MB
               for f in results.values())
    memory_ok = all(p < RSS_LIMIT_MB for p in peaks.values()) and flat
    speed_ok = all(med(f.fetch_rate) >= RATIO_GOAL * med(f.curl_rate) for f in results.values())
    echo(f"memory goal (< {RSS_LIMIT_MB:.0f} MB, flat within {FLAT_MB:.0f} MB): "
         f"{'met' if memory_ok else 'NOT met'}")
    echo(f"throughput goal (fetch ≥ {RATIO_GOAL:.0%} of curl): "
         f"{'met' if speed_ok else 'NOT met'}")
    return memory_ok and speed_ok


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--fetch-child":
        fetch_child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,100M,1G", help="comma-separated, e.g. 1M,1G")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is not installed")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results: dict[int, Figures] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp, \
            reference_server(Path(tmp)) as server:
        for size in sizes:
            target = seed(server, size)
            results[size] = measure(server, target, args.repeat, Path(tmp))
            print(f"  {label(size)} done", file=sys.stderr)
    ok = report(results, args.repeat, print)
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (the server, fetch and curl share these CPUs)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
