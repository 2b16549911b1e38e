"""Helpers for the web page tests: a daemon root with the page on, a real Chromium
driven by Playwright, a ledger seeded with many runs, and timing summaries.

- ``web_root(tmp_path, sections, **web)``: ``make_root`` with ``web.listen`` on a free
  loopback port (plus any ``web`` keys and other config sections); returns
  ``(root, base_url)``.
- ``browser()``: a context manager yielding a Playwright ``Browser`` on Debian's
  ``/usr/bin/chromium`` (never a downloaded one). Without Chromium the test is skipped,
  except under ``CI=true``, where that is an error.
- ``seed_ledger(root, n)``: ``n`` finished runs in ``state/ledger.sqlite``, as the
  daemon records them (actions, statuses and labels varied so filters have work).
- ``p95(samples)``: the 95th percentile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_root

from daemon.store.sqlite_requests import LEDGER_FILE, SCHEMA

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ACTIONS = ("download", "copy", "analyze")
STATUSES = ("done", "done", "done", "partial", "failed", "invalid")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_root(tmp_path: Path, sections: dict[str, Any] | None = None,
             **web: Any) -> tuple[Path, str]:
    """A demo root with the page on a free loopback port; ``web`` keys and other config
    ``sections`` merged in."""
    port = free_port()
    root = make_root(tmp_path, **(sections or {}),
                     web={"listen": f"127.0.0.1:{port}", **web})
    return root, f"http://127.0.0.1:{port}"


def require_chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise RuntimeError(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def seed_ledger(root: Path, n: int) -> None:
    """``n`` settled runs, oldest first, one transaction (the daemon adds its indexes
    at start as it would on an old ledger)."""
    path = root / "state" / LEDGER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    start = time.time() - n * 60
    rows = []
    for i in range(n):
        action, status = seed_action(i), seed_status(i)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start + i * 60))
        hex6 = f"{i:06x}"
        counts = {"items": 10, "failed": 0 if status == "done" else 3}
        rows.append((f"{stamp}-{hex6}", f"seed-{i:05d}.csv", None, start + i * 60,
                     f"{stamp}-{action}-{hex6}", action, seed_label(i), status,
                     start + i * 60 + 5, str(root / "done" / f"seed-{i:05d}.csv"), None,
                     json.dumps(counts), 1))
    with db:
        db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.close()


def seed_action(i: int) -> str:
    return ACTIONS[i % len(ACTIONS)]


def seed_status(i: int) -> str:
    return STATUSES[i % len(STATUSES)]


def seed_label(i: int) -> str:
    return f"shelf audit {i % 97}"


def load_slack() -> float:
    """How much slower than quiet this machine is now (1.0 when the 1-minute load per
    core is at most 1): timing budgets are scaled by it, so a shared, loaded machine
    does not fail a page that is fast; ``bench/web_pages.py`` gives the quiet figure."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


def wait_for(check: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)
