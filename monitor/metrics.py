"""Prometheus metrics of the running monitor, in one registry the service owns.

Rules: every metric is updated from a cycle's result in `observe_cycle`, in one place, so what
`/metrics` shows and what the cycle did cannot drift apart. A registry per Service (not the
process-global one) keeps tests and several services in one process independent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.check import CycleResult
from monitor.correlate.model import Incident, IncidentStatus


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("monitor_cycles", "Check cycles run, by outcome "
                              "(ok, failed: the source could not be read, error: a bug)",
                              ["outcome"], registry=r)
        self.cycle_seconds = Histogram("monitor_cycle_duration_seconds",
                                       "Wall time of a check cycle", registry=r,
                                       buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.entries_read = Counter("monitor_entries_read", "Log entries read", ["unit"],
                                    registry=r)
        self.entries_skipped = Counter("monitor_entries_skipped",
                                       "Malformed log entries counted and skipped", ["unit"],
                                       registry=r)
        self.api_requests = Counter("monitor_api_requests",
                                    "Cloud Logging API requests (one per page, retries included)",
                                    ["unit"], registry=r)
        self.open_incidents = Gauge("monitor_open_incidents", "Incidents open, by signal",
                                    ["service", "signal"], registry=r)
        self.notifications = Counter("monitor_notifications", "Notifications, by result",
                                     ["result"], registry=r)
        self.queued = Gauge("monitor_notifications_queued",
                            "Notifications waiting in the outbox", registry=r)
        self.lag = Gauge("monitor_checkpoint_lag_seconds",
                         "How far the checkpoint is behind real time", ["unit"], registry=r)
        self.last_success = Gauge("monitor_last_success_timestamp_seconds",
                                  "When a check last completed", registry=r)
        for outcome in ("ok", "failed", "error"):
            self.cycles.labels(outcome)
        for result in ("sent", "failed"):
            self.notifications.labels(result)

    def observe_cycle(self, unit: str, result: CycleResult, seconds: float, queued: int,
                      checkpoint_until: datetime | None, now: datetime) -> None:
        self.cycles.labels("failed" if result.error else "ok").inc()
        self.cycle_seconds.observe(seconds)
        self.entries_read.labels(unit).inc(result.stats.entries_read)
        self.entries_skipped.labels(unit).inc(result.stats.entries_skipped)
        self.api_requests.labels(unit).inc(result.stats.api_requests)
        self.notifications.labels("sent").inc(result.delivery.sent)
        self.notifications.labels("failed").inc(result.delivery.failed)
        self.queued.set(queued)
        if checkpoint_until is not None:
            self.lag.labels(unit).set(max((now - checkpoint_until).total_seconds(), 0.0))
        if not result.error:
            self.last_success.set(now.timestamp())
        self.set_open(result.state.incidents.values())

    def set_open(self, incidents: Iterable[Incident]) -> None:
        self.open_incidents.clear()
        for incident in incidents:
            if incident.status is IncidentStatus.OPEN:
                self.open_incidents.labels(incident.service, incident.signal).inc()
