"""Evidence by probe: a fold that never reads successful requests in bulk, and asks for them when
a decision needs them, reaches the conclusions of a fold that read every request.

The oracle: the same observations folded twice, once whole (every request, as a read of
everything gives them) and once with the successful requests withheld, answered only through
the probes the fold asks (`serve` below stands for Cloud Logging evaluating `probe_filter`; the
emulator tests check the filter itself). Transitions (kind, event time, reason) and the
incidents' conclusions must be the same.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    InstanceStopped,
    Observation,
    RequestServed,
)
from monitor.correlate.incidents import Fold, Outcome
from monitor.correlate.model import Reason
from monitor.correlate.probe import PROBE_PAGE, Answer, Probe, Round
from monitor.correlate.state import Rules, SignalRule, State

T0 = datetime(2025, 12, 13, 0, 0, tzinfo=UTC)
SVC, SIG = "spector", "missing-session-table"
RULES = Rules(signals={SIG: SignalRule("critical", 1, timedelta(minutes=5),
                                       timedelta(minutes=15))},
              update_every=timedelta(minutes=15))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def hit(m: float, revision: str = "r42", instance: str = "i1") -> ErrorHit:
    return ErrorHit(at(m), SVC, revision, SIG, f"hit-{m}", "MissingSessionTableError", instance)


def req(m: float, status: int = 200, revision: str = "r44", instance: str = "i9",
        route: str = "/app", asset: bool = False) -> RequestServed:
    return RequestServed(at(m), SVC, revision, status, instance, route, asset)


def ready(m: float, revision: str) -> DeployEvent:
    return DeployEvent(at(m), SVC, revision, DeployStage.READY)


def serve(probe: Probe, withheld: list[RequestServed]) -> Answer:
    """What Cloud Logging returns for the probe's filter (queries.probe_filter), one page."""
    def selected(r: RequestServed) -> bool:
        if not probe.reads_from < r.at <= probe.until:
            return False
        if probe.round is Round.CONTEXT:
            return True
        if probe.round is Round.FIX:
            return 200 <= r.status < 400 and r.revision in probe.revisions
        return (200 <= r.status < 400 and not r.asset
                and (not probe.routes or r.route in probe.routes)
                and (probe.any_instance or r.revision not in probe.not_revisions
                     or r.instance_id in probe.instances))
    found = sorted((r for r in withheld if selected(r)), key=lambda r: r.at)
    return Answer(probe, tuple(found[:PROBE_PAGE]), len(found) > PROBE_PAGE)


def cycles(observations: list[Observation], now: float, *, probing: bool
           ) -> tuple[Outcome, list[Probe]]:
    """A cycle a minute, as `monitor run` polls: each folds that minute's observations (with
    `probing`, all but the successful requests, which only its probes can find)."""
    withheld = [o for o in observations if isinstance(o, RequestServed) and o.ok]
    read = [o for o in observations if not (probing and o in withheld)]
    state, transitions, asked = State(), [], []

    def settle(fold: Fold, probes: list[Probe]) -> None:
        while probes:
            asked.extend(probes)
            probes = fold.answer([serve(p, withheld) for p in probes])

    first = int(min(o.at for o in observations).timestamp() - T0.timestamp()) // 60
    for minute in range(first, int(now) + 1):
        fold = Fold(state, complete_until=at(minute), rules=RULES, probing=probing)
        page = sorted((o for o in read if at(minute - 1) < o.at <= at(minute)),
                      key=lambda o: o.at)
        settle(fold, fold.add(page))
        settle(fold, fold.close(at(minute)))
        state = fold.outcome.state
        transitions += fold.outcome.transitions
    return Outcome(state, transitions), asked


def fold_probing(observations: list[Observation], now: float) -> tuple[Outcome, list[Probe]]:
    return cycles(observations, now, probing=True)


def told(outcome: Outcome) -> list[tuple[str, datetime, str]]:
    """What was told, when and why; counts in the words aside (a probe reads one page, so it
    quotes what it read: a lower bound of what a full read counted).

    An update or a hold told in the cycle that resolves the incident is not compared: a full
    read ticks at every request and may tell one a few seconds before the resolution (a hold
    for the static asset served just before the success that resolves it); a read of the
    needles decides that cycle once, at the resolution, which the same post supersedes. For
    the same reason only the last of the holds told in one cycle is compared, and an update
    says "r44 is ready" in the cycle r44 became ready, whether its tick came before or after.
    """
    told: list[tuple[str, datetime, str]] = []
    resolutions = {(t.incident.id, _cycle_of(t.at)) for t in outcome.transitions
                   if t.kind.value == "resolved"}
    held: dict[tuple[str, datetime], int] = {}  # where the cycle's last hold was told
    for t in outcome.transitions:
        kind, cycle = t.kind.value, _cycle_of(t.at)
        if kind not in EXACT and (t.incident.id, cycle) in resolutions:
            continue
        reason = _ready.sub("", _evidence.sub(r"N successful request(s) \1 served since;",
                                              t.reason))
        if kind == "quiet_no_traffic":
            if (t.incident.id, cycle) in held:
                told[held[t.incident.id, cycle]] = (kind, cycle, reason)
                continue
            held[t.incident.id, cycle] = len(told)
        told.append((kind, t.at if kind in EXACT else cycle, reason))
    return [t for t in told if t[2]]


# "12 successful request(s) on the routes that failed (/app) served since, 9 by a revision that
# did not fail, 3 static asset(s) not counted;": a probe reads the one page that shows health, a
# full read counted everything, so only what the evidence was on is compared.
_evidence = re.compile(r"\d+ successful request\(s\) (.*?) served since[^;]*;")
_ready = re.compile(r"r\d+ is ready(; )?")


# Told at the event time they happened, whatever was read. An update or a hold is told at a tick:
# a full read ticks at every request, a read of the needles at the cycle's end; both are sent
# after that cycle's commit, so they are compared by the cycle they are told in.
EXACT = ("opened", "regressed", "resolved")


def _cycle_of(t: datetime) -> datetime:
    floor = t.replace(second=0, microsecond=0)
    return floor if floor == t else floor + timedelta(minutes=1)


def conclusions(outcome: Outcome) -> list[tuple[object, ...]]:
    """The incidents as stored; the hold last told only while open (see `told`)."""
    return [(i.id, i.status, i.count, i.resolved_at, i.resolved_by, i.reason, i.regression_of,
             i.failed_routes, i.noted_reason if i.status.value == "open" else None)
            for i in outcome.state.incidents.values()]


def same(observations: list[Observation], now: float) -> list[Probe]:
    whole, never = cycles(observations, now, probing=False)
    assert never == []
    probed, asked = fold_probing(observations, now)
    assert told(probed) == told(whole)
    assert conclusions(probed) == conclusions(whole)
    return asked


def test_the_spector_fix_resolves_at_the_same_moment_with_the_same_fix():
    obs: list[Observation] = [hit(m / 2) for m in range(20)]  # r42 fails for ten minutes
    obs += [req(m / 2, 500, "r42", "i1") for m in range(20)]
    obs += [ready(10.5, "r44")]
    obs += [req(11 + m / 4) for m in range(200)]  # r44 serves /app from 11 to 61
    asked = same(obs, 70)
    (incident,) = fold_probing(obs, 70)[0].state.incidents.values()
    assert incident.resolved_by == "r44" and incident.reason == Reason.FIXED_BY_DEPLOY
    assert incident.resolved_at == at(9.5 + 15)
    assert [p.round for p in asked] == [Round.EVIDENCE]  # one small query, not 200 entries


def test_only_static_assets_hold_it_open_and_say_so_after_a_second_round():
    obs: list[Observation] = [hit(0), req(0, 500, "r42", "i1"), hit(1)]
    obs += [req(2 + m, 200, "r42", "i1", "/build/app.js", asset=True) for m in range(30)]
    asked = same(obs, 40)
    # a held incident costs two small requests a cycle: is there evidence, and if not, why
    assert [p.round for p in asked] == [Round.EVIDENCE, Round.CONTEXT] * (40 - 16 + 1)
    assert [(p.since, p.until) for p in asked[::2]] == [
        (at(1), at(16)), *((at(m - 1), at(m)) for m in range(17, 41))]
    incident, = fold_probing(obs, 40)[0].state.incidents.values()
    assert incident.reason == Reason.ONLY_STATIC_ASSETS


def test_other_routes_only_and_other_instances_only_are_told_as_a_full_read_tells_them():
    routes: list[Observation] = [hit(0), req(0, 500, "r42", "i1", "/app")]
    routes += [req(1 + m, 200, "r42", "i1", "/health") for m in range(30)]
    same(routes, 40)
    instances: list[Observation] = [hit(0), req(0, 500, "r42", "i1", "/app")]
    instances += [req(1 + m, 200, "r42", "i2", "/app") for m in range(30)]
    same(instances, 40)
    # ... and once the failing instance shut down, the others' successes count
    instances.append(InstanceStopped(at(20.5), SVC, "r42", "i1"))
    asked = same(instances, 40)
    # asked only of the failing instance until it stopped; its successes elsewhere were counted
    assert {p.instances for p in asked if p.round is Round.EVIDENCE} == {("i1",)}
    assert not any(p.any_instance for p in asked if p.until <= at(20.5))


def test_a_success_then_a_new_match_resolves_first_and_then_regresses_as_a_full_read_does():
    obs: list[Observation] = [hit(0), req(0, 500, "r42", "i1"), ready(1, "r44"), req(16, 200)]
    obs += [hit(30, "r44", "i9"), req(30, 500, "r44", "i9")]  # the same page as the success
    asked = same(obs, 60)
    probed, _ = fold_probing(obs, 60)
    kinds = [t.kind.value for t in probed.transitions]
    assert kinds[:5] == ["opened", "quiet_no_traffic", "updated", "resolved", "regressed"]
    assert probed.transitions[3].at == at(16)  # the success resolved it at once ...
    assert probed.transitions[4].at == at(30)  # ... before the match reopened it
    assert [(p.round, p.until) for p in asked[:3]] == [
        (Round.EVIDENCE, at(15)), (Round.CONTEXT, at(15)), (Round.EVIDENCE, at(16))]


def test_a_service_without_request_logs_resolves_on_silence_only_after_looking_back():
    obs: list[Observation] = [hit(0), hit(1)]
    asked = same(obs, 30)
    assert [(p.round, p.look_back) for p in asked] == [(Round.CONTEXT, True)]
    incident, = fold_probing(obs, 30)[0].state.incidents.values()
    assert incident.reason == Reason.SILENCE_WITHOUT_REQUEST_LOGS


def test_a_web_service_quiet_at_night_is_not_mistaken_for_a_worker():
    """Its request logs are a day old: the look back finds them, so silence resolves nothing."""
    early = [req(-600 + m, 200, "r42", "i1") for m in range(5)]
    obs: list[Observation] = [*early, hit(0)]
    probed, asked = fold_probing(obs, 60)
    incident, = probed.state.incidents.values()
    assert incident.status.value == "open" and incident.reason == Reason.NO_TRAFFIC
    assert asked[0].look_back


def test_each_cycle_asks_only_of_its_own_minute_once_a_span_is_answered():
    obs: list[Observation] = [hit(0), req(0, 500, "r42", "i1")]
    probed, asked = fold_probing(obs, 30)
    # the quiet period ends at 15: both rounds over it, then each cycle only its new minute
    assert [(p.round, p.since, p.until) for p in asked[:4]] == [
        (Round.EVIDENCE, at(0), at(15)), (Round.CONTEXT, at(0), at(15)),
        (Round.EVIDENCE, at(15), at(16)), (Round.CONTEXT, at(15), at(16))]
    assert [(p.since, p.until) for p in asked[::2]] == [
        (at(0), at(15)), *((at(m - 1), at(m)) for m in range(16, 31))]
    (incident,) = probed.state.incidents.values()
    assert incident.probed_until == at(30)
    fold = Fold(probed.state, complete_until=at(31), rules=RULES, probing=True)
    again = fold.close(at(31))
    assert [(p.round, p.since, p.until) for p in again] == [(Round.EVIDENCE, at(30), at(31))]


@pytest.mark.parametrize("seed", range(40))
def test_random_stories_reach_the_same_conclusions(seed):
    rnd = random.Random(seed)
    obs: list[Observation] = []
    fix_at = rnd.uniform(5, 40)
    instances = ["i1", "i2", "i3"]
    for _ in range(rnd.randint(1, 30)):
        m = rnd.uniform(0, fix_at)
        inst = rnd.choice(instances)
        obs += [hit(m, "r42", inst), req(m, 500, "r42", inst, rnd.choice(["/app", "/auth"]))]
    # r44 is told as deployed: Cloud Run's audit and system events say so, and a read of the
    # needles selects them. Without them a revision is first seen by what is read of it, and
    # a probe reads fewer of its requests than a full read (the fix may go unnamed).
    obs.append(ready(fix_at, "r44"))
    if rnd.random() < 0.3:
        obs.append(InstanceStopped(at(fix_at + rnd.uniform(0, 20)), SVC, "r42", "i1"))
    for _ in range(rnd.randint(0, 150)):
        m = rnd.uniform(0, 90)
        revision = "r44" if m > fix_at and rnd.random() < 0.7 else "r42"
        obs.append(req(m, 200, revision, rnd.choice([*instances, "i9"]),
                       rnd.choice(["/app", "/auth", "/health", "/build/x.js"]),
                       asset=rnd.random() < 0.2))
    if rnd.random() < 0.3:
        m = rnd.uniform(fix_at, 90)
        obs += [hit(m, "r44", "i9"), req(m, 500, "r44", "i9")]
    same(obs, 100)
