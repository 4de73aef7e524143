"""The monitor's own incident: "cannot read logs for <project>".

Rules: pure, like the rest of correlate. A failed cycle counts; after `failures_before_alert`
consecutive failures an incident of kind `source` opens for the unit of work, so a monitor that
cannot see anything says so through the same notifiers instead of staying silent; the first cycle
that reads again resolves it. The clock is the caller's (real time: this is about the monitor, not
about the logs' event time).
"""

from __future__ import annotations

import copy
from datetime import datetime

from monitor.correlate.incidents import Event, Outcome, move
from monitor.correlate.model import (
    Incident,
    IncidentKind,
    IncidentStatus,
    Reason,
    Transition,
    TransitionKind,
)
from monitor.correlate.state import State

SOURCE_SIGNAL = "cannot-read-logs"


def _emit(incident: Incident, kind: TransitionKind, at: datetime, reason: str) -> Transition:
    incident.seq += 1
    incident.notified_at = at
    incident.notified_count = incident.count
    return Transition(kind, copy.deepcopy(incident), incident.seq, at, reason)


def source_health(
    state: State, *, unit: str, ok: bool, reason: str, now: datetime, failures_before_alert: int
) -> Outcome:
    """Fold one cycle's read outcome for `unit` into a copy of `state`."""
    if ok and unit not in state.source_failures and state.open_incident(
            unit, SOURCE_SIGNAL) is None:
        return Outcome(state, [])  # the usual case: nothing to change, nothing to copy
    state = copy.deepcopy(state)
    transitions: list[Transition] = []
    incident = state.open_incident(unit, SOURCE_SIGNAL)
    if ok:
        failures = state.source_failures.pop(unit, 0)
        if incident is not None:
            move(incident, Event.EVIDENCE)
            incident.resolved_at = now
            incident.reason = Reason.READING_WORKS_AGAIN
            incident.resolution_note = (
                f"reading logs works again after {failures} failed check(s)")
            transitions.append(
                _emit(incident, TransitionKind.RESOLVED, now, incident.resolution_note))
        return Outcome(state, transitions)
    failures = state.source_failures.get(unit, 0) + 1
    state.source_failures[unit] = failures
    if incident is not None:
        move(incident, Event.MATCH)
        incident.count = failures
        incident.last_seen = now
        incident.sample = reason
        return Outcome(state, transitions)
    if failures < failures_before_alert:
        return Outcome(state, transitions)
    previous = state.last_resolved(unit, SOURCE_SIGNAL)
    ident = f"{unit}:{SOURCE_SIGNAL}:{now.strftime('%Y%m%dT%H%M%SZ')}"
    incident = Incident(
        id=ident, service=unit, signal=SOURCE_SIGNAL, kind=IncidentKind.SOURCE,
        severity="critical", status=IncidentStatus.OPEN, first_seen=now, last_seen=now,
        count=failures, sample=reason, reason=Reason.CANNOT_READ,
        regression_of=previous.id if previous is not None else None,
    )
    state.incidents[ident] = incident
    kind = TransitionKind.REGRESSED if previous is not None else TransitionKind.OPENED
    transitions.append(_emit(incident, kind, now, f"{failures} consecutive checks could not "
                                                  f"read logs for {unit}: {reason}"))
    return Outcome(state, transitions)
