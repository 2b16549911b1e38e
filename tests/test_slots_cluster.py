"""Issue 15, test 8: an instance's ``max_connections`` holds across the cluster.

Real processes (``slot_worker.py``: each its own ``SlotBroker`` and host ID) call one
reference platform through ``handlers.limits.connection``, with slots leased from a
real PostgreSQL. The platform counts the calls it serves at once (``api_gate.peak``):
that is the number that must never exceed ``max_connections``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster_support import live_leases
from psycopg.conninfo import make_conninfo
from tcp_proxy import TcpProxy, connector_for

from daemon.sandbox import RefServer

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("slot_worker.py")
LIMIT = 4  # max_connections of the instance
LEASE = 3.0  # seconds
LATENCY = 0.05  # seconds the platform takes per call
INSTANCE = "platform"


@pytest.fixture
def platform(prod: RefServer) -> RefServer:
    prod.set_limits(max_concurrent=None, latency=LATENCY)
    return prod


class Host:
    """One worker process: a host of the cluster."""

    def __init__(self, tmp_path: Path, host_id: str, dsn: str, url: str) -> None:
        self.host_id = host_id
        self.out = tmp_path / f"calls-{host_id}.txt"
        self.out.touch()
        env = {**os.environ, "SLOT_TEST_DSN": dsn}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--host", host_id, "--url", url,
             "--out", str(self.out), "--instance", INSTANCE, "--limit", str(LIMIT),
             "--threads", str(LIMIT), "--lease", str(LEASE)], env=env)

    def calls(self) -> list[tuple[float, float]]:
        """Every call it finished: (start, end), wall clock."""
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                rows.append((float(parts[0]), float(parts[1])))
        return rows

    def stop(self) -> None:
        """SIGTERM, and it exits on its own (giving its leases back)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    started: list[Host] = []

    def start(host_id: str, dsn: str, url: str) -> Host:
        host = Host(tmp_path, host_id, dsn, url)
        started.append(host)
        return host
    yield start
    for host in started:
        host.kill()


def probe_url(platform: RefServer) -> str:
    """An API path the platform answers 404 to, through its gate (latency, peak)."""
    return f"{platform.api_url}/api/v1/slot-probe/"


def leases(dsn: str) -> dict[str, int]:
    return live_leases(dsn, INSTANCE)


def expiries(dsn: str, host_id: str) -> list[float]:
    """When the leases of ``host_id`` expire (epoch seconds, the server's clock)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT extract(epoch FROM expires_at)::float8 FROM slot_leases"
                            " WHERE instance = %s AND host_id = %s AND expires_at IS NOT NULL",
                            (INSTANCE, host_id))
        return [row[0] for row in rows]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def busy_fraction(calls: list[tuple[float, float]], start: float, end: float) -> float:
    """The share of the ``LIMIT`` slots' time in [start, end] spent inside calls."""
    inside = sum(max(0.0, min(e, end) - max(s, start)) for s, e in calls)
    return inside / (LIMIT * (end - start))


def started_in(calls: list[tuple[float, float]], start: float, end: float) -> int:
    return sum(1 for s, _ in calls if start <= s < end)


def test_three_hosts_share_the_limit_fully_and_fairly(
        cluster_dsn: str, platform: RefServer, hosts: Callable[..., Host]) -> None:
    url = probe_url(platform)
    first = hosts("a", cluster_dsn, url)
    wait_until(lambda: leases(cluster_dsn).get("a") == LIMIT, 15, "host a leases every slot")
    others = [hosts(h, cluster_dsn, url) for h in ("b", "c")]
    everyone = [first, *others]
    wait_until(lambda: all(h.calls() for h in others), 15, "hosts b and c make calls")
    window_start = time.time() + 1.0  # the shares have settled by then
    time.sleep(1.0 + 3 * LEASE)  # three turns of the uneven share (4 slots, 3 hosts)
    window_end = time.time()
    for host in everyone:
        host.stop()

    assert platform.api_gate.peak == LIMIT  # never more, and every slot was used
    calls = {h.host_id: h.calls() for h in everyone}
    every_call = [c for host_calls in calls.values() for c in host_calls]
    assert busy_fraction(every_call, window_start, window_end) >= 0.8
    counts = {h: started_in(c, window_start, window_end) for h, c in calls.items()}
    total = sum(counts.values())
    assert all(count >= 0.25 * total for count in counts.values()), counts
    assert leases(cluster_dsn) == {}  # each gave its leases back when it stopped


def test_slots_of_a_killed_host_come_back_within_a_lease(
        cluster_dsn: str, platform: RefServer, hosts: Callable[..., Host]) -> None:
    url = probe_url(platform)
    everyone = {h: hosts(h, cluster_dsn, url) for h in ("a", "b", "c")}
    wait_until(lambda: all(h.calls() for h in everyone.values()), 15, "every host calls")
    held = wait_until(lambda: sum(leases(cluster_dsn).values()) == LIMIT
                      and leases(cluster_dsn), 10, "all slots leased")
    victim = max(held, key=held.get)
    everyone[victim].kill()
    killed_at = time.monotonic()
    survivors = set(everyone) - {victim}

    def survivors_hold_all() -> bool:
        now = leases(cluster_dsn)
        return set(now) <= survivors and sum(now.values()) == LIMIT
    wait_until(survivors_hold_all, LEASE + 5, "the survivors hold every slot")
    assert time.monotonic() - killed_at <= LEASE + 1.0
    for host in survivors:
        everyone[host].stop()
    assert platform.api_gate.peak <= LIMIT


@pytest.mark.parametrize("loss", ["cut", "freeze"])
def test_a_host_that_loses_postgresql_stops_before_its_leases_expire(
        loss: str, cluster_dsn: str, platform: RefServer,
        hosts: Callable[..., Host]) -> None:
    url = probe_url(platform)
    with TcpProxy(connector_for(cluster_dsn)) as proxy:
        cut_off = hosts("a", make_conninfo(cluster_dsn, host="127.0.0.1", port=proxy.port), url)
        wait_until(lambda: leases(cluster_dsn).get("a") == LIMIT, 15, "host a leases all")
        other = hosts("b", cluster_dsn, url)
        wait_until(lambda: other.calls() and leases(cluster_dsn).get("a"), 15,
                   "both hosts call")
        lost_at = time.time()
        proxy.cut() if loss == "cut" else proxy.freeze()
        expiry = min(expiries(cluster_dsn, "a"))
        wait_until(lambda: leases(cluster_dsn) == {"b": LIMIT}, LEASE + 5,
                   "host b holds every slot")
        assert time.time() <= lost_at + LEASE + 1.0
        last_start = max(s for s, _ in cut_off.calls())
        # Hand-outs stop half a lease before expiry; a quarter is the margin asserted.
        assert last_start < expiry - LEASE / 4
        assert last_start < lost_at + LEASE / 2
        assert platform.api_gate.peak <= LIMIT

        calls_before = len(cut_off.calls())
        proxy.restore()
        wait_until(lambda: len(cut_off.calls()) > calls_before, 4 * LEASE,
                   "host a calls again once PostgreSQL is back")
        other.stop()
        cut_off.stop()
    assert platform.api_gate.peak <= LIMIT
