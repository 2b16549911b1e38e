"""The database side of a request's stages: plan → batches → settle, each transition
one transaction, each decided in PostgreSQL so that it happens once in the cluster.

Fencing: a batch is run by one *execution* at a time, named by its owner token
(``Runtime.owner_token``). An execution records its batch's result only while it still
owns the batch: a host that was paused while its job was retried elsewhere finds its
token replaced and records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from daemon.cluster import rows
from daemon.cluster.app import TASK_BATCH, TASK_SETTLE, defer, defer_many


@dataclass(frozen=True)
class BatchClaim:
    attempts: int  # executions of this batch, this one included
    scan_ids: list[int]  # [] for the whole request (one batch)


def commit_plan(conn: psycopg.Connection[Any], claim_id: str, run_id: str, action: str,
                label: str | None, chunks: Sequence[Sequence[int]], host_id: str) -> bool:
    """The request's batches and one job each, and the request ``running``: one
    transaction. False if the request had left ``claimed`` (another execution planned
    it): then nothing is written."""
    with conn.transaction():
        row = rows.load(conn, claim_id, lock=True)
        if row is None or row.status != "claimed":
            return False
        numbers = range(1, len(chunks) + 1)
        job_ids = defer_many(conn, TASK_BATCH, [{"run_id": run_id, "number": n}
                                                for n in numbers])
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO batches (run_id, number, scan_ids, job_id)"
                            " VALUES (%s, %s, %s, %s)",
                            [(run_id, n, list(chunk), job_id)
                             for n, chunk, job_id in zip(numbers, chunks, job_ids,
                                                         strict=True)])
        conn.execute("UPDATE requests SET status = 'running', run_id = %s, action = %s,"
                     " label = %s, attempts = attempts + 1, host_id = %s, job_id = NULL,"
                     " stage_attempts = 0 WHERE claim_id = %s",
                     (run_id, action, label, host_id, claim_id))
    return True


def claim_batch(conn: psycopg.Connection[Any], run_id: str, number: int, owner: str,
                host_id: str, live_seconds: float = 0) -> BatchClaim | None:
    """Make ``owner`` the batch's execution (one more attempt); None if the batch is
    finished already (a late duplicate of its job), or if another execution runs it
    and touched it (``fencing.watch``) within ``live_seconds``."""
    row = conn.execute(
        "UPDATE batches SET status = 'running', owner = %s, host_id = %s,"
        " attempts = attempts + 1, updated_at = now()"
        " WHERE run_id = %s AND number = %s AND (status = 'pending' OR (status = 'running'"
        " AND updated_at <= now() - make_interval(secs => %s)))"
        " RETURNING attempts, scan_ids",
        (owner, host_id, run_id, number, live_seconds)).fetchone()
    return None if row is None else BatchClaim(int(row[0]), list(row[1]))


def release_batch(conn: psycopg.Connection[Any], run_id: str, number: int,
                  owner: str) -> None:
    """An execution stopped by its host (SIGTERM, PostgreSQL gone) gives its batch back;
    an interruption is not an attempt that failed."""
    conn.execute("UPDATE batches SET status = 'pending', owner = NULL,"
                 " attempts = greatest(attempts - 1, 0), updated_at = now()"
                 " WHERE run_id = %s AND number = %s AND owner = %s AND status = 'running'",
                 (run_id, number, owner))


def finish_batch(conn: psycopg.Connection[Any], run_id: str, number: int, owner: str,
                 status: str, result: dict[str, Any]) -> bool:
    """Record the batch's result (``status`` ``done`` or ``abandoned``) if ``owner``
    still owns it; the last batch of the run to finish defers the settle job, exactly
    once (the request row's lock orders the finishers, and the count is read after it).
    False: fenced off, nothing recorded."""
    with conn.transaction():
        request = rows.by_run(conn, run_id, lock=True)
        cursor = conn.execute(
            "UPDATE batches SET status = %s, result = %s, updated_at = now()"
            " WHERE run_id = %s AND number = %s AND owner = %s AND status = 'running'",
            (status, Jsonb(result), run_id, number, owner))
        if cursor.rowcount != 1:
            return False
        left = conn.execute("SELECT count(*) FROM batches WHERE run_id = %s"
                            " AND status IN ('pending', 'running')", (run_id,)).fetchone()
        if request is not None and request.status == "running" and left == (0,):
            to_settling(conn, request.claim_id)
    return True


def to_settling(conn: psycopg.Connection[Any], claim_id: str) -> None:
    """The request's settle job, and the request ``settling`` (in the caller's
    transaction)."""
    job_id = defer(conn, TASK_SETTLE, claim_id=claim_id)
    conn.execute("UPDATE requests SET status = 'settling', job_id = %s,"
                 " stage_attempts = 0 WHERE claim_id = %s", (job_id, claim_id))


def batches_of(conn: psycopg.Connection[Any], run_id: str) -> list[dict[str, Any]]:
    """The run's batches in order: number, scan_ids, status, result, attempts."""
    cursor = conn.execute("SELECT number, scan_ids, status, result, attempts FROM batches"
                          " WHERE run_id = %s ORDER BY number", (run_id,))
    return [{"number": n, "scan_ids": list(ids), "status": s, "result": r, "attempts": a}
            for n, ids, s, r, a in cursor.fetchall()]


def fail_open_request(conn: psycopg.Connection[Any], claim_id: str, message: str) -> None:
    """Give up on a request whose stage cannot finish (the row says why; the file stays
    in ``processing/`` for a person to look at)."""
    conn.execute("UPDATE requests SET status = 'failed', message = %s,"
                 " finished_at = extract(epoch FROM now()), job_id = NULL"
                 " WHERE claim_id = %s AND status IN ('claimed', 'running', 'settling')",
                 (message, claim_id))
