"""What the whole cluster is doing, read from its PostgreSQL: for ``scanrelay status``,
``show``, ``schedules``, the metrics and the web page, from any host.

Each read is one transaction, ``REPEATABLE READ READ ONLY``: one snapshot, so the hosts,
the queue and the running requests agree with each other, and a reader can never write.
Parameters are bound, never formatted in. Ages and liveness are computed by the
server's clock (``now()``), so a host with a shifted clock reads what the others read.
Tables made by other parts of the runtime (procrastinate's, ``slot_leases``,
``schedule_fires``) are read only when ``to_regclass`` finds them: a reader works on a
database at any schema version, even one no host has migrated yet.

No answer carries the DSN: a failure becomes ``ClusterUnavailable``, whose message
names the error's class only (a libpq message may quote a malformed DSN).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg.rows import dict_row

from daemon.config import ClusterConfig, Config
from daemon.errors import FatalError, ScanrelayError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from daemon.cluster.history import PgHistory

POOL_NAME = "scanrelay-views"
POOL_SIZE = 2  # a reader: the web page's threads share two connections
READ_TIMEOUT = 5.0  # seconds to wait for a connection: a page must not hang on a dead server
RUNNING_SHOWN = 200  # in-flight requests listed (the counts cover them all)
OPTIONAL = ("hosts", "requests", "batches", "procrastinate_jobs", "procrastinate_workers",
            "slot_leases", "schedule_fires")


class ClusterUnavailable(ScanrelayError):
    """The cluster's PostgreSQL cannot be read now (down, refused, or misconfigured)."""


class _QuietPool(logging.Filter):
    """Drops psycopg_pool's own lines about this reader's pool: they quote the driver's
    error text, which may hold a malformed DSN. The reader reports failures itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and args[0] == POOL_NAME)


logging.getLogger("psycopg.pool").addFilter(_QuietPool())


def open_view(config: Config) -> ClusterView | None:
    """The cluster's read side for ``config``, or None on a single host. Connects at the
    first read; ``close()`` it when done."""
    return ClusterView(config.cluster) if config.cluster is not None else None


@contextmanager
def viewing(config: Config) -> Iterator[ClusterView | None]:
    """``open_view`` for one command: closed when the block ends."""
    view = open_view(config)
    try:
        yield view
    finally:
        if view is not None:
            view.close()


def unavailable(exc: BaseException) -> ClusterUnavailable:
    """A safe description of ``exc``: its class and SQLSTATE, never its text."""
    state = getattr(exc, "sqlstate", None)
    return ClusterUnavailable(f"PostgreSQL cannot be read ({type(exc).__name__}"
                              + (f", SQLSTATE {state}" if state else "") + ")")


class ClusterView:
    """Read-only queries on the cluster's PostgreSQL, over a small pool of its own."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.cluster = cluster
        self.alive_seconds = cluster.lease_seconds  # a host silent longer lost its leases
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one read-only snapshot; raises ``ClusterUnavailable``."""
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield conn
        except psycopg.Error as exc:
            raise unavailable(exc) from None

    def history(self) -> PgHistory:
        """Run history (the ``requests`` table) behind the ``Ledger`` read calls."""
        from daemon.cluster.history import PgHistory

        return PgHistory(self)

    # --- the whole cluster ----------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Hosts, queue, running requests and connection slots, from one snapshot:
        ``{"reachable": True, "hosts": [...], "hosts_alive", "queue": {...},
        "running": [...], "slots": [...]}``, or ``{"reachable": False, "error"}``."""
        try:
            with self.read() as conn:
                have = tables(conn)
                running = self._running(conn, have)
                hosts = self._hosts(conn, have, running)
                return {"reachable": True, "hosts": hosts,
                        "hosts_alive": sum(1 for h in hosts if h["alive"]),
                        "queue": self._queue(conn, have), "running": running,
                        "slots": self._slots(conn, have)}
        except ClusterUnavailable as exc:
            return {"reachable": False, "error": str(exc)}

    def _hosts(self, conn: psycopg.Connection[Any], have: set[str],
               running: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every host that ever beat, by ID: ``alive`` (a heartbeat within
        ``alive_seconds`` by the server's clock), ``state`` (up, stopping, down) and
        ``runs``: the runs it runs, whole or a batch of."""
        if "hosts" not in have:
            return []
        rows = _rows(conn, "SELECT host_id, pid, started_at, heartbeat_at, stopping,"
                     " heartbeat_at > now() - make_interval(secs => %s) AS alive,"
                     " extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age"
                     " FROM hosts ORDER BY host_id", (self.alive_seconds,))
        for row in rows:
            row["state"] = ("stopping" if row["stopping"] else "up") if row["alive"] \
                else "down"
            row["heartbeat_age_seconds"] = round(row.pop("heartbeat_age"), 1)
            row["runs"] = [r["key"] for r in running
                           if row["host_id"] in (r["host"], *r["batch_hosts"])]
        return [_iso(row) for row in rows]

    def _running(self, conn: psycopg.Connection[Any],
                 have: set[str]) -> list[dict[str, Any]]:
        """Requests claimed and not settled, oldest first, each with the host running
        it and its batches counted by status (``batches``) and by host running one."""
        if "requests" not in have:
            return []
        rows = _rows(conn, "SELECT claim_id, run_id, name, profile, status, action, label,"
                     " host_id AS host, claimed_by, attempts FROM requests"
                     " WHERE finished_at IS NULL ORDER BY claimed_at, claim_id LIMIT %s",
                     (RUNNING_SHOWN,))
        batches = self._batch_counts(conn, have, [r["run_id"] for r in rows if r["run_id"]])
        for row in rows:
            row["key"] = row["run_id"] or row["claim_id"]
            counts, hosts = batches.get(row["run_id"], ({}, []))
            row["batches"], row["batch_hosts"] = counts, hosts
        return rows

    def _batch_counts(self, conn: psycopg.Connection[Any], have: set[str], run_ids: list[str]
                      ) -> dict[str, tuple[dict[str, int], list[str]]]:
        if "batches" not in have or not run_ids:
            return {}
        out: dict[str, tuple[dict[str, int], list[str]]] = {}
        for row in _rows(conn, "SELECT run_id, status, host_id, count(*) AS n FROM batches"
                         " WHERE run_id = ANY(%s) GROUP BY run_id, status, host_id"
                         " ORDER BY run_id, status, host_id", (run_ids,)):
            counts, hosts = out.setdefault(row["run_id"], ({}, []))
            counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
            if row["status"] == "running" and row["host_id"] and row["host_id"] not in hosts:
                hosts.append(row["host_id"])
        return out

    def _queue(self, conn: psycopg.Connection[Any], have: set[str]) -> dict[str, Any]:
        """procrastinate's jobs by task: ``todo`` (due), ``later`` (scheduled ahead: a
        retry's back-off) and ``doing``; the age of the oldest due job (since it was
        deferred, retried or due, whichever is last), and the workers alive."""
        queue: dict[str, Any] = {"tasks": [], "todo": 0, "later": 0, "doing": 0,
                                 "oldest_waiting_seconds": None, "workers_alive": None}
        if "procrastinate_jobs" not in have:
            return queue
        queue["tasks"] = _rows(
            conn, "SELECT task_name AS task,"
            " count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL"
            "  OR scheduled_at <= now())) AS todo,"
            " count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS later,"
            " count(*) FILTER (WHERE status = 'doing') AS doing"
            " FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            " GROUP BY task_name ORDER BY task_name", ())
        for key in ("todo", "later", "doing"):
            queue[key] = sum(t[key] for t in queue["tasks"])
        oldest = _one(conn, "SELECT max(extract(epoch FROM now() - greatest(j.scheduled_at,"
                      " e.at)))::float8 FROM procrastinate_jobs j LEFT JOIN LATERAL"
                      " (SELECT max(at) AS at FROM procrastinate_events ev"
                      "  WHERE ev.job_id = j.id"
                      "  AND ev.type IN ('deferred', 'deferred_for_retry', 'retried')) e"
                      " ON true WHERE j.status = 'todo'"
                      " AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())", ())
        queue["oldest_waiting_seconds"] = None if oldest is None else round(oldest, 1)
        if "procrastinate_workers" in have:
            queue["workers_alive"] = _one(
                conn, "SELECT count(*) FROM procrastinate_workers"
                " WHERE last_heartbeat > now() - make_interval(secs => %s)",
                (self.alive_seconds,))
        return queue

    def _slots(self, conn: psycopg.Connection[Any], have: set[str]) -> list[dict[str, Any]]:
        """Connection slots held now (unexpired leases), by instance and host."""
        if "slot_leases" not in have:
            return []
        return _rows(conn, "SELECT instance, host_id AS host, count(*) AS held"
                     " FROM slot_leases WHERE expires_at > now()"
                     " GROUP BY instance, host_id ORDER BY instance, host_id", ())

    # --- one run ----------------------------------------------------------------------

    def run_extras(self, key: str) -> dict[str, Any] | None:
        """What only the cluster knows of run (or claim) ``key``: the host running it
        (or that ran it last), the host that claimed it, and its batches (number,
        status, host, scans, attempts). None if the cluster has no such request."""
        with self.read() as conn:
            have = tables(conn)
            if "requests" not in have:
                return None
            found = _rows(conn, "SELECT run_id, host_id AS host, claimed_by FROM requests"
                          " WHERE claim_id = %s OR run_id = %s", (key, key))
            if not found:
                return None
            extras = found[0]
            run_id = extras.pop("run_id")
            extras["batches"] = _rows(
                conn, "SELECT number, status, host_id AS host, cardinality(scan_ids) AS scans,"
                " attempts, updated_at FROM batches WHERE run_id = %s ORDER BY number",
                (run_id,)) if run_id and "batches" in have else []
        extras["batches"] = [_iso(b) for b in extras["batches"]]
        counts: dict[str, int] = {}
        for batch in extras["batches"]:
            counts[batch["status"]] = counts.get(batch["status"], 0) + 1
        extras["batch_counts"] = counts
        return extras

    # --- schedules --------------------------------------------------------------------

    def last_fires(self, jobs: list[str]) -> dict[str, dict[str, Any]]:
        """The last fire of each of ``jobs`` (``schedule:<name>`` or ``reruns``): its
        time, ``fired`` or ``missed``, and the request it made (name, status, run)."""
        names = [*jobs, *(j.removeprefix("schedule:") for j in jobs)]
        with self.read() as conn:
            if "schedule_fires" not in tables(conn):
                return {}
            rows = _rows(conn, "SELECT DISTINCT ON (f.schedule) f.schedule, f.fire_time,"
                         " f.status, r.name, r.status AS request_status, r.run_id"
                         " FROM schedule_fires f LEFT JOIN requests r"
                         " ON r.claim_id = f.claim_id WHERE f.schedule = ANY(%s)"
                         " ORDER BY f.schedule, f.fire_time DESC", (names,))
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            job = row["schedule"] if row["schedule"] in jobs else f"schedule:{row['schedule']}"
            out[job] = row
        return out

    def _connection(self) -> Any:
        return self._open().connection(timeout=READ_TIMEOUT)

    def _open(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                from daemon.store.pg import dsn_of, open_pool

                try:
                    self._pool = open_pool(dsn_of(self.cluster), max_size=POOL_SIZE,
                                           name=POOL_NAME)
                except FatalError as exc:  # no DSN: its message names the variable or file
                    raise ClusterUnavailable(str(exc)) from None
                except psycopg.Error as exc:
                    raise unavailable(exc) from None
            return self._pool


def tables(conn: psycopg.Connection[Any]) -> set[str]:
    """Which of the tables a view may read exist (``to_regclass``)."""
    row = conn.execute("SELECT " + ", ".join(["to_regclass(%s) IS NOT NULL"] * len(OPTIONAL)),
                       OPTIONAL).fetchone()
    return {name for name, present in zip(OPTIONAL, row or (), strict=True) if present}


def _rows(conn: psycopg.Connection[Any], sql: LiteralString,
          params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(sql, params).fetchall())


def _one(conn: psycopg.Connection[Any], sql: LiteralString, params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as ISO 8601 strings: the views are printed as JSON and on the page."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
