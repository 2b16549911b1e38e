"""A host's procrastinate worker, in a thread of its own with its own event loop.

``concurrency`` jobs at once (``runs.max_parallel``), each in a thread of the loop's
executor (the tasks are synchronous). The worker heartbeats every
``cluster.heartbeat_seconds``; the sweep takes a worker silent for
``cluster.stalled_seconds`` for dead. Signals are the service's: it stops the worker.
A worker that ends on its own (PostgreSQL went away) is started again by the service.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from loguru import logger
from procrastinate import App
from procrastinate.worker import Worker

from daemon.cluster.app import QUEUE
from daemon.config import ClusterConfig

SIDE_THREADS = 4  # the loop's executor beyond the jobs: the sweep's file work, psycopg


class WorkerThread:
    def __init__(self, app: App, cluster: ClusterConfig, concurrency: int) -> None:
        self.app = app
        self.cluster = cluster
        self.concurrency = concurrency
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._stop.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def worker_id(self) -> int | None:
        """The worker's row in ``procrastinate_workers`` (None until registered)."""
        worker = self._worker
        return None if worker is None else worker.worker_id

    def stop(self) -> None:
        """Ask the worker to stop: it takes no new job and ends once its jobs have."""
        with self._lock:
            self._stop.set()
            if self._loop is not None and self._worker is not None:
                self._loop.call_soon_threadsafe(self._worker.stop)

    def join(self, timeout: float) -> bool:
        """Wait for the thread; True if it ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - the service restarts the worker
            self.error = exc
            logger.warning("the job worker stopped: {}: {}", type(exc).__name__, exc)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.concurrency + SIDE_THREADS,
                                                     thread_name_prefix="job"))
        async with self.app.open_async():
            worker = Worker(app=self.app, queues=[QUEUE], name=self.cluster.host_id,
                            concurrency=self.concurrency, install_signal_handlers=False,
                            update_heartbeat_interval=self.cluster.heartbeat_seconds,
                            stalled_worker_timeout=self.cluster.stalled_seconds,
                            fetch_job_polling_interval=1.0, abort_job_polling_interval=1.0,
                            delete_jobs="successful")
            with self._lock:
                if self._stop.is_set():
                    return
                self._loop, self._worker = loop, worker
            try:
                await worker.run()
            finally:
                with self._lock:
                    self._loop = self._worker = None
