"""Several hosts of one cluster on this machine: real ``python -m daemon run``
processes sharing one root (inbox, processing, done, failed, runs) and one PostgreSQL
database, each with a ``state/`` of its own, as N machines on a network share would.

::

    with ClusterRoot(tmp_path, hosts=3) as cluster:   # a fresh database, a root
        cluster.start()                               # every host, each ready
        drop(cluster.root / "inbox", "a.csv", "scan_id\\n1001\\n")
        wait_settled(cluster.root, ["a.csv"])
    # leaving the block: SIGTERM to each host still running (each must exit within
    # 10 s), then the database is dropped

The hosts heartbeat fast and take a silent worker for dead after 3 s, so tests that
kill hosts do not wait long for their jobs to move.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import yaml
from helpers import DaemonProcess, config_dict, merge

from daemon.demo import create_demo
from daemon.layout import Layout
from daemon.store import pg
from tests import pg as testpg

DSN_ENV = "SCANRELAY_TEST_CLUSTER_DSN"
FAST_CLUSTER = {"heartbeat_seconds": 0.5, "stalled_seconds": 3, "sweep_seconds": 1,
                "claim_orphan_seconds": 2, "max_attempts": 3, "batch_size": 4}


class ClusterRoot:
    """A shared root, a database, and ``hosts`` daemons (``host-1`` ...) on them."""

    def __init__(self, tmp_path: Path, *, hosts: int = 3,
                 cluster: Mapping[str, Any] | None = None,
                 env: Mapping[str, Mapping[str, str]] | None = None,
                 per_host: Mapping[str, Mapping[str, Any]] | None = None,
                 **overrides: Any) -> None:
        """``cluster``: keys of the ``cluster:`` section over ``FAST_CLUSTER``;
        ``env``: extra environment per host ID; ``overrides``: config sections of every
        host; ``per_host``: config sections of one host (by host ID), over those."""
        self.tmp = tmp_path
        self.root = tmp_path / "shared"
        Layout(self.root).ensure(["demo-copy", "demo-download"])
        create_demo(self.root / "data")
        self.dsn = ""
        self.cluster = {**FAST_CLUSTER, **(cluster or {})}
        self.overrides = overrides
        self.env = env or {}
        self.per_host = per_host or {}
        self.hosts = [f"host-{n}" for n in range(1, hosts + 1)]
        self.daemons: dict[str, DaemonProcess] = {}

    def __enter__(self) -> ClusterRoot:
        testpg.require_admin_dsn()
        self.dsn = testpg.create_database("cluster")
        with self.connect() as conn:  # as the first host would: tests may write first
            pg.migrate(conn)
        for host in self.hosts:
            self.config_path(host).write_text(
                yaml.safe_dump(self.config(host), sort_keys=False), encoding="utf-8")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            for daemon in self.daemons.values():
                daemon.__exit__(exc_type, exc, tb)
        finally:
            testpg.drop_database(self.dsn)

    def config(self, host: str) -> dict[str, Any]:
        data = self.root / "data"
        base = config_dict(
            paths={"root": str(self.root), "state": str(self.tmp / f"state-{host}")},
            instances={"demo-source": {"kind": "folder", "path": str(data / "demo-source")},
                       "demo-target": {"kind": "folder", "path": str(data / "demo-target")}},
            intake={"mode": "polling", "poll_interval": 0.2, "settle_seconds": 0.3},
            cluster={"dsn_env": DSN_ENV, "host_id": host, **self.cluster})
        return merge(merge(base, self.overrides), self.per_host.get(host, {}))

    def config_path(self, host: str) -> Path:
        return self.tmp / f"{host}.yml"

    def daemon(self, host: str) -> DaemonProcess:
        """The host's daemon (a new process object each ``start``)."""
        return self.daemons[host]

    def start(self, *hosts: str) -> None:
        """Start the given hosts (default: all), each until it is ready."""
        for host in hosts or self.hosts:
            env = {DSN_ENV: self.dsn, **self.env.get(host, {})}
            daemon = DaemonProcess(self.root, config=self.config_path(host), env=env,
                                   ready_timeout=60)
            self.daemons[host] = daemon
            daemon.start()
            # The line itself, not its source in a traceback (which has "{}" for the ID).
            daemon.wait_log(f"as host {host} of a cluster", 5)

    def stop(self, *hosts: str) -> dict[str, float]:
        """SIGTERM to the given hosts (default: all) at once; seconds each took to exit
        (each must within 10 s)."""
        chosen = [self.daemons[h] for h in hosts or self.daemons if self.daemons[h].alive()]
        for daemon in chosen:
            assert daemon.proc is not None
            daemon.proc.terminate()
        for daemon in chosen:
            daemon.stop()
        return {h: d.stop_seconds or 0.0 for h, d in self.daemons.items() if d in chosen}

    @contextlib.contextmanager
    def supervised(self) -> Iterator[list[str]]:
        """Restart any host that dies, as systemd's ``Restart=`` would, while the block
        runs; yields the list of restarts (host IDs, in order)."""
        restarts: list[str] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                for host, daemon in list(self.daemons.items()):
                    if not daemon.alive() and not done.is_set():
                        restarts.append(host)
                        with contextlib.suppress(AssertionError):  # died again at start
                            self.start(host)
                time.sleep(0.2)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield restarts
        finally:
            done.set()
            thread.join()

    def cli(self, host: str, *args: str) -> str:
        """``scanrelay ARGS`` with ``host``'s config; its stdout (it must succeed)."""
        done = subprocess.run([sys.executable, "-m", "daemon", *args, "-c",
                               str(self.config_path(host))], capture_output=True, text=True,
                              env={**os.environ, DSN_ENV: self.dsn}, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def logs(self, tail: int | None = None) -> str:
        """Every host's output so far, every process of it (``tail``: the last
        characters of each file only, for failure messages)."""
        parts = []
        for path in sorted(self.root.glob("daemon-*.log")):
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"===== {path.name}\n{text[-tail:] if tail else text}")
        return "\n".join(parts)


def live_leases(dsn: str, instance: str) -> dict[str, int]:
    """Live connection-slot leases of ``instance`` by host (the server's clock)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT host_id, count(*) FROM slot_leases WHERE instance = %s"
                            " AND expires_at > now() GROUP BY host_id", (instance,))
        return {host: count for host, count in rows}


def terminate_backends(dsn: str) -> int:
    """``pg_terminate_backend`` of every other connection to the database of ``dsn``."""
    with contextlib.closing(psycopg.connect(dsn, autocommit=True)) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            ).fetchall()
    return sum(1 for (ok,) in rows if ok)
