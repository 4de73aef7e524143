"""The incident rules as values: pure decisions, and the one table of moves.

Rules:
- Every rule that decides an incident's status, or whether to say something about it, is a
  function here that takes values (the incident, the rules, `now`, `complete_until`, revision
  facts) and returns a `Decision`: an `Event` of the table (or none) and the `Reason` why.
- Nothing here changes anything: `effects.py` applies a decision (the table's move, then the
  one emitter). Nothing here reads the clock, the store, the network or the config.
- One table, `MOVES`, maps (status, event) to (next status, transition kind); the status `None`
  stands for "no incident yet" (an opening). A move it does not list is a bug: `next_move`
  raises `InvalidMove` naming the status and the event.

How an error incident goes: `threshold` opens it (`regressed` when an earlier one of the same
service and signal was resolved); on each tick `resolution` says FAILING until `resolve_after`
has passed, DATA_INCOMPLETE until the data for that period is complete, a hold while the
successes since do not show health (told once per hold), else the resolution with its evidence
and its fix; then `update` says whether there is news and whether it may be told yet. A
migration incident resolves on a successful `migrate deploy` (`migration_resolution`); the
monitor's own incident on a read that works again (`source_read`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from monitor.classify.observations import MigrationOutcome
from monitor.correlate import revisions as rev
from monitor.correlate.model import (
    HOLD_WORDS,
    Evidence,
    Incident,
    IncidentKind,
    IncidentStatus,
    Reason,
    RevisionFacts,
    TransitionKind,
)
from monitor.correlate.probe import Probe, Round
from monitor.correlate.state import Pending, Rules, SignalRule
from monitor.times import format_duration, minute

# Cloud Run logs a revision's Ready event a little after it starts taking traffic; the old
# revision's last in-flight errors can land just before it. A fix may be this late.
READY_GRACE = timedelta(minutes=1)


# --- the table -------------------------------------------------------------------------------

class Event(StrEnum):
    THRESHOLD = "threshold"  # enough matches (a failed migrate run, failed reads): a new incident
    REGRESSION = "regression"  # the same, after an earlier incident of it was resolved
    MATCH = "match"  # another match (failed run, failed read) on the open incident
    UPDATE = "update"  # news worth a reply in the thread
    HOLD = "hold"  # quiet, but nothing shows health yet: said once per hold
    EVIDENCE = "evidence"  # proof of health, a successful migrate run, or reading works again


@dataclass(frozen=True, slots=True)
class Move:
    status: IncidentStatus  # the status after the move
    transition: TransitionKind | None  # what to tell; None: nothing


# h11-style: status -> event -> move. A match on a resolved incident is not a move of that
# incident: it opens a new one (a regression, from `None`), so RESOLVED accepts nothing.
MOVES: dict[IncidentStatus | None, dict[Event, Move]] = {
    None: {
        Event.THRESHOLD: Move(IncidentStatus.OPEN, TransitionKind.OPENED),
        Event.REGRESSION: Move(IncidentStatus.OPEN, TransitionKind.REGRESSED),
    },
    IncidentStatus.OPEN: {
        Event.MATCH: Move(IncidentStatus.OPEN, None),
        Event.UPDATE: Move(IncidentStatus.OPEN, TransitionKind.UPDATED),
        Event.HOLD: Move(IncidentStatus.OPEN, TransitionKind.QUIET_NO_TRAFFIC),
        Event.EVIDENCE: Move(IncidentStatus.RESOLVED, TransitionKind.RESOLVED),
    },
    IncidentStatus.RESOLVED: {},
}


class InvalidMove(RuntimeError):
    pass


def next_move(status: IncidentStatus | None, event: Event, *, incident: str = "") -> Move:
    """The table's move from `status` on `event`; `InvalidMove` names both when there is none."""
    try:
        return MOVES[status][event]
    except KeyError:
        where = f"incident {incident}: " if incident else ""
        name = repr(status.value) if status is not None else "no incident"
        raise InvalidMove(f"{where}no move from {name} on {event.value!r}") from None


# --- decisions -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about an incident, and why: a move of the table (`event`; None: no move)."""

    event: Event | None
    reason: Reason
    note: str = ""  # the transition's one line (its `reason` text), when the move tells something
    at: datetime | None = None  # when the move happens, if not at the decision's `now`
    fix: str | None = None  # a resolution's fix: the revision named in `resolved_by`
    changes: tuple[str, ...] = ()  # an update's news, one line each


# The decisions that change nothing, made once: most ticks end in one of them.
_FAILING = Decision(None, Reason.FAILING)
_DATA_INCOMPLETE = Decision(None, Reason.DATA_INCOMPLETE)
_BELOW_THRESHOLD = Decision(None, Reason.BELOW_THRESHOLD)
_UNCONFIGURED = Decision(None, Reason.SIGNAL_UNCONFIGURED)
_NO_NEWS = Decision(None, Reason.NO_NEWS)
_UPDATE_THROTTLED = Decision(None, Reason.UPDATE_THROTTLED)
_MIGRATION_FAILING = Decision(None, Reason.MIGRATION_FAILING)
_CANNOT_READ = Decision(Event.MATCH, Reason.CANNOT_READ)
_READING_WORKS = Decision(None, Reason.READING_WORKS_AGAIN)
_TOLD: dict[Reason, Decision] = {r: Decision(None, r) for r in Reason if r.holds}


def threshold(window: Sequence[Pending], rule: SignalRule, signal: str) -> Decision:
    """An error incident opens once `open_after` matches fall within `window` (`window`: the
    matches within `rule.window` of the newest, in time order)."""
    if len(window) < rule.open_after:
        return _BELOW_THRESHOLD
    return Decision(Event.THRESHOLD, Reason.FAILING,
                    f"{len(window)} match(es) of {signal} within "
                    f"{format_duration(rule.window)} (open_after={rule.open_after})")


def migration_failed(where: str) -> Decision:
    """A failed `migrate deploy` with no incident open for it opens one: every failure counts."""
    return Decision(Event.THRESHOLD, Reason.MIGRATION_FAILING, f"migrate deploy failed on {where}")


def regressed(opening: Decision, regression_of: str) -> Decision:
    """An opening after an incident of the same service and signal was resolved: a regression,
    and its alert links the earlier one."""
    return dataclasses.replace(opening, event=Event.REGRESSION,
                               note=f"{opening.note}; it had been resolved ({regression_of})")


def resolution(incident: Incident, rules: Rules, *, now: datetime, complete_until: datetime,
               has_request_logs: bool, revisions: Iterable[RevisionFacts]) -> Decision:
    """An open error incident on a tick: still failing, waiting for data, held, or resolved.

    `revisions`: the service's revision facts (read only to name the fix of a resolution).
    """
    rule = rules.signals.get(incident.signal)
    if rule is None:  # a signal removed from the config
        return _UNCONFIGURED
    waiting = quiet_period(incident, rule, now=now, complete_until=complete_until)
    if waiting is not None:
        return waiting
    evidence, since = health_evidence(incident, has_request_logs)
    if evidence.holds:
        return hold(incident, evidence)
    return resolved(incident, rule, evidence, since, has_request_logs=has_request_logs,
                    revisions=revisions)


def quiet_period(incident: Incident, rule: SignalRule, *, now: datetime,
                 complete_until: datetime) -> Decision | None:
    """FAILING until `resolve_after` has passed without a match; DATA_INCOMPLETE until the data
    for that period is complete (silence may be entries that have not arrived yet); None once
    it has been quiet, on complete data."""
    quiet_end = incident.last_seen + rule.resolve_after
    if now < quiet_end:
        return _FAILING
    if complete_until < quiet_end:
        return _DATA_INCOMPLETE
    return None


def hold(incident: Incident, hold_reason: Reason) -> Decision:
    """Keep a quiet incident open for want of evidence; the thread is told once per hold."""
    if incident.noted_reason == hold_reason:
        return _TOLD[hold_reason]
    return Decision(Event.HOLD, hold_reason,
                    f"no {incident.signal} since {minute(incident.last_seen)}, but "
                    f"{HOLD_WORDS[hold_reason]}: keeping it open")


def resolved(incident: Incident, rule: SignalRule, evidence: Reason, since: datetime | None, *,
             has_request_logs: bool, revisions: Iterable[RevisionFacts]) -> Decision:
    """The resolution of a quiet error incident, from the evidence (`health_evidence`): fixed by
    a revision, with no deploy to explain it, or on silence alone where there can be no more."""
    quiet_end = incident.last_seen + rule.resolve_after
    fix = fixed_by(incident, since, has_request_logs=has_request_logs, revisions=revisions)
    silence = evidence is Reason.SILENCE_WITHOUT_REQUEST_LOGS
    note = (f"no {incident.signal} for {format_duration(rule.resolve_after)} since "
            f"{minute(incident.last_seen)}")
    if silence:
        note += " (the service writes no request logs: silence is the only evidence)"
    else:
        note += f", {evidence_words(incident)}"
    note += (f"; fixed by revision {fix.name}" if fix is not None
             else "; no deploy explains the recovery")
    reason = (evidence if silence else Reason.FIXED_BY_DEPLOY if fix is not None
              else Reason.NO_DEPLOY_EXPLAINS_IT)
    return Decision(Event.EVIDENCE, reason, note, at=max(quiet_end, since) if since else quiet_end,
                    fix=fix.name if fix is not None else None)


def migration_resolution(incident: Incident, *, now: datetime,
                         revisions: Iterable[RevisionFacts]) -> Decision:
    """Resolved by the first successful `migrate deploy` on the service after the failure.

    Decided on the tick, not on the event, so that every migration the run applied (one event
    each, same time) is folded before the confirmation quotes them.
    """
    runs = [
        (m.at, facts) for facts in revisions for m in facts.migrations
        if MigrationOutcome(m.outcome).run_succeeded and incident.last_seen < m.at <= now
    ]
    if not runs:
        return _MIGRATION_FAILING
    at, fix = min(runs, key=lambda run: run[0])
    applied = [m.name for m in fix.migrations
               if m.outcome == MigrationOutcome.APPLIED and m.name and m.at == at]
    note = f"migrate deploy succeeded on {fix.name}" + (
        f", applying {', '.join(applied)}" if applied else "")
    return Decision(Event.EVIDENCE, Reason.MIGRATION_SUCCEEDED, note, at=at, fix=fix.name)


def update(incident: Incident, rules: Rules, *, now: datetime) -> Decision:
    """News for the thread (changes noted since the last message, or the count doubled), told
    at most once per `update_every`."""
    changes = list(dict.fromkeys(incident.changes))
    if incident.count >= 2 * max(incident.notified_count, 1):
        what = "failed runs" if incident.kind is IncidentKind.MIGRATION else "matches"
        changes.append(f"{incident.count} {what} now (was {incident.notified_count})")
    if not changes:
        return _NO_NEWS
    last = incident.notified_at
    if last is not None and now - last < rules.update_every:
        return _UPDATE_THROTTLED
    return Decision(Event.UPDATE, Reason.NEWS, "; ".join(changes), changes=tuple(changes))


def source_read(*, ok: bool, failures: int, is_open: bool, failures_before_alert: int,
                unit: str, error: str, regression_of: str | None) -> Decision:
    """The monitor's own incident, on one cycle's read of `unit`.

    `failures`: the consecutive failed reads, this one included (on a success: those before
    it). It opens after `failures_before_alert` of them and resolves on the first read that
    works; a regression of it says so by its kind only.
    """
    if ok:
        if not is_open:
            return _READING_WORKS
        return Decision(Event.EVIDENCE, Reason.READING_WORKS_AGAIN,
                        f"reading logs works again after {failures} failed check(s)")
    if is_open:
        return _CANNOT_READ
    if failures < failures_before_alert:
        return _BELOW_THRESHOLD
    return Decision(Event.REGRESSION if regression_of is not None else Event.THRESHOLD,
                    Reason.CANNOT_READ,
                    f"{failures} consecutive checks could not read logs for {unit}: {error}")


# --- probes ----------------------------------------------------------------------------------

def wants_evidence(incident: Incident, rule: SignalRule, *, now: datetime,
                   complete_until: datetime, has_request_logs: bool) -> datetime | None:
    """The end of the span to ask about, when a decision on this incident needs evidence that
    was not read: its quiet period has run on complete data, and what was found since its last
    match does not show health (or the service is not yet known to write request logs). None:
    decide with what is known."""
    if quiet_period(incident, rule, now=now, complete_until=complete_until) is not None:
        return None
    until = min(now, complete_until)
    asked = incident.probed_until
    if asked is not None and asked >= until:
        return None  # asked already: decide on the answer
    if has_request_logs and not health_evidence(incident, has_request_logs)[0].holds:
        return None
    return until


def probe(incident: Incident, until: datetime, asked: Round | None, *,
          has_request_logs: bool) -> Probe | None:
    """The next question about `incident` for the span ending at `until`: `asked` is the round
    already answered for it in this cycle (None: none yet); None once both were answered."""
    if asked is Round.CONTEXT:
        return None
    since = max(incident.last_seen, incident.probed_until or incident.last_seen)
    if asked is None and has_request_logs:
        stopped = all(incident.instances.values())
        return Probe(incident.id, incident.service, since, until, Round.EVIDENCE,
                     routes=tuple(incident.failed_routes),
                     not_revisions=tuple(sorted(incident.revisions)),
                     instances=tuple(sorted(incident.instances)),  # gone ones served too
                     any_instance=stopped)
    return Probe(incident.id, incident.service, since, until, Round.CONTEXT,
                 look_back=not has_request_logs)


# --- evidence --------------------------------------------------------------------------------

def health_evidence(incident: Incident, has_request_logs: bool) -> tuple[Reason, datetime | None]:
    """Whether the successes since the last match show the failing work works again.

    Successes count on the routes that failed (any app route when no request log failed), and
    then: on a revision that took the traffic without failing, or from the instances that
    failed; from other instances of the failing revision only once every failing instance shut
    down. Returns the hold that keeps it open, or the evidence and when it began.
    """
    if not has_request_logs:
        return Reason.SILENCE_WITHOUT_REQUEST_LOGS, None
    ev = incident.evidence
    counted = [Evidence.NEW_REVISION, Evidence.FAILING_INSTANCE]
    if all(incident.instances.values()):  # every failing instance is gone (or none is known)
        counted.append(Evidence.OTHER_INSTANCE)
    found = [incident.evidence_since[k] for k in counted if ev.get(k)]
    if found:
        return Reason.FIXED_BY_DEPLOY, min(found)  # `resolved` tells fix from no deploy
    for kind, held in ((Evidence.OTHER_INSTANCE, Reason.OTHER_INSTANCES_ONLY),
                       (Evidence.OTHER_ROUTE, Reason.OTHER_ROUTES_ONLY),
                       (Evidence.ASSET, Reason.ONLY_STATIC_ASSETS)):
        if ev.get(kind):
            return held, None
    return Reason.NO_TRAFFIC, None


def evidence_words(incident: Incident) -> str:
    """`12 successful request(s) on the routes that failed (/app), 9 of them on a new revision`."""
    ev = incident.evidence
    n = sum(ev.get(k, 0) for k in (Evidence.NEW_REVISION, Evidence.FAILING_INSTANCE,
                                   Evidence.OTHER_INSTANCE))
    where = (f"on the routes that failed ({', '.join(incident.failed_routes[:3])}"
             f"{', ...' if len(incident.failed_routes) > 3 else ''})"
             if incident.failed_routes else "on app routes")
    parts = [f"{n} successful request(s) {where} served since"]
    if ev.get(Evidence.NEW_REVISION):
        parts.append(f"{ev[Evidence.NEW_REVISION]} by a revision that did not fail")
    if ev.get(Evidence.FAILING_INSTANCE):
        parts.append(f"{ev[Evidence.FAILING_INSTANCE]} by the instances that failed")
    stopped = sum(incident.instances.values())
    if stopped and all(incident.instances.values()):
        parts.append(f"the {stopped} failing instance(s) shut down")
    if ev.get(Evidence.ASSET):
        parts.append(f"{ev[Evidence.ASSET]} static asset(s) not counted")
    return ", ".join(parts)


def fixed_by(incident: Incident, evidence_since: datetime | None, *, has_request_logs: bool,
             revisions: Iterable[RevisionFacts]) -> RevisionFacts | None:
    """The newest clean revision, serving since the last match, that was live when the
    quiet period began or, for an incident held open for want of evidence, when the
    evidence began: a revision that came later did not make the errors stop."""
    candidates = [f for f in _fix_candidates(incident, evidence_since, revisions)
                  if rev.may_be_fix(f, has_request_logs)
                  and f.last_seen is not None and f.last_seen >= incident.last_seen]
    return max(candidates, key=lambda f: f.live_since or incident.last_seen, default=None)


def _fix_candidates(incident: Incident, evidence_since: datetime | None,
                    revisions: Iterable[RevisionFacts]) -> list[RevisionFacts]:
    """Clean revisions live in time to be the fix, whether or not they served since."""
    live_by = incident.last_seen + READY_GRACE
    if evidence_since is not None:
        live_by = max(live_by, evidence_since)
    return [f for f in revisions
            if f.errors.get(incident.signal, 0) == 0 and f.ready is not False
            and f.live_since is not None and f.live_since <= live_by]


def unknown_fixes(incident: Incident, rule: SignalRule, *, now: datetime,
                  complete_until: datetime, revisions: Iterable[RevisionFacts]) -> tuple[str, ...]:
    """The revisions that could be named as the fix of a resolution about to be decided, but
    whose serving since the last match was not read (a read of the needles sees no success):
    a FIX probe asks whether they served. Empty: nothing to ask."""
    if quiet_period(incident, rule, now=now, complete_until=complete_until) is not None:
        return ()
    evidence, since = health_evidence(incident, True)
    if evidence.holds:
        return ()
    return tuple(sorted(f.name for f in _fix_candidates(incident, since, revisions)
                        if f.requests_ok == 0 or f.last_seen is None
                        or f.last_seen < incident.last_seen))
