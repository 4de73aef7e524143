"""The incident state machine, tested with values: (state, observations, now) -> transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    MigrationEvent,
    MigrationOutcome,
    Observation,
    RequestServed,
    RevisionSeen,
)
from monitor.config import parse_config
from monitor.correlate.decide import MOVES, Event, InvalidMove
from monitor.correlate.effects import move
from monitor.correlate.incidents import MIGRATION_SIGNAL, Fold, Outcome, advance
from monitor.correlate.model import IncidentKind, IncidentStatus, TransitionKind
from monitor.correlate.state import Rules, SignalRule, State

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
SVC = "spector"
SIG = "missing-session-table"
BAD = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rules(open_after: int = 1, window: float = 5, resolve_after: float = 15,
          update_every: float = 15) -> Rules:
    return Rules(
        signals={SIG: SignalRule("critical", open_after, timedelta(minutes=window),
                                 timedelta(minutes=resolve_after))},
        update_every=timedelta(minutes=update_every),
    )


def hit(m: float, revision: str | None = "r42") -> ErrorHit:
    return ErrorHit(at(m), SVC, revision, SIG, f"id-{m}", "MissingSessionTableError: boom")


def ok(m: float, revision: str = "r44", status: int = 200) -> RequestServed:
    return RequestServed(at(m), SVC, revision, status)


def ready(m: float, revision: str) -> DeployEvent:
    return DeployEvent(at(m), SVC, revision, DeployStage.READY)


def applied(m: float, revision: str, name: str) -> MigrationEvent:
    return MigrationEvent(at(m), SVC, revision, "i1", MigrationOutcome.APPLIED, name)


def run(observations: list[Observation], now: float, *, state: State | None = None,
        complete: float | None = None, r: Rules | None = None) -> Outcome:
    return advance(state or State(), observations, now=at(now),
                   complete_until=at(complete if complete is not None else now),
                   rules=r or rules())


def kinds(outcome: Outcome) -> list[str]:
    return [t.kind.value for t in outcome.transitions]


def the_incident(outcome: Outcome, signal: str = SIG):
    (incident,) = [i for i in outcome.state.incidents.values() if i.signal == signal]
    return incident


# --- opening ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("open_after", "window", "hits", "expected"),
    [
        (1, 5, [1], ["opened"]),
        (3, 5, [1, 2], []),  # below threshold
        (3, 5, [1, 2, 3], ["opened"]),
        (3, 5, [1, 7, 13], []),  # never 3 within 5 minutes
        (3, 5, [1, 7, 8, 9], ["opened"]),  # the first falls out of the window
    ],
)
def test_opens_on_threshold_within_window(open_after, window, hits, expected):
    out = run([hit(m) for m in hits], now=hits[-1], r=rules(open_after, window))
    assert kinds(out) == expected


def test_opened_incident_names_revision_and_suspect_migrations():
    obs: list[Observation] = [
        RevisionSeen(at(0), SVC, "r41"),
        applied(1, "r42", BAD),
        ready(2, "r42"),
        hit(3),
        hit(4),
    ]
    out = run(obs, now=5)
    incident = the_incident(out)
    assert incident.status is IncidentStatus.OPEN
    assert incident.introduced_by == "r42"
    assert incident.suspect_migrations == [BAD]
    assert incident.count == 2
    assert incident.first_seen == at(3) and incident.last_seen == at(4)
    assert out.transitions[0].at == at(3)
    assert out.transitions[0].incident.count == 1  # the snapshot at the moment it opened


def test_suspects_fall_back_to_last_deploy_before_first_match():
    # The first error comes from the old revision, after the new one ran the migration.
    obs: list[Observation] = [
        RevisionSeen(at(0), SVC, "r41"),
        applied(1, "r42", BAD),
        hit(2, revision="r41"),
    ]
    incident = the_incident(run(obs, now=3))
    assert incident.introduced_by == "r41"
    assert incident.suspect_migrations == [BAD]


def test_revision_that_never_became_ready_is_not_the_cause():
    obs: list[Observation] = [
        RevisionSeen(at(0), SVC, "r41"),
        DeployEvent(at(1), SVC, "r42", DeployStage.FAILED, "container failed to start"),
        hit(2, revision="r42"),
    ]
    assert the_incident(run(obs, now=3)).introduced_by == "r41"


# --- resolution ------------------------------------------------------------------------------

def fixed_story() -> list[Observation]:
    return [
        applied(0, "r42", BAD), ready(1, "r42"), hit(2), hit(3),
        applied(9, "r44", FIX), ready(10, "r44"),
        hit(11, revision="r42"),  # the old revision drains after the fix is ready
        ok(12), ok(20), ok(30),
    ]


def test_resolves_with_evidence_and_names_the_fix():
    out = run(fixed_story(), now=40)
    incident = the_incident(out)
    assert kinds(out)[0] == "opened" and kinds(out)[-1] == "resolved"
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_by == "r44"
    assert incident.resolved_at == at(26)  # last error + 15m quiet
    assert "3 successful request(s)" not in incident.resolution_note  # counted up to 26
    assert "fixed by revision r44" in incident.resolution_note


def test_not_resolved_before_the_quiet_period_ends():
    out = run(fixed_story()[:-1], now=25)
    assert the_incident(out).status is IncidentStatus.OPEN


def test_not_resolved_while_data_is_incomplete():
    # 40 minutes of event time, but late entries may still arrive for the last 20.
    out = run(fixed_story(), now=40, complete=20)
    assert the_incident(out).status is IncidentStatus.OPEN
    out2 = run([], now=45, complete=30, state=out.state)
    assert the_incident(out2).status is IncidentStatus.RESOLVED


def test_a_read_cut_short_at_its_end_keeps_the_fold_from_resolving_past_the_cut():
    """A live read is folded a page at a time before its budget's cut is known (the cut is the
    last entry read, never before an observation folded); given at the end, it bounds the last
    timers exactly as if it had been known from the start."""
    story = [o for o in fixed_story() if o.at <= at(20)]  # the budget ran out at minute 20
    whole = advance(State(), story, now=at(40), complete_until=at(20), rules=rules())
    fold = Fold(State(), complete_until=at(40), rules=rules())
    fold.add(story)
    paged = fold.finish(at(40), complete_until=at(20))
    assert the_incident(paged).status is IncidentStatus.OPEN  # quiet until 26: not known yet
    assert kinds(paged) == kinds(whole) and the_incident(paged) == the_incident(whole)
    uncut = Fold(State(), complete_until=at(40), rules=rules())
    uncut.add(story)
    assert the_incident(uncut.finish(at(40))).status is IncidentStatus.RESOLVED


def test_silence_without_traffic_is_quiet_not_resolved():
    obs: list[Observation] = [ok(0, "r42"), hit(1), ok(2, "r42", status=500)]
    out = run(obs, now=30)
    assert kinds(out) == ["opened", "quiet_no_traffic"]
    assert the_incident(out).status is IncidentStatus.OPEN
    # said once, not every cycle
    assert kinds(run([], now=40, state=out.state)) == []


def test_service_without_request_logs_resolves_on_silence_without_a_fix():
    out = run([hit(1)], now=30)
    incident = the_incident(out)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_by is None
    assert "no deploy explains" in incident.resolution_note


def test_fix_must_have_been_live_before_the_quiet_period():
    obs: list[Observation] = [hit(1), ok(2, "r41"), ready(20, "r45"), ok(21, "r45")]
    incident = the_incident(run(obs, now=40))
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_by != "r45"


def test_a_revision_with_matches_is_never_the_fix():
    obs: list[Observation] = [ready(0, "r43"), hit(1, "r43"), hit(2, "r42"), ok(5, "r43")]
    incident = the_incident(run(obs, now=40))
    assert incident.resolved_by is None


# --- regression ------------------------------------------------------------------------------

def test_match_after_resolution_opens_a_linked_regression():
    first = run(fixed_story(), now=40)
    old = the_incident(first)
    second = run([hit(50, "r44")], now=50, state=first.state)
    assert kinds(second) == ["regressed"]
    new = second.transitions[0].incident
    assert new.id != old.id
    assert new.regression_of == old.id
    assert second.state.incidents[old.id].status is IncidentStatus.RESOLVED


# --- updates ---------------------------------------------------------------------------------

def test_updates_are_throttled_and_say_what_changed():
    obs: list[Observation] = [hit(1), hit(2), hit(3, "r43"), hit(4)]
    out = run(obs, now=10)
    assert kinds(out) == ["opened"]  # changes pending, but within update_every
    later = run([hit(17)], now=17, state=out.state)
    assert kinds(later) == ["updated"]
    changes = later.transitions[0].changes
    assert "now also failing on revision r43" in changes
    # due at minute 16, so said before the 17th-minute match is counted
    assert "4 matches now (was 1)" in changes


def test_count_growth_alone_updates_only_when_doubled():
    slow = rules(resolve_after=120)
    out = run([hit(1), hit(2)], now=2, r=slow)
    out = run([hit(20)], now=20, state=out.state, r=slow)  # 2 >= 2*1: update
    assert kinds(out) == ["updated"]
    assert out.transitions[0].changes == ("2 matches now (was 1)",)
    out = run([], now=40, state=out.state, r=slow)  # 3 < 2*2: nothing new to say
    assert kinds(out) == []
    out = run([hit(41)], now=41, state=out.state, r=slow)  # 4 >= 2*2
    assert [t.changes for t in out.transitions] == [("4 matches now (was 2)",)]


def test_transition_sequence_numbers_are_per_incident_and_increase():
    out = run(fixed_story(), now=40)
    seqs = [t.seq for t in out.transitions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({t.key for t in out.transitions}) == len(out.transitions)


# --- migration incidents ---------------------------------------------------------------------

def test_migration_failure_opens_and_a_later_successful_deploy_resolves():
    obs: list[Observation] = [
        MigrationEvent(at(1), SVC, "r42", "i2", MigrationOutcome.FAILED, BAD, "P3018",
                       "42P07: relation already exists"),
        MigrationEvent(at(5), SVC, "r43", "i3", MigrationOutcome.BLOCKED, BAD, "P3009"),
        MigrationEvent(at(8), SVC, "r44", "i4", MigrationOutcome.ROLLED_BACK, BAD),
        MigrationEvent(at(9), SVC, "r44", "i4", MigrationOutcome.APPLIED, FIX),
    ]
    out = run(obs, now=10)
    incident = the_incident(out, MIGRATION_SIGNAL)
    assert incident.kind is IncidentKind.MIGRATION
    assert incident.count == 2
    assert incident.revisions == {"r42": 1, "r43": 1}
    assert incident.migration is not None and incident.migration.code == "P3009"
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_by == "r44"
    assert FIX in incident.resolution_note
    assert kinds(out) == ["opened", "resolved"]


def test_success_before_the_failure_does_not_resolve():
    obs: list[Observation] = [
        MigrationEvent(at(1), SVC, "r42", "i1", MigrationOutcome.UP_TO_DATE),
        MigrationEvent(at(2), SVC, "r42", "i2", MigrationOutcome.ERROR, None, "P1001"),
    ]
    incident = the_incident(run(obs, now=3), MIGRATION_SIGNAL)
    assert incident.status is IncidentStatus.OPEN


# --- purity and the table --------------------------------------------------------------------

def test_advance_does_not_mutate_its_input_state():
    first = run([hit(1)], now=1)
    before = the_incident(first).count
    run([hit(2), hit(3)], now=3, state=first.state)
    assert the_incident(first).count == before


def test_every_status_has_an_entry_and_unknown_moves_raise():
    assert set(MOVES) == {None, *IncidentStatus}  # None: no incident yet (an opening)
    incident = the_incident(run(fixed_story(), now=40))
    with pytest.raises(InvalidMove, match=r"resolved.*match"):
        move(incident, Event.MATCH)


def test_same_observations_in_any_order_give_the_same_conclusions():
    story = fixed_story()
    a = run(story, now=40)
    b = run(list(reversed(story)), now=40)
    assert [t.kind for t in a.transitions] == [t.kind for t in b.transitions]
    assert the_incident(a).to_json() == the_incident(b).to_json()


def test_transition_kinds_cover_every_message_type():
    assert {k.value for k in TransitionKind} == {
        "opened", "regressed", "updated", "quiet_no_traffic", "resolved"}


def test_migration_resolution_quotes_every_migration_the_run_applied():
    obs: list[Observation] = [
        MigrationEvent(at(1), SVC, "r43", "i3", MigrationOutcome.BLOCKED, BAD, "P3009"),
        MigrationEvent(at(9), SVC, "r44", "i4", MigrationOutcome.APPLIED, BAD),
        MigrationEvent(at(9), SVC, "r44", "i4", MigrationOutcome.APPLIED, FIX),
        ok(10),
    ]
    incident = the_incident(run(obs, now=10), MIGRATION_SIGNAL)
    assert incident.resolution_note == (
        f"migrate deploy succeeded on r44, applying {BAD}, {FIX}")
    assert incident.resolved_at == at(9)


def test_a_late_match_older_than_the_pending_ones_counts_in_its_window():
    r = rules(open_after=2, window=5)
    out = run([hit(10)], now=10, r=r)
    assert kinds(out) == []
    late = run([hit(7)], now=11, state=out.state, r=r)  # arrives late, stamped earlier
    assert kinds(late) == ["opened"]
    assert the_incident(late).first_seen == at(7)


def test_a_late_match_far_from_the_pending_ones_does_not_open():
    r = rules(open_after=2, window=5)
    out = run([hit(10)], now=10, r=r)
    assert kinds(run([hit(1)], now=11, state=out.state, r=r)) == []


def test_matches_are_kept_per_time_bucket_and_stay_bounded():
    from monitor.correlate.model import MAX_BUCKETS

    slow = rules(resolve_after=60 * 24 * 30)
    out = run([hit(m, "r42" if m < 3000 else "r43") for m in range(0, 6000, 7)], now=6000,
              r=slow)
    incident = the_incident(out)
    assert len(incident.buckets) <= MAX_BUCKETS
    assert sum(n for counts in incident.buckets.values() for n in counts.values()) \
        == incident.count
    assert {rev for counts in incident.buckets.values() for rev in counts} == {"r42", "r43"}
    assert incident.bucket_seconds > 60  # widened for a four-day incident
    again = type(incident).from_state(incident.to_state())
    assert again.buckets == incident.buckets and again.bucket_seconds == incident.bucket_seconds


def test_advance_does_not_mutate_the_revision_facts_of_its_input():
    first = run([applied(1, "r42", BAD), hit(2)], now=2)
    facts = first.state.revisions[(SVC, "r42")]
    before = (facts.errors.copy(), len(facts.migrations), facts.last_seen)
    second = run([hit(3), hit(4), applied(5, "r42", FIX)], now=5, state=first.state)
    assert (facts.errors, len(facts.migrations), facts.last_seen) == before
    assert second.state.revisions[(SVC, "r42")].errors == {SIG: 3}
    assert second.state.revisions[(SVC, "r42")] is not facts


# --- several units -----------------------------------------------------------------------------


def config_of(*projects: str):
    data = {"source": {"type": "file", "path": "x.json"},
            "signals": [{"name": SIG, "match": "MissingSessionTableError"}]}
    if len(projects) == 1:
        data |= {"project": projects[0], "services": [SVC]}
    else:
        data["targets"] = [{"project": p, "services": [SVC]} for p in projects]
    return parse_config(data, env={})


def test_with_several_units_incident_ids_are_prefixed_with_the_unit():
    """Each unit's state is its own: the same service and signal in two projects at the same
    minute must not make the same incident id."""
    config = config_of("spector-prod", "spector-staging")
    ids = [the_incident(run([hit(1)], now=1, r=config.rules(unit))).id
           for unit in config.unit_names]
    assert ids == [f"spector-prod/{SVC}:{SIG}:20251204T210100Z",
                   f"spector-staging/{SVC}:{SIG}:20251204T210100Z"]


def test_with_one_unit_incident_ids_are_not_prefixed():
    config = config_of("spector-prod")
    rules_ = config.rules("spector-prod")
    assert rules_.namespace == ""
    assert the_incident(run([hit(1)], now=1, r=rules_)).id == f"{SVC}:{SIG}:20251204T210100Z"
