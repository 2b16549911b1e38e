"""A run's checkpoint: ``checkpoint.jsonl`` in its run folder.

An append-only journal: each finished step is one JSON line, ``{"key": ..., ...}``,
written with a single ``write`` and fsynced before the step counts as done (threads
recording at once share one fsync). A crash can
only tear the last line, which opening cuts off; so every record is all-or-nothing, and
a resumed run redoes exactly the steps whose record is missing. The latest record of a
key wins.

Memory stays flat however long the journal: opening does not load it but indexes it
(``JournalIndex``: about 20 bytes per line, no record held), and ``get`` reads a record
back from the file when it is asked for. Records written since the open are held until
the handler ``forget``s them (it does once a later record supersedes them).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from daemon.checkpoint_index import JournalIndex, parse

FILE_NAME = "checkpoint.jsonl"


class Checkpoint:
    """Thread-safe journal of finished steps, keyed by a string (``CheckpointStore``).
    ``batch`` > 0: the journal of one batch of the run, beside the run's own."""

    def __init__(self, run_dir: Path, batch: int = 0) -> None:
        self.path = run_dir / (FILE_NAME if not batch else f"checkpoint.{batch}.jsonl")
        self._lock = threading.Lock()  # the file position, the records and the index
        self._sync_lock = threading.Lock()  # one fsync at a time; taken before _lock
        self._written = self._synced = 0  # lines written by this process / known on disk
        self._live: dict[str, dict[str, Any]] = {}  # written since the open, not forgotten
        self._index = JournalIndex.build(self.path)  # also cuts off a torn last line
        self._file = self.path.open("ab")

    def get(self, key: str) -> dict[str, Any] | None:
        """The latest record of ``key``, or None."""
        with self._lock:
            record = self._live.get(key)
            return record if record is not None else self._index.find(key)

    def had(self, key: str) -> bool:
        """Whether the journal, as opened, holds a record of ``key`` (not superseded
        since), judged by the index alone: no read, so a rare hash collision says True
        wrongly and ``get`` has the last word. How a resumed run finds, cheaply, where
        the run before it stopped."""
        with self._lock:
            return self._index.had(key)

    def held(self) -> int:
        """How many records are held in memory (the rest are read back on demand)."""
        with self._lock:
            return len(self._live)

    def records(self) -> list[dict[str, Any]]:
        """The latest record of every key, in journal order, read from the file: O(n)
        memory, for tests and tools; a run uses ``get``."""
        latest: dict[str, dict[str, Any]] = {}
        with self._lock, self.path.open("rb") as f:
            for line in f:
                record = parse(line)
                if record is not None:
                    latest[record["key"]] = record
        return list(latest.values())

    def forget(self, keys: Iterable[str]) -> None:
        """Drop records from memory only (the journal keeps them, and ``get`` may still
        read a record the journal had at the open): for steps a later record supersedes,
        so memory does not grow with the run. Missing keys are fine."""
        with self._lock:
            for key in keys:
                self._live.pop(key, None)

    def record(self, key: str, **data: Any) -> None:
        """Durably record that step ``key`` is finished, with ``data``."""
        check_key(key)
        record = {"key": key, **data}
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self._written += 1
            mine = self._written
        self._sync(mine)
        with self._lock:
            self._live[key] = record
            self._index.supersede(key)  # the journal's older record no longer counts

    def _sync(self, line: int) -> None:
        """Return once the ``line``-th line written is on disk. Group commit: one fsync
        covers every line written before it started, so threads recording at once share
        it instead of queueing for one fsync each (a few ms apiece on a busy disk)."""
        with self._sync_lock:
            if self._synced >= line:
                return  # another thread's fsync covered it
            with self._lock:
                upto = self._written
            os.fsync(self._file.fileno())
            self._synced = upto

    def close(self) -> None:
        with self._sync_lock, self._lock:
            self._file.close()
            self._index.close()


class FileCheckpoints:
    """``CheckpointStores`` of one host: a journal in each run folder."""

    def open(self, run_id: str, run_dir: Path, batch: int = 0) -> Checkpoint:
        return Checkpoint(run_dir, batch)


def check_key(key: str) -> None:
    """Raise ``ValueError`` unless JSON writes ``key`` as it is (no quotes, backslashes
    or control characters), so the index can read it without parsing. Every checkpoint
    store holds keys to this, so a run's keys work in all of them."""
    if not key or any(c in '"\\' or c < " " for c in key):
        raise ValueError(f"checkpoint key {key!r}: no quotes, backslashes or control "
                         "characters")


def resume_point(count: int, done: Callable[[int], bool]) -> int:
    """Where a resumed run picks up among steps ``1..count`` that ran roughly in order
    (``done(n)``: step ``n`` has its record, e.g. by ``Checkpoint.had``): a step that is
    done while the next is not (0 when none is, ``count`` when all are), found by
    bisection in O(log count) look-ups. A step before it that was not done after all is
    the caller's to find and do, as it goes through them."""
    lo, hi = 0, count + 1  # taken as: done(lo), not done(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if done(mid):
            lo = mid
        else:
            hi = mid
    return lo

