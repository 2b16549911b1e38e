"""The views of a cluster from any host: ``status``, ``runs``, ``show``, ``retry``,
``schedules``, the metrics and the web page, read from a real PostgreSQL migrated by the
daemon, with rows written here as the hosts would write them (hosts alive, stopping and
dead, jobs queued and running, a request running on host b with batches on a and b).
No DSN and no password ever appears in what they print or serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from helpers import make_root
from prometheus_client import CollectorRegistry, generate_latest
from web_support import free_port

from daemon import metrics
from daemon.cluster.overview import status_lines
from daemon.cluster.views import ClusterView, unavailable
from daemon.config import load_config
from daemon.store import pg
from tests import pg as testpg

DSN_ENV = "SCANRELAY_VIEWS_TEST_DSN"
PG_PASSWORD = "canary-pg-pw-6d41b7e2"  # in the DSN; trust auth ignores it
TOKEN = "canary-web-token-0c3a9e55"
RUNNING = "20260101-000000-copy-aaaaaa"  # on host b, batches on a and b
CLAIMED = "20260101-000100-bbbbbb"  # claimed, no run yet
DONE = "20251231-230000-download-cccccc"
FAILED = "20251231-220000-copy-dddddd"
BATCH, PLAN, SETTLE = "scanrelay.batch", "scanrelay.plan", "scanrelay.settle"


@pytest.fixture
def dsn() -> Iterator[str]:
    testpg.require_admin_dsn()
    created = testpg.create_database("views")
    yield f"{created} password={PG_PASSWORD}"
    testpg.drop_database(created)


@pytest.fixture
def root(tmp_path: Path, dsn: str) -> Path:
    """A root whose config is in cluster mode (as host a), seeded: its rows in
    PostgreSQL, the running run's ``run.json`` and the failed run's sidecars."""
    root = make_root(tmp_path, cluster={"dsn_env": DSN_ENV, "host_id": "a"},
                     schedules=[{"name": "nightly", "cron": "0 2 * * *",
                                 "request": {"action": "download", "source": "demo-source",
                                             "scan_ids": [1001]}},
                                {"name": "hourly", "cron": "0 * * * *",
                                 "request": {"action": "download", "source": "demo-source",
                                             "scan_ids": [1002]}}])
    for folder in ("inbox", "processing", "done", "failed", "runs", "state"):
        (root / folder).mkdir(exist_ok=True)
    (root / "runs" / RUNNING).mkdir()
    (root / "runs" / RUNNING / "run.json").write_text(json.dumps(
        {"run_id": RUNNING, "status": "running", "progress": {"done": 200, "total": 800}}))
    (root / "failed" / "bad.csv").write_text("scan_id\n1001\n")
    (root / "failed" / "bad.csv.result.json").write_text(json.dumps(
        {"run_id": FAILED, "status": "failed", "failed": [{"scan_id": 1001}]}))
    (root / "failed" / "bad.csv.retry.json").write_text(json.dumps(
        {"action": "download", "source": "demo-source", "scan_ids": [1001]}))
    seed(dsn, root)
    return root


def seed(dsn: str, root: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg.migrate(conn)
        with conn.transaction():
            _hosts(conn)
            _jobs(conn)
            _requests(conn, root)


def _hosts(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO hosts (host_id, pid, started_at, heartbeat_at, stopping) VALUES"
                 " ('a', 101, now() - interval '1 hour', now(), false),"
                 " ('b', 202, now() - interval '1 hour', now() - interval '2 seconds', false),"
                 " ('c', 303, now() - interval '2 hours', now() - interval '10 minutes', false),"
                 " ('d', 404, now() - interval '1 hour', now(), true)")


def _job(conn: psycopg.Connection[Any], task: str, status: str,
         scheduled: str | None = None, worker: int | None = None) -> int:
    row = conn.execute("INSERT INTO procrastinate_jobs (queue_name, task_name, status,"
                       " scheduled_at, worker_id) VALUES ('scanrelay', %s, %s,"
                       " now() + %s::interval, %s) RETURNING id",
                       (task, status, scheduled, worker)).fetchone()
    assert row is not None
    return int(row[0])


def _jobs(conn: psycopg.Connection[Any]) -> None:
    """batch: 2 due (one deferred 90 s ago; one retried 10 s ago after a first defer
    300 s ago), 1 scheduled later, 2 running; plan: 1 due now; settle: 1 finished."""
    row = conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
                       ).fetchone()
    assert row is not None
    old = _job(conn, BATCH, "todo")
    conn.execute("UPDATE procrastinate_events SET at = now() - interval '90 seconds'"
                 " WHERE job_id = %s", (old,))
    retried = _job(conn, BATCH, "todo", "-10 seconds")
    conn.execute("UPDATE procrastinate_events SET at = now() - interval '300 seconds'"
                 " WHERE job_id = %s AND type = 'deferred'", (retried,))
    conn.execute("INSERT INTO procrastinate_events (job_id, type, at) VALUES"
                 " (%s, 'deferred_for_retry', now() - interval '10 seconds')", (retried,))
    _job(conn, BATCH, "todo", "10 minutes")
    for _ in range(2):
        _job(conn, BATCH, "doing", worker=row[0])
    _job(conn, PLAN, "todo")
    _job(conn, SETTLE, "succeeded")


def _requests(conn: psycopg.Connection[Any], root: Path) -> None:
    now = time.time()
    rows = [  # claim_id, run_id, name, action, status, host, finished, final, counts
        ("20260101-000000-aaaaaa", RUNNING, "big-copy.csv", "copy", "running", "b", None,
         None, None),
        (CLAIMED, None, "waiting.csv", None, "claimed", None, None, None, None),
        ("20251231-230000-cccccc", DONE, "ok.csv", "download", "done", "a", now - 60,
         str(root / "done" / "ok.csv"), {"items": 2, "failed": 0}),
        ("20251231-220000-dddddd", FAILED, "bad.csv", "copy", "failed", "c", now - 120,
         str(root / "failed" / "bad.csv"), {"items": 1, "failed": 1}),
    ]
    for n, (claim, run, name, action, status, host, finished, final, counts) in \
            enumerate(rows):
        conn.execute(
            "INSERT INTO requests (claim_id, name, profile, claimed_at, claimed_by,"
            " processing_name, body, run_id, action, status, finished_at, final_path,"
            " counts, attempts, host_id) VALUES (%s, %s, NULL, %s, 'a', %s, %s, %s, %s, %s,"
            " %s, %s, %s, 1, %s)",
            (claim, name, now - 1000 * n, f"{claim}+-+{name}", b"scan_id\n1\n", run, action,
             status, finished, final, json.dumps(counts) if counts else None, host))
    conn.execute("INSERT INTO batches (run_id, number, scan_ids, status, host_id) VALUES"
                 " (%s, 1, '{1,2}', 'done', 'a'), (%s, 2, '{3,4}', 'running', 'b'),"
                 " (%s, 3, '{5}', 'running', 'a'), (%s, 4, '{6}', 'pending', NULL)",
                 (RUNNING,) * 4)


def cli(root: Path, dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != DSN_ENV}
    if dsn is not None:
        env[DSN_ENV] = dsn
    return subprocess.run([sys.executable, "-m", "daemon", *args, "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, env=env)


def no_secret(text: str, dsn: str) -> None:
    assert PG_PASSWORD not in text
    assert dsn not in text and "dbname=" not in text


# --- the views ------------------------------------------------------------------------


def test_summary_says_hosts_queue_and_who_runs_what(root: Path, dsn: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, dsn)
    view = ClusterView(load_config(str(root / "config.yml")).cluster)  # type: ignore[arg-type]
    try:
        assert view.summary()["slots"] == []  # no slot_leases table yet: nothing held
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The slots part's table (0004_slots.sql), as agreed: created here if absent.
            conn.execute("CREATE TABLE IF NOT EXISTS slot_leases (instance text NOT NULL,"
                         " slot integer NOT NULL, host_id text NOT NULL,"
                         " expires_at timestamptz NOT NULL, PRIMARY KEY (instance, slot))")
            conn.execute("INSERT INTO slot_leases (instance, slot, host_id, expires_at)"
                         " VALUES ('prod', 0, 'a', now() + interval '20 seconds'),"
                         " ('prod', 1, 'a', now() + interval '20 seconds'),"
                         " ('prod', 2, 'c', now() - interval '1 minute')")  # c's lapsed
        summary = view.summary()
    finally:
        view.close()
    assert summary["slots"] == [{"instance": "prod", "host": "a", "held": 2}]
    assert summary["reachable"] is True
    hosts = {h["host_id"]: h for h in summary["hosts"]}
    assert {k: h["state"] for k, h in hosts.items()} == {
        "a": "up", "b": "up", "c": "down", "d": "stopping"}
    assert summary["hosts_alive"] == 3
    assert hosts["c"]["heartbeat_age_seconds"] >= 600
    assert hosts["b"]["runs"] == [RUNNING] and hosts["a"]["runs"] == [RUNNING]  # a: batch 3
    assert hosts["c"]["runs"] == [] and hosts["d"]["runs"] == []
    queue = summary["queue"]
    assert queue["tasks"] == [{"task": BATCH, "todo": 2, "later": 1, "doing": 2},
                              {"task": PLAN, "todo": 1, "later": 0, "doing": 0}]
    assert (queue["todo"], queue["later"], queue["doing"]) == (3, 1, 2)
    # The oldest due job waits since its defer (90 s), not the retried one's first defer.
    assert 90 <= queue["oldest_waiting_seconds"] < 200
    assert queue["workers_alive"] == 1
    running = {r["key"]: r for r in summary["running"]}
    assert set(running) == {RUNNING, CLAIMED}
    assert running[RUNNING]["host"] == "b"
    assert running[RUNNING]["batches"] == {"done": 1, "running": 2, "pending": 1}
    assert running[CLAIMED]["host"] is None


def test_a_database_error_is_described_without_its_text() -> None:
    exc = psycopg.OperationalError(f'invalid dsn: "postgresql://u:{PG_PASSWORD}@db/x"')
    message = str(unavailable(exc))
    assert PG_PASSWORD not in message and "OperationalError" in message


def test_metrics_carry_the_cluster_gauges(root: Path, dsn: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, dsn)
    view = ClusterView(load_config(str(root / "config.yml")).cluster)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    try:
        metrics.watch_cluster(view, registry)
        text = generate_latest(registry).decode()
    finally:
        view.close()
    assert "scanrelay_cluster_up 1.0" in text
    assert "scanrelay_cluster_hosts 4.0" in text
    assert "scanrelay_cluster_hosts_alive 3.0" in text
    assert f'scanrelay_cluster_jobs{{state="todo",task="{BATCH}"}} 2.0' in text
    assert f'scanrelay_cluster_jobs{{state="doing",task="{BATCH}"}} 2.0' in text
    oldest = next(line for line in text.splitlines()
                  if line.startswith("scanrelay_cluster_oldest_waiting_job_seconds "))
    assert 90 <= float(oldest.split()[1]) < 200
    no_secret(text, dsn)


# --- the command line -------------------------------------------------------------------


def test_status_shows_the_cluster_from_any_host(root: Path, dsn: str) -> None:
    out = cli(root, dsn, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "daemon: up (pid 101)" in lines  # host a's row: no heartbeat file needed
    assert "cluster: 3 of 4 hosts alive; jobs 3 waiting, 2 running, 1 later; oldest " \
           "waiting" in out.stdout
    assert any(line.split()[:3] == ["host", "c", "down"] for line in lines)
    assert any(line.split()[:3] == ["host", "d", "stopping"] for line in lines)
    assert any(line.split()[:3] == ["host", "b", "up"] and line.endswith(f"runs {RUNNING}")
               for line in lines)
    assert f"  jobs {BATCH}: 2 waiting, 2 running, 1 later" in lines
    assert f"  running  {RUNNING} big-copy.csv 200/800 on b (batches: 1 done, 1 pending, " \
           "2 running)" in lines
    assert "  queued   - waiting.csv" in lines
    assert f"  last: done     {DONE} ok.csv" in lines
    no_secret(out.stdout + out.stderr, dsn)

    data = json.loads(cli(root, dsn, "status", "--json").stdout)
    assert data["daemon"]["host_id"] == "a"
    assert data["cluster"]["hosts_alive"] == 3
    assert {r["run_id"]: r["host"] for r in data["in_flight"]} == {RUNNING: "b", None: None}


def test_status_says_when_the_cluster_cannot_be_read(root: Path, dsn: str) -> None:
    out = cli(root, None, "status")  # the DSN's variable is not set
    assert out.returncode == 0, out.stderr
    assert f"cluster: cluster DSN: environment variable {DSN_ENV} is not set" in out.stdout
    assert status_lines({"reachable": False, "error": "x"}) == ["cluster: x"]


def test_runs_show_and_retry_read_the_cluster_history(root: Path, dsn: str) -> None:
    runs = cli(root, dsn, "runs", "--json")
    assert runs.returncode == 0, runs.stderr
    assert [r["name"] for r in json.loads(runs.stdout)] == [
        "big-copy.csv", "waiting.csv", "ok.csv", "bad.csv"]
    failed = json.loads(cli(root, dsn, "runs", "--failed", "--json").stdout)
    assert [r["run_id"] for r in failed] == [FAILED]

    show = cli(root, dsn, "show", RUNNING)
    assert show.returncode == 0, show.stderr
    assert "        host: b (claimed by a)" in show.stdout
    assert "     batches: 1 done, 1 pending, 2 running" in show.stdout
    assert "     batch 2: running on b, 2 scans, 0 attempts" in show.stdout
    extras = json.loads(cli(root, dsn, "show", RUNNING, "--json").stdout)["cluster"]
    assert [(b["number"], b["host"]) for b in extras["batches"]] == [
        (1, "a"), (2, "b"), (3, "a"), (4, None)]
    gone = cli(root, dsn, "show", "20200101-000000-download-ffffff")
    assert gone.returncode == 1 and "no run" in gone.stderr

    retry = cli(root, dsn, "retry", FAILED)  # its sidecars found through the cluster row
    assert retry.returncode == 0, retry.stderr
    dropped = Path(retry.stdout.strip())
    assert dropped.parent == root / "inbox"
    assert json.loads(dropped.read_text())["scan_ids"] == [1001]
    for out in (runs, show, retry):
        no_secret(out.stdout + out.stderr, dsn)


def test_schedules_show_the_clusters_last_fires(root: Path, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Fires as daemon.cluster.fires records them (0005_fires.sql).
        conn.execute("INSERT INTO schedule_fires (schedule, fire_time, status, claim_id,"
                     " host_id, cron, timezone) VALUES ('schedule:nightly',"
                     " '2026-01-01 02:00+00', 'fired', '20251231-230000-cccccc', 'h1',"
                     " '0 2 * * *', 'UTC'), ('schedule:hourly', '2026-01-01 05:00+00',"
                     " 'missed', NULL, 'h2', '0 * * * *', 'UTC')")
    out = cli(root, dsn, "schedules", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["job"]: r for r in json.loads(out.stdout)}
    assert rows["schedule:nightly"]["last_fire"] == "2026-01-01T02:00:00+00:00"
    assert rows["schedule:nightly"]["last_request"] == "ok.csv"
    assert rows["schedule:nightly"]["outcome"] == f"done ({DONE})"
    # The next fire is the cron's first after the last one: long past, so overdue.
    assert rows["schedule:nightly"]["next_fire"] == "2026-01-02T02:00:00+00:00"
    assert rows["schedule:nightly"]["overdue"] is True
    assert rows["schedule:hourly"]["outcome"].startswith("missed")
    no_secret(out.stdout + out.stderr, dsn)


# --- the web page -------------------------------------------------------------------------


def _serve(root: Path, **web: Any) -> tuple[Any, str]:
    from daemon.web.server import WebServer

    port = free_port()
    raw = yaml.safe_load((root / "config.yml").read_text())
    raw["web"] = {"listen": f"127.0.0.1:{port}", **web}
    (root / "config.yml").write_text(yaml.safe_dump(raw))
    server = WebServer(load_config(str(root / "config.yml")))
    server.start()
    return server, f"http://127.0.0.1:{port}"


def test_the_web_page_shows_the_cluster(root: Path, dsn: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, dsn)
    (tmp_path / "token").write_text(TOKEN)
    server, base = _serve(root, token_file=str(tmp_path / "token"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for path in ("/", "/live/overview", "/runs", f"/runs/{RUNNING}", "/schedules"):
            assert requests.get(base + path, timeout=30).status_code == 401, path
        page = requests.get(base + "/", headers=auth, timeout=30)
        assert page.status_code == 200
        assert 'id="cluster"' in page.text and "3 of 4 hosts alive" in page.text
        assert '<tr data-host="c">' in page.text and '<span class="host down">' in page.text
        assert '<span class="host stopping">' in page.text
        host_b = page.text.split('<tr data-host="b">')[1].split("</tr>")[0]
        assert f'href="/runs/{RUNNING}"' in host_b
        assert f"<td>{BATCH}</td>" in page.text
        assert '<td class="on-host">b<div class="muted">batches: 1 done, 1 pending, ' \
               "2 running</div></td>" in page.text
        runs = requests.get(base + "/runs?status=failed", headers=auth, timeout=30)
        assert "1 matching" in runs.text and FAILED in runs.text
        run = requests.get(base + f"/runs/{RUNNING}", headers=auth, timeout=30)
        assert '<td id="run-host">b' in run.text and 'id="batches"' in run.text
        sidecar = requests.get(base + f"/runs/{FAILED}/files/retry.json", headers=auth,
                               timeout=30)
        assert sidecar.status_code == 200 and sidecar.json()["scan_ids"] == [1001]
        for answer in (page, runs, run, sidecar):
            no_secret(answer.text, dsn)
    finally:
        server.stop()


def test_the_web_page_says_when_the_cluster_is_away(root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    server, base = _serve(root)  # the DSN's variable is not set in this process
    try:
        page = requests.get(base + "/", timeout=30)
        assert page.status_code == 200 and 'id="cluster-away"' in page.text
        assert f"environment variable {DSN_ENV} is not set" in page.text
        assert requests.get(base + "/runs", timeout=30).status_code == 503
    finally:
        server.stop()


def test_the_web_page_stays_closed_by_default(root: Path) -> None:
    config = load_config(str(root / "config.yml"))
    assert config.cluster is not None and config.web.listen is None  # nothing listens
