"""``scanrelay run`` with ``cluster:``: one host of the cluster.

At start: this host's ``state/`` lock (one daemon per host), the schema migrated
(``daemon.store.pg.migrate``, once however many hosts start together), then these
run side by side:

- the main loop (this thread): the polling claim loop (``ClusterIntake``), the
  ``hosts`` row and ``state/`` heartbeat, the systemd watchdog, and the worker's
  supervision;
- the procrastinate worker (``WorkerThread``): plan, batch and settle jobs of any
  request, ``runs.max_parallel`` at once, and the periodic sweeps;
- the scheduler (``daemon.schedule.scheduler`` in cluster mode): every host computes
  the due fires, each is made once for the cluster (``daemon.cluster.fires``);
- nothing else: no host owns a request, so nothing in ``processing/`` is resumed from
  here (the sweep gives a dead host's jobs to the living).

SIGTERM: claims stop, running jobs checkpoint and go back to the queue (another host
takes them up), the worker stops, the process exits within 10 s. PostgreSQL going
away: claims stop and this host's jobs stop the same way; the connection is retried;
once it answers, the worker starts again.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import psycopg
import psycopg_pool
from loguru import logger

from daemon import metrics, outage, retry
from daemon.cluster import hosts, jobs
from daemon.cluster.app import worker_app
from daemon.cluster.fires import ClusterFires
from daemon.cluster.intake import ClusterIntake
from daemon.cluster.runtime import Runtime
from daemon.cluster.slots import SlotBroker
from daemon.cluster.views import ClusterView
from daemon.cluster.worker import WorkerThread
from daemon.config import Config
from daemon.errors import FatalError
from daemon.fsutil import write_json
from daemon.instances.registry import Instances
from daemon.layout import Layout
from daemon.notify import Notifier
from daemon.schedule.scheduler import Scheduler
from daemon.status import heartbeat_path
from daemon.store import pg
from daemon.store.stores import open_stores
from handlers import limits

TICK = 0.2  # seconds between rounds of the main loop
STOP_DEADLINE = 8.0  # seconds running jobs get to checkpoint on shutdown (SPEC: < 10)
DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)


class ClusterService:
    def __init__(self, config: Config) -> None:
        assert config.cluster is not None
        self.config = config
        self.cluster = config.cluster
        self.layout = Layout.of(config).ensure(sorted(config.profiles))
        self.stop = threading.Event()
        self.notifier = Notifier()
        self.started_at = time.time()
        self.dsn = pg.dsn_of(config.cluster)
        self.instances = Instances(config)
        parallel = config.runs.max_parallel
        self.pool = pg.open_pool(self.dsn, max_size=2 * parallel + 4, wait=False,
                                 name=f"scanrelay-{self.cluster.host_id}")
        self.stores = open_stores(config, self.layout, self.pool)
        self.rt = Runtime(config, self.layout, self.pool, self.instances, self.stores)
        app = worker_app(self.dsn, name=f"scanrelay-worker-{self.cluster.host_id}")
        jobs.register(app, self.rt)
        self.worker = WorkerThread(app, self.cluster, parallel)
        self.intake = ClusterIntake(self.rt)
        self.scheduler = Scheduler(config, self.layout, None, self.stop, cluster=ClusterFires(
            self.pool, self.layout, self.cluster.host_id))
        self._db_failing_since: float | None = None  # monotonic; None: it answers
        self._db_lost = False  # jobs stopped until PostgreSQL answers again
        self._next_beat = 0.0
        self.slots: SlotBroker | None = None
        self.web = None
        if config.web.listen:  # built here: an unreadable token stops the start at once
            from daemon.web.server import WebServer

            self.web = WebServer(config)  # it reads the whole cluster (daemon.cluster.views)
        self.view: ClusterView | None = None

    def run(self, *, handle_signals: bool = True) -> int:
        """Serve until SIGTERM/SIGINT (or ``stop`` is set)."""
        self._lock_state()
        if handle_signals:
            self._install_signals()
        retry.STOPPING.clear()
        try:
            if self._migrate():
                self._start_slots()
                self.intake.start()
                self.worker.start()
                self.scheduler.start()
                self._start_views()
                logger.info("scanrelay watching {} as host {} of a cluster (polling "
                            "mode, {} parallel jobs)", self.layout.inbox,
                            self.cluster.host_id, self.config.runs.max_parallel)
                self.notifier.send("READY=1", self._status_line())
                self._loop()
        finally:
            self._shutdown()
        return 0

    def _lock_state(self) -> None:
        """One daemon per host (its own ``state/``)."""
        self._lock_file = (self.layout.state / "daemon.lock").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FatalError(f"another scanrelay daemon is running with {self.layout.state}"
                             ) from None

    def _migrate(self) -> bool:
        """The schema up to date; waits for PostgreSQL (False: stopped meanwhile)."""
        waited = False
        while not self.stop.is_set():
            try:
                with self.pool.connection(timeout=5) as conn:
                    applied = pg.migrate(conn)
            except DB_ERRORS as exc:
                if not waited:
                    logger.warning("waiting for PostgreSQL: {}", exc)
                    waited = True
                self.stop.wait(1.0)
                continue
            if applied:
                logger.info("cluster schema: applied {}", ", ".join(applied))
            return True
        return False

    def _start_slots(self) -> None:
        """Connection slots leased from PostgreSQL (``daemon.cluster.slots``), so an
        instance's ``max_connections`` holds across the cluster; on a small pool of
        their own, so that a tick never waits behind a job."""
        self._slot_pool = pg.open_pool(self.dsn, max_size=2, wait=False,
                                       name=f"scanrelay-{self.cluster.host_id}-slots")
        self.slots = SlotBroker(self._slot_pool, self.cluster.host_id,
                                self.cluster.slot_lease_seconds).start()
        limits.use_broker(self.slots)

    def _start_views(self) -> None:
        """The metrics (this host's, and the cluster's gauges) and the web page."""
        if self.config.metrics.listen:
            metrics.serve(self.config.metrics.listen)
            self.view = ClusterView(self.cluster)
            metrics.watch_cluster(self.view)
        if self.web is not None:
            self.web.start()

    def _stop_slots(self) -> None:
        if self.slots is None:
            return
        limits.use_broker(None)
        self.slots.close(timeout=1)
        self._slot_pool.close(timeout=1)

    def _loop(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= self._next_beat:
                self._beat(now)
            if self._db_failing_since is None:
                try:
                    self.intake.tick()
                except DB_ERRORS as exc:
                    self._db_failed(now, exc)
            self._supervise_worker()
            self.stop.wait(TICK)

    def _beat(self, now: float) -> None:
        """The ``hosts`` row, the heartbeat file, systemd's watchdog; and whether
        PostgreSQL answers."""
        self._next_beat = now + (self.cluster.heartbeat_seconds
                                 if self._db_failing_since is None else 1.0)
        write_json(heartbeat_path(self.layout), {
            "pid": os.getpid(), "started_at": self.started_at, "heartbeat": time.time(),
            "mode": "cluster", "host_id": self.cluster.host_id,
            "running": self.rt.executions.count(), "database": not self._db_lost,
            "instances": [h.as_dict() for h in outage.health()]}, durable=False)
        # The loop is alive, whatever PostgreSQL does: a restart would not bring it back.
        self.notifier.send("WATCHDOG=1", self._status_line())
        try:
            with self.pool.connection(timeout=2) as conn:
                asked = time.time()
                server = hosts.beat(conn, self.cluster.host_id,
                                    info={"running": self.rt.executions.count()})
                self.rt.clock_offset = (asked + time.time()) / 2 - server
                silent = self._worker_silent(conn)
        except DB_ERRORS as exc:
            self._db_failed(now, exc)
            return
        self._db_answers()
        if silent:
            self._restart_worker("the job worker stopped heartbeating (it lost "
                                 "PostgreSQL for a moment)")

    def _worker_silent(self, conn: psycopg.Connection[Any]) -> bool:
        """The worker's loop ended on its own (a query cut off by a dropped connection
        ends it) while its thread still waits for its jobs: they would run on unseen,
        and the sweep would give them to another host meanwhile."""
        worker_id = self.worker.worker_id
        if self._db_lost or worker_id is None or self.rt.executions.stopping.is_set():
            return False
        return hosts.worker_silent(conn, worker_id, 2 * self.cluster.heartbeat_seconds + 1)

    def _restart_worker(self, why: str) -> None:
        """Stop this host's jobs (they checkpoint and go back to the queue) and the
        worker; ``_supervise_worker`` starts a new one once they have ended."""
        logger.warning("{}: this host's jobs go back to the queue; the worker starts "
                       "again", why)
        self.rt.executions.stop_all()
        retry.STOPPING.set()
        self.worker.stop()

    def _db_failed(self, now: float, exc: BaseException) -> None:
        if self._db_failing_since is None:
            self._db_failing_since = now
            logger.warning("PostgreSQL does not answer ({}); claims pause", exc)
            self._next_beat = now + 1.0
        lost_after = max(3.0, 2 * self.cluster.heartbeat_seconds)
        if not self._db_lost and now - self._db_failing_since >= lost_after:
            self._db_lost = True
            logger.error("PostgreSQL gone for {:.0f} s: this host's jobs stop and go back "
                         "to the queue; retrying the connection", lost_after)
            self.rt.executions.stop_all()
            retry.STOPPING.set()
            self.worker.stop()

    def _db_answers(self) -> None:
        if self._db_failing_since is not None:
            logger.info("PostgreSQL answers again; claims resume")
        self._db_failing_since = None

    def _supervise_worker(self) -> None:
        """A worker that ended (stopped for a lost PostgreSQL, or on its own) starts
        again once PostgreSQL answers and its old jobs have ended."""
        if self.worker.alive() or self._db_failing_since is not None:
            return
        if self._db_lost:
            logger.info("PostgreSQL is back: the job worker starts again")
            self._db_lost = False
        elif self.worker.error is not None:
            logger.warning("the job worker ended ({}); starting it again",
                           type(self.worker.error).__name__)
        self.rt.executions.resume()
        retry.STOPPING.clear()
        self.worker.start()

    def _status_line(self) -> str:
        return (f"STATUS=host {self.cluster.host_id}: {self.rt.executions.count()} jobs "
                f"running, {self.intake.waiting()} waiting to be claimed"
                + ("" if self._db_failing_since is None else ", PostgreSQL away"))

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("received {}: stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_DEADLINE
        retry.STOPPING.set()  # retry waits end at once instead of sleeping out a backoff
        self.notifier.send("STOPPING=1")
        self.scheduler.stop()  # no fire queues work for a host on its way out
        try:
            with self.pool.connection(timeout=1) as conn:
                hosts.beat(conn, self.cluster.host_id, stopping=True)
        except DB_ERRORS:
            pass  # the row ages out of the views by its heartbeat
        if self.web is not None:
            self.web.stop()
        self.intake.stop()
        self.rt.executions.stop_all()  # each checkpoints; its job goes back to the queue
        self.worker.stop()
        if not self.worker.join(max(0.0, deadline - time.monotonic())):
            # Their checkpoints are durable; the sweep gives their jobs to another host.
            logger.warning("exiting with {} job(s) still stopping",
                           self.rt.executions.count())
            os._exit(0)
        self._stop_slots()  # no job runs any more: every slot lease goes back
        if self.view is not None:
            self.view.close()
        self.stores.close()
        self.pool.close(timeout=1)
        self.instances.close()
        heartbeat_path(self.layout).unlink(missing_ok=True)
        logger.info("scanrelay host {} stopped", self.cluster.host_id)
