"""The cluster's request rows (table ``requests`` of ``0001_core.sql``) as the jobs see
them: a request's stage, its bytes, its file in ``processing/``. The request history
itself (claimed, started, finished) is the store's (``daemon.store.pg_requests``).

A row's ``status`` is its stage: ``claimed`` (its plan job runs), ``running`` (its
batches run), ``settling`` (its settle job runs), then how it ended (``done``,
``partial``, ``failed``, ``invalid``), as in the ledger of one host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from daemon.intake.claim import Claimed
from daemon.layout import Layout

SETTLE_LOCK = 0x5CA_5E7  # pg_advisory_xact_lock(SETTLE_LOCK, hashtext(name)): see name_lock
OPEN = ("claimed", "running", "settling")


@dataclass(frozen=True)
class RequestRow:
    claim_id: str
    name: str
    profile: str | None
    body: bytes
    processing_name: str
    status: str
    run_id: str | None
    job_id: int | None
    stage_attempts: int

    def claimed(self, layout: Layout) -> Claimed:
        """The request as a claim in ``processing/`` (whether or not the file is there)."""
        return Claimed(layout.processing / self.processing_name, self.claim_id,
                       self.profile, self.name)


_COLUMNS = "claim_id, name, profile, body, processing_name, status, run_id, job_id, " \
           "stage_attempts"


def _row(values: tuple[Any, ...] | None) -> RequestRow | None:
    if values is None:
        return None
    claim_id, name, profile, body, processing, status, run_id, job_id, attempts = values
    return RequestRow(claim_id, name, profile, bytes(body), processing, status, run_id,
                      job_id, attempts)


def load(conn: psycopg.Connection[Any], claim_id: str, *, lock: bool = False
         ) -> RequestRow | None:
    """The row of ``claim_id``; ``lock``: FOR UPDATE (inside a transaction)."""
    return _row(conn.execute(f"SELECT {_COLUMNS} FROM requests WHERE claim_id = %s"
                             + (" FOR UPDATE" if lock else ""), (claim_id,)).fetchone())


def by_run(conn: psycopg.Connection[Any], run_id: str, *, lock: bool = False
           ) -> RequestRow | None:
    return _row(conn.execute(f"SELECT {_COLUMNS} FROM requests WHERE run_id = %s"
                             + (" FOR UPDATE" if lock else ""), (run_id,)).fetchone())


def begin_stage(conn: psycopg.Connection[Any], claim_id: str, status: str, host_id: str
                ) -> int | None:
    """One more execution of the request's current stage (``status``), on ``host_id``:
    how many executions it has had, this one included; None if the request has left
    that stage (this job is late: another execution finished it)."""
    row = conn.execute("UPDATE requests SET stage_attempts = stage_attempts + 1,"
                       " host_id = %s WHERE claim_id = %s AND status = %s"
                       " RETURNING stage_attempts", (host_id, claim_id, status)).fetchone()
    return None if row is None else int(row[0])


def name_lock(conn: psycopg.Connection[Any], name: str, timeout_s: float = 30) -> None:
    """Hold, until the transaction ends, the cluster-wide lock of a request name: two
    hosts settling two requests of one name into ``done/`` or ``failed/`` would each
    pick the same free name. Raises ``psycopg.errors.LockNotAvailable`` after
    ``timeout_s`` (a host paused while holding it): the job is retried."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(timeout_s * 1000)}",))
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SETTLE_LOCK, name))
