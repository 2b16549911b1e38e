"""1,000 request files moved into the inbox from another folder in a burst (as `mv`
or a script hands over finished files): each is claimed by the event path, not a
rescan (the rescan is practically off here), and ends in done/ or failed/ exactly once."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import DEMO_SCAN_IDS, DaemonProcess, listing, make_root, wait_settled

COUNT = 1000
INVALID_EVERY = 10  # every 10th request is invalid (a non-numeric ID)


CLAIM_WITHIN = 10.0  # seconds from the last move until the last file is claimed


def claim_bound() -> float:
    """``CLAIM_WITHIN`` on a machine with spare CPU; on a shared one whose load per
    CPU is above 4 (other suites running), stretched by that factor: the claims need
    CPU, and a miss of the event path would never be claimed at all (rescan off)."""
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return CLAIM_WITHIN * max(1.0, per_cpu / 4)


def _write_all(outgoing: Path) -> list[str]:
    """Write every request into a folder beside the inbox first, so the burst below is
    nothing but renames."""
    outgoing.mkdir()
    names = []
    for i in range(COUNT):
        name = f"req-{i:04d}.csv"
        body = "scan_id\nnot-a-number\n" if i % INVALID_EVERY == 0 else \
            f"scan_id\n{DEMO_SCAN_IDS[i % len(DEMO_SCAN_IDS)]}\n"
        (outgoing / name).write_text(body)
        names.append(name)
    return names


def _seconds_until_claimed(inbox: Path, timeout: float = 120) -> float:
    """Seconds until nothing is left in the inbox to claim."""
    start = time.monotonic()
    while any(p.is_file() for p in inbox.iterdir()):
        assert time.monotonic() - start < timeout, "not all claimed"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
def test_thousand_requests_each_settle_exactly_once(tmp_path: Path) -> None:
    root = make_root(tmp_path, runs={"max_parallel": 4}, log={"level": "INFO"},
                     intake={"rescan_interval": 3600})
    (root / "inbox").mkdir(exist_ok=True)
    names = _write_all(root / "outgoing")
    with DaemonProcess(root) as daemon:
        bound = claim_bound()
        for name in names:
            os.rename(root / "outgoing" / name, root / "inbox" / name)
        claimed_after = _seconds_until_claimed(root / "inbox")
        print(f"1,000 moved in: last claimed {claimed_after:.2f} s after the last move "
              f"(bound {bound:.1f} s at load average {os.getloadavg()[0]:.1f})")
        assert claimed_after <= bound, f"last claimed {claimed_after:.1f} s after the move"
        results = wait_settled(root, names, timeout=240)
        assert daemon.alive()

    folders = Counter(folder for folder, _ in results.values())
    assert folders == {"done": COUNT - COUNT // INVALID_EVERY, "failed": COUNT // INVALID_EVERY}
    for i, name in enumerate(names):
        folder, result = results[name]
        assert folder == ("failed" if i % INVALID_EVERY == 0 else "done"), name
    # Exactly once: one request file and one result per name, nothing left anywhere.
    for folder in ("done", "failed"):
        placed = [p for p in listing(root / folder) if not p.endswith((".json", ".txt"))]
        assert len(placed) == len(set(placed)) == folders[folder]
        assert not any("-2." in p for p in placed), "a request settled twice"
    assert [p for p in (root / "inbox").rglob("*") if p.is_file()] == []
    assert listing(root / "processing") == []
    # The ledger saw each request once, and each ran (at most) one attempt.
    with sqlite3.connect(root / "state" / "ledger.sqlite") as db:
        rows = db.execute("SELECT name, status, attempts FROM requests").fetchall()
    assert sorted(r[0] for r in rows) == sorted(names)
    assert all(attempts <= 1 for _, _, attempts in rows)
    run_dirs = list((root / "runs").iterdir())
    assert len(run_dirs) == COUNT - COUNT // INVALID_EVERY
    statuses = Counter(json.loads((d / "run.json").read_text())["status"] for d in run_dirs)
    assert statuses == {"done": COUNT - COUNT // INVALID_EVERY}
