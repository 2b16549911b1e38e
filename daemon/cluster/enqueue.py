"""Recording a claimed request and deferring its first job, in one transaction.

Every producer in cluster mode ends here: the claim of a dropped file
(``daemon.cluster.intake``), the orphan sweep (a file claimed by a host that died before
its commit), a schedule's fire. The request's bytes travel in the row, so its jobs run
on any host; the plan job writes ``processing/<processing_name>`` from them if the file
is not there yet (a fire has no file until then).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from daemon.cluster.app import TASK_PLAN, defer, require_transaction
from daemon.intake.claim import NO_PROFILE
from daemon.store.pg_requests import insert_claimed

CLAIM_NUMBERS = 1 << 24  # the 6 hex of a claim ID


def enqueue(conn: psycopg.Connection[Any], *, claim_id: str, name: str,
            profile: str | None, body: bytes, processing_name: str,
            claimed_by: str) -> bool:
    """In the caller's open transaction on ``conn``: insert the request row (status
    ``claimed``, claimed at the server's ``now()``) and defer its plan job. Idempotent
    by ``claim_id``: if the row exists already (another host's sweep, a retried fire),
    nothing is inserted or deferred and the answer is False (callers may ignore it).
    ``processing_name`` is ``processing_name(claim_id, profile, name)``."""
    require_transaction(conn)
    if not insert_claimed(conn, claim_id=claim_id, name=name, profile=profile, body=body,
                          processing_name=processing_name, claimed_by=claimed_by):
        return False
    job_id = defer(conn, TASK_PLAN, claim_id=claim_id)
    conn.execute("UPDATE requests SET job_id = %s WHERE claim_id = %s", (job_id, claim_id))
    return True


def new_claim_id(conn: psycopg.Connection[Any], now: datetime | None = None) -> str:
    """A claim ID (``YYYYMMDD-HHMMSS-<6 hex>``, as on one host) that no other host can
    make: the hex is the cluster's next claim number (a sequence), not random bits, so
    two claims share an ID only if 2^24 claims separate them within one second. Its
    time is the server's (``now`` for tests)."""
    row = conn.execute("SELECT nextval('claim_numbers'), now()").fetchone()
    assert row is not None
    number, server_now = row
    stamp = (now or server_now).astimezone(UTC)  # the server's clock, as every stamp
    return f"{stamp:%Y%m%d-%H%M%S}-{number % CLAIM_NUMBERS:06x}"


def processing_name(claim_id: str, profile: str | None, name: str) -> str:
    """The request's file name in ``processing/`` (``daemon.intake.claim.Claimed``)."""
    return f"{claim_id}+{profile or NO_PROFILE}+{name}"
