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

``key_lock(key)`` serialises the look-up-then-create of one key between the threads of
a process, so two runs of one daemon cannot both create the same copy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemon import statedb

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


@dataclass(frozen=True)
class CopyKey:
    """What makes two copies "the same copy" (SPEC §4)."""

    source: str
    source_scan_id: int
    target: str
    target_store_id: int

    def as_tuple(self) -> tuple[str, int, str, int]:
        return (self.source, self.source_scan_id, self.target, self.target_store_id)


@dataclass(frozen=True)
class OpenIntent:
    """A create that was intended but never confirmed: its marker and upload IDs."""

    marker: str
    upload_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class CopyState:
    """What the ledger knows of one key: its newest finished copy, and the creates
    that were intended but never confirmed (by any run)."""

    copied_to: int | None = None
    copied_by: str | None = None  # the run that made (or found) that copy
    open_intents: tuple[OpenIntent, ...] = ()

    @property
    def open_markers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.marker for i in self.open_intents))


@dataclass(frozen=True)
class MarkerCheck:
    """Whether ``target`` kept the marker field ``field`` of a create it was sent."""

    target: str
    field: str
    kept: bool
    checked_at: float


@dataclass
class _KeyLock:
    lock: threading.Lock
    users: int = 0


_key_locks: dict[tuple[str, int, str, int], _KeyLock] = {}
_key_locks_guard = threading.Lock()


@contextmanager
def key_lock(key: CopyKey) -> Iterator[None]:
    """Hold the process-wide lock of ``key``; other keys never wait for it."""
    name = key.as_tuple()
    with _key_locks_guard:
        entry = _key_locks.setdefault(name, _KeyLock(threading.Lock()))
        entry.users += 1
    try:
        with entry.lock:
            yield
    finally:
        with _key_locks_guard:
            entry.users -= 1
            if entry.users == 0:
                del _key_locks[name]


class CopyLedger:
    """Thread-safe access to ``copies.sqlite``. Methods raise ``sqlite3.Error`` only when
    the file itself is unusable (disk full, corrupt): the caller treats that as fatal."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._lock = threading.Lock()
        self._db = statedb.connect(self.path, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def states(self, source: str, target: str, store: int,
               scan_ids: Sequence[int]) -> dict[int, CopyState]:
        """What is known of each of ``scan_ids`` (those with any row), by source scan."""
        rows: list[tuple[int, str, str, int | None, float | None]] = []
        for start in range(0, len(scan_ids), CHUNK):
            chunk = list(scan_ids[start:start + CHUNK])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows += self._db.execute(
                    "SELECT source_scan_id, marker, run_id, target_scan_id, copied_at"
                    " FROM copies WHERE source = ? AND target = ? AND target_store_id = ?"
                    f" AND source_scan_id IN ({marks}) ORDER BY copied_at",
                    (source, target, store, *chunk)).fetchall()
        # Upload IDs only of the scans with an unconfirmed intent: a confirmed copy, or
        # no row at all (a fresh batch), needs none.
        open_ids = list(dict.fromkeys(int(r[0]) for r in rows if r[3] is None))
        uploads = self._intent_uploads(source, target, store, open_ids) if open_ids else {}
        states: dict[int, CopyState] = {}
        for scan_id, marker, run_id, target_id, _ in rows:  # oldest copy first: newest wins
            state = states.get(int(scan_id), CopyState())
            if target_id is None:
                intents = uploads.get((int(scan_id), marker)) or [OpenIntent(marker)]
                state = CopyState(state.copied_to, state.copied_by,
                                  (*state.open_intents, *intents))
            else:
                state = CopyState(int(target_id), run_id, state.open_intents)
            states[int(scan_id)] = state
        return states

    def _intent_uploads(self, source: str, target: str, store: int, scan_ids: Sequence[int]
                        ) -> dict[tuple[int, str], list[OpenIntent]]:
        """The upload IDs of every intended create, by (source scan, marker)."""
        out: dict[tuple[int, str], list[OpenIntent]] = {}
        for start in range(0, len(scan_ids), CHUNK):
            chunk = list(scan_ids[start:start + CHUNK])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    "SELECT source_scan_id, marker, upload_ids FROM intent_files"
                    " WHERE source = ? AND target = ? AND target_store_id = ?"
                    f" AND source_scan_id IN ({marks}) ORDER BY rowid",
                    (source, target, store, *chunk)).fetchall()
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
        with self._lock, self._db:  # both rows or neither
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
        with self._lock:
            row = self._db.execute(
                "SELECT kept, checked_at FROM target_markers WHERE target = ? AND field = ?",
                (target, field)).fetchone()
        return None if row is None else MarkerCheck(target, field, bool(row[0]), row[1])

    def record_marker_check(self, target: str, field: str, kept: bool) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO target_markers VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " kept = excluded.kept, checked_at = excluded.checked_at",
                (target, field, int(kept), time.time()))

    def dropped_markers(self) -> list[MarkerCheck]:
        """The targets whose last read-back found the marker dropped."""
        with self._lock:
            rows = self._db.execute(
                "SELECT target, field, checked_at FROM target_markers WHERE kept = 0"
                " ORDER BY target, field").fetchall()
        return [MarkerCheck(t, f, False, at) for t, f, at in rows]

    def copied(self, key: CopyKey, marker: str, run_id: str, target_scan_id: int) -> None:
        """Record that ``key``'s copy with ``marker`` is ``target_scan_id`` (created, or
        found by its marker)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO copies (source, source_scan_id, target, target_store_id, marker,"
                " run_id, target_scan_id, intent_at, copied_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET run_id = excluded.run_id,"
                " target_scan_id = excluded.target_scan_id, copied_at = excluded.copied_at",
                (*key.as_tuple(), marker, run_id, target_scan_id, now, now))
