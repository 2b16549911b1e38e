"""Schedules through the real daemon: each fire drops exactly one request, which runs
like a user's drop; a fire missed while the daemon was down is caught up once at start
within the misfire grace (coalesced, never twice), and skipped and logged beyond it.

Crons here have six fields (seconds first), so fires come within seconds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonProcess, make_root, wait_settled

FOLDERS = ("inbox", "processing", "done", "failed")


def schedule(name: str, cron: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cron": cron, "timezone": "UTC",
            "request": {"action": "download", "source": "demo-source", "scan_ids": [1001]},
            **extra}


def root_with(tmp_path: Path, *schedules: dict[str, Any]) -> Path:
    return make_root(tmp_path, schedules=list(schedules), log={"level": "INFO"})


def requests_of(root: Path, name: str) -> dict[datetime, list[str]]:
    """Every request file schedule ``name`` wrote, wherever it is now (inbox, processing,
    done, failed), by the fire time its label names."""
    found: dict[datetime, list[str]] = {}
    for folder in FOLDERS:
        for path in (root / folder).glob(f"*schedule-{name}-*.json"):
            if path.name.startswith(".") or ".json." in path.name:
                continue  # temp names and sidecars
            label = json.loads(path.read_text(encoding="utf-8"))["label"]
            assert label.startswith(f"schedule {name} "), label
            fire = datetime.fromisoformat(label.rsplit(" ", 1)[1])
            found.setdefault(fire, []).append(path.name.rsplit("+", 1)[-1])
    return found


def cli_json(root: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "daemon", *args, "--json", "-c",
                          str(root / "config.yml")], cwd=root, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, check=True)
    return json.loads(out.stdout)


def daily_at(moment: datetime) -> str:
    """A six-field cron firing once a day, at ``moment`` (UTC)."""
    return f"{moment.second} {moment.minute} {moment.hour} * * *"


def soon(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def start_and_stop_before(root: Path, fire: datetime) -> None:
    """Run the daemon once (it saves the job's next fire), stopped before ``fire``."""
    with DaemonProcess(root) as daemon:
        daemon.wait_log(f"next at {fire.isoformat()}")
    assert datetime.now(UTC) < fire, "the daemon took too long to start and stop"


def every_two_seconds(fires: int) -> str:
    """A cron that fires ``fires`` times, every 2 s, from 10 s from now (the daemon has
    started by then), then never again today: the test reads the schedule's last fire
    once all have run."""
    start = soon(10)
    if start.second + 2 * fires > 59:  # keep them in one minute: wait for the next
        sleep_until(start.replace(second=0) + timedelta(minutes=1) - timedelta(seconds=10))
        start = soon(10)
    first = start.second + start.second % 2
    seconds = ",".join(str(first + 2 * n) for n in range(fires))
    return f"{seconds} {start.minute} {start.hour} * * *"


@pytest.mark.slow
def test_each_fire_drops_exactly_one_request_that_runs_like_a_drop(tmp_path: Path) -> None:
    root = root_with(tmp_path, schedule("tick", every_two_seconds(4)))
    with DaemonProcess(root):
        deadline = time.monotonic() + 30
        while len(fired := requests_of(root, "tick")) < 4:
            assert time.monotonic() < deadline, f"four fires within 30 s: {fired}"
            time.sleep(0.1)
        names = [n for ns in fired.values() for n in ns]
        settled = wait_settled(root, names, timeout=20)
        time.sleep(2.5)  # no fifth
        assert requests_of(root, "tick") == fired
    times = sorted(fired)
    assert len(times) == 4, fired
    assert all(len(ns) == 1 for ns in fired.values()), fired  # one request per fire
    assert all(t.second % 2 == 0 for t in times)
    assert all(b - a == timedelta(seconds=2) for a, b in zip(times, times[1:], strict=False))
    for name, (folder, result) in settled.items():
        assert folder == "done" and result["status"] == "done", (name, result)
        assert result["label"].startswith("schedule tick ")
    [row] = cli_json(root, "schedules")
    last = times[-1]
    assert row["job"] == "schedule:tick" and row["last_fire"] == last.isoformat()
    assert row["last_request"] == f"schedule-tick-{last:%Y%m%d-%H%M%S}.json"
    assert row["outcome"].startswith("done (")


@pytest.mark.slow
def test_fire_missed_while_down_runs_once_at_start_within_grace(tmp_path: Path) -> None:
    fire = soon(6)
    root = root_with(tmp_path, schedule("once", daily_at(fire), misfire_grace=60))
    start_and_stop_before(root, fire)
    sleep_until(fire + timedelta(seconds=2))
    with DaemonProcess(root) as daemon:
        daemon.wait_log("1 fire(s) missed while the daemon was down")
        name = f"schedule-once-{fire:%Y%m%d-%H%M%S}.json"
        folder, result = wait_settled(root, [name], timeout=20)[name]
        log = daemon.log_text()
    assert folder == "done" and result["label"] == f"schedule once {fire.isoformat()}"
    assert f"the last at {fire.isoformat()}" in log and "it runs once now" in log
    # Restarted again (and again): the fire is not repeated.
    for _ in range(2):
        with DaemonProcess(root):
            time.sleep(1.0)
    assert requests_of(root, "once") == {fire: [name]}


@pytest.mark.slow
def test_fire_missed_beyond_grace_is_skipped_and_logged(tmp_path: Path) -> None:
    fire = soon(6)
    root = root_with(tmp_path, schedule("late", daily_at(fire), misfire_grace=1))
    start_and_stop_before(root, fire)
    sleep_until(fire + timedelta(seconds=3))
    with DaemonProcess(root) as daemon:
        daemon.wait_log("skipped")
        time.sleep(1.0)
        log = daemon.log_text()
    assert requests_of(root, "late") == {}
    assert re.search(rf"schedule:late: the fire of {re.escape(fire.isoformat())} was missed "
                     r"by \d+ s \(the daemon was down\), more than its misfire_grace of 1 s: "
                     "skipped", log), log
    [row] = cli_json(root, "schedules")
    assert row["last_fire"] == fire.isoformat() and row["outcome"].startswith("missed")
    assert row["next_fire"] == (fire + timedelta(days=1)).isoformat() and not row["overdue"]
    status = cli_json(root, "status")
    assert status["daemon"]["up"] is False
    assert status["schedules"] == [{"job": "schedule:late", "next_fire": row["next_fire"],
                                    "overdue": False}]


@pytest.mark.slow
def test_missed_fires_coalesce_into_one_catch_up(tmp_path: Path) -> None:
    root = root_with(tmp_path, schedule("tick", "*/2 * * * * *", misfire_grace=60))
    with DaemonProcess(root):
        deadline = time.monotonic() + 10
        while not requests_of(root, "tick") and time.monotonic() < deadline:
            time.sleep(0.05)
    before = max(requests_of(root, "tick"))
    time.sleep(5.0)  # two or three fires pass while the daemon is down
    with DaemonProcess(root) as daemon:
        daemon.wait_log("fire(s) missed while the daemon was down")
        match = re.search(r"schedule:tick: (\d+) fire\(s\) missed while the daemon was down, "
                          r"the last at (\S+) ", daemon.log_text())
        assert match, daemon.log_text()
        missed, caught_up = int(match.group(1)), datetime.fromisoformat(match.group(2))
        name = f"schedule-tick-{caught_up:%Y%m%d-%H%M%S}.json"
        wait_settled(root, [name], timeout=20)
    fired = requests_of(root, "tick")
    assert missed >= 2
    # The catch-up is the last missed fire, once; the fires before it were coalesced away.
    assert fired[caught_up] == [name]
    assert [t for t in fired if before < t < caught_up] == []
