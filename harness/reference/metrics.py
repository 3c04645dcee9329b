"""The service's Prometheus metrics (AEP/1 §5), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Gauges and counters of one service instance.

    ``process_resident_memory_bytes`` comes from a ProcessCollector registered
    in the same registry, so one scrape shows memory next to the gauges.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.connections_active = Gauge(
            "aep_connections_active", "WebSocket connections now open", registry=self.registry
        )
        self.runs_active = Gauge(
            "aep_runs_active", "Agent runs now in progress", registry=self.registry
        )
        self.sessions = Counter(
            "aep_sessions", "WebSocket connections ever accepted", registry=self.registry
        )
        self.events_sent = Counter(
            "aep_events_sent",
            "Lifecycle events written to connections (not pong or error frames)",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
