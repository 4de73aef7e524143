"""The incident rules as tables: (incident values, now, complete_until) -> Decision, one line each.

Every `Reason` is named by at least one case, and the table of moves has an entry for every
status and refuses, by name, any move it does not list.
"""
# ruff: noqa: E501  (the tables keep one case a line, aligned)

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.correlate import decide
from monitor.correlate.decide import MOVES, Decision, Event, InvalidMove, next_move
from monitor.correlate.effects import apply
from monitor.correlate.model import (
    Evidence,
    Incident,
    IncidentKind,
    IncidentStatus,
    MigrationRecord,
    Reason,
    RevisionFacts,
    TransitionKind,
)
from monitor.correlate.state import Rules, SignalRule

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
SVC, SIG = "spector", "missing-session-table"
RULE = SignalRule("critical", 3, timedelta(minutes=5), timedelta(minutes=15))
RULES = Rules(signals={SIG: RULE}, update_every=timedelta(minutes=15))
R = Reason
E = Event


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def inc(last: float = 0, **kw: Any) -> Incident:
    """An open error incident of `SIG` whose last match was at minute `last`."""
    values: dict[str, Any] = dict(
        id="i", service=SVC, signal=SIG, kind=IncidentKind.ERROR, severity="critical",
        status=IncidentStatus.OPEN, first_seen=at(0), last_seen=at(last), count=1,
        revisions={"r42": 1}, instances={"i1": False})
    return Incident(**(values | kw))


def ok(kind: Evidence, m: float = 5, n: int = 1, **kw: Any) -> Incident:
    """An incident with `n` successes since the last match that show `kind`, from minute `m`."""
    return inc(evidence={kind: n}, evidence_since={kind: at(m)}, **kw)


def rev(name: str, ready: bool = True, live: float = 0.5, ok_requests: int = 5,
        errors: int = 0, migrations: tuple[MigrationRecord, ...] = ()) -> RevisionFacts:
    return RevisionFacts(SVC, name, first_seen=at(live), last_seen=at(30), ready=ready,
                         ready_at=at(live) if ready else None, requests_ok=ok_requests,
                         errors={SIG: errors} if errors else {}, migrations=list(migrations))


def run(outcome: str, m: float, name: str | None = "m1") -> MigrationRecord:
    return MigrationRecord(name, outcome, None, at(m))


def verdict(d: Decision) -> tuple[Event | None, Reason]:
    return d.event, d.reason


# --- resolution of an error incident: quiet period, holds, evidence, fix ----------------------

RESOLUTIONS: list[tuple[str, Incident, float, float, bool, list[RevisionFacts], Any]] = [
    # case                                       incident                now  complete logs revisions
    ("matches keep coming",                      inc(),                   10, 10, True, [], (None, R.FAILING)),
    ("quiet, the data for it incomplete",        inc(),                   20, 12, True, [], (None, R.DATA_INCOMPLETE)),
    ("quiet, no request logs to show more",      inc(),                   20, 20, False, [], (E.EVIDENCE, R.SILENCE_WITHOUT_REQUEST_LOGS)),
    ("quiet without traffic",                    inc(),                   20, 20, True, [], (E.HOLD, R.NO_TRAFFIC)),
    ("quiet without traffic, already told",      inc(noted_reason=R.NO_TRAFFIC), 20, 20, True, [], (None, R.NO_TRAFFIC)),
    ("only static assets",                       ok(Evidence.ASSET),      20, 20, True, [], (E.HOLD, R.ONLY_STATIC_ASSETS)),
    ("a new hold is told again",                 ok(Evidence.ASSET, noted_reason=R.NO_TRAFFIC), 20, 20, True, [], (E.HOLD, R.ONLY_STATIC_ASSETS)),
    ("successes on other routes only",           ok(Evidence.OTHER_ROUTE), 20, 20, True, [], (E.HOLD, R.OTHER_ROUTES_ONLY)),
    ("other instances, the failing one up",      ok(Evidence.OTHER_INSTANCE), 20, 20, True, [], (E.HOLD, R.OTHER_INSTANCES_ONLY)),
    ("other instances, the failing one gone",    ok(Evidence.OTHER_INSTANCE, instances={"i1": True}), 20, 20, True, [], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("the failing instance serves again",        ok(Evidence.FAILING_INSTANCE), 20, 20, True, [], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("a new revision serves: resolved with a fix", ok(Evidence.NEW_REVISION), 20, 20, True, [rev("r44")], (E.EVIDENCE, R.FIXED_BY_DEPLOY)),
    ("a revision never ready is not the fix",    ok(Evidence.NEW_REVISION), 20, 20, True, [rev("r44", ready=False)], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("a revision without successes is not it",   ok(Evidence.NEW_REVISION), 20, 20, True, [rev("r44", ok_requests=0)], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("a revision with matches is not the fix",   ok(Evidence.NEW_REVISION), 20, 20, True, [rev("r44", errors=1)], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("a revision live after the evidence: no",   ok(Evidence.NEW_REVISION), 20, 20, True, [rev("r44", live=6)], (E.EVIDENCE, R.NO_DEPLOY_EXPLAINS_IT)),
    ("its signal left the config",               inc(signal="gone"),      20, 20, True, [], (None, R.SIGNAL_UNCONFIGURED)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "incident", "now", "complete", "logs", "revisions", "expected"),
                         RESOLUTIONS, ids=[c[0] for c in RESOLUTIONS])
def test_resolution(case, incident, now, complete, logs, revisions, expected):
    decision = decide.resolution(incident, RULES, now=at(now), complete_until=at(complete),
                                 has_request_logs=logs, revisions=revisions)
    assert verdict(decision) == expected


def test_a_resolution_dates_from_its_evidence_and_names_its_fix():
    fixed = decide.resolution(ok(Evidence.NEW_REVISION, m=18), RULES, now=at(20),
                              complete_until=at(20), has_request_logs=True,
                              revisions=[rev("r44", live=17)])
    assert (fixed.at, fixed.fix) == (at(18), "r44")  # the evidence came after the quiet period
    assert fixed.note.endswith("; fixed by revision r44")
    silent = decide.resolution(inc(), RULES, now=at(40), complete_until=at(40),
                               has_request_logs=False, revisions=[])
    assert (silent.at, silent.fix) == (at(15), None)  # the end of the quiet period
    assert "silence is the only evidence" in silent.note
    assert silent.note.endswith("; no deploy explains the recovery")


def test_a_hold_says_what_is_missing_in_one_line():
    held = decide.resolution(ok(Evidence.ASSET), RULES, now=at(20), complete_until=at(20),
                             has_request_logs=True, revisions=[])
    assert held.note == (f"no {SIG} since 2025-12-04 21:00 UTC, but only static assets were "
                         "served: keeping it open")


# --- updates: news, throttled -------------------------------------------------------------

UPDATES: list[tuple[str, Incident, float, Any]] = [
    # case                                   incident                                          now  expected
    ("nothing new",                          inc(notified_count=1, notified_at=at(0)),          20, (None, R.NO_NEWS)),
    ("news, the last message too recent",    inc(notified_count=1, notified_at=at(0), changes=["r45 deployed"]), 5, (None, R.UPDATE_THROTTLED)),
    ("news, update_every has passed",        inc(notified_count=1, notified_at=at(0), changes=["r45 deployed"]), 15, (E.UPDATE, R.NEWS)),
    ("the count doubled",                    inc(count=4, notified_count=2, notified_at=at(0)), 20, (E.UPDATE, R.NEWS)),
    ("the count grew, not doubled",          inc(count=3, notified_count=2, notified_at=at(0)), 20, (None, R.NO_NEWS)),
    ("news, never told before",              inc(changes=["r45 deployed"]),                     1, (E.UPDATE, R.NEWS)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "incident", "now", "expected"), UPDATES,
                         ids=[c[0] for c in UPDATES])
def test_update(case, incident, now, expected):
    assert verdict(decide.update(incident, RULES, now=at(now))) == expected


def test_an_update_lists_each_change_once():
    news = decide.update(inc(count=4, notified_count=2, notified_at=at(0),
                             changes=["r45 deployed", "r45 deployed", "r45 is ready"]),
                         RULES, now=at(20))
    assert news.changes == ("r45 deployed", "r45 is ready", "4 matches now (was 2)")
    assert news.note == "; ".join(news.changes)


# --- migrations ----------------------------------------------------------------------------

def migration(last: float = 10) -> Incident:
    return inc(last, kind=IncidentKind.MIGRATION, signal="migration-failed")


MIGRATIONS: list[tuple[str, list[RevisionFacts], float, Any]] = [
    # case                                   revisions                                   now  expected
    ("no run since the failure",             [rev("r42")],                                20, (None, R.MIGRATION_FAILING)),
    ("a later run applied a migration",      [rev("r44", migrations=(run("applied", 12),))], 20, (E.EVIDENCE, R.MIGRATION_SUCCEEDED)),
    ("a later run had nothing to apply",     [rev("r44", migrations=(run("up_to_date", 12, None),))], 20, (E.EVIDENCE, R.MIGRATION_SUCCEEDED)),
    ("a later run failed again",             [rev("r44", migrations=(run("failed", 12),))], 20, (None, R.MIGRATION_FAILING)),
    ("the good run was before the failure",  [rev("r41", migrations=(run("applied", 5),))], 20, (None, R.MIGRATION_FAILING)),
    ("the good run is after now",            [rev("r44", migrations=(run("applied", 25),))], 20, (None, R.MIGRATION_FAILING)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "revisions", "now", "expected"), MIGRATIONS,
                         ids=[c[0] for c in MIGRATIONS])
def test_migration_resolution(case, revisions, now, expected):
    decision = decide.migration_resolution(migration(), now=at(now), revisions=revisions)
    assert verdict(decision) == expected


def test_a_migration_resolution_names_the_run_and_what_it_applied():
    first = rev("r44", migrations=(run("applied", 12, "m2"), run("applied", 12, "m3")))
    later = rev("r45", migrations=(run("up_to_date", 14, None),))
    decision = decide.migration_resolution(migration(), now=at(20), revisions=[later, first])
    assert (decision.at, decision.fix) == (at(12), "r44")
    assert decision.note == "migrate deploy succeeded on r44, applying m2, m3"


# --- openings ------------------------------------------------------------------------------

def window(*minutes: float) -> list[tuple[datetime, str | None, str, str | None]]:
    return [(at(m), "r42", "boom", "i1") for m in minutes]


OPENINGS: list[tuple[str, Decision, Any]] = [
    # case                                    decision                                              expected
    ("below open_after",                      decide.threshold(window(1, 2), RULE, SIG),            (None, R.BELOW_THRESHOLD)),
    ("open_after within window",              decide.threshold(window(1, 2, 3), RULE, SIG),         (E.THRESHOLD, R.FAILING)),
    ("again after a resolution",              decide.regressed(decide.threshold(window(1, 2, 3), RULE, SIG), "old"), (E.REGRESSION, R.FAILING)),
    ("a failed migrate run",                  decide.migration_failed("r42"),                       (E.THRESHOLD, R.MIGRATION_FAILING)),
    ("a failed migrate run, again",           decide.regressed(decide.migration_failed("r42"), "old"), (E.REGRESSION, R.MIGRATION_FAILING)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "decision", "expected"), OPENINGS, ids=[c[0] for c in OPENINGS])
def test_opening(case, decision, expected):
    assert verdict(decision) == expected


def test_an_opening_says_why_and_a_regression_links_the_earlier_one():
    opened = decide.threshold(window(1, 2, 3), RULE, SIG)
    assert opened.note == f"3 match(es) of {SIG} within 5m (open_after=3)"
    assert decide.regressed(opened, "old").note == f"{opened.note}; it had been resolved (old)"


# --- the monitor's own incident: cannot read logs ------------------------------------------

SOURCE: list[tuple[str, bool, int, bool, str | None, Any]] = [
    # case                                    ok     failures open  regression_of expected
    ("reads, nothing open",                   True,  0,       False, None,  (None, R.READING_WORKS_AGAIN)),
    ("reads again: resolved",                 True,  4,       True,  None,  (E.EVIDENCE, R.READING_WORKS_AGAIN)),
    ("still cannot read",                     False, 4,       True,  None,  (E.MATCH, R.CANNOT_READ)),
    ("fails, fewer than failures_before_alert", False, 2,     False, None,  (None, R.BELOW_THRESHOLD)),
    ("fails failures_before_alert times",     False, 3,       False, None,  (E.THRESHOLD, R.CANNOT_READ)),
    ("fails again after a resolution",        False, 3,       False, "old", (E.REGRESSION, R.CANNOT_READ)),
]  # fmt: skip


def source(ok: bool, failures: int, is_open: bool, regression_of: str | None) -> Decision:
    return decide.source_read(ok=ok, failures=failures, is_open=is_open, failures_before_alert=3,
                              unit="spector-prod", error="PERMISSION_DENIED",
                              regression_of=regression_of)


@pytest.mark.parametrize(("case", "ok", "failures", "is_open", "regression_of", "expected"),
                         SOURCE, ids=[c[0] for c in SOURCE])
def test_source_read(case, ok, failures, is_open, regression_of, expected):
    assert verdict(source(ok, failures, is_open, regression_of)) == expected


# --- every reason, and the table -----------------------------------------------------------

def test_every_reason_is_named_by_a_case():
    named = {c[-1][1] for table in (RESOLUTIONS, UPDATES, MIGRATIONS, OPENINGS, SOURCE)
             for c in table}
    assert named == set(Reason)


def test_every_status_has_an_entry_and_every_transition_a_move():
    assert set(MOVES) == {None, *IncidentStatus}  # None: no incident yet (an opening)
    kinds = {m.transition for moves in MOVES.values() for m in moves.values()}
    assert kinds == {*TransitionKind, None}
    assert MOVES[IncidentStatus.RESOLVED] == {}  # a match after it opens a new incident


@pytest.mark.parametrize("status", [None, *IncidentStatus])
@pytest.mark.parametrize("event", list(Event))
def test_a_move_the_table_does_not_list_fails_loudly_by_name(status, event):
    if event in MOVES[status]:
        assert next_move(status, event) is MOVES[status][event]
        return
    name = "no incident" if status is None else repr(status.value)
    with pytest.raises(InvalidMove, match=f"incident i: no move from {name} on '{event.value}'"):
        next_move(status, event, incident="i")


def test_every_decision_is_a_move_the_table_lists():
    """Openings move from no incident, the rest from an open one."""
    openings = {E.THRESHOLD, E.REGRESSION}
    for event, _ in [c[-1] for table in (RESOLUTIONS, UPDATES, MIGRATIONS, OPENINGS, SOURCE)
                     for c in table]:
        if event is not None:
            next_move(None if event in openings else IncidentStatus.OPEN, event)


def test_only_reasons_about_the_status_are_kept_on_the_incident():
    incident = inc(reason=R.DATA_INCOMPLETE)
    assert apply(incident, decide.update(incident, RULES, now=at(1)), at(1)) is None
    assert incident.reason == R.DATA_INCOMPLETE  # NO_NEWS says nothing about the status
    held = decide.resolution(incident, RULES, now=at(20), complete_until=at(20),
                             has_request_logs=True, revisions=[])
    transition = apply(incident, held, at(20))
    assert transition is not None and transition.kind is TransitionKind.QUIET_NO_TRAFFIC
    assert (incident.reason, incident.noted_reason, incident.notified_at) == (
        R.NO_TRAFFIC, R.NO_TRAFFIC, None)  # a hold is not a notification: no throttle starts
    assert {r for r in Reason if not r.kept} == {
        R.BELOW_THRESHOLD, R.SIGNAL_UNCONFIGURED, R.NEWS, R.UPDATE_THROTTLED, R.NO_NEWS}
