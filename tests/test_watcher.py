"""The watcher: events, rescan, polling stability, start-up sweep, supervision."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.config import IntakeConfig, load_config
from daemon.intake.gate import Gate
from daemon.intake.watcher import InboxWatcher, Stability
from daemon.status import collect


def _collect(paths: queue.Queue[Path], seconds: float,
             watcher: InboxWatcher | None = None) -> list[Path]:
    """What the watcher reports within ``seconds``, ticking it as the main loop does."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        if watcher is not None:
            watcher.tick()
        with contextlib.suppress(queue.Empty):
            out.append(paths.get(timeout=0.02))
    return out


@contextlib.contextmanager
def watching(inbox: Path, **intake: Any) -> Iterator[tuple[InboxWatcher, queue.Queue[Path]]]:
    paths: queue.Queue[Path] = queue.Queue()
    watcher = InboxWatcher(inbox, paths, IntakeConfig(rescan_interval=3600, **intake))
    watcher.start()
    try:
        yield watcher, paths
    finally:
        watcher.stop()


def test_without_quiet_period_a_close_after_write_is_reported_at_once(tmp_path: Path) -> None:
    with watching(tmp_path, quiet_seconds=0) as (_, paths):
        with (tmp_path / "slow.csv").open("w") as f:
            f.write("scan_id\n")
            f.flush()
            assert _collect(paths, 0.3) == [], "an open file must not be reported"
        assert _collect(paths, 0.3) == [tmp_path / "slow.csv"]


def test_a_file_written_in_place_is_reported_once_quiet(tmp_path: Path) -> None:
    with watching(tmp_path, quiet_seconds=0.5) as (watcher, paths):
        target = tmp_path / "two-step.csv"
        target.write_text("scan_id\n")  # `>`
        assert _collect(paths, 0.3, watcher) == [], "taken before its quiet period"
        with target.open("a") as f:  # `>>` within the quiet period: starts it over
            f.write("1001\n")
        assert _collect(paths, 0.3, watcher) == [], "the append did not restart the wait"
        closed = time.monotonic()
        assert _collect(paths, 0.6, watcher) == [target]
        assert watcher.gate.next_due_in() is None
        assert time.monotonic() - closed >= 0.45


def test_a_reader_during_the_quiet_period_does_not_make_it_a_request_twice(
        tmp_path: Path) -> None:
    with watching(tmp_path, quiet_seconds=0.3) as (watcher, paths):
        target = tmp_path / "read.csv"
        target.write_text("scan_id\n1\n")
        target.read_text()  # an indexer or a preview reads it
        assert _collect(paths, 1.0, watcher) == [target]


def test_moves_in_are_reported_at_once_from_anywhere(tmp_path: Path) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "home"
    (inbox / "profile-a").mkdir(parents=True)
    (inbox / "profile-b").mkdir()
    elsewhere.mkdir()
    with watching(inbox, quiet_seconds=5) as (_, paths):  # no tick: events alone
        (elsewhere / "ids.csv").write_text("scan_id\n1\n")
        os.rename(elsewhere / "ids.csv", inbox / "ids.csv")  # mv ~/ids.csv inbox/
        assert _collect(paths, 0.3) == [inbox / "ids.csv"]
        (inbox / ".tmp").write_text("x")
        _collect(paths, 0.1)
        os.rename(inbox / ".tmp", inbox / "renamed.csv")
        assert _collect(paths, 0.3) == [inbox / "renamed.csv"]
        (inbox / "profile-a" / "p.csv").write_text("scan_id\n1\n")
        _collect(paths, 0.1)
        os.rename(inbox / "profile-a" / "p.csv", inbox / "profile-b" / "p.csv")
        assert _collect(paths, 0.3) == [inbox / "profile-b" / "p.csv"]


def test_a_name_that_cannot_be_a_request_waits_until_still(tmp_path: Path) -> None:
    with watching(tmp_path, quiet_seconds=0.1, unknown_after_seconds=0.8) as (watcher, paths):
        temp = tmp_path / "3A5C7E91"  # Excel's temporary, written in place
        temp.write_bytes(b"PK\x03\x04 workbook")
        assert _collect(paths, 0.5, watcher) == []
        os.rename(temp, tmp_path / "book.xlsx")  # Excel's rename over the workbook
        assert _collect(paths, 0.2, watcher) == [tmp_path / "book.xlsx"]
        assert _collect(paths, 0.8, watcher) == [], "the temporary is gone: nothing to refuse"
        (tmp_path / "notes.txt").write_text("scan_id\n1\n")  # a real stray file
        assert _collect(paths, 0.5, watcher) == []
        assert _collect(paths, 0.7, watcher) == [tmp_path / "notes.txt"]


def test_a_hard_link_into_the_inbox_is_taken_after_the_quiet_period(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "outside.csv").write_text("scan_id\n1\n")
    with watching(inbox, quiet_seconds=0.3) as (watcher, paths):
        os.link(tmp_path / "outside.csv", inbox / "linked.csv")  # IN_CREATE, nothing else
        assert _collect(paths, 1.0, watcher) == [inbox / "linked.csv"]


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


def test_stability_refuses_other_names_only_once_still_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "3A5C7E91"
    path.write_text("x")
    listing = lambda: [(path, path.stat())]  # noqa: E731
    stability = Stability(settle_seconds=0.1, unknown_after=0.6)
    assert stability.ready(listing()) == []
    time.sleep(0.2)
    assert stability.ready(listing()) == [], "settled, but not still for unknown_after"
    time.sleep(0.5)
    assert stability.ready(listing()) == [path]


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
        os.link(outside, root / "inbox" / "linked.csv")  # IN_CREATE only: taken once quiet
        assert wait_settled(root, ["linked.csv"], timeout=20)["linked.csv"][0] == "done"


@pytest.mark.slow
def test_status_never_shows_a_request_waiting_longer_than_the_quiet_period(
        tmp_path: Path) -> None:
    """An idle daemon: a file moved in with a day-old mtime, one written in place, one
    that cannot be a request. ``scanrelay status`` counts only the requests as waiting,
    each for no longer than the quiet period (plus slack for a loaded machine)."""
    quiet = 1.0
    root = make_root(tmp_path, intake={"quiet_seconds": quiet, "rescan_interval": 3600,
                                       "unknown_after_seconds": 30})
    config = load_config(root / "config.yml")
    outside = root / "home" / "old.csv"
    outside.parent.mkdir()
    outside.write_text("scan_id\n1001\n")
    day_ago = time.time() - 86400
    os.utime(outside, (day_ago, day_ago))
    with DaemonProcess(root):
        (root / "inbox" / "notes.txt").write_text("not a request")
        os.rename(outside, root / "inbox" / "old.csv")
        (root / "inbox" / "written.csv").write_text("scan_id\n1002\n")
        ages, others = [], set()
        deadline = time.monotonic() + 3 * quiet
        while time.monotonic() < deadline:
            inbox = collect(config)["inbox"]
            others.add(inbox["not_requests"])
            if inbox["waiting"]:
                ages.append(inbox["oldest_age_seconds"])
            time.sleep(0.05)
        assert max(ages, default=0.0) <= quiet + 0.7, ages
        assert collect(config)["inbox"]["waiting"] == 0
        assert others == {1}, "notes.txt is not a waiting request, but is shown apart"
        wait_settled(root, ["old.csv", "written.csv"], timeout=20)


def test_gate_holds_open_files_and_restarts_the_quiet_period(tmp_path: Path) -> None:
    gate = Gate(IntakeConfig(quiet_seconds=0.2, unknown_after_seconds=0.5))
    path = tmp_path / "a.csv"
    gate.created(path)
    gate.opened(path, written=True)
    time.sleep(0.3)
    assert gate.due() == [] and gate.tracked(path), "open: never due, however long"
    gate.opened(path, written=False)  # a reader opens it too ...
    gate.closed(path, written=False)  # ... and closes: the writer still has it open
    time.sleep(0.3)
    assert gate.due() == []
    assert gate.closed(path, written=True) is False  # due after the quiet period
    assert gate.due() == []
    time.sleep(0.25)
    assert [p for p, _ in gate.due()] == [path]
    assert not gate.tracked(path) and gate.next_due_in() is None


def test_gate_without_quiet_period_takes_a_close_at_once_but_not_other_names(
        tmp_path: Path) -> None:
    gate = Gate(IntakeConfig(quiet_seconds=0, unknown_after_seconds=0.3))
    gate.opened(tmp_path / "a.csv", written=True)
    assert gate.closed(tmp_path / "a.csv", written=True) is True
    gate.opened(tmp_path / "4913", written=True)
    assert gate.closed(tmp_path / "4913", written=True) is False
    gate.gone(tmp_path / "4913")  # vim deletes its probe at once
    assert gate.moved_in(tmp_path / "b.xlsx") is True
    assert gate.moved_in(tmp_path / "3A5C7E91") is False
    time.sleep(0.35)
    assert [p for p, _ in gate.due()] == [tmp_path / "3A5C7E91"]
