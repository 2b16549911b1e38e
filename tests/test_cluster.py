"""Cluster mode end to end (issue 15): real daemon processes, each with its own
``state/``, sharing one root and one PostgreSQL (``cluster_support.ClusterRoot``)."""

from __future__ import annotations

import csv
import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from cluster_support import ClusterRoot, terminate_backends
from copy_support import env_for, platform_instance
from helpers import DEMO_SCAN_IDS, drop, listing, wait_settled
from psycopg import sql

from daemon.cluster.enqueue import new_claim_id, processing_name
from tests import pg as testpg

pytestmark = pytest.mark.timeout(300)


def download(ids: list[int], **extra: Any) -> str:
    return json.dumps({"action": "download", "source": "demo-source", "scan_ids": ids,
                       **extra})


def manifest(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "manifest.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def settled_files(root: Path) -> list[Path]:
    """Request files in done/ and failed/ (not their sidecars)."""
    sidecars = (".result.json", ".error.txt", ".retry.json")
    return [p for folder in ("done", "failed") for p in (root / folder).iterdir()
            if not p.name.endswith(sidecars)]


def test_a_crash_between_claim_and_commit_gets_exactly_one_job(tmp_path: Path) -> None:
    """Issue 15, test 3. What a host that died after its claim leaves: a request in
    processing/ without a row, and a half claim (its private name) in the inbox. The
    sweeps of three living hosts give each exactly one row and one run."""
    with ClusterRoot(tmp_path) as cluster:
        with cluster.connect() as conn:
            claim_id = new_claim_id(conn)
        orphan = cluster.root / "processing" / processing_name(claim_id, None, "orphan.json")
        orphan.write_text(download([1001, 1002]))
        with cluster.connect() as conn:
            half_id = new_claim_id(conn)
        half = cluster.root / "inbox" / (".scanrelay-claim-host-9@"
                                         + processing_name(half_id, None, "half.json"))
        half.write_text(download([1003]))
        cluster.start()
        got = wait_settled(cluster.root, ["orphan.json", "half.json"], timeout=60)
        rows = cluster.query("SELECT claim_id, name, status FROM requests ORDER BY name")
        logs = cluster.logs()
    assert {n: (f, r["status"]) for n, (f, r) in got.items()} == {
        "orphan.json": ("done", "done"), "half.json": ("done", "done")}
    assert rows == [(half_id, "half.json", "done"), (claim_id, "orphan.json", "done")]
    assert logs.count("was claimed by a host that died before recording it") == 2, logs
    assert logs.count("published 1 claim(s) a host left half made") == 1
    assert [p.name for p in settled_files(cluster.root)] and \
        sorted(p.name for p in settled_files(cluster.root)) == ["half.json", "orphan.json"]
    assert listing(cluster.root / "processing") == []
    assert [p for p in listing(cluster.root / "inbox") if "/" in p or "." in p] == []


@pytest.mark.slow
def test_a_batch_that_kills_its_host_every_time_is_abandoned(tmp_path: Path) -> None:
    """Issue 15, test 6. Every host dies (os._exit) when it starts the batch holding
    scan 1005; a supervisor restarts them. After its 3 attempts the batch is abandoned:
    its scans fail with the reason, the request settles partial, and the other batches
    and another request finish."""
    hook = {"SCANRELAY_TEST_CRASH_ON_SCAN": "1005"}
    # One job at a time per host: a host's death takes only the crashing batch with it
    # (else another batch running beside it on that host also loses an attempt).
    with ClusterRoot(tmp_path, env={h: hook for h in ("host-1", "host-2", "host-3")},
                     runs={"max_parallel": 1}) as cluster:
        cluster.start()
        with cluster.supervised() as restarts:
            drop(cluster.root / "inbox", "big.json", download(DEMO_SCAN_IDS))  # 3 batches
            drop(cluster.root / "inbox", "other.json", download([1009, 1010]))
            try:
                got = wait_settled(cluster.root, ["big.json", "other.json"], timeout=150)
            except AssertionError:
                print(cluster.logs(tail=6000))
                raise
        batches = cluster.query("SELECT number, b.status, b.attempts FROM batches b"
                                " JOIN requests r USING (run_id) WHERE r.name = 'big.json'"
                                " ORDER BY number")
        logs = cluster.logs()
    assert restarts, "hosts died and were restarted"
    # Each death left its job running on a silent worker; the sweep took it back.
    assert logs.count("was running on a worker that stopped answering") == 3, logs
    folder, result = got["big.json"]
    reason = "batch 2 abandoned after 3 attempts: its host died each time"
    assert (folder, result["status"]) == ("failed", "partial")
    assert reason in result["problems"]
    assert sorted(f["scan_id"] for f in result["failed"]) == [1005, 1006, 1007, 1008]
    assert all(reason in f["error"] for f in result["failed"])
    assert batches == [(1, "done", 1), (2, "abandoned", 4), (3, "done", 1)]
    rows = manifest(cluster.root / result["run_dir"])
    assert sorted({int(r["scan_id"]) for r in rows if r["status"] == "ok"}) == \
        [1001, 1002, 1003, 1004, 1009, 1010, 1011, 1012]
    assert [int(r["scan_id"]) for r in rows if r["status"] == "failed"] == \
        [1005, 1006, 1007, 1008]
    assert got["other.json"][0] == "done"
    retry = json.loads((cluster.root / "failed" / "big.json.retry.json").read_text())
    assert retry["scan_ids"] == [1005, 1006, 1007, 1008]


@pytest.mark.slow
def test_claim_race_500_drops_on_three_hosts_each_ends_exactly_once(tmp_path: Path) -> None:
    """Issue 15, test 1. Three hosts claim from one inbox: 500 drops, 150 of them
    re-drops of a name already dropped (once the first has been claimed), a third of
    them invalid. Each drop gets exactly one request row and ends exactly once in done/
    or failed/; inbox and processing end empty."""
    unique, again = 350, 150
    drops: list[tuple[str, str]] = []  # (name, label) in drop order

    def body(n: int) -> str:
        label = f"drop-{n:03d}"
        if n % 3 == 2:  # invalid: an unknown key (it names the drop)
            return json.dumps({"action": "download", "source": "demo-source",
                               "scan_ids": [1001], "bogus": label})
        return download([DEMO_SCAN_IDS[n % 12]], label=label)

    with ClusterRoot(tmp_path, runs={"max_parallel": 4}, log={"level": "INFO"}) as cluster:
        cluster.start()
        inbox = cluster.root / "inbox"
        for n in range(unique):
            name = f"r{n:03d}.json"
            drop(inbox, name, body(n))
            drops.append((name, f"drop-{n:03d}"))
        for n in range(unique, unique + again):
            name = drops[(n * 7) % unique][0]  # an earlier name, dropped again
            _wait_gone(inbox / name)
            drop(inbox, name, body(n))
            drops.append((name, f"drop-{n:03d}"))
        _wait_for(lambda: len(settled_files(cluster.root)) >= len(drops), 240, cluster)
        _wait_for(lambda: cluster.query(
            "SELECT count(*) FROM requests WHERE status IN ('claimed', 'running',"
            " 'settling')") == [(0,)], 30, cluster)
        rows = cluster.query("SELECT claim_id, name, status, body, claimed_by FROM requests")
    labels = {label: name for name, label in drops}
    # One row per drop, its bytes those of the drop, each ending done or invalid.
    assert len(rows) == len(drops) == 500
    assert sorted(_label(bytes(r[3])) for r in rows) == sorted(labels)
    assert all(labels[_label(bytes(body))] == name for _, name, _, body, _ in rows)
    assert {r[2] for r in rows} == {"done", "invalid"}
    assert len({r[4] for r in rows}) == 3, "every host claimed"
    # Each drop rests exactly once in done/ or failed/, beside its own sidecar.
    files = settled_files(cluster.root)
    assert len(files) == 500
    assert sorted(_label(p.read_bytes()) for p in files) == sorted(labels)
    owners = [json.loads(p.with_name(p.name + ".result.json").read_text())["claim_id"]
              for p in files]
    assert sorted(owners) == sorted(r[0] for r in rows)
    for path in files:
        label = _label(path.read_bytes())
        invalid = int(label[5:]) % 3 == 2
        assert path.parent.name == ("failed" if invalid else "done"), path
    assert [p for p in listing(cluster.root / "inbox") if "/" in p] == []
    assert listing(cluster.root / "processing") == []


def _label(data: bytes) -> str:
    request = json.loads(data)
    return str(request.get("label") or request.get("bogus"))


def _wait_gone(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path.name} was never claimed"
        time.sleep(0.02)


def _wait_for(condition: Any, timeout: float, cluster: ClusterRoot) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; processing: {listing(cluster.root / 'processing')}"
                                 f"\n{cluster.logs(tail=6000)}")
        time.sleep(0.5)


@pytest.mark.slow
def test_postgresql_restarted_and_every_host_stopped_mid_run(prod: Any,
                                                               tmp_path: Path) -> None:
    """Issue 15, test 10. Six downloads from a slow platform spread over three hosts.
    Mid-run every connection to PostgreSQL is cut once; then PostgreSQL goes away for
    8 s (connections cut, new ones refused, as in a restart): the hosts stop their jobs
    and resume once it is back. Then SIGTERM to
    every host: each exits within 10 s. Started again, everything resumes: each request
    done once, every file once and intact, nothing duplicated."""
    seeded = prod.seed(scans=32, files_per_scan=2, file_size=2_000, seed=5)
    prod.set_limits(blob_latency=0.8)  # every file takes 0.8 s: batches last seconds
    names = [f"big-{n}.csv" for n in range(6)]
    csv_body = "scan_id\n" + "".join(f"{i}\n" for i in seeded.scan_ids)
    env = env_for(prod=prod)
    with ClusterRoot(tmp_path, cluster={"batch_size": 8}, env=dict.fromkeys(
            ["host-1", "host-2", "host-3"], env),
            instances={"prod": platform_instance(prod, "prod", max_connections=4)},
            profiles={"prod-download": {"action": "download", "source": "prod"}},
            defaults={"profile": "prod-download"}) as cluster:
        cluster.start()
        for name in names:
            drop(cluster.root / "inbox", name, csv_body)
        done_batches = "SELECT count(*) FROM batches WHERE status = 'done'"
        _wait_for(lambda: cluster.query(done_batches)[0][0] >= 2, 60, cluster)
        assert terminate_backends(cluster.dsn) > 0  # a blip: every connection cut once
        before = cluster.query(done_batches)[0][0]
        _wait_for(lambda: cluster.query(done_batches)[0][0] >= before + 2, 60, cluster)
        # Away long enough to be lost for sure: a beat comes every 2 s, and a host gives
        # PostgreSQL up after 4 s without an answer.
        _database_away(cluster, seconds=8)
        # More than the hosts can have had in flight when it came back (3 x 2 jobs):
        # batches started after PostgreSQL was back finished too.
        before = cluster.query(done_batches)[0][0]
        _wait_for(lambda: cluster.query(done_batches)[0][0] >= before + 7, 60, cluster)
        took = cluster.stop()
        assert all(seconds < 10 for seconds in took.values()), took
        left = cluster.query("SELECT count(*) FROM batches WHERE status <> 'done'")[0][0]
        assert left > 0, "the hosts were stopped mid-run"
        logs = cluster.logs()
        cluster.start()
        got = wait_settled(cluster.root, names, timeout=180)
        requests = cluster.query("SELECT name, status, run_id FROM requests ORDER BY name")
        batches = cluster.query("SELECT status, count(*) FROM batches GROUP BY status")
    assert "PostgreSQL gone" in logs, "the hosts stopped their jobs"
    assert [(n, s) for n, s, _ in requests] == [(n, "done") for n in names]
    assert batches == [("done", 6 * 4)]
    assert sorted(p.name for p in (cluster.root / "runs").iterdir()) == \
        sorted(r for _, _, r in requests), "one run folder per request"
    expected = {f.file_id: seeded.sha256(f.file_id) for f in seeded.all_files()}
    for name in names:
        folder, result = got[name]
        assert (folder, result["status"]) == ("done", "done"), (name, result)
        run_dir = cluster.root / result["run_dir"]
        rows = manifest(run_dir)
        assert sorted(int(r["file_id"]) for r in rows) == sorted(expected), name
        for row in rows:
            data = (run_dir / row["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == expected[int(row["file_id"])]
        assert len(list((run_dir / "images").iterdir())) == len(expected)
    assert sorted(p.name for p in settled_files(cluster.root)) == sorted(names)


def _database_away(cluster: ClusterRoot, seconds: float) -> None:
    """The cluster's database refuses connections and drops those it has for
    ``seconds`` (a restart as the hosts see it; other databases are untouched)."""
    admin = testpg.admin_dsn()
    name = testpg.dsn_params(cluster.dsn)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)))
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                time.sleep(0.2)
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(name)))


def test_a_copy_and_a_download_split_in_batches_end_as_one_run(tmp_path: Path) -> None:
    """A copy with analysis and a download, each split into batches of 4 scans that
    run on two hosts, end as one run each: one mapping and one manifest in request
    order, the images in the run's own folder, the analysis over every pair, and each
    source scan copied exactly once."""
    ids = DEMO_SCAN_IDS[:10]
    copy = json.dumps({"action": "copy", "source": "demo-source", "target": "demo-target",
                       "target_store_id": 1, "scan_ids": ids[::-1], "analyze": True})
    with ClusterRoot(tmp_path, hosts=2, copy={"wait_for_processing": 20,
                                              "poll_interval": 0.2}) as cluster:
        cluster.start()
        drop(cluster.root / "inbox", "copy.json", copy)
        drop(cluster.root / "inbox", "download.json", download(ids))
        got = wait_settled(cluster.root, ["copy.json", "download.json"], timeout=90)
        hosts = cluster.query("SELECT DISTINCT host_id FROM batches")
        history = json.loads(cluster.cli("host-2", "runs", "--json"))
    assert sorted((r["name"], r["status"]) for r in history) == [
        ("copy.json", "done"), ("download.json", "done")], "any host reads the history"
    assert len(hosts) == 2, "both hosts ran batches"
    folder, result = got["copy.json"]
    assert (folder, result["status"]) == ("done", "done"), result
    run_dir = cluster.root / result["run_dir"]
    with (run_dir / "scan_mapping.csv").open(encoding="utf-8", newline="") as f:
        mapping = list(csv.DictReader(f))
    assert [int(r["Source_Scan_ID"]) for r in mapping] == ids[::-1]
    assert {r["status"] for r in mapping} == {"ok"}
    targets = [int(r["Target_Scan_ID"]) for r in mapping]
    assert len(set(targets)) == 10
    target_scans = sorted(int(p.name) for p in
                          (cluster.root / "data" / "demo-target" / "scans").iterdir())
    assert target_scans == sorted(targets), "one target scan per source scan"
    assert result["analysis"]["status"] == "done" and result["analysis"]["pairs"] == 10
    assert (run_dir / "analysis.xlsx").exists()
    folder, result = got["download.json"]
    assert (folder, result["status"]) == ("done", "done"), result
    run_dir = cluster.root / result["run_dir"]
    rows = manifest(run_dir)
    assert [int(r["scan_id"]) for r in rows] == sorted(int(r["scan_id"]) for r in rows)
    assert {int(r["scan_id"]) for r in rows} == set(ids)
    assert sorted(r["path"] for r in rows) == \
        sorted(f"images/{p.name}" for p in (run_dir / "images").iterdir())
    assert result["counts"]["files"] == len(rows)


def test_a_host_serves_the_clusters_page_and_metrics(tmp_path: Path) -> None:
    """A host with ``web.listen`` and ``metrics.listen`` serves the whole cluster: the
    page lists every host alive, the metrics carry the cluster's gauges."""
    web, scrape = _free_port(), _free_port()
    served = {"web": {"listen": f"127.0.0.1:{web}"},
              "metrics": {"listen": f"127.0.0.1:{scrape}"}}
    with ClusterRoot(tmp_path, hosts=2, per_host={"host-1": served}) as cluster:
        cluster.start()
        page = requests.get(f"http://127.0.0.1:{web}/", timeout=30).text
        gauges = requests.get(f"http://127.0.0.1:{scrape}/metrics", timeout=30).text
        assert all(d.alive() for d in cluster.daemons.values())
    assert "2 of 2 hosts alive" in page, page
    assert '<tr data-host="host-1">' in page and '<tr data-host="host-2">' in page
    assert "scanrelay_cluster_up 1.0" in gauges
    assert "scanrelay_cluster_hosts_alive 2.0" in gauges


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
