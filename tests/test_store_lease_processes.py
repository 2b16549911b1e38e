"""Copy key leases across processes (cluster mode): two processes contending for the
same key in PostgreSQL never both pass the fence, and a paused holder (SIGSTOP longer
than its lease) finds its fence failing once another took the key over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from store_support import migrated_database

WORKER = Path(__file__).with_name("lease_worker.py")


@pytest.fixture
def dsn() -> Iterator[str]:
    with migrated_database("leases") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE lease_probe (inside integer NOT NULL)")
            conn.execute("INSERT INTO lease_probe VALUES (0)")
        yield dsn


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _until(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_two_processes_never_both_pass_the_fence(dsn: str, tmp_path: Path) -> None:
    workers = [_worker("contend", dsn, str(tmp_path), "2", "40") for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    assert [int(out) for out, _ in outputs] == [1, 1]  # never two owners inside at once


def test_a_paused_holder_fails_its_fence_once_another_took_over(
        dsn: str, tmp_path: Path) -> None:
    holder = _worker("hold", dsn, str(tmp_path), "1")
    taker = None
    try:
        _until(tmp_path / "held")
        os.kill(holder.pid, signal.SIGSTOP)  # longer than its lease: nothing renews it
        taker = _worker("take", dsn, str(tmp_path), "1")
        _until(tmp_path / "taken")  # the key is the taker's now
        os.kill(holder.pid, signal.SIGCONT)
        (tmp_path / "go").touch()
        _until(tmp_path / "result")
        assert (tmp_path / "result").read_text() == "lost"
        for worker in (holder, taker):
            _, err = worker.communicate(timeout=30)
            assert worker.returncode == 0, err
    finally:
        for worker in (holder, taker):
            if worker is not None and worker.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
                worker.kill()
                worker.wait()
