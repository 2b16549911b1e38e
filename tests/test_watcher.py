"""The watcher: events, rescan, polling stability, start-up sweep, supervision."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.config import IntakeConfig
from daemon.intake.watcher import InboxWatcher, Stability


def _collect(paths: queue.Queue[Path], seconds: float) -> list[Path]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            out.append(paths.get(timeout=0.02))
    return out


def test_events_report_close_and_move_only(tmp_path: Path) -> None:
    paths: queue.Queue[Path] = queue.Queue()
    watcher = InboxWatcher(tmp_path, paths, IntakeConfig(rescan_interval=3600))
    watcher.start()
    try:
        with (tmp_path / "slow.csv").open("w") as f:
            f.write("scan_id\n")
            f.flush()
            assert _collect(paths, 0.3) == [], "an open file must not be reported"
        assert _collect(paths, 0.3) == [tmp_path / "slow.csv"]
        (tmp_path / ".tmp").write_text("x")
        _collect(paths, 0.2)
        os.rename(tmp_path / ".tmp", tmp_path / "moved.csv")
        assert tmp_path / "moved.csv" in _collect(paths, 0.3)
    finally:
        watcher.stop()


def test_dead_observer_is_restarted_and_sweeps(tmp_path: Path) -> None:
    paths: queue.Queue[Path] = queue.Queue()
    watcher = InboxWatcher(tmp_path, paths, IntakeConfig(rescan_interval=3600))
    watcher.start()
    try:
        assert watcher._observer is not None
        watcher._observer.stop()  # its thread dies, as after an internal error
        watcher._observer.join()
        (tmp_path / "missed.csv").write_text("scan_id\n1\n")  # no observer sees this
        assert not watcher.alive()
        watcher.tick()
        assert watcher.alive() and watcher.restarts == 1
        assert tmp_path / "missed.csv" in _collect(paths, 0.2), "the restart sweeps"
        drop(tmp_path, "after.csv", "scan_id\n1\n")
        assert tmp_path / "after.csv" in _collect(paths, 0.5), "events flow again"
    finally:
        watcher.stop()


def test_stability_needs_two_equal_looks_and_settling(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("scan_id\n")
    listing = lambda: [(path, path.stat())]  # noqa: E731
    stability = Stability(settle_seconds=0.3)
    assert stability.ready(listing()) == []  # first look
    assert stability.ready(listing()) == []  # unchanged, but too fresh
    time.sleep(0.35)
    assert stability.ready(listing()) == [path]
    with path.open("a") as f:
        f.write("1\n")
    assert stability.ready(listing()) == []  # changed: starts over
    assert stability.ready(listing()) == []


@pytest.mark.slow
def test_polling_mode_waits_for_a_growing_file(tmp_path: Path) -> None:
    root = make_root(tmp_path, intake={"mode": "polling", "poll_interval": 0.1,
                                       "settle_seconds": 0.5}, log={"level": "INFO"})
    with DaemonProcess(root) as daemon:
        target = root / "inbox" / "grow.csv"
        with target.open("w") as f:  # a writer on a share: appends, pauses, appends
            f.write("scan_id\n")
            for scan_id in range(1001, 1011):
                f.write(f"{scan_id}\n")
                f.flush()
                time.sleep(0.2)
                assert target.exists(), "taken while still growing"
        folder, result = wait_settled(root, ["grow.csv"], timeout=20)["grow.csv"]
        assert folder == "done" and result["counts"]["scans"] == 10
        assert "polling mode" in daemon.log_text()


@pytest.mark.slow
def test_files_present_at_start_and_missed_events_are_taken(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"level": "INFO"})
    drop(root / "inbox", "early.csv", "scan_id\n1001\n")
    outside = root / "outside.csv"
    outside.write_text("scan_id\n1002\n")
    with DaemonProcess(root):
        assert wait_settled(root, ["early.csv"], timeout=20)["early.csv"][0] == "done"
        os.link(outside, root / "inbox" / "linked.csv")  # IN_CREATE only: the rescan finds it
        assert wait_settled(root, ["linked.csv"], timeout=20)["linked.csv"][0] == "done"
