"""The request history of one host (``RequestStore``) in ``state/ledger.sqlite``:
every request it claimed, the run it became, and how it ended. ``scanrelay runs`` and
``show`` read it.

One connection behind a lock: the writes are few (a handful per request) and SQLite
in WAL mode lets the CLI read while the daemon writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon import statedb
from daemon.store.abc import StoreError
from daemon.store.records import FAILED_STATUSES, RequestRecord, RunFilter

LEDGER_FILE = "ledger.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    claim_id    TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    profile     TEXT,
    claimed_at  REAL NOT NULL,
    run_id      TEXT UNIQUE,
    action      TEXT,
    label       TEXT,
    status      TEXT NOT NULL,
    finished_at REAL,
    final_path  TEXT,
    message     TEXT,
    counts      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status);
-- Newest-first pages of the history (web page, `runs`), whole or by action or status.
CREATE INDEX IF NOT EXISTS requests_claimed ON requests(claimed_at, claim_id);
CREATE INDEX IF NOT EXISTS requests_action_claimed ON requests(action, claimed_at);
CREATE INDEX IF NOT EXISTS requests_status_claimed ON requests(status, claimed_at);
"""


class SqliteRequestStore:
    """``RequestStore`` over ``state/ledger.sqlite``. Thread-safe."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly`` for the CLI's readers: they may lack write access to ``state/``.
        Raises ``StoreError`` when the file cannot be opened."""
        self.path = path
        self._lock = threading.Lock()
        with self._errors():
            if readonly:
                self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False, timeout=30)
                return
            self._db = statedb.connect(path, SCHEMA)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"the ledger {self.path} is unusable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock, self._errors():
            self._db.execute(sql, params)

    def claimed(self, claim_id: str, name: str, profile: str | None) -> None:
        self._write("INSERT OR IGNORE INTO requests (claim_id, name, profile, claimed_at, status)"
                    " VALUES (?, ?, ?, ?, 'claimed')", (claim_id, name, profile, time.time()))

    def started(self, claim_id: str, run_id: str, action: str, label: str | None) -> None:
        self._write("UPDATE requests SET run_id = ?, action = ?, label = ?, status = 'running',"
                    " attempts = attempts + 1 WHERE claim_id = ?",
                    (run_id, action, label, claim_id))

    def finished(self, claim_id: str, status: str, final_path: Path, message: str | None,
                 counts: dict[str, Any]) -> None:
        self._write("UPDATE requests SET status = ?, finished_at = ?, final_path = ?,"
                    " message = ?, counts = ? WHERE claim_id = ?",
                    (status, time.time(), str(final_path), message, json.dumps(counts),
                     claim_id))

    def get(self, key: str) -> RequestRecord | None:
        rows = self._query("SELECT * FROM requests WHERE claim_id = ? OR run_id = ?", (key, key))
        return rows[0] if rows else None

    def by_name(self, name: str) -> list[RequestRecord]:
        return self._query("SELECT * FROM requests WHERE name = ? ORDER BY claimed_at DESC",
                           (name,))

    def recent(self, limit: int = 50, failed_only: bool = False) -> list[RequestRecord]:
        where = f"WHERE status IN {FAILED_STATUSES!r}" if failed_only else ""
        return self._query(f"SELECT * FROM requests {where} ORDER BY claimed_at DESC, "
                           "claim_id DESC LIMIT ?", (limit,))

    def search(self, filters: RunFilter, limit: int, offset: int = 0) -> list[RequestRecord]:
        where, params = filters.where()
        return self._query(f"SELECT * FROM requests {where} ORDER BY claimed_at DESC, "
                           "claim_id DESC LIMIT ? OFFSET ?", (*params, limit, offset))

    def count(self, filters: RunFilter) -> int:
        where, params = filters.where()
        with self._lock, self._errors():
            return int(self._db.execute(f"SELECT count(*) FROM requests {where}",
                                        params).fetchone()[0])

    def actions(self) -> list[str]:
        with self._lock, self._errors():
            rows = self._db.execute("SELECT DISTINCT action FROM requests"
                                    " WHERE action IS NOT NULL ORDER BY action").fetchall()
        return [r[0] for r in rows]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[RequestRecord]:
        with self._lock, self._errors():
            cursor = self._db.execute(sql, params)
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        records = []
        for row in rows:
            values = dict(zip(names, row, strict=True))
            values["counts"] = json.loads(values["counts"] or "{}")
            records.append(RequestRecord(**values))
        return records


def read_ledger(state: Path) -> SqliteRequestStore | None:
    """The ledger of ``state/`` opened read-only for a reader (the CLI), or None if the
    daemon never ran there: a reader must not create the daemon's files."""
    path = state / LEDGER_FILE
    return SqliteRequestStore(path, readonly=True) if path.exists() else None
