"""The cluster's copy ledger and copy key leases (``CopyStore``) in PostgreSQL: the
tables of ``0002_copies.sql``, shared by every host.

The ledger means what the SQLite one means (``daemon.store.sqlite_copies``); here every
host sees every run's copies and intents. Leases live in ``copy_leases``, timed by the
server's clock: taken when absent or expired (in one statement, so two hosts cannot
both take one), renewed by this process's keeper (``daemon.store.leases``), deleted on
release. A host paused or cut off longer than a lease finds it taken over, or expired,
and its fence fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg_pool import ConnectionPool

from daemon.store import pg
from daemon.store.leases import Held, LeaseMethods, Leases
from daemon.store.records import CopyKey, CopyState, MarkerCheck, OpenIntent, fold_copy_states

WHAT = "the copy ledger"
CHUNK = 10_000  # source scans per query: bounded statements, few round trips
KEY_WHERE = "source = %s AND source_scan_id = %s AND target = %s AND target_store_id = %s"
LEASE_FOR = "now() + make_interval(secs => %s)"


class PgLeases:
    """``LeaseTable`` over ``copy_leases``: one statement per call, server time."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool

    def acquire(self, key: CopyKey, owner: str, seconds: float) -> bool:
        with pg.connection(self._pool, "the copy leases") as conn:
            row = conn.execute(
                "INSERT INTO copy_leases (source, source_scan_id, target, target_store_id,"
                f" owner, expires_at) VALUES (%s, %s, %s, %s, %s, {LEASE_FOR})"
                " ON CONFLICT (source, source_scan_id, target, target_store_id) DO UPDATE"
                " SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE copy_leases.expires_at <= now() RETURNING 1",
                (*key.as_tuple(), owner, seconds)).fetchone()
        return row is not None

    def renew(self, held: Sequence[Held], seconds: float) -> set[Held]:
        if not held:
            return set()
        columns = list(zip(*((*key.as_tuple(), owner) for key, owner in held), strict=True))
        with pg.connection(self._pool, "the copy leases") as conn:
            rows = conn.execute(
                f"UPDATE copy_leases AS l SET expires_at = {LEASE_FOR}"
                " FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::text[])"
                " AS h(source, scan, target, store, owner)"
                " WHERE l.source = h.source AND l.source_scan_id = h.scan"
                " AND l.target = h.target AND l.target_store_id = h.store"
                " AND l.owner = h.owner AND l.expires_at > now()"
                " RETURNING l.source, l.source_scan_id, l.target, l.target_store_id, l.owner",
                (seconds, *(list(c) for c in columns))).fetchall()
        return {(CopyKey(s, int(i), t, int(st)), o) for s, i, t, st, o in rows}

    def release(self, key: CopyKey, owner: str) -> None:
        with pg.connection(self._pool, "the copy leases") as conn:
            conn.execute(f"DELETE FROM copy_leases WHERE {KEY_WHERE} AND owner = %s",
                         (*key.as_tuple(), owner))


class PgCopyStore(LeaseMethods):
    """``CopyStore`` over the cluster's tables. Thread-safe (each call takes a
    connection of ``pool``, which stays its owner's)."""

    def __init__(self, pool: ConnectionPool[Any], lease_seconds: float = 30.0) -> None:
        self._pool = pool
        self.leases = Leases(PgLeases(pool), lease_seconds)

    def close(self) -> None:
        self.leases.close()

    def states(self, source: str, target: str, store: int,
               scan_ids: Sequence[int]) -> dict[int, CopyState]:
        states: dict[int, CopyState] = {}
        for start in range(0, len(scan_ids), CHUNK):
            chunk = [int(i) for i in scan_ids[start:start + CHUNK]]
            states.update(self._states(source, target, store, chunk))
        return states

    def _states(self, source: str, target: str, store: int,
                scan_ids: list[int]) -> dict[int, CopyState]:
        where = ("source = %s AND target = %s AND target_store_id = %s"
                 " AND source_scan_id = ANY(%s)")
        params = (source, target, store, scan_ids)
        with pg.connection(self._pool, WHAT) as conn:
            rows = conn.execute(
                "SELECT source_scan_id, marker, run_id, target_scan_id FROM copies"
                f" WHERE {where} ORDER BY copied_at NULLS FIRST, intent_at", params).fetchall()
            files = conn.execute(
                "SELECT source_scan_id, marker, upload_ids FROM intent_files"
                f" WHERE {where} ORDER BY seq", params).fetchall()
        uploads: dict[tuple[int, str], list[OpenIntent]] = {}
        for scan_id, marker, ids in files:
            uploads.setdefault((scan_id, marker), []).append(
                OpenIntent(marker, tuple(int(i) for i in ids)))
        return fold_copy_states(rows, uploads)

    def state(self, key: CopyKey) -> CopyState:
        return self.states(key.source, key.target, key.target_store_id,
                           [key.source_scan_id]).get(key.source_scan_id, CopyState())

    def intent(self, key: CopyKey, marker: str, run_id: str,
               upload_ids: Sequence[int] = ()) -> None:
        with pg.connection(self._pool, WHAT) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO copies (source, source_scan_id, target, target_store_id, marker,"
                " run_id) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (*key.as_tuple(), marker, run_id))
            if upload_ids:
                conn.execute(
                    "INSERT INTO intent_files (source, source_scan_id, target,"
                    " target_store_id, marker, upload_ids) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (*key.as_tuple(), marker, [int(i) for i in upload_ids]))

    def copied(self, key: CopyKey, marker: str, run_id: str, target_scan_id: int) -> None:
        with pg.connection(self._pool, WHAT) as conn, conn.transaction():
            # Every target scan recorded for a key, for the post-run duplicate check.
            conn.execute(
                "INSERT INTO copy_creates (source, source_scan_id, target, target_store_id,"
                " target_scan_id, run_id) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING", (*key.as_tuple(), target_scan_id, run_id))
            conn.execute(
                "INSERT INTO copies (source, source_scan_id, target, target_store_id, marker,"
                " run_id, target_scan_id, copied_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " clock_timestamp()) ON CONFLICT (source, target, target_store_id,"
                " source_scan_id, marker) DO UPDATE SET run_id = excluded.run_id,"
                " target_scan_id = excluded.target_scan_id, copied_at = excluded.copied_at",
                (*key.as_tuple(), marker, run_id, target_scan_id))

    def marker_check(self, target: str, field: str) -> MarkerCheck | None:
        with pg.connection(self._pool, WHAT) as conn:
            row = conn.execute(
                "SELECT kept, extract(epoch FROM checked_at)::float8 FROM target_markers"
                " WHERE target = %s AND field = %s", (target, field)).fetchone()
        return None if row is None else MarkerCheck(target, field, bool(row[0]), row[1])

    def record_marker_check(self, target: str, field: str, kept: bool) -> None:
        with pg.connection(self._pool, WHAT) as conn:
            conn.execute(
                "INSERT INTO target_markers (target, field, kept, checked_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT (target, field) DO UPDATE"
                " SET kept = excluded.kept, checked_at = excluded.checked_at",
                (target, field, kept))

    def dropped_markers(self) -> list[MarkerCheck]:
        with pg.connection(self._pool, WHAT) as conn:
            rows = conn.execute(
                "SELECT target, field, extract(epoch FROM checked_at)::float8"
                " FROM target_markers WHERE NOT kept ORDER BY target, field").fetchall()
        return [MarkerCheck(t, f, False, at) for t, f, at in rows]
