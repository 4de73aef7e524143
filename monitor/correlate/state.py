"""What correlate remembers between cycles (State) and the rules it applies (Rules).

Rules: plain values; the store persists State as it is, and Rules is built from the config once
per cycle, outside the core (`Config.rules`), so the state machine never reads the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts
from monitor.correlate.revisions import RevisionKey


@dataclass(frozen=True, slots=True)
class SignalRule:
    severity: str
    open_after: int
    window: timedelta
    resolve_after: timedelta


@dataclass(frozen=True, slots=True)
class Rules:
    signals: dict[str, SignalRule]
    update_every: timedelta
    migration_severity: str = "critical"
    # Prefixes incident ids when a config watches several units: each unit's state is its own,
    # and the same service and signal in two projects must not make the same id.
    namespace: str = ""


# (at, revision, sample, instance) of a match below the threshold
Pending = tuple[datetime, str | None, str, str | None]


@dataclass
class State:
    """Everything correlate remembers between cycles; the store persists it as it is."""

    revisions: dict[RevisionKey, RevisionFacts] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)
    pending: dict[tuple[str, str], list[Pending]] = field(default_factory=dict)
    request_services: set[str] = field(default_factory=set)
    source_failures: dict[str, int] = field(default_factory=dict)  # unit -> failed cycles in a row
    # What the unit's last read measured of each class of matches, in entries a second: the
    # next read plans a flood's sample from it (monitor/sampling.py). The core never reads it;
    # it is kept here so that it is committed with the checkpoint it was measured up to.
    read_rates: dict[str, float] = field(default_factory=dict)

    def open_incident(self, service: str, signal: str) -> Incident | None:
        for incident in self.incidents.values():
            if (incident.service, incident.signal, incident.status) == (
                service, signal, IncidentStatus.OPEN
            ):
                return incident
        return None

    def last_resolved(self, service: str, signal: str) -> Incident | None:
        found = [
            i for i in self.incidents.values()
            if (i.service, i.signal, i.status) == (service, signal, IncidentStatus.RESOLVED)
        ]
        return max(found, key=lambda i: i.first_seen, default=None)

    def service_revisions(self, service: str) -> list[RevisionFacts]:
        return [f for (s, _), f in self.revisions.items() if s == service]
