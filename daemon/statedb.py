"""The SQLite files of ``state/`` (ledger, copies, scheduler): one way to open them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating) ``path`` for the daemon's threads, which share the connection
    behind their own lock: autocommit, WAL so the CLI can read while the daemon writes,
    ``synchronous=NORMAL`` (durable at each WAL checkpoint, never corrupt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db
