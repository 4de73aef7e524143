"""The incident fold: observations in, incidents and transitions out.

Rules:
- It folds observations into the incidents' facts (counts, routes, instances, evidence) and
  asks `decide.py` wherever a rule applies: it decides neither an incident's status nor
  whether to say something, and applies each decision through `effects.apply` (the table's
  move and the one emitter). `revisions.py` only keeps facts about revisions.
- It never reads the clock, the store or the network. Time is event time: each observation's
  timestamp, and `now` / `complete_until` passed in by the caller once per cycle.
- Timers (resolution, throttled updates) are checked before each observation in time order and
  once more at `now`. A replay of a whole export therefore emits the same transitions, at the
  same event times, as a live monitor that polled the same entries as they were written.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    InstanceStopped,
    MigrationEvent,
    MigrationOutcome,
    Observation,
    RequestServed,
    RevisionSeen,
)
from monitor.correlate import decide, effects
from monitor.correlate import revisions as rev
from monitor.correlate.decide import Decision, Event
from monitor.correlate.model import (
    MAX_INSTANCES,
    MAX_ROUTES,
    Evidence,
    Incident,
    IncidentKind,
    IncidentStatus,
    MigrationFailure,
    RevisionFacts,
    Transition,
)
from monitor.correlate.probe import MAX_PROBES_PER_CYCLE, Answer, Probe, Round
from monitor.correlate.state import Rules, State

MIGRATION_SIGNAL = "migration-failed"
FORMAT_ID = "%Y%m%dT%H%M%SZ"


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
    replayed export): the same timers at the same event times, so the same outcome.

    With `probing` (a cycle that reads the needles, not the haystack), a tick whose decision
    needs evidence that was not read stops the fold and returns the `Probe`s it needs; the
    caller answers them (`answer`) and the fold goes on from there, so every decision is made at
    the event time it would have been made at had every request been read.
    """

    def __init__(self, state: State, *, complete_until: datetime, rules: Rules,
                 probing: bool = False) -> None:
        self._machine = _Machine(_copy_for_cycle(state), rules, probing)
        self._complete_until = complete_until
        self._last: datetime | None = None
        self._rest: list[Observation] = []  # what is left of a page stopped by probes
        self._closing: datetime | None = None  # `close`'s now, while its probes are out
        self._wanted: list[Probe] = []

    def add(self, observations: Iterable[Observation]) -> list[Probe]:
        """Observations in event order, none before one already folded. Returns the probes
        the fold waits for (always none without `probing`)."""
        if self._wanted:
            raise RuntimeError("the fold waits for the answers to its probes")
        return self._run(list(observations))

    def _run(self, observations: list[Observation]) -> list[Probe]:
        machine, complete_until, last = self._machine, self._complete_until, self._last
        for i, obs in enumerate(observations):
            if last is None or obs.at > last:  # all of one instant is folded before timers run
                wanted = machine.tick(obs.at, min(obs.at, complete_until), upcoming=obs)
                if wanted:
                    self._rest, self._wanted, self._last = observations[i:], wanted, last
                    return wanted
                last = obs.at
            elif obs.at < last:
                raise ValueError(f"observation at {obs.at} folded after one at {last}")
            machine.observe(obs)
        self._last, self._rest = last, []
        return []

    def answer(self, answers: Iterable[Answer]) -> list[Probe]:
        """The answers to the probes `add` or `close` returned; the fold goes on, and returns
        the probes it waits for next (a second round, or a later tick's)."""
        for a in answers:
            self._machine.answer(a)
        self._wanted = []
        if self._closing is not None:
            return self.close(self._closing)
        return self._run(self._rest)

    def close(self, now: datetime, complete_until: datetime | None = None) -> list[Probe]:
        """The last timers, at `now`. `complete_until` may be earlier than the fold's (a read
        cut short by its budget, known at the read's end), never earlier than an observation
        folded: the data is complete only up to there. Returns the probes it waits for."""
        if complete_until is not None:
            self._complete_until = min(self._complete_until, complete_until)
        self._closing = now
        self._wanted = self._machine.tick(now, self._complete_until, upcoming=None)
        return self._wanted

    def finish(self, now: datetime, complete_until: datetime | None = None) -> Outcome:
        """`close`, for a fold that does not probe, and its outcome."""
        if self.close(now, complete_until):
            raise RuntimeError("a probing fold is closed with `close` and its answers")
        return self.outcome

    @property
    def outcome(self) -> Outcome:
        return Outcome(self._machine.state, self._machine.transitions)


def _copy_for_cycle(state: State) -> State:
    """A copy the cycle may change, without copying every revision's facts: a month of revisions
    is most of the state, and a cycle touches a few. Revision facts are copied when first
    folded (copy on write, in `_Machine.observe`)."""
    copied = copy.deepcopy(dataclasses.replace(state, revisions={}))
    copied.revisions = dict(state.revisions)
    return copied


class _Machine:
    """The cycle's copy of the state, the observations folded into it, the transitions so far."""

    def __init__(self, state: State, rules: Rules, probing: bool = False) -> None:
        self.state = state
        self.rules = rules
        self.probing = probing
        self.transitions: list[Transition] = []
        self.owned: set[rev.RevisionKey] = set()  # revision facts this cycle has copied
        # Probes of this cycle, per incident: the round answered for a span's end, and how many
        self.asked: dict[str, tuple[datetime, Round]] = {}
        self.probes: dict[str, int] = {}

    # --- applying decisions ----------------------------------------------------------------

    def apply(self, incident: Incident, decision: Decision, at: datetime, *,
              opening: bool = False) -> None:
        facts = self.facts(incident.service) if decision.event is not None else ()
        transition = effects.apply(incident, decision, at, opening=opening, facts=facts)
        if transition is not None:
            self.transitions.append(transition)

    def open(self, incident: Incident, decision: Decision, at: datetime) -> None:
        """Announce a new incident: a regression when it follows a resolved one."""
        if incident.regression_of is not None:
            decision = decide.regressed(decision, incident.regression_of)
        self.apply(incident, decision, at, opening=True)

    def facts(self, service: str) -> Iterator[RevisionFacts]:
        """The service's revision facts, read only when a decision or a transition needs them."""
        return (f for (s, _), f in self.state.revisions.items() if s == service)

    def note(self, service: str, change: str, *, kind: IncidentKind | None = None) -> None:
        for incident in self.state.incidents.values():
            if incident.service == service and incident.status is IncidentStatus.OPEN and (
                kind is None or incident.kind is kind
            ):
                incident.changes.append(change)

    # --- observations --------------------------------------------------------------------

    def own(self, obs: Observation) -> None:
        """Copy the revision facts `obs` is about before they change (see `_copy_for_cycle`)."""
        if obs.revision is not None:
            key = (obs.service, obs.revision)
            if key not in self.owned:
                self.owned.add(key)
                if key in self.state.revisions:  # shared with the caller's state: copy first
                    self.state.revisions[key] = copy.deepcopy(self.state.revisions[key])

    def observe(self, obs: Observation) -> None:
        self.own(obs)
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
            effects.move(incident, Event.MATCH)
            self.count_match(incident, hit.at, hit.revision, hit.instance_id, hit.weight)
            return
        key = (hit.service, hit.signal)
        # In time order (a late entry may be older than the pending ones), and only the matches
        # within `window` of the newest: the ones that can still open an incident together.
        # Each with the matches it stands for: the hit its weight (a flood's sample), the pending
        # ones one each.
        weighed = sorted([*((p, 1) for p in self.state.pending.get(key, [])),
                          ((hit.at, hit.revision, hit.sample, hit.instance_id), hit.weight)],
                         key=lambda pw: pw[0][0])
        weighed = [pw for pw in weighed if pw[0][0] > weighed[-1][0][0] - rule.window]
        window = [p for p, _ in weighed]
        decision = decide.threshold(window, rule, hit.signal)
        if decision.event is None:
            self.state.pending[key] = window
            return
        self.state.pending.pop(key, None)
        first_at, first_rev, sample, _ = window[0]
        counts: dict[str, int] = {}
        for (_, r, _, _), w in weighed:
            if r is not None:
                counts[r] = counts.get(r, 0) + w
        introduced_by = self.cause(hit.service, first_rev, first_at)
        incident = self.new_incident(
            hit.service, hit.signal, IncidentKind.ERROR, rule.severity, first_at, window[-1][0],
            count=sum(w for _, w in weighed), revisions=counts, sample=sample,
        )
        incident.count_variance = sum(w * w - w for _, w in weighed)
        for (at, revision, _, instance), w in weighed:
            incident.count_in_bucket(at, revision, w)
            self.failing_instance(incident, instance)
        incident.failed_routes = self.routes_failed_since(hit.service, first_at - rule.window)
        incident.introduced_by = introduced_by
        incident.suspect_migrations = self.suspects(hit.service, introduced_by, first_at)
        self.open(incident, decision, hit.at)

    def count_match(self, incident: Incident, at: datetime, revision: str | None,
                    instance: str | None = None, weight: int = 1) -> None:
        incident.count += weight
        incident.count_variance += weight * weight - weight
        incident.count_in_bucket(at, revision, weight)
        self.failing_instance(incident, instance)
        if revision is not None:
            if revision not in incident.revisions:
                incident.changes.append(f"now also failing on revision {revision}")
            incident.revisions[revision] = incident.revisions.get(revision, 0) + weight
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
                effects.move(incident, Event.MATCH)
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
            self.open(incident, decide.migration_failed(where), ev.at)
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

    # --- timers --------------------------------------------------------------------------

    def tick(self, now: datetime, complete_until: datetime, *,
             upcoming: Observation | None = None) -> list[Probe]:
        """The timers at `now`, before `upcoming` is folded (None: the cycle's last tick).

        A probing machine first asks whatever its decisions need (and decides nothing at this
        tick until it is answered); it asks only where the answer may matter now: before an
        observation of the incident's service, or at the last tick.
        """
        if self.probing:
            wanted = self.wanted(now, complete_until, upcoming)
            if wanted:
                return wanted
        for incident in list(self.state.incidents.values()):
            if incident.status is not IncidentStatus.OPEN:
                continue
            if incident.kind is IncidentKind.SOURCE:
                continue  # about the monitor, not the logs: source_incident.py decides it
            if incident.kind is IncidentKind.ERROR:
                # A probing machine decides only on evidence it has asked for: not asked yet
                # (this tick did not need it), the decision waits for a tick that asks.
                if not (self.probing and self.unanswered(incident, now, complete_until)):
                    self.apply(incident, decide.resolution(
                        incident, self.rules, now=now, complete_until=complete_until,
                        has_request_logs=incident.service in self.state.request_services,
                        revisions=self.facts(incident.service)), now)
            else:
                self.apply(incident, decide.migration_resolution(
                    incident, now=now, revisions=self.facts(incident.service)), now)
            if incident.status is IncidentStatus.OPEN:
                self.apply(incident, decide.update(incident, self.rules, now=now), now)
        return []

    # --- probes --------------------------------------------------------------------------

    def unanswered(self, incident: Incident, now: datetime, complete_until: datetime) -> bool:
        return self.question(incident, now, complete_until) is not None

    def question(self, incident: Incident, now: datetime, complete_until: datetime
                 ) -> Probe | None:
        """What a decision on `incident` at `now` needs to ask first (None: nothing)."""
        rule = self.rules.signals.get(incident.signal)
        if rule is None:
            return None
        known = incident.service in self.state.request_services
        asked = self.asked.get(incident.id)
        until = decide.wants_evidence(incident, rule, now=now, complete_until=complete_until,
                                      has_request_logs=known)
        if until is not None:
            return decide.probe(incident, until, asked[1] if asked and asked[0] == until
                                else None, has_request_logs=known)
        if not known:
            return None
        until = min(now, complete_until)
        if asked == (until, Round.FIX):
            return None
        fixes = decide.unknown_fixes(incident, rule, now=now, complete_until=complete_until,
                                     revisions=self.facts(incident.service))
        return Probe(incident.id, incident.service, incident.last_seen, until, Round.FIX,
                     revisions=fixes) if fixes else None

    def wanted(self, now: datetime, complete_until: datetime,
               upcoming: Observation | None) -> list[Probe]:
        probes = []
        for incident in self.state.incidents.values():
            if incident.status is not IncidentStatus.OPEN or incident.kind is not \
                    IncidentKind.ERROR:
                continue
            if upcoming is not None and (upcoming.service != incident.service
                                         or isinstance(upcoming, RevisionSeen)
                                         or self.probes.get(incident.id, 0)
                                         >= MAX_PROBES_PER_CYCLE):
                continue  # nothing about to happen to it: it can wait for a later tick
            probe = self.question(incident, now, complete_until)
            if probe is not None:
                self.probes[incident.id] = self.probes.get(incident.id, 0) + 1
                probes.append(probe)
        return probes

    def answer(self, answer: Answer) -> None:
        """Fold what a probe found into its incident (its evidence) and into the facts."""
        probe = answer.probe
        self.asked[probe.incident] = (probe.until, probe.round)
        incident = self.state.incidents.get(probe.incident)
        if incident is None or incident.status is not IncidentStatus.OPEN:
            return
        for req in answer.requests:
            self.state.request_services.add(req.service)
            if not probe.since < req.at <= probe.until or not 200 <= req.status < 400:
                continue  # a CONTEXT round's look back, or a failure the read already had
            self.own(req)
            rev.fold(self.state.revisions, req)
            if req.at > incident.last_seen and probe.round is not Round.FIX:
                self.count_evidence(incident, req)
        if probe.round is Round.FIX:
            return
        if probe.round is Round.CONTEXT or not decide.health_evidence(
                incident, incident.service in self.state.request_services)[0].holds:
            incident.probed_until = probe.until
