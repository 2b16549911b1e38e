"""Download memory and throughput: the daemon's download path vs curl, side by side.

One reference platform server (``daemon/sandbox``, on a fresh PostgreSQL database
that is dropped at the end) serves one lazily generated file per size: the bytes are
produced on the fly, never held in memory or on disk by the server. Per size and
repeat, each in a fresh process; its CPU time comes from ``wait4``, its peak RSS from
its own ``VmHWM`` (``bench/peak.py``):

* ``once``:  ``python -m daemon once`` on a download request for the file's scan: the
  whole daemon path (config, runner, handler, database, HTTP, hashing, fsync,
  manifest). Run once per size, for memory and the end-to-end time.
* ``fetch``: ``PlatformInstance.fetch_file`` into a ``HashingSink`` over a temp file,
  as ``handlers/download.py`` does (metadata call + pre-signed blob GET, hashed while
  written), for ``k`` files in one process, after login, without the fsync.
* ``curl``:  the same requests with curl: one ``curl`` for the ``k`` metadata calls with
  the token, then one ``curl -o FILE`` for the ``k`` pre-signed URLs they name (curl too
  keeps its connections across the URLs of one command line).

Each in two modes. ``1 at a time``: ``--files`` files one after another (one from 16 MiB
up), timed per file (curl: the sum of every ``time_total``): per-file latency. ``P at
once`` (below 16 MiB): ``--files`` x ``--parallel`` x 5 files, ``--parallel`` at a time,
as the daemon downloads with ``max_connections`` P (16 by default) and as ``curl
--parallel --parallel-max P`` does; timed from the first request to the last byte
(curl: the wall time of its two processes, their start-up included, under 1 % of it).
``fetch`` and ``curl`` both write to files in the same folder on the same disk, and
neither fsyncs: throughput compares like with like. They run back to back, in
alternating order, ``--repeat`` times; the median is reported. Every download is
checked against the file's sha256.

    .venv/bin/python bench/download_memory.py [--sizes 1M,100M,1G] [--repeat 5] \
        [--files 10] [--parallel 4]

Goals: peak RSS under 150 MB for every size and flat (the largest size within 10 MB
of the smallest); for 1 MiB files, fetch throughput at least 80 % of curl's the way the
daemon downloads (``P at once``). The other rows are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):  # `daemon` (with its sandbox platform) and the tests' `pg`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from peak import Proc, daemon_argv, report_peak_at_exit, run_measured  # noqa: E402 - bench/

RSS_LIMIT_MB = 150.0
FLAT_MB = 10.0
RATIO_GOAL = 0.80
MB = 1_000_000  # RSS and rates are in decimal MB; sizes in KiB, MiB, GiB
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SMALL_BELOW = 16 << 20  # from this size up: one file per process, one at a time
PARALLEL_ROUNDS = 5  # files per worker in the parallel mode, times --files
PASSWORD_ENV = "SCANRELAY_BENCH_API_PASSWORD"
DB_PASSWORD_ENV = "SCANRELAY_BENCH_DB_PASSWORD"


# --- the child: one fetch, as handlers/download.py does it ---------------------------


def fetch_child(spec: dict[str, Any]) -> None:
    """Fetch one file ``spec["files"]`` times through ``PlatformInstance``, each into a
    ``HashingSink``, ``spec["parallel"]`` at a time; print JSON."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from loguru import logger

    from daemon.config import DbConfig, PlatformInstanceConfig
    from daemon.instances.base import FileRef
    from daemon.instances.platform import PlatformInstance
    from handlers.streams import HashingSink

    report_peak_at_exit()
    parallel = spec["parallel"]
    cfg = PlatformInstanceConfig(kind="platform", api_url=spec["api_url"],
                                 db=DbConfig(**spec["db"]), api_username=spec["username"],
                                 api_password_env=PASSWORD_ENV, max_connections=parallel)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    instance = PlatformInstance("bench", cfg)
    instance.api.login()  # curl gets a ready token; our metadata calls stay in the timing

    def fetch(_: int) -> tuple[float, int, str]:
        fd, tmp_name = tempfile.mkstemp(dir=spec["dir"], prefix=".fetch.", suffix=".part")
        try:
            with os.fdopen(fd, "w+b") as raw:
                sink = HashingSink(raw, threading.Event())
                start = time.perf_counter()
                file = instance.fetch_file(FileRef(spec["file_id"]), sink)  # type: ignore[arg-type]
                raw.flush()
                return time.perf_counter() - start, file.size, sink.sha256
        finally:
            os.unlink(tmp_name)

    try:
        with ThreadPoolExecutor(parallel) as pool:
            start = time.perf_counter()
            results = list(pool.map(fetch, range(spec["files"])))
            wall = time.perf_counter() - start
    finally:
        instance.close()
    # One at a time: the transfers alone, as curl's time_total; else first call to last byte.
    seconds = sum(r[0] for r in results) if parallel == 1 else wall
    print(json.dumps({"seconds": seconds, "fetched": [r[1:] for r in results]}))


# --- the parent --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One seeded file on the reference server."""

    size: int
    scan_id: int
    file_id: int
    sha256: str


@dataclass(frozen=True)
class Mode:
    """How many files one fetch or curl process downloads, and how many at a time."""

    files: int
    parallel: int

    @property
    def name(self) -> str:
        return "1 at a time" if self.parallel == 1 else f"{self.parallel} at once"


@dataclass
class Side:
    """One client's figures over the repeats of one mode."""

    rss: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)  # MB/s
    cpu: list[float] = field(default_factory=list)

    def add(self, proc: Proc, rate: float) -> None:
        if proc.maxrss_mb is not None:
            self.rss.append(proc.maxrss_mb)
        self.rate.append(rate)
        self.cpu.append(proc.cpu_s)


@dataclass
class Figures:
    once_rss: float
    once_wall: float
    modes: dict[Mode, tuple[Side, Side]]  # (fetch, curl)


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
        proc = run_measured(daemon_argv("once", str(request), "-c", str(root / "config.yml")),
                            env=child_env(server), cwd=REPO)
        (manifest,) = root.glob("runs/*/manifest.csv")
        row = manifest.read_text(encoding="utf-8").splitlines()[1].split(",")
        if proc.returncode != 0 or target.sha256 not in row or proc.maxrss_mb is None:
            raise RuntimeError(f"once failed ({proc.returncode}): {proc.stdout} {row}")
        return proc
    finally:
        shutil.rmtree(root)


def run_fetch(server: Any, target: Target, out: Path, mode: Mode) -> tuple[Proc, float]:
    """``mode.files`` fetches of ``target`` in one process: (that process, MB/s)."""
    db, _ = db_settings(server.dsn)
    spec = {"api_url": server.api_url, "db": db, "username": server.username,
            "file_id": target.file_id, "dir": str(out), "files": mode.files,
            "parallel": mode.parallel}
    proc = run_measured([sys.executable, __file__, "--fetch-child", json.dumps(spec)],
                        env=child_env(server), cwd=REPO)
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if result.get("fetched") != [[target.size, target.sha256]] * mode.files:
        raise RuntimeError(f"fetch failed ({proc.returncode}): {proc.stdout}")
    return proc, mode.files * target.size / result["seconds"] / MB


def login(server: Any) -> str:
    import requests

    answer = requests.post(f"{server.api_url}/api/v4/token-auth/", timeout=30,
                           json={"username": server.username, "password": server.password})
    answer.raise_for_status()
    return str(answer.json()["token"])


def run_curl(server: Any, target: Target, out: Path, token: str,
             mode: Mode) -> tuple[Proc, float]:
    """One curl for the metadata calls, one for the downloads they name:
    (both processes as one, MB/s)."""
    from handlers.streams import sha256_of

    parallel = ["--parallel", "--parallel-max", str(mode.parallel)] if mode.parallel > 1 else []
    meta_url = f"{server.api_url}/api/v1/master-data/file-upload/{target.file_id}/"
    metas = [out / f"curl.{n}.json" for n in range(mode.files)]
    dests = [out / f"curl.{n}.bin" for n in range(mode.files)]
    try:
        # The token goes in a file of ours (mode 0600), not on a command line all can read.
        with tempfile.NamedTemporaryFile("w", dir=out, prefix=".curl-auth.") as header:
            header.write(f"Authorization: Token {token}\n")
            header.flush()
            meta = run_measured(["curl", "-sS", "--fail", *parallel, "-H", f"@{header.name}",
                                 "-w", "%{time_total}\n",
                                 *[a for path in metas for a in ("-o", str(path), meta_url)]])
        if meta.returncode != 0:
            raise RuntimeError(f"curl metadata failed ({meta.returncode}): {meta.stdout}")
        urls = [json.loads(path.read_bytes())["file"] for path in metas]
        proc = run_measured(["curl", "-sS", "--fail", *parallel, "-w",
                             "%{time_total} %{size_download}\n",
                             *[arg for dest, url in zip(dests, urls, strict=True)
                               for arg in ("-o", str(dest), url)]])
        transfers = [line.split() for line in proc.stdout.splitlines()]
        sizes = [int(size) for _, size in transfers]
        if proc.returncode != 0 or sizes != [target.size] * mode.files:
            raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stdout}")
        if any(sha256_of(dest) != target.sha256 for dest in dests):
            raise RuntimeError("curl: sha256 differs")
    finally:
        for path in metas + dests:
            path.unlink(missing_ok=True)
    wall = meta.wall_s + proc.wall_s
    if mode.parallel == 1:
        seconds = sum(float(line) for line in meta.stdout.split()) + \
            sum(float(t) for t, _ in transfers)
    else:
        seconds = wall
    return (Proc(proc.stdout, proc.returncode, None, meta.cpu_s + proc.cpu_s, wall),
            mode.files * target.size / seconds / MB)


def modes_for(size: int, files: int, parallel: int) -> list[Mode]:
    """One at a time, and for small files also ``parallel`` at once; from ``SMALL_BELOW``
    up one file per process, where latency no longer counts."""
    if size >= SMALL_BELOW:
        return [Mode(1, 1)]
    return [Mode(files, 1), Mode(files * parallel * PARALLEL_ROUNDS, parallel)]


def measure(server: Any, target: Target, repeat: int, modes: list[Mode],
            base: Path) -> Figures:
    once = run_once(server, target, base)
    assert once.maxrss_mb is not None  # checked by run_once
    figures = Figures(once.maxrss_mb, once.wall_s, {m: (Side(), Side()) for m in modes})
    token = login(server)
    for mode, (fetch_side, curl_side) in figures.modes.items():
        def fetch(mode: Mode = mode, side: Side = fetch_side) -> None:
            side.add(*run_fetch(server, target, base, mode))

        def curl(mode: Mode = mode, side: Side = curl_side) -> None:
            side.add(*run_curl(server, target, base, token, mode))

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
    echo(f"downloads from the reference server; fetch and curl: {repeat} repeats of "
         "'files' files in one process, median (RSS: max), both writing to disk without "
         "fsync")
    echo(f"{'size':>7} {'mode':>11} {'files':>5} | {'peak RSS MB':^15} | {'MB/s':^22} | "
         f"{'CPU s':^13} | {'once':>6}")
    echo(f"{'':>25} | {'once':>7} {'fetch':>7} | {'fetch':>7} {'curl':>7} "
         f"{'ratio':>6} | {'fetch':>6} {'curl':>6} | {'wall s':>6}")
    speed_ok = True
    for size, f in results.items():
        for mode, (ours, curl) in f.modes.items():
            ratio = med(ours.rate) / med(curl.rate)
            if size < SMALL_BELOW and mode.parallel > 1:
                speed_ok = speed_ok and ratio >= RATIO_GOAL
            echo(f"{label(size):>7} {mode.name:>11} {mode.files:>5} | {f.once_rss:>7.1f} "
                 f"{max(ours.rss):>7.1f} | {med(ours.rate):>7.0f} "
                 f"{med(curl.rate):>7.0f} {ratio:>6.0%} | {med(ours.cpu):>6.2f} "
                 f"{med(curl.cpu):>6.2f} | {f.once_wall:>6.2f}")
    fetch_peaks = {size: max(max(ours.rss) for ours, _ in f.modes.values())
                   for size, f in results.items()}
    first = min(results)
    flat = all(abs(f.once_rss - results[first].once_rss) <= FLAT_MB
               and abs(fetch_peaks[size] - fetch_peaks[first]) <= FLAT_MB
               for size, f in results.items())
    memory_ok = flat and all(max(f.once_rss, fetch_peaks[size]) < RSS_LIMIT_MB
                             for size, f in results.items())
    echo(f"memory goal (< {RSS_LIMIT_MB:.0f} MB, flat within {FLAT_MB:.0f} MB): "
         f"{'met' if memory_ok else 'NOT met'}")
    echo(f"throughput goal (files under {label(SMALL_BELOW)}, several at once: fetch ≥ "
         f"{RATIO_GOAL:.0%} of curl): {'met' if speed_ok else 'NOT met'}")
    return memory_ok and speed_ok


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--fetch-child":
        fetch_child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,100M,1G", help="comma-separated, e.g. 1M,1G")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--files", type=int, default=10,
                        help="files per process one at a time, below 16 MiB")
    parser.add_argument("--parallel", type=int, default=4,
                        help="files at a time in the parallel mode (max_connections)")
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
            modes = modes_for(size, args.files, args.parallel)
            results[size] = measure(server, target, args.repeat, modes, Path(tmp))
            print(f"  {label(size)} done", file=sys.stderr)
    ok = report(results, args.repeat, print)
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (the server, fetch and curl share these CPUs)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
