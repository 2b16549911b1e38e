"""Schedules once per cluster: the producer of cluster mode.

Every host computes the due fires (``daemon.cluster.fireclock``: our crons and time
zones, coalescing and ``misfire_grace`` as on one host, judged by the database server's
clock). A fire is one transaction: insert ``(schedule, fire_time)`` into
``schedule_fires``, ``ON CONFLICT DO NOTHING``; if this host's insert made the row,
``enqueue`` the fire's request (its ``requests`` row and first job) in the same
transaction. So a fire happens once however many hosts see it due, and a host killed
before its commit leaves nothing behind: a host whose insert waited on the same key
then makes the row itself. ``fire_time`` is the cron's nominal time, never a clock
reading, so every host computes the same key.

A fire no host made within its ``misfire_grace`` (all hosts were down) is recorded
once as ``missed``. The rerun window is a fire too (``reruns``): the host that makes
its row runs it, and every rerun or deferred analysis it drops is a row of
``rerun_drops`` (once for good), inserted in the transaction that enqueues it; a window
cut short by its host's death leaves the rest to the next window. Through
``produce``, ``done`` and ``record`` this class is the window's ``Drops``, as
``daemon.schedule.produce.Producer`` is on one host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from daemon.cluster.enqueue import enqueue, new_claim_id, processing_name
from daemon.layout import Layout
from daemon.schedule.reruns import Settled, settled_at
from daemon.schedule.state import ANALYSIS, EXHAUSTED, RAN, RERUN, WINDOW

FIRED = "fired"
MISSED = "missed"
DROPPED = "dropped"

INSERT_FIRE = """
INSERT INTO schedule_fires (schedule, fire_time, status, claim_id, host_id, cron, timezone,
                            detail)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING RETURNING 1"""

INSERT_DROP = """
INSERT INTO rerun_drops (kind, source, window_time, status, name, claim_id, host_id)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING RETURNING 1"""

# A host stalled inside a fire's transaction (paused, swapped out) holds the fire's key
# and makes every other host wait on it: the server ends such a transaction after this
# long idle, the key is free again, and another host makes the fire.
STALLED_AFTER = "10s"

# What the rerun window lists (see ``settled``): the statuses settled into each folder.
SETTLED_STATUSES = {"done": ("done",), "failed": ("partial", "failed")}


@dataclass(frozen=True)
class Due:
    """One nominal fire of a job, found due at ``now`` (the database server's clock)."""

    job: str  # schedule:<name>, or reruns
    fire_time: datetime
    cron: str
    timezone: str
    now: datetime

    @property
    def late(self) -> float:
        return (self.now - self.fire_time).total_seconds()


def request_body(raw: dict[str, Any]) -> bytes:
    """A request's bytes, as ``daemon.submit.drop_request`` would write its file."""
    return (json.dumps(raw, indent=2, ensure_ascii=False, default=str) + "\n").encode()


class ClusterFires:
    """The cluster's fires and drops, in PostgreSQL. Thread-safe (one pooled connection
    per call)."""

    def __init__(self, pool: ConnectionPool[Any], layout: Layout, host_id: str) -> None:
        self.pool = pool
        self.layout = layout
        self.host_id = host_id

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, true)",
                         (STALLED_AFTER,))
            yield conn

    # ---- the clock -----------------------------------------------------------------

    def db_now(self) -> datetime:
        """The database server's clock: the one every host judges "due" by."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]

    def last_fire(self, job: str, cron: str, timezone: str) -> datetime | None:
        """The latest fire the cluster recorded for ``job`` (fired or missed), if it was
        computed from this cron and time zone (a changed one starts afresh)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT fire_time, cron, timezone FROM schedule_fires "
                               "WHERE schedule = %s ORDER BY fire_time DESC LIMIT 1",
                               (job,)).fetchone()
        if row is None:
            return None
        if (row[1], row[2]) != (cron, timezone):
            logger.info("{}: cron or time zone changed since the cluster last fired it; "
                        "no catch-up", job)
            return None
        return row[0]

    # ---- fires ---------------------------------------------------------------------

    def fire(self, due: Due, name: str, raw: dict[str, Any]) -> str | None:
        """Make ``due``'s fire and enqueue its request ``raw`` as ``name``, in one
        transaction; the claim ID, or None if another host made this fire."""
        with self._transaction() as conn:
            claim_id = new_claim_id(conn)
            if not self._insert_fire(conn, due, FIRED, claim_id, None):
                return None
            self._enqueue_request(conn, claim_id, name, raw)
        return claim_id

    def claim(self, due: Due) -> bool:
        """Make ``due``'s fire with no request of its own (the rerun window, which this
        host then runs); False if another host made it."""
        with self._transaction() as conn:
            return self._insert_fire(conn, due, FIRED, None, None)

    def miss(self, due: Due) -> bool:
        """Record ``due`` as missed (too late for its grace); False if recorded before."""
        with self._transaction() as conn:
            return self._insert_fire(conn, due, MISSED, None,
                                     {"late_seconds": round(due.late)})

    def _enqueue_request(self, conn: psycopg.Connection[Any], claim_id: str, name: str,
                         raw: dict[str, Any]) -> None:
        enqueue(conn, claim_id=claim_id, name=name, profile=None,
                      body=request_body(raw),
                      processing_name=processing_name(claim_id, None, name),
                      claimed_by=self.host_id)

    def _insert_fire(self, conn: psycopg.Connection[Any], due: Due, status: str,
                     claim_id: str | None, detail: dict[str, Any] | None) -> bool:
        row = conn.execute(INSERT_FIRE, (due.job, due.fire_time, status, claim_id,
                                         self.host_id, due.cron, due.timezone,
                                         None if detail is None else Jsonb(detail))).fetchone()
        return row is not None

    # ---- the rerun window's Drops ----------------------------------------------------

    def produce(self, key: str, job: str, kind: str, fire_time: datetime, name: str,
                raw: dict[str, Any], source: str | None = None) -> Path | None:
        """Enqueue ``raw`` as ``name`` unless ``(kind, source)`` was dropped before; the
        path its job writes in ``processing/``, or None."""
        source = _source(kind, source, key)
        with self._transaction() as conn:
            claim_id = new_claim_id(conn)
            row = conn.execute(INSERT_DROP, (kind, source, fire_time, DROPPED, name,
                                             claim_id, self.host_id)).fetchone()
            if row is None:
                return None
            self._enqueue_request(conn, claim_id, name, raw)
        return self.layout.processing / processing_name(claim_id, None, name)

    def done(self, key: str) -> bool:
        """True once ``key`` (``rerun:<run ID>``, ``analysis:<run ID>``) was dropped or
        found exhausted, by any host."""
        kind, _, source = key.partition(":")
        with self.pool.connection() as conn:
            row = conn.execute("SELECT 1 FROM rerun_drops WHERE kind = %s AND source = %s",
                               (kind, source)).fetchone()
        return row is not None

    def record(self, key: str, job: str, kind: str, fire_time: datetime, state: str, *,
               source: str | None = None, detail: dict[str, Any] | None = None) -> bool:
        """A rerun that used up its attempts (once: False if recorded before), or what a
        window did (written into its fire's row)."""
        with self._transaction() as conn:
            if kind == RERUN and state == EXHAUSTED:
                return conn.execute(INSERT_DROP, (kind, _source(kind, source, key), fire_time,
                                                  EXHAUSTED, None, None, self.host_id)
                                    ).fetchone() is not None
            if kind == WINDOW and state == RAN:
                return conn.execute("UPDATE schedule_fires SET detail = %s WHERE schedule = %s"
                                    " AND fire_time = %s", (Jsonb(detail or {}), job,
                                                            fire_time)).rowcount == 1
        raise ValueError(f"nothing to record for a {kind} that is {state}")

    def settled(self, folder: Path) -> Iterator[Settled]:
        """The requests the cluster settled into ``folder`` (``done/`` or ``failed/``),
        oldest first, from the ``requests`` table; their sidecars from the shared root.
        The rerun window's one read of the ledger: swap it for the store's own query."""
        statuses = SETTLED_STATUSES.get(folder.name, ())
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT final_path FROM requests WHERE status = ANY(%s) "
                                "AND run_id IS NOT NULL AND final_path IS NOT NULL "
                                "ORDER BY finished_at, claim_id", (list(statuses),)).fetchall()
        for (final_path,) in rows:
            # By name under this host's folder: the share may be mounted elsewhere on
            # the host that settled it.
            item = settled_at(folder / Path(final_path).name)
            if item is not None:
                yield item


def _source(kind: str, source: str | None, key: str) -> str:
    """The run a drop is about: given, else from its key (``<kind>:<run ID>``)."""
    if source is not None:
        return source
    prefix = f"{kind}:"
    if kind not in (RERUN, ANALYSIS) or not key.startswith(prefix):
        raise ValueError(f"no source run in drop key {key!r}")
    return key[len(prefix):]

