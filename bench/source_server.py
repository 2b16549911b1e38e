"""A reference server in a process of its own, driven over a pipe (for ``copy_throughput``).

A copy's source and target are separate platforms. Run in the benchmark's process,
both servers would share one interpreter lock: the source's work for a client's
downloads would slow the target's answers, and so lower a client's rate against a
ceiling measured while the source is idle. Here the source runs apart.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

FAULTY = ("file", "blob", "upload", "create")  # a failed login ends the old script at once


def _serve(conn: Any, base: str, password: str, spec: dict[str, Any]) -> None:
    import pg

    from daemon.sandbox import RefServer

    dsn = pg.create_database("bench_copy_prod")
    try:
        with RefServer(dsn, Path(base) / "prod", password=password, pool_size=48) as prod:
            seeded = prod.seed(scans=spec["scans"], files_per_scan=spec["files"],
                               file_size=spec["file_size"], seed=1)
            prod.set_limits(spec["capacity"], spec["latency"],
                            blob_max_concurrent=spec["capacity"], blob_latency=spec["latency"])
            conn.send({"api_url": prod.api_url, "dsn": dsn, "username": prod.username,
                       "scan_ids": seeded.scan_ids,
                       "wanted": {s: len(files) for s, files in seeded.files.items()}})
            while (message := conn.recv()) is not None:
                rate, seed, stall = message
                prod.faults.clear()
                prod.faults.timeout_sleep = stall
                if rate > 0:
                    prod.faults.set(rate, seed=seed, endpoints=FAULTY)
                conn.send(prod.errors)
    finally:
        pg.drop_database(dsn)


class SourceServer:
    """The source platform in a child process: ``api_url``, ``dsn``, ``username``,
    ``password`` as a ``RefServer`` has them, the seeded scans, and ``set_faults``."""

    def __init__(self, base: Path, password: str, spec: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, str(base), password, spec),
                                        daemon=True)
        self._process.start()
        info = self._conn.recv()
        self.api_url: str = info["api_url"]
        self.dsn: str = info["dsn"]
        self.username: str = info["username"]
        self.password = password
        self.scan_ids: list[int] = info["scan_ids"]
        self.wanted: dict[int, int] = info["wanted"]

    def set_faults(self, rate: float, seed: int, stall: float) -> None:
        self._conn.send((rate, seed, stall))
        errors = self._conn.recv()
        if errors:
            raise RuntimeError(f"prod: reference server errors: {errors[:3]}")

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=60)
