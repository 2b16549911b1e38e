"""Checkpoint records of the cluster's runs (``CheckpointStore``) in PostgreSQL: the
table ``checkpoints`` of ``0003_checkpoints.sql``, one row per (run, batch, key).

Whichever host runs a batch next finds the records of the one before it. ``record``
returns once its insert has committed (the server's ``synchronous_commit`` makes that
durable); the latest record of a key replaces the one before. As with the journal
(``daemon.checkpoint``), records written since the open are held in memory until
``forget``; the rest are read back from the database when asked for.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from daemon.checkpoint import check_key
from daemon.store import pg

WHAT = "the checkpoint records"


class PgCheckpoint:
    """The records of run ``run_id``'s batch ``batch`` (0: the run's own). Thread-safe."""

    def __init__(self, pool: ConnectionPool[Any], run_id: str, batch: int = 0) -> None:
        self._pool = pool
        self._scope = (run_id, batch)
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}  # written since the open, not forgotten

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._live.get(key)
        if record is not None:
            return record
        with pg.connection(self._pool, WHAT) as conn:
            row = conn.execute("SELECT record FROM checkpoints WHERE run_id = %s"
                               " AND batch = %s AND key = %s", (*self._scope, key)).fetchone()
        return None if row is None else dict(row[0])

    def had(self, key: str) -> bool:
        """Exact here: one indexed look-up (a resume makes about log2(batches))."""
        return self.get(key) is not None

    def record(self, key: str, **data: Any) -> None:
        check_key(key)
        record = {"key": key, **data}
        text = json.dumps(record, ensure_ascii=False, default=str)
        with pg.connection(self._pool, WHAT) as conn:
            conn.execute(
                "INSERT INTO checkpoints (run_id, batch, key, record)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (run_id, batch, key)"
                " DO UPDATE SET record = excluded.record, recorded_at = now()",
                (*self._scope, key, text))
        with self._lock:
            self._live[key] = record

    def forget(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._live.pop(key, None)

    def held(self) -> int:
        with self._lock:
            return len(self._live)

    def records(self) -> list[dict[str, Any]]:
        with pg.connection(self._pool, WHAT) as conn:
            rows = conn.execute("SELECT record FROM checkpoints WHERE run_id = %s"
                                " AND batch = %s ORDER BY seq", self._scope).fetchall()
        return [dict(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._live.clear()


class PgCheckpoints:
    """``CheckpointStores`` over the ``checkpoints`` table."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool

    def open(self, run_id: str, run_dir: Path, batch: int = 0) -> PgCheckpoint:
        return PgCheckpoint(self._pool, run_id, batch)

    def purge(self, run_id: str) -> int:
        """Delete every record of run ``run_id`` (once it is settled: nothing resumes
        it). Returns how many there were."""
        with pg.connection(self._pool, WHAT) as conn:
            return conn.execute("DELETE FROM checkpoints WHERE run_id = %s",
                                (run_id,)).rowcount
