"""Real programs' saves into the inbox (``intake_writers``), against the real daemon (a
subprocess, real watchdog observer), in events mode and in polling mode where the
protocol applies. Each final request runs exactly once, with the content of the last
save; no piece of a save (temporary, owner or lock file, backup, probe, the original
during a save) is claimed or refused; the writers' own renames never fail.

Events mode runs with the rescan practically off, so every pickup here is the event
path, not the safety net.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonProcess, listing, make_root, wait_settled
from intake_writers import MODES, WRITERS, Expect, Place

QUIET = 1.0  # intake.quiet_seconds: the shipped default
UNKNOWN_AFTER = 4.0  # intake.unknown_after_seconds: a piece would be refused after this


class Daemon:
    def __init__(self, root: Path, process: DaemonProcess) -> None:
        self.root = root
        self.process = process
        self.expected: list[Expect] = []

    def place(self, stem: str) -> Place:
        elsewhere = self.root / "home"
        elsewhere.mkdir(exist_ok=True)
        return Place(self.root / "inbox", elsewhere, stem)


def _daemon(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[Daemon]:
    root = make_root(tmp_path_factory.mktemp(mode), log={"level": "INFO"},
                     intake={**MODES[mode], "quiet_seconds": QUIET,
                             "unknown_after_seconds": UNKNOWN_AFTER})
    with DaemonProcess(root) as process:
        yield Daemon(root, process)


@pytest.fixture(scope="module")
def events_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from _daemon(tmp_path_factory, "events")


@pytest.fixture(scope="module")
def polling_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from _daemon(tmp_path_factory, "polling")


def _replay(daemon: Daemon, writer: str) -> None:
    expect = WRITERS[writer][0](daemon.place(writer.replace("_", "-")))
    daemon.expected.append(expect)
    folder, result = wait_settled(daemon.root, [expect.name], timeout=40)[expect.name]
    assert (folder, result["status"]) == ("done", "done"), result
    assert result["counts"]["scans"] == expect.scans, "not the content of the last save"
    assert result["profile"] == expect.profile  # None: the inbox root (defaults.profile)


def _nothing_else_taken(daemon: Daemon) -> None:
    """After every replay, and once a piece would have been refused: the ledger holds
    exactly the final requests, each once, and nothing else lies anywhere."""
    time.sleep(UNKNOWN_AFTER + 1.5)
    with sqlite3.connect(daemon.root / "state" / "ledger.sqlite") as db:
        names = sorted(row[0] for row in db.execute("SELECT name FROM requests"))
    assert names == sorted(e.name for e in daemon.expected)
    assert listing(daemon.root / "failed") == []
    placed = [p for p in listing(daemon.root / "done") if not p.endswith(".result.json")]
    assert placed == sorted(e.name for e in daemon.expected)
    left = [p for p in listing(daemon.root / "inbox") if "/" in p or "." in p]
    assert left == [], "pieces of saves left behind"
    assert listing(daemon.root / "processing") == []
    assert daemon.process.alive()


@pytest.mark.slow
@pytest.mark.parametrize("writer", list(WRITERS))
def test_events_mode(events_daemon: Daemon, writer: str) -> None:
    _replay(events_daemon, writer)


@pytest.mark.slow
def test_events_mode_took_nothing_else(events_daemon: Daemon) -> None:
    assert len(events_daemon.expected) == len(WRITERS)
    _nothing_else_taken(events_daemon)


POLLING = [name for name, (_, polling) in WRITERS.items() if polling]


@pytest.mark.slow
@pytest.mark.parametrize("writer", POLLING)
def test_polling_mode(polling_daemon: Daemon, writer: str) -> None:
    _replay(polling_daemon, writer)


@pytest.mark.slow
def test_polling_mode_took_nothing_else(polling_daemon: Daemon) -> None:
    assert len(polling_daemon.expected) == len(POLLING)
    _nothing_else_taken(polling_daemon)
