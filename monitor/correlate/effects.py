"""Applying a decision: the table's move, the incident's bookkeeping, and the one emitter.

Rules:
- The only place an incident's status changes (`move`, through `decide.MOVES`) and the only
  place a `Transition` is made (`emit`). The error and migration incidents (`incidents.py`) and
  the monitor's own incident (`source_incident.py`) both go through `apply`.
- It changes the incident it is given (the cycle's copy) and nothing else; it decides nothing
  and never reads the clock, the store or the network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime

from monitor.correlate.decide import Decision, Event, next_move
from monitor.correlate.model import Incident, RevisionFacts, Transition, TransitionKind


def move(incident: Incident, event: Event, *, opening: bool = False) -> TransitionKind | None:
    """Move `incident` as the table says (`opening`: from no incident, for one just made) and
    return what to tell, if anything."""
    step = next_move(None if opening else incident.status, event, incident=incident.id)
    incident.status = step.status
    return step.transition


def apply(incident: Incident, decision: Decision, at: datetime, *, opening: bool = False,
          facts: Iterable[RevisionFacts] = ()) -> Transition | None:
    """Carry out `decision`, decided at `at`, on `incident`; the transition it tells, if any.

    `facts`: the service's revision facts, quoted by the transition (read only if one is made).
    """
    if decision.reason.kept:
        incident.reason = decision.reason
    if decision.event is None:
        return None
    kind = move(incident, decision.event, opening=opening)
    when = decision.at if decision.at is not None else at
    if decision.event is Event.HOLD:
        incident.noted_reason = decision.reason
    elif decision.event is Event.EVIDENCE:
        incident.resolved_at = when
        incident.resolved_by = decision.fix
        incident.resolution_note = decision.note
    if kind is None:
        return None
    return emit(kind, incident, when, decision.note, decision.changes, facts)


def emit(kind: TransitionKind, incident: Incident, at: datetime, reason: str,
         changes: Iterable[str] = (), facts: Iterable[RevisionFacts] = ()) -> Transition:
    """The one emitter: the next sequence number, a snapshot, and the notification bookkeeping
    (a hold is not a notification: the throttle and the news since the last one stand)."""
    incident.seq += 1
    if kind is not TransitionKind.QUIET_NO_TRAFFIC:
        incident.notified_at = at
        incident.notified_count = incident.count
        incident.changes = []
    return Transition(
        kind=kind,
        incident=copy.deepcopy(incident),
        seq=incident.seq,
        at=at,
        reason=reason,
        changes=tuple(changes),
        revision_facts=tuple(copy.deepcopy(f) for f in facts),
    )
