"""The incident state machine: observations in, incidents and transitions out.

Rules:
- Everything that decides an incident's status lives in this file; `revisions.py` only keeps
  facts about revisions.
- It never reads the clock, the store or the network. Time is event time: each observation's
  timestamp, and `now` / `complete_until` passed in by the caller once per cycle.
- Timers (resolution, throttled updates) are checked before each observation in time order and
  once more at `now`. A replay of a whole export therefore emits the same transitions, at the
  same event times, as a live monitor that polled the same entries as they were written.
- A move the status table does not list is a bug, and raises `InvalidMove` naming it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    InstanceStopped,
    MigrationEvent,
    MigrationOutcome,
    Observation,
    RequestServed,
)
from monitor.correlate import revisions as rev
from monitor.correlate.model import (
    HOLD_WORDS,
    MAX_INSTANCES,
    MAX_ROUTES,
    Evidence,
    Incident,
    IncidentKind,
    IncidentStatus,
    MigrationFailure,
    Reason,
    RevisionFacts,
    Transition,
    TransitionKind,
)
from monitor.correlate.state import Rules, State
from monitor.times import format_duration, minute

MIGRATION_SIGNAL = "migration-failed"
# Cloud Run logs a revision's Ready event a little after it starts taking traffic; the old
# revision's last in-flight errors can land just before it. A fix may be this late.
READY_GRACE = timedelta(minutes=1)
FORMAT_ID = "%Y%m%dT%H%M%SZ"


class Event(StrEnum):
    MATCH = "match"  # another matching entry / failed migration run
    NOTE = "note"  # an update, or "quiet but no traffic": status unchanged
    EVIDENCE = "evidence"  # quiet period with proof of health, or a successful migrate run


# h11-style: status -> event -> next status. A match on a resolved incident is not a move of
# that incident: it opens a new one (a regression), so RESOLVED accepts nothing.
MOVES: dict[IncidentStatus, dict[Event, IncidentStatus]] = {
    IncidentStatus.OPEN: {
        Event.MATCH: IncidentStatus.OPEN,
        Event.NOTE: IncidentStatus.OPEN,
        Event.EVIDENCE: IncidentStatus.RESOLVED,
    },
    IncidentStatus.RESOLVED: {},
}


class InvalidMove(RuntimeError):
    pass


def move(incident: Incident, event: Event) -> None:
    try:
        incident.status = MOVES[incident.status][event]
    except KeyError:
        raise InvalidMove(
            f"incident {incident.id}: no move from {incident.status.value!r} on {event.value!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    transitions: list[Transition]


def advance(
    state: State,
    observations: Sequence[Observation],
    *,
    now: datetime,
    complete_until: datetime,
    rules: Rules,
) -> Outcome:
    """Fold a cycle's observations into a copy of `state` and say what changed, and why.

    `complete_until`: the source guarantees no entry older than this is still to come. A quiet
    period must end before it, or silence may only be data that has not arrived yet.
    """
    fold = Fold(state, complete_until=complete_until, rules=rules)
    fold.add(sorted(observations, key=lambda o: o.at))
    return fold.finish(now)


class Fold:
    """`advance`, a page of observations at a time, for a cycle that cannot hold them all (a
    replayed export): the same timers at the same event times, so the same outcome."""

    def __init__(self, state: State, *, complete_until: datetime, rules: Rules) -> None:
        self._machine = _Machine(_copy_for_cycle(state), rules)
        self._complete_until = complete_until
        self._last: datetime | None = None

    def add(self, observations: Iterable[Observation]) -> None:
        """Observations in event order, none before one already folded."""
        machine, complete_until, last = self._machine, self._complete_until, self._last
        for obs in observations:
            if last is None or obs.at > last:  # all of one instant is folded before timers run
                machine.tick(obs.at, min(obs.at, complete_until))
                last = obs.at
            elif obs.at < last:
                raise ValueError(f"observation at {obs.at} folded after one at {last}")
            machine.observe(obs)
        self._last = last

    def finish(self, now: datetime) -> Outcome:
        self._machine.tick(now, self._complete_until)
        return Outcome(self._machine.state, self._machine.transitions)


def _copy_for_cycle(state: State) -> State:
    """A copy the cycle may change, without copying every revision's facts: a month of revisions
    is most of the state, and a cycle touches a few. Revision facts are copied when first
    folded (copy on write, in `_Machine.observe`)."""
    copied = copy.deepcopy(dataclasses.replace(state, revisions={}))
    copied.revisions = dict(state.revisions)
    return copied


class _Machine:
    def __init__(self, state: State, rules: Rules) -> None:
        self.state = state
        self.rules = rules
        self.transitions: list[Transition] = []
        self.owned: set[rev.RevisionKey] = set()  # revision facts this cycle has copied

    # --- emitting ------------------------------------------------------------------------

    def emit(self, kind: TransitionKind, incident: Incident, at: datetime, reason: str,
             changes: Iterable[str] = ()) -> None:
        incident.seq += 1
        if kind is not TransitionKind.QUIET_NO_TRAFFIC:
            incident.notified_at = at
            incident.notified_count = incident.count
            incident.changes = []
        self.transitions.append(
            Transition(
                kind=kind,
                incident=copy.deepcopy(incident),
                seq=incident.seq,
                at=at,
                reason=reason,
                changes=tuple(changes),
                revision_facts=tuple(
                    copy.deepcopy(f) for f in self.state.service_revisions(incident.service)
                ),
            )
        )

    def note(self, service: str, change: str, *, kind: IncidentKind | None = None) -> None:
        for incident in self.state.incidents.values():
            if incident.service == service and incident.status is IncidentStatus.OPEN and (
                kind is None or incident.kind is kind
            ):
                incident.changes.append(change)

    # --- observations --------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        if obs.revision is not None:
            key = (obs.service, obs.revision)
            if key not in self.owned:
                self.owned.add(key)
                if key in self.state.revisions:  # shared with the caller's state: copy first
                    self.state.revisions[key] = copy.deepcopy(self.state.revisions[key])
        rev.fold(self.state.revisions, obs)
        if isinstance(obs, ErrorHit):
            self.error_hit(obs)
        elif isinstance(obs, RequestServed):
            self.request(obs)
        elif isinstance(obs, MigrationEvent):
            self.migration(obs)
        elif isinstance(obs, DeployEvent):
            self.deploy(obs)
        elif isinstance(obs, InstanceStopped):
            self.instance_stopped(obs)

    def error_hit(self, hit: ErrorHit) -> None:
        rule = self.rules.signals.get(hit.signal)
        if rule is None:  # a signal removed from the config: its old hits mean nothing now
            return
        incident = self.state.open_incident(hit.service, hit.signal)
        if incident is not None:
            move(incident, Event.MATCH)
            self.count_match(incident, hit.at, hit.revision, hit.instance_id)
            return
        key = (hit.service, hit.signal)
        # In time order (a late entry may be older than the pending ones), and only the matches
        # within `window` of the newest: the ones that can still open an incident together.
        window = sorted([*self.state.pending.get(key, []),
                         (hit.at, hit.revision, hit.sample, hit.instance_id)],
                        key=lambda p: p[0])
        window = [p for p in window if p[0] > window[-1][0] - rule.window]
        if len(window) < rule.open_after:
            self.state.pending[key] = window
            return
        self.state.pending.pop(key, None)
        first_at, first_rev, sample, _ = window[0]
        counts: dict[str, int] = {}
        for _, r, _, _ in window:
            if r is not None:
                counts[r] = counts.get(r, 0) + 1
        introduced_by = self.cause(hit.service, first_rev, first_at)
        incident = self.new_incident(
            hit.service, hit.signal, IncidentKind.ERROR, rule.severity, first_at, window[-1][0],
            count=len(window), revisions=counts, sample=sample,
        )
        for at, revision, _, instance in window:
            incident.count_in_bucket(at, revision)
            self.failing_instance(incident, instance)
        incident.failed_routes = self.routes_failed_since(hit.service, first_at - rule.window)
        incident.introduced_by = introduced_by
        incident.suspect_migrations = self.suspects(hit.service, introduced_by, first_at)
        self.announce(incident, hit.at, f"{len(window)} match(es) of {hit.signal} within "
                      f"{format_duration(rule.window)} (open_after={rule.open_after})")

    def count_match(self, incident: Incident, at: datetime, revision: str | None,
                    instance: str | None = None) -> None:
        incident.count += 1
        incident.count_in_bucket(at, revision)
        self.failing_instance(incident, instance)
        if revision is not None:
            if revision not in incident.revisions:
                incident.changes.append(f"now also failing on revision {revision}")
            incident.revisions[revision] = incident.revisions.get(revision, 0) + 1
        if at < incident.first_seen:
            incident.first_seen = at
        if at > incident.last_seen:
            incident.last_seen = at
            # what showed health before this match shows nothing now
            incident.ok_requests_since_last = 0
            incident.first_ok_since_last = None
            incident.evidence, incident.evidence_since = {}, {}

    @staticmethod
    def failing_instance(incident: Incident, instance: str | None) -> None:
        """Track an instance that failed; one that fails after a stop is up again (Cloud Run
        restarts a container that exited in the same instance)."""
        if instance is not None and (instance in incident.instances
                                     or len(incident.instances) < MAX_INSTANCES):
            incident.instances[instance] = False

    def routes_failed_since(self, service: str, since: datetime) -> list[str]:
        """App routes of `service` that failed (5xx) since `since`, newest first."""
        failed = {route: at for f in self.state.service_revisions(service)
                  for route, at in f.failed_routes.items() if at >= since}
        return sorted(failed, key=lambda r: failed[r], reverse=True)[:MAX_ROUTES]

    def request(self, req: RequestServed) -> None:
        self.state.request_services.add(req.service)
        for incident in self.state.incidents.values():
            if (incident.service != req.service or incident.status is not IncidentStatus.OPEN
                    or incident.kind is not IncidentKind.ERROR):
                continue
            if not req.ok:
                if (req.route is not None and not req.asset
                        and req.route not in incident.failed_routes
                        and len(incident.failed_routes) < MAX_ROUTES):
                    incident.failed_routes.append(req.route)
            elif req.at > incident.last_seen and 200 <= req.status < 400:
                self.count_evidence(incident, req)

    @staticmethod
    def count_evidence(incident: Incident, req: RequestServed) -> None:
        """File one successful request after the last match under what it can show."""
        if req.asset:
            kind = Evidence.ASSET
        elif incident.failed_routes and req.route not in incident.failed_routes:
            kind = Evidence.OTHER_ROUTE
        elif req.revision is not None and req.revision not in incident.revisions:
            kind = Evidence.NEW_REVISION
        elif req.instance_id is not None and req.instance_id in incident.instances:
            kind = Evidence.FAILING_INSTANCE
        else:
            kind = Evidence.OTHER_INSTANCE
        incident.evidence[kind] = incident.evidence.get(kind, 0) + 1
        incident.evidence_since.setdefault(kind, req.at)
        if kind is not Evidence.ASSET:
            incident.ok_requests_since_last += 1
            if incident.first_ok_since_last is None:
                incident.first_ok_since_last = req.at

    def instance_stopped(self, ev: InstanceStopped) -> None:
        for incident in self.state.incidents.values():
            if (incident.service == ev.service and incident.status is IncidentStatus.OPEN
                    and ev.instance_id in incident.instances):
                incident.instances[ev.instance_id] = True

    def migration(self, ev: MigrationEvent) -> None:
        where = ev.revision or "an unknown revision"
        incident = self.state.open_incident(ev.service, MIGRATION_SIGNAL)
        if ev.outcome.run_failed:
            self.note(ev.service, f"{where}: migrate deploy failed"
                      f"{f' ({ev.code})' if ev.code else ''}"
                      f"{f' on {ev.name}' if ev.name else ''}", kind=IncidentKind.ERROR)
            failure = MigrationFailure(ev.name, ev.outcome.value, ev.code, ev.message)
            if incident is not None:
                move(incident, Event.MATCH)
                if incident.migration != failure:
                    incident.changes.append(
                        f"{where}: {ev.code or 'failure'} on {ev.name or 'the database'}")
                    incident.migration = failure
                self.count_match(incident, ev.at, ev.revision)
                return
            revisions = {ev.revision: 1} if ev.revision else {}
            incident = self.new_incident(
                ev.service, MIGRATION_SIGNAL, IncidentKind.MIGRATION,
                self.rules.migration_severity, ev.at, ev.at, count=1, revisions=revisions,
                sample=ev.message,
            )
            incident.count_in_bucket(ev.at, ev.revision)
            incident.introduced_by = ev.revision
            incident.suspect_migrations = [ev.name] if ev.name else []
            incident.migration = failure
            incident.reason = Reason.MIGRATION_FAILING
            self.announce(incident, ev.at, f"migrate deploy failed on {where}")
            return
        if ev.outcome is MigrationOutcome.APPLIED:
            self.note(ev.service, f"{where} applied migration {ev.name}")
        elif ev.outcome is MigrationOutcome.ROLLED_BACK:
            self.note(ev.service, f"{where}: migration {ev.name} marked as rolled back")
        elif ev.outcome is MigrationOutcome.MARKED_APPLIED:
            self.note(ev.service, f"{where}: migration {ev.name} marked as applied")

    def deploy(self, ev: DeployEvent) -> None:
        name = ev.revision or "a new revision"
        text = {
            DeployStage.DEPLOYED: f"{name} deployed" if ev.revision else "a deploy was requested",
            DeployStage.REJECTED: f"deploy rejected: {ev.message}",
            DeployStage.READY: f"{name} is ready",
            DeployStage.FAILED: f"{name} failed to become ready",
        }[ev.stage]
        self.note(ev.service, text)

    # --- helpers -------------------------------------------------------------------------

    def new_incident(self, service: str, signal: str, kind: IncidentKind, severity: str,
                     first: datetime, last: datetime, *, count: int,
                     revisions: dict[str, int], sample: str) -> Incident:
        base = f"{self.rules.namespace}{service}:{signal}:{first.strftime(FORMAT_ID)}"
        ident, n = base, 1
        while ident in self.state.incidents:
            n += 1
            ident = f"{base}.{n}"
        previous = self.state.last_resolved(service, signal)
        incident = Incident(
            id=ident, service=service, signal=signal, kind=kind, severity=severity,
            status=IncidentStatus.OPEN, first_seen=first, last_seen=last, count=count,
            revisions=revisions, sample=sample,
            regression_of=previous.id if previous is not None else None,
        )
        self.state.incidents[ident] = incident
        return incident

    def announce(self, incident: Incident, at: datetime, reason: str) -> None:
        if incident.regression_of is not None:
            self.emit(TransitionKind.REGRESSED, incident, at,
                      f"{reason}; it had been resolved ({incident.regression_of})")
        else:
            self.emit(TransitionKind.OPENED, incident, at, reason)

    def cause(self, service: str, revision: str | None, first_at: datetime) -> str | None:
        """The first match's revision, unless it never served: then the last one that did."""
        facts = self.state.revisions.get((service, revision)) if revision else None
        if facts is not None and rev.may_be_cause(facts):
            return revision
        live = [
            f for f in self.state.service_revisions(service)
            if rev.may_be_cause(f) and f.live_since is not None and f.live_since <= first_at
        ]
        newest = max(live, key=lambda f: f.live_since or first_at, default=None)
        return newest.name if newest is not None else None

    def suspects(self, service: str, introduced_by: str | None, first_at: datetime) -> list[str]:
        """Migrations the culprit ran; else those of the last deploy before the first match."""
        facts = self.state.revisions.get((service, introduced_by)) if introduced_by else None
        if facts is not None and rev.migrations_run(facts):
            return rev.migrations_run(facts)
        earlier = [
            f for f in self.state.service_revisions(service)
            if f.live_since is not None and f.live_since <= first_at and rev.migrations_run(f)
        ]
        last = max(earlier, key=lambda f: f.live_since or first_at, default=None)
        return rev.migrations_run(last) if last is not None else []

    def fix(self, incident: Incident, evidence_since: datetime | None) -> RevisionFacts | None:
        """The newest clean revision, serving since the last match, that was live when the
        quiet period began or, for an incident held open for want of evidence, when the
        evidence began: a revision that came later did not make the errors stop."""
        has_requests = incident.service in self.state.request_services
        live_by = incident.last_seen + READY_GRACE
        if evidence_since is not None:
            live_by = max(live_by, evidence_since)
        candidates = [
            f for f in self.state.service_revisions(incident.service)
            if f.errors.get(incident.signal, 0) == 0
            and rev.may_be_fix(f, has_requests)
            and f.live_since is not None
            and f.live_since <= live_by
            and f.last_seen is not None and f.last_seen >= incident.last_seen
        ]
        return max(candidates, key=lambda f: f.live_since or incident.last_seen, default=None)

    # --- timers --------------------------------------------------------------------------

    def tick(self, now: datetime, complete_until: datetime) -> None:
        for incident in list(self.state.incidents.values()):
            if incident.status is not IncidentStatus.OPEN:
                continue
            if incident.kind is IncidentKind.SOURCE:
                continue  # about the monitor, not the logs: health.py decides it
            resolve = (self.try_resolve if incident.kind is IncidentKind.ERROR
                       else self.try_resolve_migration)
            if resolve(incident, now, complete_until):
                continue
            self.maybe_update(incident, now)

    def try_resolve(self, incident: Incident, now: datetime, complete_until: datetime) -> bool:
        rule = self.rules.signals.get(incident.signal)
        if rule is None:
            return False
        quiet_end = incident.last_seen + rule.resolve_after
        if now < quiet_end:
            incident.reason = Reason.FAILING
            return False
        if complete_until < quiet_end:
            incident.reason = Reason.DATA_INCOMPLETE
            return False
        has_request_logs = incident.service in self.state.request_services
        reason, since = health_evidence(incident, has_request_logs)
        if reason.holds:
            incident.reason = reason
            if incident.noted_reason != reason:
                incident.noted_reason = reason
                move(incident, Event.NOTE)
                self.emit(TransitionKind.QUIET_NO_TRAFFIC, incident, now,
                          f"no {incident.signal} since {minute(incident.last_seen)}, but "
                          f"{HOLD_WORDS[reason]}: keeping it open")
            return False
        move(incident, Event.EVIDENCE)
        incident.resolved_at = max(quiet_end, since) if since else quiet_end
        fix = self.fix(incident, since)
        incident.resolved_by = fix.name if fix is not None else None
        incident.reason = (reason if reason is Reason.SILENCE_WITHOUT_REQUEST_LOGS
                           else Reason.FIXED_BY_DEPLOY if fix is not None
                           else Reason.NO_DEPLOY_EXPLAINS_IT)
        evidence = f"no {incident.signal} for {format_duration(rule.resolve_after)} since " \
                   f"{minute(incident.last_seen)}"
        if reason is Reason.SILENCE_WITHOUT_REQUEST_LOGS:
            evidence += " (the service writes no request logs: silence is the only evidence)"
        else:
            evidence += f", {evidence_words(incident)}"
        evidence += (f"; fixed by revision {fix.name}" if fix is not None
                     else "; no deploy explains the recovery")
        incident.resolution_note = evidence
        self.emit(TransitionKind.RESOLVED, incident, incident.resolved_at, evidence)
        return True

    def try_resolve_migration(self, incident: Incident, now: datetime,
                              complete_until: datetime) -> bool:
        """Resolved by the first successful `migrate deploy` on the service after the failure.

        Checked on the tick, not on the event, so that every migration the run applied (one
        event each, same time) is folded before the confirmation quotes them.
        """
        runs = [
            (m.at, facts) for facts in self.state.service_revisions(incident.service)
            for m in facts.migrations
            if MigrationOutcome(m.outcome).run_succeeded and incident.last_seen < m.at <= now
        ]
        if not runs:
            return False
        at, fix = min(runs, key=lambda run: run[0])
        move(incident, Event.EVIDENCE)
        incident.resolved_at = at
        incident.resolved_by = fix.name
        incident.reason = Reason.MIGRATION_SUCCEEDED
        applied = [m.name for m in fix.migrations
                   if m.outcome == MigrationOutcome.APPLIED and m.name and m.at == at]
        incident.resolution_note = f"migrate deploy succeeded on {fix.name}" + (
            f", applying {', '.join(applied)}" if applied else "")
        self.emit(TransitionKind.RESOLVED, incident, at, incident.resolution_note)
        return True

    def maybe_update(self, incident: Incident, now: datetime) -> None:
        changes = list(dict.fromkeys(incident.changes))
        if incident.count >= 2 * max(incident.notified_count, 1):
            what = "failed runs" if incident.kind is IncidentKind.MIGRATION else "matches"
            changes.append(f"{incident.count} {what} now (was {incident.notified_count})")
        if not changes:
            return
        last = incident.notified_at
        if last is not None and now - last < self.rules.update_every:
            return
        move(incident, Event.NOTE)
        self.emit(TransitionKind.UPDATED, incident, now, "; ".join(changes), changes)


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
        return Reason.FIXED_BY_DEPLOY, min(found)  # the caller tells fix from no deploy
    for kind, hold in ((Evidence.OTHER_INSTANCE, Reason.OTHER_INSTANCES_ONLY),
                       (Evidence.OTHER_ROUTE, Reason.OTHER_ROUTES_ONLY),
                       (Evidence.ASSET, Reason.ONLY_STATIC_ASSETS)):
        if ev.get(kind):
            return hold, None
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
