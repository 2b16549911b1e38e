"""Test 7 of issue 15, shortened: a schedule every 5 s on three hosts, one with its
clock 3 minutes ahead (libfaketime). Each fire happens once (one row, one request, one
job, never before it is due); killing (-9) the host that made the latest fire loses
none and repeats none; all hosts down past a schedule's ``misfire_grace``: one
``missed`` for it, and the 5 s schedule catches up once (coalesced).

Two kinds of hosts run the same scenario:

- scheduler processes (``cluster_fire_host.py``: the cluster's scheduler alone), which
  test the fires;
- real daemons (``scanrelay run`` with ``cluster:``, ``ClusterService``), which also
  run every fire's request, each into ``done/`` once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from cluster_support import ClusterRoot
from fire_support import (
    assert_one_request_and_job_per_fire,
    db_now,
    faketime_env,
    fire_rows,
)
from helpers import make_root, wait_settled

from daemon.schedule.fires import request_name

HOST_SCRIPT = Path(__file__).with_name("cluster_fire_host.py")
DSN_ENV = "SCANRELAY_TEST_CLUSTER_DSN"
SHIFT_SECONDS = 180
TICK, RARE = "schedule:tick", "schedule:rare"
SCHEDULES = {TICK: "tick", RARE: "rare"}
REQUEST = {"action": "download", "source": "demo-source", "scan_ids": [1001]}
RARE_SECONDS, RARE_GRACE = 30, 3
HOST_IDS = ("h0", "h1", "ahead")


class Host(Protocol):
    def kill(self) -> None: ...

    def stop(self) -> None: ...


HostStarter = Callable[[str, int], Host]  # (host_id, clock shift in seconds) → a host


def schedules() -> list[dict[str, Any]]:
    return [{"name": "tick", "cron": "*/5 * * * * *", "timezone": "UTC", "misfire_grace": 60,
             "request": REQUEST},
            {"name": "rare", "cron": f"*/{RARE_SECONDS} * * * * *", "timezone": "UTC",
             "misfire_grace": RARE_GRACE, "request": REQUEST}]


def shared_root(tmp_path: Path) -> Path:
    return make_root(tmp_path, log={"level": "INFO"}, schedules=schedules())


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fired_after(dsn: str, job: str, moment: datetime, count: int = 1) -> list[Any] | None:
    """The fired rows of ``job`` after ``moment`` once there are ``count`` of them."""
    found = [r for r in fire_rows(dsn, job) if r[0] > moment and r[1] == "fired"]
    return found if len(found) >= count else None


def run_scenario(dsn: str, start: HostStarter, *, names: tuple[str, ...] = HOST_IDS,
                 at_end: Callable[[], None] | None = None) -> dict[str, Any]:
    """Up, kill the host that fired, all down past the grace, up again (then
    ``at_end``, hosts still up); what the assertions need: the moments between phases.
    The last of ``names`` runs with its clock ``SHIFT_SECONDS`` ahead."""
    shifts = {host_id: SHIFT_SECONDS if host_id == names[-1] else 0 for host_id in names}
    hosts = {host_id: start(host_id, shift) for host_id, shift in shifts.items()}
    try:
        began = db_now(dsn)
        wait_for("4 fires by three hosts", lambda: fired_after(dsn, TICK, began, 4), 60)
        victim = fire_rows(dsn, TICK)[-1][3]
        hosts.pop(victim).kill()  # the host that made the latest fire
        killed_at = db_now(dsn)
        wait_for("3 fires by the two left", lambda: fired_after(dsn, TICK, killed_at, 3), 30)
        # All down, right after a fire of rare (so the cluster knows its last fire).
        rare = wait_for("a fire of rare", lambda: fired_after(dsn, RARE, killed_at),
                        RARE_SECONDS + 15)
        for host in hosts.values():
            host.kill()
        hosts.clear()
        down_at = db_now(dsn)
        missed_rare = rare[0][0] + timedelta(seconds=RARE_SECONDS)
        time.sleep((missed_rare - db_now(dsn)).total_seconds() + RARE_GRACE + 2)
        restarted_at = db_now(dsn)
        hosts = {host_id: start(host_id, shift) for host_id, shift in shifts.items()}
        wait_for("2 fires after the restart",
                 lambda: fired_after(dsn, TICK, restarted_at, 2), 40)
        wait_for("rare's missed fire", lambda: len(fire_rows(dsn, RARE)) > len(rare), 20)
        if at_end is not None:
            at_end()
        return {"victim": victim, "killed_at": killed_at, "down_at": down_at,
                "restarted_at": restarted_at, "missed_rare": missed_rare}
    finally:
        for host in hosts.values():
            host.stop()


def assert_scenario(dsn: str, moments: dict[str, Any], *, jobs: bool = True) -> None:
    assert_one_request_and_job_per_fire(dsn, SCHEDULES, jobs=jobs)
    ticks = fire_rows(dsn, TICK)
    assert all(r[1] == "fired" for r in ticks)
    early = [(r[0], r[3], r[4]) for r in ticks + fire_rows(dsn, RARE) if r[4] < r[0]]
    assert early == [], f"{len(early)} fired before due, e.g. {early[:2]}"
    before = [r[0] for r in ticks if r[0] <= moments["down_at"]]
    after = [r[0] for r in ticks if r[0] > moments["down_at"]]
    five = timedelta(seconds=5)
    # None lost while any host was up (the victim's kill included), none repeated.
    assert all(b - a == five for a, b in zip(before, before[1:], strict=False)), before
    # Down: coalesced into one catch-up (within the grace), then every fire again.
    assert after[0] > moments["restarted_at"] - five, (after[0], moments)
    assert all(b - a == five for a, b in zip(after, after[1:], strict=False)), after
    missed = [r for r in fire_rows(dsn, RARE) if r[1] == "missed"]
    assert [r[0] for r in missed] == [moments["missed_rare"]], missed
    assert missed[0][5]["late_seconds"] > RARE_GRACE


# ---- hosts as scheduler processes ----------------------------------------------------


class SchedulerHost:
    def __init__(self, config: Path, dsn: str, host_id: str, shift: int) -> None:
        env = {**os.environ, DSN_ENV: dsn, **(faketime_env(shift) if shift else {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(HOST_SCRIPT), str(config), host_id, "600"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            clocks = json.loads(line)
        except ValueError:
            raise AssertionError(f"{host_id} did not start: {line}{self.proc.stdout.read()}"
                                 ) from None
        assert clocks["local"] - clocks["db"] > shift - 10, clocks  # shifted, or not

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, out


@pytest.mark.slow
def test_three_scheduler_hosts_fire_once_through_kills_and_downtime(
        cluster_dsn: str, tmp_path: Path) -> None:
    config = shared_root(tmp_path) / "config.yml"
    moments = run_scenario(cluster_dsn, lambda h, s: SchedulerHost(config, cluster_dsn, h, s))
    assert_scenario(cluster_dsn, moments)


# ---- hosts as real daemons -----------------------------------------------------------


@pytest.mark.slow
def test_three_daemon_hosts_fire_once_and_run_every_fire(tmp_path: Path) -> None:
    with ClusterRoot(tmp_path, hosts=3, env={"host-3": faketime_env(SHIFT_SECONDS)},
                     schedules=schedules(), log={"level": "INFO"}) as cluster:

        def start(host_id: str, shift: int) -> Host:
            cluster.start(host_id)  # host-3's environment shifts its clock
            return cluster.daemon(host_id)

        def every_fire_runs_once() -> None:
            names = fired_names(cluster.dsn)
            settled = wait_settled(cluster.root, names, timeout=120)
            assert all(folder == "done" for folder, _ in settled.values()), settled
            # Each once, however many hosts: a second run would settle as <stem>-2.json.
            done = {p.name for p in (cluster.root / "done").glob("schedule-*.json")
                    if ".json." not in p.name}  # not the sidecars
            assert done <= set(fired_names(cluster.dsn)), sorted(done)

        try:
            moments = run_scenario(cluster.dsn, start, names=tuple(cluster.hosts),
                                   at_end=every_fire_runs_once)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
        assert_scenario(cluster.dsn, moments, jobs=False)  # done/ says each ran once


def fired_names(dsn: str) -> list[str]:
    return [request_name(SCHEDULES[job], r[0]) for job in SCHEDULES
            for r in fire_rows(dsn, job) if r[1] == "fired"]


# ---- test 7 at full length -----------------------------------------------------------

MINUTE, MINUTE_GRACE = "schedule:minute", 20


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_one_minute_schedule_for_ten_minutes_on_three_daemon_hosts(tmp_path: Path) -> None:
    """Issue 15, test 7 as written: ``* * * * *`` on three daemons (one 3 minutes ahead)
    for ten minutes: exactly ten fires, one a minute, the host that made the third killed
    (-9) and started again. Then all down past the grace: one ``missed``, and the next
    minute fires. Every fire's request runs once."""
    minute = {"name": "minute", "cron": "* * * * *", "timezone": "UTC",
              "misfire_grace": MINUTE_GRACE, "request": REQUEST}
    one_minute = timedelta(minutes=1)
    with ClusterRoot(tmp_path, hosts=3, env={"host-3": faketime_env(SHIFT_SECONDS)},
                     schedules=[minute], log={"level": "INFO"}) as cluster:
        dsn = cluster.dsn
        try:
            began = db_now(dsn)
            cluster.start()
            third = wait_for("3 fires", lambda: fired_after(dsn, MINUTE, began, 3), 4 * 60)
            victim = third[-1][3]
            cluster.daemon(victim).kill()
            cluster.start(victim)
            ten = wait_for("10 fires", lambda: fired_after(dsn, MINUTE, began, 10), 8 * 60)
            for host in cluster.hosts:
                cluster.daemon(host).kill()
            down = ten[-1][0] + one_minute  # no host is up when it is due
            time.sleep((down - db_now(dsn)).total_seconds() + MINUTE_GRACE + 3)
            cluster.start()
            wait_for("the minute after", lambda: fired_after(dsn, MINUTE, down, 1), 60 + 20)
            names = [request_name("minute", r[0]) for r in fire_rows(dsn, MINUTE)
                     if r[1] == "fired"]
            settled = wait_settled(cluster.root, names, timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs(tail=200)}") from None
        rows = fire_rows(dsn, MINUTE)
    fired = [r[0] for r in rows if r[1] == "fired"]
    assert fired[:10] == [fired[0] + n * one_minute for n in range(10)], fired
    assert [(r[0], r[1]) for r in rows[10:]] == [(down, "missed"), (down + one_minute, "fired")]
    assert len({r[3] for r in rows[:10]}) >= 2, "the fires were not all one host's"
    assert all(r[4] >= r[0] for r in rows if r[1] == "fired"), "a fire came before due"
    assert all(folder == "done" for folder, _ in settled.values()), settled
    done = sorted(p.name for p in (cluster.root / "done").glob("schedule-*.json")
                  if ".json." not in p.name)
    assert done == sorted(names), "each fire's request ran once"
