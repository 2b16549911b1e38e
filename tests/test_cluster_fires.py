"""Schedules once per cluster, against a real PostgreSQL: several hosts (threads or
processes, each its own host_id and pool) compute the same fires; each fire makes one
``schedule_fires`` row, one request row and one job; a catch-up after downtime within
the grace fires once (coalesced), past the grace one ``missed``; a host whose clock
runs minutes ahead (libfaketime) neither fires early nor twice; the rerun window
re-drops each failed request once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fire_support import (
    assert_one_request_and_job_per_fire,
    db_now,
    faketime_env,
    fire_rows,
    job_count,
    migrated_database,
    requests_by_name,
    rows,
)
from helpers import make_root
from loguru import logger

from daemon.cluster import fires as fires_module
from daemon.cluster.fireclock import ClockJob, FireClock, last_due
from daemon.cluster.fires import ClusterFires, Due, request_body
from daemon.config import RerunsConfig, load_config
from daemon.layout import Layout
from daemon.schedule.cron import cron_trigger
from daemon.schedule.fires import request_name, scheduled_request
from daemon.schedule.reruns import RerunWindow, rerun_name
from daemon.schedule.scheduler import Scheduler
from daemon.store.pg import open_pool

HOST_SCRIPT = Path(__file__).with_name("cluster_fire_host.py")
EVERY_SECOND = "* * * * * *"
RAW = {"action": "download", "source": "demo-source", "scan_ids": [1001]}
SHIFT_SECONDS = 180  # the shifted host's clock runs this far ahead


# ---- fixtures and readers ----------------------------------------------------------


@pytest.fixture
def cluster_dsn(pg_dsn: str) -> Iterator[str]:
    yield from migrated_database()


@pytest.fixture
def hosts(cluster_dsn: str, tmp_path: Path) -> Iterator[list[ClusterFires]]:
    """Three hosts' producers, each with a pool of its own."""
    pools = [open_pool(cluster_dsn, max_size=3, name=f"h{i}") for i in range(3)]
    try:
        yield [ClusterFires(p, Layout(tmp_path), f"h{i}") for i, p in enumerate(pools)]
    finally:
        for p in pools:
            p.close()


def together(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(0..n-1)`` in ``n`` threads; re-raise the first error."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def fired_once(dsn: str, job: str, schedule: str) -> list[Any]:
    """The fired rows of ``job``, each checked to have its one request and job."""
    assert_one_request_and_job_per_fire(dsn, {job: schedule})
    return [r for r in fire_rows(dsn, job) if r[1] == "fired"]


# ---- pure: which fire is due -------------------------------------------------------


NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_last_due_is_the_latest_nominal_fire_after_the_last_handled() -> None:
    every_second = cron_trigger(EVERY_SECOND)
    assert last_due(every_second, NOON, NOON + timedelta(seconds=7.5)) == \
        NOON + timedelta(seconds=7)
    assert last_due(every_second, NOON, NOON + timedelta(days=3, microseconds=1)) == \
        NOON + timedelta(days=3)  # days of a per-second cron: a few steps, not 259,200
    assert last_due(every_second, NOON, NOON + timedelta(microseconds=900)) is None


def test_last_due_follows_the_cron_time_zone() -> None:
    daily = cron_trigger("30 2 * * *", "Europe/Berlin")  # 01:30 UTC in winter
    assert last_due(daily, NOON - timedelta(days=10), NOON) == \
        datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
    assert last_due(daily, datetime(2026, 3, 2, 1, 30, tzinfo=UTC), NOON) is None


# ---- the race of one fire ----------------------------------------------------------


def test_three_hosts_make_each_fire_once_with_one_request_and_one_job(
        cluster_dsn: str, hosts: list[ClusterFires]) -> None:
    start = db_now(cluster_dsn).replace(microsecond=0) - timedelta(seconds=60)
    times = [start + timedelta(seconds=i) for i in range(20)]
    barrier = threading.Barrier(3)
    made: Counter[str] = Counter()

    def host(i: int) -> None:
        fires = hosts[i]
        for t in times:
            barrier.wait()  # all three insert the same key at once
            due = Due("schedule:tick", t, EVERY_SECOND, "UTC", fires.db_now())
            if fires.fire(due, request_name("tick", t), RAW) is not None:
                made[fires.host_id] += 1

    together(3, host)
    assert sum(made.values()) == len(times)
    fired = fired_once(cluster_dsn, "schedule:tick", "tick")
    assert [r[0] for r in fired] == times
    bodies = {bytes(b) for (b,) in rows(cluster_dsn, "SELECT body FROM requests")}
    assert bodies == {request_body(RAW)}
    processing = rows(cluster_dsn, "SELECT processing_name, claim_id, name, claimed_by "
                                   "FROM requests")
    for name, claim, request, host_id in processing:
        assert name == f"{claim}+-+{request}" and host_id in made


def test_a_host_stalled_inside_a_fire_holds_it_only_until_the_server_ends_it(
        cluster_dsn: str, hosts: list[ClusterFires], monkeypatch: pytest.MonkeyPatch) -> None:
    stalled = threading.Event()
    real_enqueue = fires_module.enqueue

    def enqueue_then_stall(conn: psycopg.Connection[Any], **kwargs: Any) -> bool:
        made = real_enqueue(conn, **kwargs)
        if kwargs["claimed_by"] == "h0":  # h0 stops between statements (SIGSTOP, swap)
            stalled.set()
            time.sleep(6)
        return made

    monkeypatch.setattr(fires_module, "enqueue", enqueue_then_stall)
    monkeypatch.setattr(fires_module, "STALLED_AFTER", "1s")
    fire_time = db_now(cluster_dsn).replace(microsecond=0)
    outcome: list[BaseException | str | None] = []

    def stalled_host() -> None:
        try:
            outcome.append(hosts[0].fire(Due("schedule:tick", fire_time, EVERY_SECOND, "UTC",
                                             fire_time), "t.json", RAW))
        except psycopg.Error as exc:  # its commit finds its session ended
            outcome.append(exc)

    thread = threading.Thread(target=stalled_host)
    thread.start()
    assert stalled.wait(10)
    started = time.monotonic()
    made = hosts[1].fire(Due("schedule:tick", fire_time, EVERY_SECOND, "UTC", fire_time),
                         "t.json", RAW)
    waited = time.monotonic() - started
    thread.join(20)
    assert made is not None and waited < 5, waited  # not held until h0 woke up
    assert isinstance(outcome[0], psycopg.Error), outcome
    assert [(r[1], r[3]) for r in fire_rows(cluster_dsn, "schedule:tick")] == [("fired", "h1")]
    assert requests_by_name(cluster_dsn) == Counter(["t.json"]) and job_count(cluster_dsn) == 1


# ---- the clock: schedulers of three hosts ------------------------------------------


def cluster_config(tmp_path: Path, **schedule: Any) -> Path:
    return make_root(tmp_path, demo=False, schedules=[
        {"name": "tick", "cron": EVERY_SECOND, "timezone": "UTC", "request": RAW,
         **schedule}]) / "config.yml"


def test_schedulers_of_three_hosts_fire_every_second_once(
        cluster_dsn: str, hosts: list[ClusterFires], tmp_path: Path) -> None:
    config = load_config(cluster_config(tmp_path))
    stop = threading.Event()
    schedulers = [Scheduler(config, Layout(config.root), None, stop, cluster=h)
                  for h in hosts]
    for s in schedulers:
        s.start()
    deadline = time.monotonic() + 20
    while len(fire_rows(cluster_dsn, "schedule:tick")) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for s in schedulers:
        s.stop()
    fired = fired_once(cluster_dsn, "schedule:tick", "tick")
    times = [r[0] for r in fired]
    assert len(times) >= 5
    assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False))
    assert all(r[4] >= r[0] for r in fired), "a fire was made before it was due"
    assert not (config.root / "state" / "scheduler.sqlite").exists()  # nothing local
    body = json.loads(bytes(rows(cluster_dsn, "SELECT body FROM requests WHERE name = %s",
                                 (request_name("tick", times[0]),))[0][0]))
    assert body == scheduled_request(config.schedules[0], times[0])


# ---- catch-up after downtime -------------------------------------------------------


def hourly_half_an_hour_ago(dsn: str) -> tuple[str, datetime]:
    """An hourly cron whose last fire was ~30 minutes ago (never near a boundary while
    the test runs), and that fire."""
    last = (db_now(dsn) - timedelta(minutes=30)).replace(second=0, microsecond=0)
    return f"{last.minute} * * * *", last


def record_fire(dsn: str, job: str, fire_time: datetime, cron: str) -> None:
    rows(dsn, "INSERT INTO schedule_fires (schedule, fire_time, status, host_id, cron, "
              "timezone) VALUES (%s, %s, 'fired', 'h-old', %s, 'UTC') RETURNING 1",
         (job, fire_time, cron))


def tick_together(hosts: list[ClusterFires], job: ClockJob) -> None:
    clocks = [FireClock(h, [job]) for h in hosts]
    barrier = threading.Barrier(len(clocks))

    def tick(i: int) -> None:
        barrier.wait()
        clocks[i].tick()

    together(len(clocks), tick)


def hourly_job(cron: str, grace: int) -> ClockJob:
    return ClockJob("schedule:hourly", cron, "UTC", grace,
                    request=lambda t: (request_name("hourly", t), RAW))


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m.record["message"])), level="WARNING")
    yield seen
    logger.remove(sink)


def test_a_cluster_that_never_fired_a_job_does_not_catch_up(
        cluster_dsn: str, hosts: list[ClusterFires]) -> None:
    cron, _ = hourly_half_an_hour_ago(cluster_dsn)
    tick_together(hosts, hourly_job(cron, 3600))
    assert fire_rows(cluster_dsn, "schedule:hourly") == []


def test_catch_up_within_grace_after_downtime_fires_once_coalesced(
        cluster_dsn: str, hosts: list[ClusterFires]) -> None:
    cron, last = hourly_half_an_hour_ago(cluster_dsn)
    record_fire(cluster_dsn, "schedule:hourly", last - timedelta(hours=5), cron)
    tick_together(hosts, hourly_job(cron, 3600))  # all three hosts come back at once
    caught_up = fire_rows(cluster_dsn, "schedule:hourly")[1:]
    assert [(r[0], r[1]) for r in caught_up] == [(last, "fired")]  # 4 earlier: coalesced
    assert requests_by_name(cluster_dsn) == Counter([request_name("hourly", last)])
    assert job_count(cluster_dsn) == 1


def test_catch_up_past_grace_is_one_missed_fire_logged_once(
        cluster_dsn: str, hosts: list[ClusterFires], warnings: list[str]) -> None:
    cron, last = hourly_half_an_hour_ago(cluster_dsn)
    record_fire(cluster_dsn, "schedule:hourly", last - timedelta(hours=5), cron)
    tick_together(hosts, hourly_job(cron, 60))
    [(fire_time, status, claim, _host, _at, detail)] = fire_rows(cluster_dsn,
                                                                  "schedule:hourly")[1:]
    assert (fire_time, status, claim) == (last, "missed", None)
    assert 1800 <= detail["late_seconds"] < 3600
    assert requests_by_name(cluster_dsn) == Counter() and job_count(cluster_dsn) == 0
    missed = [w for w in warnings if "was missed by" in w]
    assert len(missed) == 1 and "misfire_grace of 60 s" in missed[0], warnings


def test_a_changed_cron_starts_afresh(cluster_dsn: str, hosts: list[ClusterFires]) -> None:
    cron, last = hourly_half_an_hour_ago(cluster_dsn)
    record_fire(cluster_dsn, "schedule:hourly", last - timedelta(hours=5), "0 3 * * *")
    tick_together(hosts, hourly_job(cron, 3600))
    assert len(fire_rows(cluster_dsn, "schedule:hourly")) == 1  # only the old row


# ---- a host with a shifted clock (libfaketime) -------------------------------------


def start_host(config: Path, host_id: str, seconds: float, dsn: str,
               shift: int = 0) -> subprocess.Popen[str]:
    command = [sys.executable, str(HOST_SCRIPT), str(config), host_id, str(seconds)]
    env = {**os.environ, "SCANRELAY_TEST_CLUSTER_DSN": dsn,
           **(faketime_env(shift) if shift else {})}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, stdin=subprocess.DEVNULL)


def host_clocks(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        return dict(json.loads(line))
    except ValueError:
        raise AssertionError(f"the host did not start: {line}{proc.stdout.read()}") from None


def wait_exit(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_a_host_minutes_ahead_neither_fires_early_nor_twice(
        cluster_dsn: str, tmp_path: Path) -> None:
    config = cluster_config(tmp_path)
    ahead = start_host(config, "ahead", 14, cluster_dsn, shift=SHIFT_SECONDS)
    clocks = host_clocks(ahead)
    assert clocks["local"] - clocks["db"] > SHIFT_SECONDS - 10, clocks  # really shifted
    time.sleep(5)  # the shifted host alone: it makes the fires
    others = [start_host(config, f"h{i}", 6, cluster_dsn) for i in range(2)]
    for proc in others:
        host_clocks(proc)
    for proc in [*others, ahead]:
        wait_exit(proc)
    fired = fired_once(cluster_dsn, "schedule:tick", "tick")
    times = [r[0] for r in fired]
    assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False))
    early = [(r[0], r[3], r[4]) for r in fired if r[4] < r[0]]
    assert early == [], f"{len(early)} fired before due, e.g. {early[:2]}"
    by_host = Counter(r[3] for r in fired)
    assert by_host["ahead"] >= 3, by_host  # it fired, alone, on the server's time
    assert len(times) >= 10


# ---- the rerun window ----------------------------------------------------------------


def settle_failed(dsn: str, layout: Layout, name: str, run_id: str,
                  result: dict[str, Any], request: dict[str, Any]) -> None:
    """A request the cluster settled into failed/: its row, files and run folder."""
    layout.failed.mkdir(parents=True, exist_ok=True)
    (layout.failed / name).write_text(json.dumps(request))
    (layout.failed / f"{name}.result.json").write_text(json.dumps({"run_id": run_id,
                                                                   **result}))
    (layout.failed / f"{name}.error.txt").write_text("it failed\n")
    (layout.runs / run_id).mkdir(parents=True)
    (layout.runs / run_id / "request.json").write_text(json.dumps(request))
    rows(dsn, "INSERT INTO requests (claim_id, name, claimed_at, claimed_by, "
              "processing_name, body, run_id, action, status, final_path, finished_at) "
              "VALUES (%s, %s, 0, 'h0', %s, '', %s, 'download', 'failed', %s, 1) RETURNING 1",
         (run_id[-6:], name, f"x+-+{name}", run_id, str(layout.failed / name)))


def test_rerun_window_redrops_each_failed_request_once(
        cluster_dsn: str, hosts: list[ClusterFires], tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    transient = {"attempt": 1, "transient": True, "failed": []}
    settle_failed(cluster_dsn, layout, "a.json", "20260302-010000-download-aaaaaa",
                  transient, RAW)
    settle_failed(cluster_dsn, layout, "b.json", "20260302-010000-download-bbbbbb",
                  {**transient, "attempt": 3}, RAW)  # its last attempt
    settle_failed(cluster_dsn, layout, "c.json", "20260302-010000-download-cccccc",
                  {"attempt": 1, "transient": False, "failed": []}, RAW)  # permanent
    reruns = RerunsConfig(cron="0 1 * * *", max_attempts=3)
    stop = threading.Event()
    windows = [RerunWindow(reruns, layout, h, stop, h.settled) for h in hosts]
    window_time = db_now(cluster_dsn)
    together(3, lambda i: windows[i](window_time))  # overlapping windows
    windows[0](window_time + timedelta(days=1))  # and the next night's
    drops = rows(cluster_dsn, "SELECT kind, source, status, name FROM rerun_drops "
                              "ORDER BY source")
    name = rerun_name("a.json", "20260302-010000-download-aaaaaa", 2)
    assert drops == [("rerun", "20260302-010000-download-aaaaaa", "dropped", name),
                     ("rerun", "20260302-010000-download-bbbbbb", "exhausted", None)]
    [(body,)] = rows(cluster_dsn, "SELECT body FROM requests WHERE name = %s", (name,))
    rerun = json.loads(bytes(body))
    assert rerun["retry_of"] == "20260302-010000-download-aaaaaa" and rerun["attempt"] == 2
    assert job_count(cluster_dsn) == 1
    note = (layout.failed / "b.json.error.txt").read_text()
    assert note.count("Not re-dropped by the rerun window") == 1


def test_rerun_window_fire_is_claimed_once_and_records_what_it_did(
        cluster_dsn: str, hosts: list[ClusterFires], tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    settle_failed(cluster_dsn, layout, "a.json", "20260302-010000-download-aaaaaa",
                  {"attempt": 1, "transient": True, "failed": []}, RAW)
    cron, last = hourly_half_an_hour_ago(cluster_dsn)
    record_fire(cluster_dsn, "reruns", last - timedelta(hours=1), cron)
    reruns = RerunsConfig(cron=cron, max_attempts=3)
    ran: Counter[str] = Counter()

    def job(fires: ClusterFires) -> ClockJob:
        window = RerunWindow(reruns, layout, fires, threading.Event(), fires.settled)

        def then(fire_time: datetime) -> None:
            ran[fires.host_id] += 1
            window(fire_time)
        return ClockJob("reruns", cron, "UTC", 3600, then=then)

    clocks = [FireClock(h, [job(h)]) for h in hosts]
    together(3, lambda i: clocks[i].tick())
    assert sum(ran.values()) == 1
    [(fire_time, status, claim, _host, _at, detail)] = fire_rows(cluster_dsn, "reruns")[1:]
    assert (fire_time, status, claim) == (last, "fired", None)
    assert detail == {"re-dropped": 1}
    assert job_count(cluster_dsn) == 1
