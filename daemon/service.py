"""The daemon: intake claims each request at once; a pool runs them in arrival order.

Main loop (one thread): drain the watcher's queue into ``pending`` (arrival order),
supervise the watcher, refuse what cannot be a request, claim what can, and queue the
claim for a pool of ``runs.max_parallel`` workers (FIFO). Claiming at once keeps pickup
fast under load; a claim waiting for a worker sits in ``processing/`` and survives a
crash like a running one. Requests left in ``processing/`` are resumed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import stat
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import IO

from loguru import logger

from daemon import metrics, outage, retention, retry
from daemon.config import Config
from daemon.errors import FatalError
from daemon.fsutil import write_json
from daemon.instances.registry import Instances
from daemon.intake.claim import Claimed, is_candidate, new_claim_id, pending_claims, refusal
from daemon.intake.claimer import Claimer, NotYet
from daemon.intake.inbox import waiting
from daemon.intake.watcher import InboxWatcher, PathQueue
from daemon.layout import Layout
from daemon.notify import Notifier
from daemon.outcomes import RunStatus
from daemon.runner import Runner
from daemon.runsettle import refuse
from daemon.schedule.scheduler import Scheduler
from daemon.status import heartbeat_path
from daemon.store.stores import open_stores

TICK = 0.05  # seconds the main loop waits for a path before doing its rounds
PRUNE_INTERVAL = 3600.0  # seconds between retention sweeps (the first one at start)
STOP_DEADLINE = 8.0  # seconds in-flight runs get to checkpoint on shutdown (SPEC: < 10)


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = Layout.of(config).ensure(sorted(config.profiles))
        self.stores = open_stores(config, self.layout)
        self.ledger = self.stores.requests
        self.instances = Instances(config)
        self.stop = threading.Event()
        self.runner = Runner(config, self.layout, self.stores, self.instances, self.stop)
        self.paths: PathQueue = queue.Queue()
        self.watcher = InboxWatcher(self.layout.inbox, self.paths, config.intake)
        self.claimer = Claimer(self.layout)
        self.pending: OrderedDict[Path, None] = OrderedDict()
        self.in_flight: dict[Future[RunStatus], Claimed] = {}
        self.pool = ThreadPoolExecutor(config.runs.max_parallel, thread_name_prefix="run")
        self.notifier = Notifier()
        self.profiles = set(config.profiles)
        self.started_at = time.time()
        self.scheduler = Scheduler(config, self.layout, self.ledger, self.stop)
        self.web = None
        if config.web.listen:  # built here: an unreadable token stops the start at once
            from daemon.web.server import WebServer

            self.web = WebServer(config)

    def run(self, *, handle_signals: bool = True) -> int:
        """Serve until SIGTERM/SIGINT (or ``stop`` is set); signals need the main thread."""
        # One daemon per root: a second would resume the same requests concurrently.
        self._lock_file = lock_state(self.layout.state, f"on {self.layout.root}")
        if handle_signals:
            install_stop_signals(self.stop)
        retry.STOPPING.clear()
        self.claimer.repair()  # claims a crash cut off half-way, before the resumes
        resumes = pending_claims(self.layout)
        if resumes:
            logger.info("resuming {} request(s) left in processing/", len(resumes))
        for claimed in resumes:
            self._submit(claimed)
        self.watcher.start()
        self.scheduler.start()  # after the watcher: a catch-up fire is picked up at once
        if self.config.metrics.listen:
            metrics.serve(self.config.metrics.listen)
        if self.web is not None:
            self.web.start()
        logger.info("scanrelay watching {} ({} mode, {} parallel runs)", self.layout.inbox,
                    self.config.intake.mode, self.config.runs.max_parallel)
        self.notifier.send("READY=1", self._status_line())
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        last_ping = last_prune = 0.0
        while not self.stop.is_set():
            self._drain(self.watcher.next_due_in(TICK))
            self.watcher.tick()
            for claimed in self.claimer.retry_unpublished():
                self._submit(claimed)
            self._reap()
            self._dispatch()
            now = time.monotonic()
            if now - last_ping >= 1.0:
                last_ping = now
                self._ping()
            if self.config.retention.days and now - last_prune >= PRUNE_INTERVAL:
                last_prune = now
                retention.prune(self.layout, self.config.retention.days)

    def _drain(self, timeout: float) -> None:
        try:
            self.pending.setdefault(self.paths.get(timeout=timeout))
            while True:
                self.pending.setdefault(self.paths.get_nowait())
        except queue.Empty:
            return

    def _dispatch(self) -> None:
        while self.pending and not self.stop.is_set():
            path, _ = self.pending.popitem(last=False)
            self._intake(path)

    def _intake(self, path: Path) -> None:
        inbox = self.layout.inbox
        if not is_candidate(path, inbox):
            return
        try:
            info = path.lstat()  # the one stat a request costs before its claim
            if path.parent == inbox and stat.S_ISDIR(info.st_mode):
                for child in sorted(path.iterdir()):  # a profile folder moved in whole
                    self.pending.setdefault(child)
                return
            self._take(path, info)
        except FileNotFoundError:
            return  # gone (claimed already, or taken back by its owner)
        except OSError as exc:  # never stop the daemon
            logger.warning("could not take {}: {}", path.relative_to(inbox), exc)

    def _take(self, path: Path, info: os.stat_result) -> None:
        """Refuse what cannot be a request; claim and queue what can."""
        reason = refusal(path, self.layout.inbox, self.profiles,
                         self.config.limits.max_request_bytes, info)
        if reason is not None:
            refuse(path, self.layout, self.ledger, reason, new_claim_id())
            return
        claimed = self.claimer.claim(path)
        if isinstance(claimed, NotYet):
            logger.debug("{} is busy ({}); looking again shortly",
                        path.relative_to(self.layout.inbox), claimed.reason)
            self.watcher.later(path)
        elif claimed is not None:
            logger.bind(run=claimed.claim_id).info("claimed {}",
                                                   path.relative_to(self.layout.inbox))
            self._submit(claimed)

    def _submit(self, claimed: Claimed) -> None:
        self.in_flight[self.pool.submit(self.runner.process, claimed)] = claimed

    def _reap(self) -> None:
        for future in [f for f in self.in_flight if f.done()]:
            claimed = self.in_flight.pop(future)
            error = future.exception()
            if error is not None:  # the runner records outcomes itself; this is a bug
                logger.opt(exception=error).error("runner crashed on {}", claimed.name)

    def _ping(self) -> None:
        """Once a second: the heartbeat file for ``scanrelay status``, and the systemd
        watchdog, which is fed only while the watcher is alive."""
        health = outage.health()
        write_json(heartbeat_path(self.layout), {
            "pid": os.getpid(), "started_at": self.started_at, "heartbeat": time.time(),
            "mode": self.config.intake.mode, "queued": len(self.in_flight),
            "instances": [h.as_dict() for h in health]},
            durable=False)  # rewritten every second: no fsync, a crash loses nothing of use
        if self.config.metrics.listen:
            inbox = waiting(self.layout.inbox, time.time())
            metrics.set_queue(inbox.requests, inbox.oldest_age or 0.0, len(self.in_flight))
            metrics.set_instances(health)
        if self.watcher.alive():
            self.notifier.send("WATCHDOG=1", self._status_line())

    def _status_line(self) -> str:
        running = min(len(self.in_flight), self.config.runs.max_parallel)
        return (f"STATUS=inbox {len(self.pending) + self.paths.qsize()} waiting, "
                f"{running} running, {len(self.in_flight) - running} queued")

    def _shutdown(self) -> None:
        retry.STOPPING.set()  # retry waits end at once instead of sleeping out a backoff
        self.notifier.send("STOPPING=1")
        self.scheduler.stop()  # no fire writes into an inbox nobody takes from
        if self.web is not None:
            self.web.stop()
        self.watcher.stop()
        # Queued claims never start; they stay in processing/ and resume at next start.
        self.pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_DEADLINE
        for future in list(self.in_flight):
            # Outcomes are recorded by the runner; here we only wait, bounded.
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))
        unfinished = [c.name for f, c in self.in_flight.items() if not f.done()]
        if unfinished:
            # Their checkpoints are durable; a restart resumes them from processing/.
            logger.warning("exiting with {} run(s) still stopping: {}", len(unfinished),
                           ", ".join(unfinished))
            os._exit(0)
        self.instances.close()
        self.stores.close()
        heartbeat_path(self.layout).unlink(missing_ok=True)
        logger.info("scanrelay stopped")


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (signals need the main thread)."""
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received {}: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def lock_state(state: Path, where: str) -> IO[str]:
    """Hold the lock of ``state/`` for as long as the returned file is open; a second
    daemon on it fails, its message saying ``where``. The lock dies with the process,
    so a crash never leaves it behind."""
    lock_file = (state / "daemon.lock").open("a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise FatalError(f"another scanrelay daemon is running {where}") from None
    return lock_file
