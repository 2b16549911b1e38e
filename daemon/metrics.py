"""Optional Prometheus metrics (``metrics.listen: "127.0.0.1:9464"``).

Counters are fed where things happen (the runner records each run's outcome, the retry
policy reports each retry); gauges are set by the service's main loop once a second.
With no ``listen`` configured nothing is served, and updating costs next to nothing.

In cluster mode ``watch_cluster`` adds the whole cluster's gauges (hosts alive, jobs by
task and state, the oldest waiting job's age), read from PostgreSQL at each scrape:
every host serves the same figures, and nothing is read when nobody scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import outage, retry

if TYPE_CHECKING:
    from daemon.cluster.views import ClusterView

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("scanrelay_requests", "Requests settled, by outcome", ["outcome"],
                   registry=REGISTRY)
SCANS = Counter("scanrelay_scans", "Scans processed, by action and outcome",
                ["action", "outcome"], registry=REGISTRY)
BYTES = Counter("scanrelay_bytes", "Bytes moved, by action", ["action"], registry=REGISTRY)
RETRIES = Counter("scanrelay_retries", "Retries of transient failures, by cause", ["cause"],
                  registry=REGISTRY)
INBOX_DEPTH = Gauge("scanrelay_inbox_depth", "Request files waiting in the inbox",
                    registry=REGISTRY)
OLDEST_WAITING = Gauge("scanrelay_oldest_waiting_seconds",
                       "Age of the oldest request waiting in the inbox", registry=REGISTRY)
IN_FLIGHT = Gauge("scanrelay_requests_in_flight", "Requests claimed and not yet settled",
                  registry=REGISTRY)
INSTANCE_UP = Gauge("scanrelay_instance_available",
                    "1 while an instance answers, 0 in an outage (retry.outage_after)",
                    ["instance"], registry=REGISTRY)
INSTANCE_DOWN_SECONDS = Gauge("scanrelay_instance_unavailable_seconds",
                              "How long an instance has been unavailable (0 when up)",
                              ["instance"], registry=REGISTRY)
RUN_SECONDS = Histogram("scanrelay_run_duration_seconds", "Run durations, by action",
                        ["action"], registry=REGISTRY,
                        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))


def serve(listen: str) -> None:
    """Serve ``/metrics`` on ``host:port`` (a daemon thread of prometheus_client)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=REGISTRY)
    retry.RETRY_HOOKS.append(lambda event: RETRIES.labels(event.cause).inc())


def record_run(action: str | None, status: str, counts: dict[str, Any],
               seconds: float | None) -> None:
    REQUESTS.labels(status).inc()
    if action is None:
        return
    failed = int(counts.get("failed", 0))
    SCANS.labels(action, "failed").inc(failed)
    SCANS.labels(action, "ok").inc(max(0, int(counts.get("items", 0)) - failed))
    BYTES.labels(action).inc(int(counts.get("bytes", 0)))
    if seconds is not None:
        RUN_SECONDS.labels(action).observe(seconds)


def set_queue(depth: int, oldest_seconds: float, in_flight: int) -> None:
    INBOX_DEPTH.set(depth)
    OLDEST_WAITING.set(oldest_seconds)
    IN_FLIGHT.set(in_flight)


def set_instances(health: list[outage.Health]) -> None:
    now = datetime.now(UTC)
    for h in health:
        INSTANCE_UP.labels(h.instance).set(1 if h.available else 0)
        down = (now - h.since).total_seconds() if h.since and not h.available else 0.0
        INSTANCE_DOWN_SECONDS.labels(h.instance).set(down)


class ClusterCollector(Collector):
    """The cluster's gauges, from one ``ClusterView.summary()`` per scrape.
    ``scanrelay_cluster_up`` is 0 (and the others absent) while PostgreSQL cannot be
    read: a scrape never fails because the database is away."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())  # names only: registering runs no query

    def collect(self) -> Iterator[Metric]:
        summary = self.view.summary()
        up, hosts, alive, jobs, oldest = self._families()
        up.add_metric([], 1 if summary["reachable"] else 0)
        if not summary["reachable"]:
            return iter([up])
        hosts.add_metric([], len(summary["hosts"]))
        alive.add_metric([], summary["hosts_alive"])
        for task in summary["queue"]["tasks"]:
            for state in ("todo", "later", "doing"):
                jobs.add_metric([task["task"], state], task[state])
        oldest.add_metric([], summary["queue"]["oldest_waiting_seconds"] or 0.0)
        return iter([up, hosts, alive, jobs, oldest])

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("scanrelay_cluster_up",
                              "1 while the cluster's PostgreSQL answers this host"),
            GaugeMetricFamily("scanrelay_cluster_hosts", "Hosts known to the cluster"),
            GaugeMetricFamily("scanrelay_cluster_hosts_alive",
                              "Hosts whose heartbeat is fresh (server clock)"),
            GaugeMetricFamily("scanrelay_cluster_jobs", "Jobs queued (todo: due, later: "
                              "scheduled ahead) or running (doing), by task",
                              labels=["task", "state"]),
            GaugeMetricFamily("scanrelay_cluster_oldest_waiting_job_seconds",
                              "Age of the oldest due job nobody has started"),
        )


def watch_cluster(view: ClusterView, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve the cluster's gauges too (cluster mode; call once, after ``serve``)."""
    registry.register(ClusterCollector(view))
