"""Exactly once under chaos: 500 scans prod → qa (two reference servers, each with its
own database) with 20 % transient faults of every kind, resets after committed creates,
and the daemon killed with ``kill -9`` three times at random moments. Afterwards the
target holds exactly one scan per source scan, the mapping is complete, and the request
is in ``done/``."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from copy_support import (
    copy_request,
    env_for,
    journal,
    mapping_rows,
    platform_instance,
    ref_server,
    target_scans,
)
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.sandbox import Fault

SCANS = 500
KILLS = 3


def created(run_dir: Path) -> int:
    return sum(key.startswith("copy:created:") for key in journal(run_dir))


def wait_for_run(root: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((root / "runs").glob("*-copy-*"))
        if found and (found[0] / "checkpoint.jsonl").exists():
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the copy run did not start")


def wait_for_created(run_dir: Path, at_least: int, daemon: DaemonProcess,
                     timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while created(run_dir) < at_least:
        assert daemon.alive(), daemon.log_text()[-3000:]
        assert time.monotonic() < deadline, f"fewer than {at_least} scans created in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_500_scans_with_faults_and_three_kills_end_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    with ref_server(tmp_path, "prod") as prod, ref_server(tmp_path, "qa") as qa:
        seeded = prod.seed(scans=SCANS, files_per_scan=2, file_size=(800, 2_500), seed=21)
        store = qa.seed(scans=0).store_ids[1]
        for n, ref in enumerate((prod, qa)):
            ref.faults.timeout_sleep = 1.5  # the client gives up after 1 s
            ref.faults.set(rate=0.2, seed=31 + n)
        qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=10)
        instance = {"timeout_seconds": 1, "retry_attempts": 10, "retry_max_seconds": 60}
        root = make_root(tmp_path, demo=False, log={"level": "INFO"}, instances={
            "prod": platform_instance(prod, "prod", **instance),
            "qa": platform_instance(qa, "qa", **instance)})
        env = env_for(prod=prod, qa=qa)
        started = time.monotonic()

        # Kill at random moments spread over the run: after a random share is created.
        thresholds = sorted(rng.randint(k * SCANS // 4, (k + 1) * SCANS // 4 - 20)
                            for k in range(KILLS))
        kills_at = []
        daemon = DaemonProcess(root, env=env)
        daemon.start()
        drop(root / "inbox", "prod-to-qa.json",
             copy_request("prod", "qa", store, seeded.scan_ids))
        run_dir = wait_for_run(root)
        for threshold in thresholds:
            wait_for_created(run_dir, threshold, daemon)
            time.sleep(rng.uniform(0, 0.3))
            daemon.kill()
            kills_at.append(created(run_dir))
            daemon = DaemonProcess(root, env=env)
            daemon.start()
        try:  # the last daemon (started above) finishes the run
            folder, result = wait_settled(root, ["prod-to-qa.json"], timeout=150)[
                "prod-to-qa.json"]
        finally:
            daemon.__exit__(None, None, None)
        elapsed = time.monotonic() - started
        scans = target_scans(qa)
        committed = qa.created_scan_ids()
        stats = qa.stats.snapshot()
        assert not prod.errors and not qa.errors

    assert (folder, result["status"]) == ("done", "done"), result
    assert result["run_id"] == run_dir.name, "the one run resumed each time"
    assert all(0 < n < SCANS for n in kills_at), kills_at
    run = json.loads((run_dir / "run.json").read_text())
    assert run["attempts"] == KILLS + 1

    # Exactly 500 new target scans, one per source scan, none twice.
    assert len(scans) == SCANS
    markers = Counter(s["marker"] for s in scans)
    assert max(markers.values()) == 1, [m for m, n in markers.items() if n > 1]
    assert set(markers) == {f"prod:{i}:{store}" for i in seeded.scan_ids}
    assert sorted(committed) == sorted(s["id"] for s in scans)  # no create committed twice
    assert {s["store_id"] for s in scans} == {store}

    # A complete mapping that agrees with the target.
    rows = mapping_rows(run_dir)
    assert [int(r["Source_Scan_ID"]) for r in rows] == seeded.scan_ids
    assert {r["status"] for r in rows} == {"ok"}
    by_id = {s["id"]: s for s in scans}
    for row in rows:
        assert by_id[int(row["Target_Scan_ID"])]["marker"] == \
            f"prod:{row['Source_Scan_ID']}:{store}"

    # Counts cover the whole run, across its four attempts.
    assert result["counts"]["files"] == 2 * SCANS
    assert result["counts"]["bytes"] == sum(f.size for f in seeded.all_files())
    assert result["counts"]["reused_steps"] > 0

    # The faults and the recoveries really happened.
    assert stats["create"].get("reset_after_commit", 0) >= 10, stats
    assert result["counts"]["recovered"] >= 10, result["counts"]
    assert {"reset", "timeout", "503", "429"} <= {o for e in stats.values() for o in e}
    with sqlite3.connect(root / "state" / "copies.sqlite") as db:
        (copied,) = db.execute("SELECT count(*) FROM copies WHERE target_scan_id IS NOT "
                               "NULL").fetchone()
    assert copied == SCANS
    assert not (run_dir / ".copy").exists()
    print(f"\n500 scans, {KILLS} kills at {kills_at} created, {elapsed:.1f} s wall, "
          f"{result['counts']}")
