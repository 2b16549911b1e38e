"""Exactly once under chaos: 500 scans prod → qa (two reference servers, each with its
own database) with 30 % transient faults of every kind, resets after committed creates,
and the daemon killed with ``kill -9`` three times at random moments. Afterwards the
target holds exactly one scan per source scan, the mapping is complete, and the request
is in ``done/``: against a target that keeps unknown payload keys (the marker is a
second key) and against one that drops them (the upload IDs alone carry exactly once;
the issue measured 323 target scans for 300 sources there before)."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

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

from daemon.sandbox import Fault, RefServer

SCANS = 500
KILLS = 3
FAULT_RATE = 0.3


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


def sources_of(qa: RefServer, scans: list[dict[str, Any]]) -> Counter[int | None]:
    """How many target scans each source scan has, by the truth its files carry (the
    target recognises the bytes: this needs no marker)."""
    return Counter(qa.recognition(s["id"]).source_scan_id for s in scans)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 2-4 min each; more on a loaded machine
@pytest.mark.parametrize("keep_unknown_keys", [True, False], ids=["keeps-marker", "drops-marker"])
def test_500_scans_with_faults_and_three_kills_end_exactly_once(
        tmp_path: Path, keep_unknown_keys: bool) -> None:
    rng = random.Random(20261122)
    with ref_server(tmp_path, "prod") as prod, \
            ref_server(tmp_path, "qa", keep_unknown_keys=keep_unknown_keys) as qa:
        seeded = prod.seed(scans=SCANS, files_per_scan=2, file_size=(800, 2_500), seed=21)
        store = qa.seed(scans=0).store_ids[1]
        for n, ref in enumerate((prod, qa)):
            ref.faults.timeout_sleep = 1.5  # the client gives up after 1 s
            ref.faults.set(rate=FAULT_RATE, seed=31 + n)
        qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=10)
        # Many connections: a fault costs its call a timeout or a backoff, not the run.
        # Patience bounded by time (no try bound): at 30 % a download (metadata + bytes)
        # fails half its tries, so a bound of 10 tries lost about one file in a thousand.
        instance = {"timeout_seconds": 1, "retry_max_seconds": 60, "max_connections": 16}
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
        qa.process_now()
        per_source = sources_of(qa, scans)
        qa_truth = {s["id"]: qa.recognition(s["id"]).source_scan_id for s in scans}
        assert not prod.errors and not qa.errors

    assert (folder, result["status"]) == ("done", "done"), result
    assert result["run_id"] == run_dir.name, "the one run resumed each time"
    assert all(0 < n < SCANS for n in kills_at), kills_at
    run = json.loads((run_dir / "run.json").read_text())
    assert run["attempts"] == KILLS + 1

    # Exactly 500 new target scans, one per source scan, none twice.
    assert len(scans) == SCANS
    twice = [source for source, n in per_source.items() if n > 1]
    assert not twice, f"source scans copied more than once: {twice}"
    assert set(per_source) == set(seeded.scan_ids)
    assert sorted(committed) == sorted(s["id"] for s in scans)  # no create committed twice
    assert {s["store_id"] for s in scans} == {store}
    markers = {s["marker"] for s in scans}
    if keep_unknown_keys:
        assert markers == {f"prod:{i}:{store}" for i in seeded.scan_ids}
    else:
        assert markers == {None}, "the target was to drop the marker"

    # A complete mapping that agrees with the target.
    rows = mapping_rows(run_dir)
    # Each source once (a scan that took a last pass is listed after the others).
    assert sorted(int(r["Source_Scan_ID"]) for r in rows) == sorted(seeded.scan_ids)
    assert {r["status"] for r in rows} == {"ok"}
    target_of = {int(r["Target_Scan_ID"]): int(r["Source_Scan_ID"]) for r in rows}
    assert len(target_of) == SCANS
    for target_id, source_id in target_of.items():
        assert qa_truth[target_id] == source_id

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
    # The marker was read back after the first create: kept, or dropped and recorded so.
    with sqlite3.connect(root / "state" / "copies.sqlite") as db:
        kept = db.execute("SELECT kept FROM target_markers WHERE target = 'qa'").fetchall()
    assert kept == [(int(keep_unknown_keys),)]
    assert not (run_dir / ".copy").exists()
    print(f"\ntarget {'keeps' if keep_unknown_keys else 'drops'} unknown keys: {SCANS} scans, "
          f"{len(scans)} target scans, {KILLS} kills at {kills_at} created, "
          f"{elapsed:.1f} s wall, {result['counts']}")
