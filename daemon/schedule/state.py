"""``state/scheduler.sqlite``: what the scheduler must remember across restarts.

- ``jobs``: when each job is next due (and the trigger it was computed from), written
  through by the job store at every change. At start a fire that fell due while the
  daemon was down is found here and caught up (within its misfire grace) or skipped.
- ``drops``: one row per thing the scheduler produces once: a schedule's fire, a rerun
  of one failed run, a deferred analysis of one copy run, a rerun window. A row is
  ``reserved`` (with the request it will write) before the request file is written
  and ``dropped`` after, so a crash in between is repaired at the next start, and no
  key is ever produced twice.

One connection behind a lock (APScheduler's thread and the service may both write);
WAL lets ``scanrelay schedules`` read while the daemon writes.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon import statedb

FILE = "scheduler.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,
    next_run_time REAL
);
CREATE TABLE IF NOT EXISTS drops (
    key       TEXT PRIMARY KEY,
    job       TEXT NOT NULL,
    kind      TEXT NOT NULL,
    fire_time TEXT NOT NULL,
    state     TEXT NOT NULL,
    name      TEXT,
    source    TEXT,
    payload   TEXT,
    detail    TEXT,
    at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS drops_job ON drops(job, fire_time);
CREATE INDEX IF NOT EXISTS drops_state ON drops(state);
"""

# Drop states.
RESERVED = "reserved"  # about to write ``name``; the payload is kept for a repair
DROPPED = "dropped"  # ``name`` was written into the inbox
MISSED = "missed"  # a fire outside its misfire grace: skipped
EXHAUSTED = "exhausted"  # a transient failure that used up reruns.max_attempts
RAN = "ran"  # a rerun window (``detail`` holds what it did)

# Drop kinds.
FIRE = "fire"  # one fire of a schedule
WINDOW = "window"  # one fire of the rerun window
RERUN = "rerun"  # a failed run re-dropped (``source``: its run ID)
ANALYSIS = "analysis"  # a deferred analysis dropped (``source``: the copy run ID)


@dataclass(frozen=True)
class SavedJob:
    fingerprint: str
    next_run_time: datetime | None


@dataclass(frozen=True)
class Drop:
    key: str
    job: str
    kind: str
    fire_time: str
    state: str
    name: str | None
    source: str | None
    payload: dict[str, Any] | None
    detail: dict[str, Any] | None
    at: float


def iso(moment: datetime) -> str:
    """A fire time as stored: ISO 8601 in UTC, so text order is time order."""
    return moment.astimezone(UTC).isoformat()


class SchedulerState:
    """The scheduler's SQLite file. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = statedb.connect(path, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _insert(self, sql: str, params: tuple[Any, ...]) -> bool:
        """An ``INSERT OR IGNORE``; True if the row was new."""
        with self._lock:
            return self._db.execute(sql, params).rowcount == 1

    # ---- jobs ----------------------------------------------------------------------

    def saved_jobs(self) -> dict[str, SavedJob]:
        return {job_id: SavedJob(fingerprint, _from_timestamp(ts))
                for job_id, fingerprint, ts in self._run("SELECT * FROM jobs")}

    def save_job(self, job_id: str, fingerprint: str, next_run_time: datetime | None) -> None:
        ts = None if next_run_time is None else next_run_time.timestamp()
        self._run("INSERT INTO jobs VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                  "fingerprint = excluded.fingerprint, next_run_time = excluded.next_run_time",
                  (job_id, fingerprint, ts))

    def forget_jobs_except(self, keep: set[str]) -> None:
        for (job_id,) in self._run("SELECT id FROM jobs"):
            if job_id not in keep:
                self._run("DELETE FROM jobs WHERE id = ?", (job_id,))

    # ---- drops ---------------------------------------------------------------------

    def get(self, key: str) -> Drop | None:
        rows = self._run("SELECT * FROM drops WHERE key = ?", (key,))
        return _drop(rows[0]) if rows else None

    def reserve(self, key: str, job: str, kind: str, fire_time: datetime, name: str,
                source: str | None, payload: dict[str, Any]) -> bool:
        """Record that ``name`` is about to be written; False if ``key`` exists already."""
        return self._insert("INSERT OR IGNORE INTO drops (key, job, kind, fire_time, state, "
                            "name, source, payload, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (key, job, kind, iso(fire_time), RESERVED, name, source,
                             json.dumps(payload), time.time()))

    def record(self, key: str, job: str, kind: str, fire_time: datetime, state: str, *,
               source: str | None = None, detail: dict[str, Any] | None = None) -> bool:
        """A row that needs no file (missed, exhausted, a window); False if it existed."""
        return self._insert("INSERT OR IGNORE INTO drops (key, job, kind, fire_time, state, "
                            "source, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (key, job, kind, iso(fire_time), state, source,
                             None if detail is None else json.dumps(detail), time.time()))

    def mark(self, key: str, state: str, *, name: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        self._run("UPDATE drops SET state = ?, name = coalesce(?, name), "
                  "detail = coalesce(?, detail), at = ? WHERE key = ?",
                  (state, name, None if detail is None else json.dumps(detail), time.time(),
                   key))

    def reserved(self) -> list[Drop]:
        return [_drop(r) for r in self._run("SELECT * FROM drops WHERE state = ? ORDER BY at",
                                            (RESERVED,))]

    def last(self, job: str, kinds: tuple[str, ...]) -> Drop | None:
        """The latest row of ``job`` of one of ``kinds`` (its last fire)."""
        marks = ", ".join("?" * len(kinds))
        rows = self._run(f"SELECT * FROM drops WHERE job = ? AND kind IN ({marks}) "
                         "ORDER BY fire_time DESC, at DESC LIMIT 1", (job, *kinds))
        return _drop(rows[0]) if rows else None

    def by_source(self, kind: str, source: str) -> Drop | None:
        rows = self._run("SELECT * FROM drops WHERE kind = ? AND source = ?", (kind, source))
        return _drop(rows[0]) if rows else None

    def of_kind(self, kind: str, state: str) -> list[Drop]:
        return [_drop(r) for r in self._run("SELECT * FROM drops WHERE kind = ? AND state = ? "
                                            "ORDER BY at", (kind, state))]


def _from_timestamp(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _drop(row: tuple[Any, ...]) -> Drop:
    key, job, kind, fire_time, state, name, source, payload, detail, at = row
    return Drop(key, job, kind, fire_time, state, name, source,
                None if payload is None else json.loads(payload),
                None if detail is None else json.loads(detail), at)
