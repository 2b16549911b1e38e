"""The database side of cluster mode, decided in PostgreSQL: a batch's result counts
only for the execution that owns it, the last batch defers the settle job exactly once,
the sweeps adopt an orphan claim once and give a stage without a job a new one once, a
settle past its attempts still ends the request in ``failed/``.
Real PostgreSQL, several connections racing; no daemon processes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon.cluster import finish, rows, stages
from daemon.cluster.app import TASK_BATCH, TASK_PLAN, TASK_SETTLE
from daemon.cluster.enqueue import enqueue, new_claim_id, processing_name
from daemon.cluster.merge import abandoned, merge_results, payload
from daemon.cluster.runtime import Runtime
from daemon.cluster.sweep import adopt_orphans, redefer_stages
from daemon.config import parse_config
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.request import Request
from daemon.runsettle import Outcome
from daemon.store import pg
from daemon.store.stores import open_stores
from handlers.base import HandlerResult, ItemResult, ItemStatus

RUN = "20260101-000000-download-000001"


@pytest.fixture
def dsn(cluster_dsn: str) -> str:
    return cluster_dsn


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def planned(dsn: str, batches: int) -> str:
    """A request planned into ``batches`` batches of two scans; its claim ID."""
    with connect(dsn) as conn:
        claim_id = new_claim_id(conn)
        with conn.transaction():
            enqueue(conn, claim_id=claim_id, name="r.json", profile=None, body=b"{}",
                    processing_name=processing_name(claim_id, None, "r.json"),
                    claimed_by="host-1")
        chunks = [[2 * n + 1, 2 * n + 2] for n in range(batches)]
        assert stages.commit_plan(conn, claim_id, RUN, "download", None, chunks, "host-1")
        assert not stages.commit_plan(conn, claim_id, RUN, "download", None, chunks,
                                      "host-2"), "planned once"
    return claim_id


def jobs(conn: psycopg.Connection[Any], task: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, args FROM procrastinate_jobs WHERE task_name = %s"
                        " ORDER BY id", (task,)).fetchall()


def ok_result(*scan_ids: int) -> dict[str, Any]:
    result = HandlerResult(counts={"scans": len(scan_ids), "files": len(scan_ids)})
    for scan_id in scan_ids:
        result.add(ItemResult(scan_id, ItemStatus.OK))
    return payload(Outcome(RunStatus.DONE, result))


def test_plan_defers_one_job_per_batch_and_moves_the_request_on(dsn: str) -> None:
    claim_id = planned(dsn, 3)
    with connect(dsn) as conn:
        assert [args for _, args in jobs(conn, TASK_BATCH)] == [
            {"run_id": RUN, "number": n} for n in (1, 2, 3)]
        row = rows.load(conn, claim_id)
        assert row is not None and (row.status, row.run_id, row.job_id) == \
            ("running", RUN, None)


def test_a_fenced_off_execution_records_nothing(dsn: str) -> None:
    """Host A's execution was retried elsewhere while A was paused: A's token no longer
    owns the batch, so A's late result is dropped and does not count."""
    planned(dsn, 2)
    with connect(dsn) as conn:
        first = stages.claim_batch(conn, RUN, 1, "host-a:1:aaaa", "host-a")
        again = stages.claim_batch(conn, RUN, 1, "host-b:1:bbbb", "host-b")
        assert first is not None and again is not None and again.attempts == 2
        assert not stages.finish_batch(conn, RUN, 1, "host-a:1:aaaa", "done", ok_result(1))
        assert stages.finish_batch(conn, RUN, 1, "host-b:1:bbbb", "done", ok_result(1, 2))
        assert not stages.finish_batch(conn, RUN, 1, "host-b:1:bbbb", "done", ok_result())
        assert stages.claim_batch(conn, RUN, 1, "host-c:1:cccc", "host-c") is None
        [batch, _] = stages.batches_of(conn, RUN)
        assert batch["result"] == ok_result(1, 2)
        assert jobs(conn, TASK_SETTLE) == [], "batch 2 is still open"


def test_an_interrupted_execution_gives_its_attempt_back(dsn: str) -> None:
    planned(dsn, 1)
    with connect(dsn) as conn:
        assert stages.claim_batch(conn, RUN, 1, "a", "host-a") is not None
        stages.release_batch(conn, RUN, 1, "a")
        claim = stages.claim_batch(conn, RUN, 1, "b", "host-b")
        assert claim is not None and claim.attempts == 1


def test_batches_finishing_at_once_defer_the_settle_job_exactly_once(dsn: str) -> None:
    claim_id = planned(dsn, 12)
    with connect(dsn) as conn:
        for n in range(1, 13):
            assert stages.claim_batch(conn, RUN, n, f"owner-{n}", "host-1") is not None
    barrier = threading.Barrier(12)
    errors: list[BaseException] = []

    def finish(n: int) -> None:
        try:
            with connect(dsn) as conn:
                barrier.wait()
                assert stages.finish_batch(conn, RUN, n, f"owner-{n}", "done",
                                           ok_result(2 * n - 1, 2 * n))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(n,)) for n in range(1, 13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with connect(dsn) as conn:
        assert [args for _, args in jobs(conn, TASK_SETTLE)] == [{"claim_id": claim_id}]
        row = rows.load(conn, claim_id)
        assert row is not None and row.status == "settling"


def test_merged_results_fail_an_abandoned_batchs_scans_with_its_reason() -> None:
    batches = [
        {"number": 1, "scan_ids": [1, 2], "result": ok_result(1, 2)},
        {"number": 2, "scan_ids": [3, 4], "result": abandoned(2, 3)},
        {"number": 3, "scan_ids": [5, 6], "result": ok_result(5, 6)},
    ]
    outcome = merge_results(batches)
    reason = "batch 2 abandoned after 3 attempts: its host died each time"
    assert outcome.status is RunStatus.PARTIAL
    assert outcome.problems == [reason]
    assert [(i.scan_id, i.error) for i in outcome.result.failed] == [(3, reason), (4, reason)]
    assert outcome.result.succeeded == 4
    assert outcome.result.counts["scans"] == 6 and outcome.result.counts["files"] == 4


def runtime(dsn: str, tmp_path: Path, pool: Any) -> Runtime:
    config = parse_config("cluster: {dsn_env: X, host_id: host-1, claim_orphan_seconds: 1}",
                          base_dir=tmp_path)
    layout = Layout(tmp_path).ensure()
    return Runtime(config, layout, pool, instances=None,  # type: ignore[arg-type]
                   stores=open_stores(config, layout, pool))


def race(workers: int, fn: Callable[[], int]) -> list[int]:
    """Run ``fn`` in ``workers`` threads at once; their answers."""
    barrier = threading.Barrier(workers)
    answers: list[int] = []

    def run() -> None:
        barrier.wait()
        answers.append(fn())

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_sweeps_racing_adopt_an_orphan_claim_once(dsn: str, tmp_path: Path) -> None:
    with connect(dsn) as conn:
        claim_id = new_claim_id(conn)
    orphan = tmp_path / "processing" / processing_name(claim_id, "p", "o.json")
    orphan.parent.mkdir()
    orphan.write_text('{"action": "download"}')
    with pg.open_pool(dsn, max_size=8) as pool:
        rt = runtime(dsn, tmp_path, pool)
        assert adopt_orphans(rt) == 0, "too young: its claimer may be committing"
        answers = race(4, lambda: adopt_orphans(rt, now=time.time() + 2))
    assert sorted(answers) == [0, 0, 0, 1]
    with connect(dsn) as conn:
        row = rows.load(conn, claim_id)
        assert row is not None and (row.name, row.profile, row.body) == \
            ("o.json", "p", b'{"action": "download"}')
        assert [args for _, args in jobs(conn, TASK_PLAN)] == [{"claim_id": claim_id}]


def test_a_stage_whose_job_failed_gets_one_new_job(dsn: str, tmp_path: Path) -> None:
    claim_id = planned(dsn, 2)
    with connect(dsn) as conn:
        [(dead, _), (alive, _)] = jobs(conn, TASK_BATCH)
        conn.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s",
                     (dead,))
        [(plan_job, _)] = jobs(conn, TASK_PLAN)  # as if it had failed, and was deleted
        conn.execute("UPDATE requests SET status = 'claimed', job_id = %s"
                     " WHERE claim_id = %s", (plan_job, claim_id))
        conn.execute("DELETE FROM procrastinate_jobs WHERE id = %s", (plan_job,))
    with pg.open_pool(dsn, max_size=8) as pool:
        answers = race(3, lambda: redefer_stages(runtime(dsn, tmp_path, pool)))
    assert sum(answers) == 2  # two stages, one new job each, whichever sweeper made it
    with connect(dsn) as conn:
        batch_jobs = [job_id for job_id, _ in jobs(conn, TASK_BATCH)]
        assert len(batch_jobs) == 3
        assert conn.execute("SELECT number, job_id FROM batches ORDER BY number"
                            ).fetchall() == [(1, batch_jobs[2]), (2, alive)]
        assert [args for _, args in jobs(conn, TASK_PLAN)] == [{"claim_id": claim_id}]


def test_a_retry_is_due_by_the_servers_clock_not_the_hosts() -> None:
    """A host whose clock runs an hour ahead must not push its retried jobs an hour
    into the future: retry times are the server's (the offset measured at each
    heartbeat); and only what is transient is retried."""
    from procrastinate.jobs import Job

    from daemon.cluster.jobs import TransientOnly
    from daemon.cluster.runtime import Again

    rt = Runtime(None, None, None, None, None, clock_offset=3600.0)  # type: ignore[arg-type]
    job = Job(id=1, queue="q", lock=None, queueing_lock=None, task_name="t", attempts=2)
    strategy = TransientOnly(rt)
    server_now = datetime.now(UTC) - timedelta(hours=1)
    again = strategy.get_retry_decision(exception=Again("stopping"), job=job)
    assert again is not None and again.retry_at is not None
    assert abs((again.retry_at - server_now).total_seconds()) < 5
    lost = strategy.get_retry_decision(exception=psycopg.OperationalError("gone"), job=job)
    assert lost is not None and lost.retry_at is not None
    assert abs((lost.retry_at - server_now).total_seconds() - 4) < 5  # 2 ** attempts
    assert strategy.get_retry_decision(exception=ValueError("a bug"), job=job) is None


def test_a_settle_that_killed_its_host_each_time_still_ends_in_failed(dsn: str,
                                                                       tmp_path: Path) -> None:
    """Past its attempts the settle job skips the steps that killed its hosts, and the
    request still ends in ``failed/`` with its sidecars, never stranded in processing/."""
    claim_id = planned(dsn, 1)
    with pg.open_pool(dsn, max_size=4) as pool:
        rt = runtime(dsn, tmp_path, pool)
        with connect(dsn) as conn:
            conn.execute("UPDATE requests SET status = 'settling', stage_attempts = %s"
                         " WHERE claim_id = %s", (rt.cluster.max_attempts, claim_id))
            row = rows.load(conn, claim_id)
        assert row is not None
        request_file = row.claimed(rt.layout).path
        request_file.write_text('{"action": "download", "source": "prod", "scan_ids": [1, 2]}')
        run_dir = rt.layout.runs / RUN
        run_dir.mkdir()
        (run_dir / "request.json").write_text(Request.model_validate_json(
            request_file.read_text()).model_dump_json())
        finish.settle(rt, None, claim_id)
        with connect(dsn) as conn:
            row = rows.load(conn, claim_id)
    message = f"settling failed {rt.cluster.max_attempts} times (its host died each time)"
    assert not request_file.exists()
    assert (rt.layout.failed / "r.json").read_text().startswith('{"action": "download"')
    sidecar = json.loads((rt.layout.failed / "r.json.result.json").read_text())
    assert (sidecar["status"], sidecar["problems"]) == ("failed", [message])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert row is not None and row.status == "failed"
