"""Prometheus metrics of the running monitor, in one registry the service owns.

Rules: every metric is updated from a cycle's result in `observe_cycle`, in one place, so what
`/metrics` shows and what the cycle did cannot drift apart. A registry per Service (not the
process-global one) keeps tests and several services in one process independent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.correlate.model import Incident, IncidentStatus
from monitor.leadership import Change, Leadership
from monitor.output import CycleResult


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
        self.leases = Gauge("monitor_lease_held", "1 for each unit of work this instance leads "
                            "(its fencing token in monitor_lease_token)", ["unit"], registry=r)
        self.lease_token = Gauge("monitor_lease_token", "Fencing token of each lease held",
                                 ["unit"], registry=r)
        self.lease_changes = Counter("monitor_lease_changes", "Leases acquired, lost (taken "
                                     "over while held) and released (rebalanced)",
                                     ["unit", "change"], registry=r)
        self.role = Gauge("monitor_leader", "1 when this instance leads at least one unit, "
                          "0 on standby", registry=r)
        self.instances = Gauge("monitor_instances_alive", "Instances sharing the store whose "
                               "heartbeat has not expired", registry=r)
        self._open: dict[str, list[Incident]] = {}
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
        self.set_open(unit, result.state.incidents.values())

    def set_open(self, unit: str, incidents: Iterable[Incident]) -> None:
        """Each unit's open incidents as its last cycle here saw them."""
        self._open[unit] = [i for i in incidents if i.status is IncidentStatus.OPEN]
        self._publish_open()

    def _publish_open(self) -> None:
        self.open_incidents.clear()
        for incident in (i for found in self._open.values() for i in found):
            self.open_incidents.labels(incident.service, incident.signal).inc()

    def observe_leases(self, leadership: Leadership, changes: Iterable[Change]) -> None:
        for change in changes:
            self.lease_changes.labels(change.unit, change.kind).inc()
        self.leases.clear()
        self.lease_token.clear()
        for unit, lease in leadership.held.items():
            self.leases.labels(unit).set(1)
            self.lease_token.labels(unit).set(lease.token)
        gone = [u for u in self._open if u not in leadership.held]
        for unit in gone:  # another instance reports its incidents now
            del self._open[unit]
        if gone:
            self._publish_open()
        self.role.set(1 if leadership.held else 0)
        self.instances.set(leadership.alive)
