"""enqueue: the request row and its first job in the caller's transaction, once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon.cluster.app import TASK_PLAN
from daemon.cluster.enqueue import enqueue, new_claim_id, processing_name
from daemon.intake.claim import Claimed


@pytest.fixture
def conn(cluster_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        yield conn


def _enqueue(conn: psycopg.Connection[Any], claim_id: str) -> bool:
    return enqueue(conn, claim_id=claim_id, name="ids.csv", profile="nightly",
                   body=b"scan_id\n1\n", claimed_by="host-a",
                   processing_name=processing_name(claim_id, "nightly", "ids.csv"))


def _jobs(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, task_name, args, status FROM procrastinate_jobs"
                        " ORDER BY id").fetchall()


def test_enqueue_inserts_the_row_and_its_plan_job_in_one_commit(
        conn: psycopg.Connection[Any]) -> None:
    claim_id = new_claim_id(conn)
    with conn.transaction():
        assert _enqueue(conn, claim_id)
    row = conn.execute("SELECT status, claimed_by, body, processing_name, job_id"
                       " FROM requests WHERE claim_id = %s", (claim_id,)).fetchone()
    assert row is not None
    status, claimed_by, body, name, job_id = row
    assert (status, claimed_by, bytes(body)) == ("claimed", "host-a", b"scan_id\n1\n")
    parsed = Claimed.from_path(Path(name))
    assert parsed is not None and parsed.claim_id == claim_id and parsed.profile == "nightly"
    assert _jobs(conn) == [(job_id, TASK_PLAN, {"claim_id": claim_id}, "todo")]


def test_a_rolled_back_transaction_leaves_neither_row_nor_job(
        conn: psycopg.Connection[Any]) -> None:
    claim_id = new_claim_id(conn)
    with pytest.raises(RuntimeError), conn.transaction():
        _enqueue(conn, claim_id)
        raise RuntimeError("the caller fails before its commit")
    assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)
    assert _jobs(conn) == []


def test_enqueue_twice_defers_once(conn: psycopg.Connection[Any]) -> None:
    claim_id = new_claim_id(conn)
    for expected in (True, False):
        with conn.transaction():
            assert _enqueue(conn, claim_id) is expected
    assert len(_jobs(conn)) == 1


def test_enqueue_outside_a_transaction_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="transaction"):
        _enqueue(conn, new_claim_id(conn))
    assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)


def test_claim_ids_of_one_second_never_repeat(conn: psycopg.Connection[Any]) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ids = [new_claim_id(conn, moment) for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(Claimed.from_path(Path(f"{i}+-+x.csv")) for i in ids)
