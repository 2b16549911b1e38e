"""The copy ledger in ``state/copies.sqlite``: which source scan was copied to which
target store, across runs. It makes a second copy of the same scan a skip (SPEC §4) and
lets a run find another run's unfinished create (SPEC §8, exactly once).

One row per (source instance, source scan, target instance, target store, marker):

- an *intent*: a run is about to create the copy carrying ``marker`` (written before
  the create; ``target_scan_id`` still NULL);
- a *copy*: that create succeeded, or the scan was found by its marker
  (``target_scan_id`` set).

Beside it, ``intent_files`` keeps the upload IDs of each intended create: they are the
creator's alone, so a later look-up finds a create whose answer was lost (SPEC §8,
exactly once) even on a target that drops the marker. ``target_markers`` records, per
target instance and marker field, whether the target kept the marker of a create
(checked once by reading it back); ``scanrelay status`` shows the targets that drop it.

A plain copy always has the same marker, so it has one row; each forced copy has a
marker of its own, hence a row of its own: the newest copy is the one reported.
The run's own checkpoint journal stays the authority within a run; the ledger is what
other runs see. SQLite in WAL mode, ``synchronous=NORMAL``: a write survives a killed
process (the case that matters here); after a power loss the marker lookup still
prevents duplicates because the checkpoint (fsynced) holds the intent.

The key leases live in this process (``daemon.store.leases.MemoryLeases``): on one host
the daemon's threads are the only contenders (one daemon per root), and a crash frees
them with the process, so a restarted daemon never waits for its own dead leases.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon import statedb
from daemon.store.abc import StoreError
from daemon.store.leases import LeaseMethods, Leases, MemoryLeases
from daemon.store.records import CopyKey, CopyState, MarkerCheck, OpenIntent, fold_copy_states

FILE_NAME = "copies.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    source          TEXT    NOT NULL,
    source_scan_id  INTEGER NOT NULL,
    target          TEXT    NOT NULL,
    target_store_id INTEGER NOT NULL,
    marker          TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    target_scan_id  INTEGER,
    intent_at       REAL    NOT NULL,
    copied_at       REAL,
    PRIMARY KEY (source, source_scan_id, target, target_store_id, marker)
);
CREATE TABLE IF NOT EXISTS intent_files (
    source          TEXT    NOT NULL,
    source_scan_id  INTEGER NOT NULL,
    target          TEXT    NOT NULL,
    target_store_id INTEGER NOT NULL,
    marker          TEXT    NOT NULL,
    upload_ids      TEXT    NOT NULL,  -- JSON list, as sent in the create's files
    PRIMARY KEY (source, source_scan_id, target, target_store_id, marker, upload_ids)
);
CREATE TABLE IF NOT EXISTS target_markers (
    target     TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    kept       INTEGER NOT NULL,
    checked_at REAL    NOT NULL,
    PRIMARY KEY (target, field)
);
"""
CHUNK = 500  # IDs per query (well under SQLite's parameter limit)


class SqliteCopyStore(LeaseMethods):
    """``CopyStore`` over ``state/copies.sqlite``, with leases in memory. Thread-safe.
    Raises ``StoreError`` only when the file itself is unusable (disk full, corrupt)."""

    def __init__(self, state_dir: Path, lease_seconds: float = 30.0) -> None:
        self.path = state_dir / FILE_NAME
        self.leases = Leases(MemoryLeases(), lease_seconds)
        self._lock = threading.Lock()
        with self._errors():
            self._db = statedb.connect(self.path, SCHEMA)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"the copy ledger {self.path} is unusable: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock, self._errors():
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self.leases.close()
        with self._lock:
            self._db.close()

    def states(self, source: str, target: str, store: int,
               scan_ids: Sequence[int]) -> dict[int, CopyState]:
        """What is known of each of ``scan_ids`` (those with any row), by source scan."""
        rows: list[tuple[int, str, str, int | None, float | None]] = []
        for start in range(0, len(scan_ids), CHUNK):
            chunk = list(scan_ids[start:start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows += self._run(
                "SELECT source_scan_id, marker, run_id, target_scan_id, copied_at"
                " FROM copies WHERE source = ? AND target = ? AND target_store_id = ?"
                f" AND source_scan_id IN ({marks}) ORDER BY copied_at",
                (source, target, store, *chunk))
        # Upload IDs only of the scans with an unconfirmed intent: a confirmed copy, or
        # no row at all (a fresh batch), needs none.
        open_ids = list(dict.fromkeys(int(r[0]) for r in rows if r[3] is None))
        uploads = self._intent_uploads(source, target, store, open_ids) if open_ids else {}
        return fold_copy_states(rows, uploads)

    def _intent_uploads(self, source: str, target: str, store: int, scan_ids: Sequence[int]
                        ) -> dict[tuple[int, str], list[OpenIntent]]:
        """The upload IDs of every intended create, by (source scan, marker)."""
        out: dict[tuple[int, str], list[OpenIntent]] = {}
        for start in range(0, len(scan_ids), CHUNK):
            chunk = list(scan_ids[start:start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._run(
                "SELECT source_scan_id, marker, upload_ids FROM intent_files"
                " WHERE source = ? AND target = ? AND target_store_id = ?"
                f" AND source_scan_id IN ({marks}) ORDER BY rowid",
                (source, target, store, *chunk))
            for scan_id, marker, ids in rows:
                intent = OpenIntent(marker, tuple(int(i) for i in json.loads(ids)))
                out.setdefault((int(scan_id), marker), []).append(intent)
        return out

    def state(self, key: CopyKey) -> CopyState:
        return self.states(key.source, key.target, key.target_store_id,
                           [key.source_scan_id]).get(key.source_scan_id, CopyState())

    def intent(self, key: CopyKey, marker: str, run_id: str,
               upload_ids: Sequence[int] = ()) -> None:
        """Record that ``run_id`` is about to create ``key``'s copy with ``marker`` and
        the uploads ``upload_ids`` (a row already confirmed for that marker is left as
        it is)."""
        with self._lock, self._errors(), self._db:  # both rows or neither
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO copies (source, source_scan_id, target, target_store_id, marker,"
                " run_id, intent_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*key.as_tuple(), marker, run_id, time.time()))
            if upload_ids:
                self._db.execute(
                    "INSERT INTO intent_files VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*key.as_tuple(), marker, json.dumps([int(i) for i in upload_ids])))

    def marker_check(self, target: str, field: str) -> MarkerCheck | None:
        """What the last read-back of ``field`` on ``target`` found, if any."""
        rows = self._run("SELECT kept, checked_at FROM target_markers"
                         " WHERE target = ? AND field = ?", (target, field))
        return MarkerCheck(target, field, bool(rows[0][0]), rows[0][1]) if rows else None

    def record_marker_check(self, target: str, field: str, kept: bool) -> None:
        self._run("INSERT INTO target_markers VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                  " kept = excluded.kept, checked_at = excluded.checked_at",
                  (target, field, int(kept), time.time()))

    def dropped_markers(self) -> list[MarkerCheck]:
        """The targets whose last read-back found the marker dropped."""
        rows = self._run("SELECT target, field, checked_at FROM target_markers WHERE kept = 0"
                         " ORDER BY target, field", ())
        return [MarkerCheck(t, f, False, at) for t, f, at in rows]

    def copied(self, key: CopyKey, marker: str, run_id: str, target_scan_id: int) -> None:
        """Record that ``key``'s copy with ``marker`` is ``target_scan_id`` (created, or
        found by its marker)."""
        now = time.time()
        self._run("INSERT INTO copies (source, source_scan_id, target, target_store_id, marker,"
                  " run_id, target_scan_id, intent_at, copied_at)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                  " ON CONFLICT DO UPDATE SET run_id = excluded.run_id,"
                  " target_scan_id = excluded.target_scan_id, copied_at = excluded.copied_at",
                  (*key.as_tuple(), marker, run_id, target_scan_id, now, now))
