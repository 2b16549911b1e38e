"""The ``hosts`` table: each host's heartbeat row, timed by the server's clock, for the
views (hosts alive, who runs what)."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def beat(conn: psycopg.Connection[Any], host_id: str, *, stopping: bool = False,
         info: dict[str, Any] | None = None) -> float:
    """This host is alive (``started_at`` is renewed when its process changed); the
    server's clock, as epoch seconds."""
    row = conn.execute(
        "INSERT INTO hosts (host_id, pid, started_at, heartbeat_at, stopping, info)"
        " VALUES (%s, %s, now(), now(), %s, %s)"
        " ON CONFLICT (host_id) DO UPDATE SET heartbeat_at = now(),"
        " started_at = CASE WHEN hosts.pid <> EXCLUDED.pid THEN now()"
        "                   ELSE hosts.started_at END,"
        " pid = EXCLUDED.pid, stopping = EXCLUDED.stopping, info = EXCLUDED.info"
        " RETURNING extract(epoch FROM heartbeat_at)::float8",
        (host_id, os.getpid(), stopping, Jsonb(info or {}))).fetchone()
    assert row is not None
    return float(row[0])


def worker_silent(conn: psycopg.Connection[Any], worker_id: int, bound: float) -> bool:
    """The worker has not heartbeaten for ``bound`` seconds (or is gone from the table):
    its loop has stopped, though its thread may still wait for its jobs."""
    row = conn.execute("SELECT extract(epoch FROM now() - last_heartbeat)"
                       " FROM procrastinate_workers WHERE id = %s", (worker_id,)).fetchone()
    return row is None or float(row[0]) > bound
