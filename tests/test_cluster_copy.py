"""Exactly-once copies across hosts (issue 15, tests 4 and 5, and the post-run
duplicate check): real daemon processes sharing one root and one PostgreSQL
(``cluster_support.ClusterRoot``), copying between two reference servers (prod → qa).

The counting follows ``test_copy_chaos``: target scans on qa by the truth their files
carry (``recognition``, no marker needed), creates committed on qa, the mapping, and
the cluster's own tables (batches, jobs, the copy ledger)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ClusterRoot, live_leases
from copy_support import copy_request, env_for, mapping_rows, platform_instance, ref_server
from copy_support import target_scans as qa_scans
from helpers import drop, wait_settled

from daemon.cluster.app import TASK_BATCH, TASK_PLAN, TASK_SETTLE
from daemon.sandbox import Fault, RefServer

STAGE_TASKS = [TASK_PLAN, TASK_BATCH, TASK_SETTLE]
NAME = "prod-to-qa.json"


@contextmanager
def two_platforms(tmp_path: Path, scans: int, seed: int = 21, keep_unknown_keys: bool = True
                  ) -> Iterator[tuple[RefServer, RefServer, list[int], int]]:
    """prod seeded with ``scans`` scans, an empty qa: (prod, qa, scan IDs, qa store)."""
    with ref_server(tmp_path, "prod") as prod, \
            ref_server(tmp_path, "qa", keep_unknown_keys=keep_unknown_keys) as qa:
        seeded = prod.seed(scans=scans, files_per_scan=2, file_size=(800, 2_500), seed=seed)
        store = qa.seed(scans=0).store_ids[1]
        yield prod, qa, list(seeded.scan_ids), store


def cluster_of(tmp_path: Path, prod: RefServer, qa: RefServer, *, cluster: dict[str, Any],
               **instance: Any) -> ClusterRoot:
    env = env_for(prod=prod, qa=qa)
    return ClusterRoot(tmp_path, cluster=cluster,
                       env={h: env for h in ("host-1", "host-2", "host-3")},
                       log={"level": "INFO"},
                       instances={"prod": platform_instance(prod, "prod", **instance),
                                  "qa": platform_instance(qa, "qa", **instance)})


def per_source(qa: RefServer) -> Counter[int | None]:
    """Target scans on qa per source scan, by the truth their files carry."""
    qa.process_now()
    return Counter(qa.recognition(s["id"]).source_scan_id for s in qa_scans(qa))


def recorded(cluster: ClusterRoot) -> int:
    """Source scans the copy ledger holds a copy of (server side: hosts may be dead)."""
    return cluster.query("SELECT count(DISTINCT source_scan_id) FROM copies"
                         " WHERE target_scan_id IS NOT NULL")[0][0]


def wait_for(condition: Callable[[], bool], timeout: float, cluster: ClusterRoot,
             what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs(tail=5000)}")
        time.sleep(0.1)


def open_stage_jobs(cluster: ClusterRoot) -> list[tuple[Any, ...]]:
    """Plan, batch and settle jobs still ``todo`` or ``doing``."""
    return cluster.query("SELECT task_name, status::text, count(*) FROM procrastinate_jobs"
                         " WHERE task_name = ANY(%s) AND status IN ('todo', 'doing')"
                         " GROUP BY 1, 2", (STAGE_TASKS,))


def assert_exactly_once(cluster: ClusterRoot, qa: RefServer, ids: list[int], store: int,
                        result: dict[str, Any], markers_kept: bool = True) -> None:
    """One target scan per source scan on qa, the mapping complete and true, the ledger
    and the run's own duplicate check agreeing."""
    counts = per_source(qa)
    scans = qa_scans(qa)
    twice = sorted(s for s, n in counts.items() if n > 1)
    assert not twice, f"source scans copied more than once: {twice}"
    assert set(counts) == set(ids) and len(scans) == len(ids)
    assert sorted(qa.created_scan_ids()) == sorted(s["id"] for s in scans), \
        "a create committed twice"
    assert {s["store_id"] for s in scans} == {store}
    markers = {s["marker"] for s in scans}
    assert markers == ({f"prod:{i}:{store}" for i in ids} if markers_kept else {None})
    rows = mapping_rows(cluster.root / result["run_dir"])
    assert sorted(int(r["Source_Scan_ID"]) for r in rows) == sorted(ids)
    assert {r["status"] for r in rows} == {"ok"}
    truth = {s["id"]: qa.recognition(s["id"]).source_scan_id for s in scans}
    assert {int(r["Target_Scan_ID"]): int(r["Source_Scan_ID"]) for r in rows} == truth
    assert result["duplicates"] == [], "the post-run check found a duplicate"
    run = json.loads((cluster.root / result["run_dir"] / "run.json").read_text())
    assert run["duplicates"] == []
    ledger = cluster.query("SELECT source_scan_id, count(*) FROM copy_creates"
                           " GROUP BY source_scan_id")
    assert sorted(ledger) == [(i, 1) for i in sorted(ids)]


def assert_settled_once(cluster: ClusterRoot, result: dict[str, Any]) -> None:
    """The request done once: its row, one file in done/, every batch done, no stage
    job left to run."""
    assert cluster.query("SELECT name, status FROM requests") == [(NAME, "done")]
    assert sorted(p.name for p in (cluster.root / "done").iterdir()) == \
        [NAME, f"{NAME}.result.json"]
    assert list((cluster.root / "failed").iterdir()) == []
    assert list((cluster.root / "processing").iterdir()) == []
    statuses = cluster.query("SELECT DISTINCT status FROM batches")
    assert statuses == [("done",)], statuses
    assert open_stage_jobs(cluster) == []
    assert result["status"] == "done"


SCANS = 500
KILLS = 10
FAULT_RATE = 0.15


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("keep_unknown_keys", [True, False], ids=["keeps-marker", "drops-marker"])
def test_500_scans_over_three_hosts_with_faults_and_ten_kills_end_exactly_once(
        tmp_path: Path, keep_unknown_keys: bool) -> None:
    """Issue 15, test 4. 500 scans prod → qa in batches of 25 over three hosts, 15 %
    transient faults of every kind and resets after committed creates; ``kill -9`` of
    a random host at ten random moments spread over the run (each restarted, as
    systemd would). Exactly one target scan per source scan, the mapping complete, the
    request done once, every batch done, no stage job left todo or doing; against a
    target that keeps the marker and one that drops it (the upload IDs alone)."""
    rng = random.Random(20261202)
    with two_platforms(tmp_path, SCANS, keep_unknown_keys=keep_unknown_keys) as (
            prod, qa, ids, store):
        for n, ref in enumerate((prod, qa)):
            ref.faults.timeout_sleep = 1.5  # the client gives up after 1 s
            ref.faults.set(rate=FAULT_RATE, seed=41 + n)
        qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=10)
        # Attempts: a batch may be killed under several times; none may be abandoned.
        with cluster_of(tmp_path, prod, qa, cluster={
                "batch_size": 25, "max_attempts": 15, "lease_seconds": 6},
                timeout_seconds=1, retry_max_seconds=120, max_connections=8) as cluster:
            cluster.start()
            started = time.monotonic()
            drop(cluster.root / "inbox", NAME, copy_request("prod", "qa", store, ids))
            kills: list[tuple[str, int]] = []  # (host, copies recorded when killed)
            # A kill in each tenth of the run, at a random point of it.
            thresholds = sorted(rng.randint(k * SCANS // KILLS + 2, (k + 1) * SCANS // KILLS - 8)
                                for k in range(KILLS))
            with cluster.supervised() as restarts:
                for threshold in thresholds:
                    wait_for(lambda t=threshold: recorded(cluster) >= t, 600, cluster,  # type: ignore[misc]
                             f"{threshold} copies recorded")
                    time.sleep(rng.uniform(0, 0.5))
                    alive = [h for h in cluster.hosts if cluster.daemon(h).alive()]
                    host = rng.choice(alive)
                    cluster.daemon(host).kill()
                    kills.append((host, recorded(cluster)))
                folder, result = wait_settled(cluster.root, [NAME], timeout=900)[NAME]
                # a job of a host killed near the end is handed back by the sweep
                wait_for(lambda: open_stage_jobs(cluster) == [], 60, cluster,
                         "no stage job left todo or doing")
            elapsed = time.monotonic() - started
            cluster.stop()
            batches = cluster.query("SELECT count(*), sum(attempts), count(DISTINCT host_id)"
                                    " FROM batches")[0]
            assert folder == "done", (result["problems"], result["failed"][:5], result["counts"])
            assert_settled_once(cluster, result)
            assert_exactly_once(cluster, qa, ids, store, result, keep_unknown_keys)
            stats = qa.stats.snapshot()
            assert not prod.errors and not qa.errors
    assert len(kills) == KILLS and all(0 < n < SCANS for _, n in kills), kills
    assert len(restarts) >= KILLS, restarts
    assert batches[0] == SCANS // 25 and batches[1] > batches[0], "kills cost attempts"
    assert stats["create"].get("reset_after_commit", 0) >= 10, stats
    assert {"reset", "timeout", "503", "429"} <= {o for e in stats.values() for o in e}
    print(f"\n{SCANS} scans, exactly {SCANS} target scans, {KILLS} kills {kills}, "
          f"{batches[1]} batch executions for {batches[0]} batches on {batches[2]} hosts, "
          f"{elapsed:.1f} s, counts {result['counts']}")


def test_a_duplicate_made_on_purpose_is_flagged(tmp_path: Path) -> None:
    """The post-run check: a scan made by hand on qa with the marker a copy gives
    source scan X, before the copy, leaves X with two target scans carrying its marker
    (a plain copy does not search the target blindly). The run says so: result and
    run.json ``duplicates``, an ERROR line; the other scans are clean."""
    with two_platforms(tmp_path, 6, seed=3) as (prod, qa, ids, store):
        victim = ids[2]
        by_hand, _ = qa.insert_scan(store, datetime(2026, 1, 1, tzinfo=UTC), files=[
            ("a.jpg", b"\xff\xd8 by hand")],
            provided_values={"scanrelay_ref": f"prod:{victim}:{store}"})
        with cluster_of(tmp_path, prod, qa, cluster={"batch_size": 2}) as cluster:
            cluster.start("host-1", "host-2")
            drop(cluster.root / "inbox", NAME, copy_request("prod", "qa", store, ids))
            folder, result = wait_settled(cluster.root, [NAME], timeout=120)[NAME]
            logs = cluster.logs()
    assert (folder, result["status"]) == ("done", "done"), result
    rows = mapping_rows(cluster.root / result["run_dir"])
    copied = {int(r["Source_Scan_ID"]): int(r["Target_Scan_ID"]) for r in rows}
    assert result["duplicates"] == [
        {"source_scan_id": victim, "target_scan_ids": sorted([by_hand, copied[victim]])}]
    run = json.loads((cluster.root / result["run_dir"] / "run.json").read_text())
    assert run["duplicates"] == result["duplicates"]
    assert f"DUPLICATE: source scan {victim} has 2 target scans in qa" in logs
    assert "ERROR" in next(line for line in logs.splitlines() if "DUPLICATE" in line)


def test_the_ledger_count_sees_two_creates_of_one_key(tmp_path: Path) -> None:
    """The ledger half of the check: two target scans recorded for one key by two
    executions of a run (the copy ledger itself keeps only the newest)."""
    from daemon.cluster import duplicates
    from daemon.store.pg_copies import PgCopyStore
    from daemon.store.records import CopyKey

    with ClusterRoot(tmp_path, hosts=1) as cluster:
        from daemon.store import pg
        with pg.open_pool(cluster.dsn, max_size=2, name="test") as pool:
            store = PgCopyStore(pool)
            key = CopyKey("prod", 7, "qa", 1)
            store.copied(key, "prod:7:1", "run-a", 100)
            store.copied(key, "prod:7:1", "run-a", 100)  # the same scan again: no duplicate
            store.copied(CopyKey("prod", 8, "qa", 1), "prod:8:1", "run-a", 101)
            assert store.state(key).copied_to == 100
            store.copied(key, "prod:7:1", "run-a", 102)  # a second execution's create
            store.copied(CopyKey("prod", 9, "qa", 1), "prod:9:1", "run-b", 103)
            assert store.state(key).copied_to == 102, "the ledger keeps the newest"
            store.close()
        with cluster.connect() as conn:
            assert duplicates.in_ledger(conn, "run-a") == {7: [100, 102]}
            assert duplicates.in_ledger(conn, "run-b") == {}


PAUSED = "host-2"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_paused_host_mid_batch_creates_no_duplicate(tmp_path: Path) -> None:
    """Issue 15, test 5. ``SIGSTOP`` of a host while it holds copy leases in the
    middle of its batches, for longer than its leases (4 s) and the worker's stalled
    timeout (3 s): its batches are taken over; after ``SIGCONT`` its late results are
    fenced off (its log says so), no target scan is made twice, the request completes
    once."""
    scans = 120
    with two_platforms(tmp_path, scans, seed=9) as (prod, qa, ids, store):
        qa.set_limits(latency=0.15)  # creates take a while: leases are held mid-create
        with cluster_of(tmp_path, prod, qa, cluster={"batch_size": 10, "lease_seconds": 4},
                        max_connections=4) as cluster:
            cluster.start()
            daemon = cluster.daemon(PAUSED)
            drop(cluster.root / "inbox", NAME, copy_request("prod", "qa", store, ids))
            mine = f"{PAUSED}:%"
            wait_for(lambda: cluster.query(
                "SELECT count(*) FROM copy_leases WHERE owner LIKE %s AND expires_at > now()",
                (mine,))[0][0] > 0 and recorded(cluster) >= 10, 120, cluster,
                f"{PAUSED} holding copy leases mid-run")
            held = cluster.query("SELECT number FROM batches WHERE status = 'running'"
                                 " AND owner LIKE %s", (mine,))
            assert held, "the paused host owned a running batch"
            os.kill(daemon.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                # taken over: another execution owns (or finished) each of its batches,
                # and every lease it held has run out by the server's clock
                wait_for(lambda: cluster.query(
                    "SELECT count(*) FROM batches WHERE owner LIKE %s AND status = 'running'",
                    (mine,))[0][0] == 0 and cluster.query(
                    "SELECT count(*) FROM copy_leases WHERE owner LIKE %s"
                    " AND expires_at > now()", (mine,))[0][0] == 0, 120, cluster,
                    "the paused host's batches taken over")
                while time.monotonic() - paused < 8:  # past its leases and stalled timeout
                    time.sleep(0.1)
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            seconds = time.monotonic() - paused
            folder, result = wait_settled(cluster.root, [NAME], timeout=400)[NAME]
            wait_for(lambda: open_stage_jobs(cluster) == [], 60, cluster,
                     "no stage job left todo or doing")
            # the paused host's executions end once it runs again: its log says so
            wait_for(lambda: "was taken over by another execution" in daemon.log_text(),
                     120, cluster, "the paused host's batch result fenced off")
            log = daemon.log_text()
            assert daemon.alive(), log[-3000:]
            cluster.stop()
            assert folder == "done", (result["problems"], result["failed"][:5], result["counts"])
            assert_settled_once(cluster, result)
            assert_exactly_once(cluster, qa, ids, store, result)
            taken = cluster.query("SELECT number, host_id, attempts FROM batches"
                                  " WHERE number = ANY(%s)", ([n for (n,) in held],))
    assert all(attempts >= 2 for _, _, attempts in taken), taken  # each taken over
    assert "its result from here is dropped" in log
    print("\n".join(line for line in log.splitlines()
                    if "taken over" in line or " started on " in line))
    print(f"\npaused {PAUSED} {seconds:.1f} s holding batches {held}; taken over: {taken}; "
          f"fenced lines: {log.count('was taken over by another execution')}, "
          f"lost leases: {log.count('lost the copy lease')}")


LIMIT = 4  # max_connections of each instance, for the whole cluster


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_daemon_hosts_keep_each_instance_within_max_connections(
        tmp_path: Path) -> None:
    """Issue 15, test 8 with whole daemons: a copy over three hosts, every instance at
    ``max_connections`` 4 for the cluster, every call 50 ms. Each listener of prod and
    qa never serves more than 4 calls at once, and qa's API does serve 4 (the limit is
    used, not just kept); a host killed mid-run leaves its slots to the others once its
    leases expire, and the copy completes exactly once."""
    lease = 3.0
    with two_platforms(tmp_path, 150, seed=17) as (prod, qa, ids, store):
        for ref in (prod, qa):
            ref.set_limits(latency=0.05, blob_latency=0.05)
        with cluster_of(tmp_path, prod, qa, cluster={
                "batch_size": 10, "slot_lease_seconds": lease},
                max_connections=LIMIT) as cluster:
            cluster.start()
            drop(cluster.root / "inbox", NAME, copy_request("prod", "qa", store, ids))
            wait_for(lambda: recorded(cluster) >= 30, 120, cluster, "30 copies recorded")
            victim = max(live_leases(cluster.dsn, "qa").items(), key=lambda kv: kv[1])[0]
            cluster.daemon(victim).kill()
            killed = time.monotonic()
            wait_for(lambda: victim not in live_leases(cluster.dsn, "qa")
                     and sum(live_leases(cluster.dsn, "qa").values()) == LIMIT,
                     2 * lease + 5, cluster, "the others lease the killed host's slots")
            taken_over = time.monotonic() - killed
            folder, result = wait_settled(cluster.root, [NAME], timeout=300)[NAME]
            cluster.stop()
            assert folder == "done", result
            assert_exactly_once(cluster, qa, ids, store, result)
        peaks = {(name, listener): gate.peak for name, ref in (("prod", prod), ("qa", qa))
                 for listener, gate in (("api", ref.api_gate), ("blob", ref.blob_gate))}
    assert all(peak <= LIMIT for peak in peaks.values()), peaks
    assert peaks[("qa", "api")] == LIMIT, peaks
    assert taken_over <= lease + 5, taken_over
    print(f"\npeaks {peaks}; the killed host's slots taken over after {taken_over:.1f} s")
