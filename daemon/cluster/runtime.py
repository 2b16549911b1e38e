"""What a host's jobs share: the config and folders, the pool and the stores, the
instances, and the stop switches of the executions running here."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from daemon.config import ClusterConfig, Config
from daemon.instances.registry import Instances
from daemon.layout import Layout
from daemon.store.abc import RequestStore
from daemon.store.stores import Stores


class Again(Exception):  # noqa: N818 - an instruction to the queue, not a failure
    """Put this job back in the queue at once: its execution was stopped by its host
    (SIGTERM, PostgreSQL gone) after checkpointing; any host may take it up."""


class Executions:
    """The jobs running on this host, each with its own stop switch (its RunContext's
    ``stop``). ``stop_all`` stops them (SIGTERM, PostgreSQL gone): they checkpoint and
    end, and their jobs go back to the queue. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self.stopping = threading.Event()  # set: new executions start stopped

    @contextlib.contextmanager
    def run(self, owner: str) -> Iterator[threading.Event]:
        stop = threading.Event()
        with self._lock:
            if self.stopping.is_set():
                stop.set()
            self._running[owner] = stop
        try:
            yield stop
        finally:
            with self._lock:
                self._running.pop(owner, None)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping.set()
            for stop in self._running.values():
                stop.set()

    def resume(self) -> None:
        self.stopping.clear()

    def count(self) -> int:
        with self._lock:
            return len(self._running)


@dataclass
class Runtime:
    config: Config
    layout: Layout
    pool: ConnectionPool[Any]
    instances: Instances
    stores: Stores  # the cluster's: requests, copies (with leases), checkpoints
    executions: Executions = field(default_factory=Executions)
    clock_offset: float = 0.0  # this host's clock minus the server's, in seconds

    def server_now(self) -> datetime:
        """The database server's time as this host best knows it (its clock corrected
        by the offset measured at each heartbeat): what a job's ``scheduled_at`` must
        be computed from, since the server decides when it is due."""
        return datetime.now(UTC) - timedelta(seconds=self.clock_offset)

    @property
    def cluster(self) -> ClusterConfig:
        assert self.config.cluster is not None
        return self.config.cluster

    @property
    def host_id(self) -> str:
        return self.cluster.host_id

    @property
    def requests(self) -> RequestStore:
        return self.stores.requests

    def owner_token(self, job_id: int | None) -> str:
        """An execution's owner token: per execution, never per job (procrastinate
        retries a stalled job under the same job ID)."""
        return f"{self.host_id}:{job_id}:{uuid.uuid4().hex[:8]}"
