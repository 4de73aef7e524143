"""The monitor's own incident: "cannot read logs for <project>".

Rules: pure, like the rest of correlate. A failed cycle counts; after `failures_before_alert`
consecutive failures an incident of kind `source` opens for the unit of work, so a monitor that
cannot see anything says so through the same notifiers instead of staying silent; the first cycle
that reads again resolves it. The rules are `decide.source_read`'s, applied by the one emitter
(`effects.apply`) like every other incident's. The clock is the caller's (real time: this is
about the monitor, not about the logs' event time).
"""

from __future__ import annotations

import copy
from datetime import datetime

from monitor.correlate import decide, effects
from monitor.correlate.decide import Event
from monitor.correlate.incidents import Outcome
from monitor.correlate.model import Incident, IncidentKind, IncidentStatus, Reason, Transition
from monitor.correlate.state import State

SOURCE_SIGNAL = "cannot-read-logs"


def source_health(
    state: State, *, unit: str, ok: bool, reason: str, now: datetime, failures_before_alert: int
) -> Outcome:
    """Fold one cycle's read outcome for `unit` into a copy of `state`."""
    if ok and unit not in state.source_failures and state.open_incident(
            unit, SOURCE_SIGNAL) is None:
        return Outcome(state, [])  # the usual case: nothing to change, nothing to copy
    state = copy.deepcopy(state)
    incident = state.open_incident(unit, SOURCE_SIGNAL)
    if ok:
        failures = state.source_failures.pop(unit, 0)
    else:
        failures = state.source_failures[unit] = state.source_failures.get(unit, 0) + 1
    previous = state.last_resolved(unit, SOURCE_SIGNAL) if incident is None and not ok else None
    decision = decide.source_read(
        ok=ok, failures=failures, is_open=incident is not None,
        failures_before_alert=failures_before_alert, unit=unit, error=reason,
        regression_of=previous.id if previous is not None else None)
    if decision.event is None:
        return Outcome(state, [])
    opening = incident is None
    if incident is None:
        ident = f"{unit}:{SOURCE_SIGNAL}:{now.strftime('%Y%m%dT%H%M%SZ')}"
        incident = state.incidents[ident] = Incident(
            id=ident, service=unit, signal=SOURCE_SIGNAL, kind=IncidentKind.SOURCE,
            severity="critical", status=IncidentStatus.OPEN, first_seen=now, last_seen=now,
            count=failures, sample=reason, reason=Reason.CANNOT_READ,
            regression_of=previous.id if previous is not None else None,
        )
    elif decision.event is Event.MATCH:
        incident.count = failures
        incident.last_seen = now
        incident.sample = reason
    transition = effects.apply(incident, decision, now, opening=opening)
    transitions: list[Transition] = [transition] if transition is not None else []
    return Outcome(state, transitions)
