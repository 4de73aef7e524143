"""What counts as evidence that failing work succeeds again, and the reason each decision names.

The stories are the ones real logs tell (tests/data/real/cloudrun/request_logs.json): an error
page that loads its own scripts and styles with 200s, a health check that never failed, a second
instance of the broken revision that serves other users, an instance Cloud Run shuts down.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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
from monitor.classify.prisma import run_label
from monitor.correlate.incidents import MIGRATION_SIGNAL, Outcome, advance
from monitor.correlate.model import IncidentStatus, Reason, TransitionKind
from monitor.correlate.state import Rules, SignalRule, State
from monitor.notify.render import render
from monitor.output import incident_json

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
SVC, SIG = "spector", "missing-session-table"
RULES = Rules(
    signals={SIG: SignalRule("critical", 1, timedelta(minutes=5), timedelta(minutes=15))},
    update_every=timedelta(minutes=15),
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def hit(m: float, instance: str = "i1", revision: str = "r42") -> ErrorHit:
    return ErrorHit(at(m), SVC, revision, SIG, f"id-{m}", "MissingSessionTableError: boom",
                    instance_id=instance)


def req(m: float, route: str = "/app", status: int = 200, *, instance: str = "i1",
        revision: str = "r42", asset: bool = False) -> RequestServed:
    return RequestServed(at(m), SVC, revision, status, instance_id=instance, route=route,
                         asset=asset)


def failing(m: float = 0) -> list[Observation]:
    """r42 serves /app with 500s from instance i1: the error and the request log of it."""
    return [hit(m), req(m, status=500)]


def run(obs: list[Observation], now: float, state: State | None = None) -> Outcome:
    return advance(state or State(), obs, now=at(now), complete_until=at(now), rules=RULES)


def incident_of(out: Outcome):
    (incident,) = out.state.incidents.values()
    return incident


def kinds(out: Outcome) -> list[TransitionKind]:
    return [t.kind for t in out.transitions]


# --- holds: quiet, but nothing shows the failing work works -------------------------------------

def test_an_error_page_loading_its_assets_is_not_recovery():
    assets = [req(m, f"/assets/app-{m}.js", asset=True) for m in range(1, 25)]
    out = run([*failing(), *assets], now=30)
    incident = incident_of(out)
    assert incident.status is IncidentStatus.OPEN
    assert incident.reason == Reason.ONLY_STATIC_ASSETS
    assert kinds(out) == [TransitionKind.OPENED, TransitionKind.QUIET_NO_TRAFFIC]
    line = out.transitions[-1].reason
    assert line == ("no missing-session-table since 2025-12-04 21:00 UTC, but only static assets "
                    "were served: keeping it open")
    # told once: more assets and more quiet say nothing new
    later = run([req(m, "/favicon.ico", asset=True) for m in range(31, 40)], now=90,
                state=out.state)
    assert kinds(later) == [] and incident_of(later).status is IncidentStatus.OPEN


def test_the_hold_line_in_slack_names_what_is_missing_and_the_reason():
    out = run([*failing(), req(3, "/assets/x.css", asset=True)], now=30)
    (message,) = render(out.transitions[-1], channel="C1", project="spector-prod")
    assert message.action.value == "reply" and "@channel" not in message.text
    assert "only static assets were served: keeping it open" in message.text
    assert "only_static_assets" in message.text


def test_successes_on_other_routes_do_not_resolve_a_failing_route():
    out = run([*failing(), *(req(m, "/healthz") for m in range(1, 25))], now=30)
    incident = incident_of(out)
    assert incident.status is IncidentStatus.OPEN
    assert incident.reason == Reason.OTHER_ROUTES_ONLY
    assert incident.failed_routes == ["/app"]
    assert "no request succeeded on the routes that failed" in out.transitions[-1].reason


def test_a_changed_hold_is_told_once_more():
    out = run([*failing(), req(2, "/assets/a.js", asset=True)], now=30)
    assert incident_of(out).reason == Reason.ONLY_STATIC_ASSETS
    out2 = run([req(31, "/healthz")], now=35, state=out.state)
    assert kinds(out2) == [TransitionKind.QUIET_NO_TRAFFIC]
    assert incident_of(out2).reason == Reason.OTHER_ROUTES_ONLY


def test_other_instances_of_the_failing_revision_are_not_enough_while_the_failing_one_is_up():
    obs = [*failing(), *(req(m, instance="i2") for m in range(1, 25))]
    out = run(obs, now=30)
    incident = incident_of(out)
    assert incident.status is IncidentStatus.OPEN
    assert incident.reason == Reason.OTHER_INSTANCES_ONLY
    assert incident.instances == {"i1": False}
    # Cloud Run shuts the failing instance down: the other instance's successes now count
    stopped = InstanceStopped(at(31), SVC, "r42", "i1", "Shutting down user disabled instance")
    out2 = run([stopped], now=32, state=out.state)
    incident = incident_of(out2)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.reason == Reason.NO_DEPLOY_EXPLAINS_IT
    assert "the 1 failing instance(s) shut down" in incident.resolution_note


def test_successes_from_the_failing_instance_itself_resolve():
    out = run([*failing(), req(5, instance="i1"), req(6, "/assets/a.js", asset=True)], now=30)
    incident = incident_of(out)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.reason == Reason.NO_DEPLOY_EXPLAINS_IT
    assert incident.resolution_note.startswith(
        "no missing-session-table for 15m since 2025-12-04 21:00 UTC, 1 successful request(s) "
        "on the routes that failed (/app) served since, 1 by the instances that failed, "
        "1 static asset(s) not counted")


def test_a_new_revision_serving_the_failed_route_resolves_as_fixed():
    # r44 is ready just before the last error (the old revision drains), and takes the traffic
    obs = [DeployEvent(at(-1), SVC, "r44", DeployStage.READY), *failing(),
           req(4, instance="i9", revision="r44"), req(5, instance="i9", revision="r44")]
    incident = incident_of(run(obs, now=30))
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.reason == Reason.FIXED_BY_DEPLOY
    assert incident.resolved_by == "r44"
    assert "2 by a revision that did not fail" in incident.resolution_note


def test_without_failed_request_logs_any_app_route_counts():
    # The error is logged but the request log says 200 (the app renders its own error page):
    # no route is known to have failed, so success on any app route is the evidence.
    obs = [hit(0), req(0, "/app", 200), req(4, "/app/orders", instance="i1")]
    incident = incident_of(run(obs, now=30))
    assert incident.status is IncidentStatus.RESOLVED
    assert "on app routes" in incident.resolution_note


def test_a_match_after_evidence_throws_the_evidence_away():
    obs = [*failing(), req(2, instance="i1"), hit(10), req(11, "/assets/a.js", asset=True)]
    incident = incident_of(run(obs, now=30))
    assert incident.status is IncidentStatus.OPEN
    assert incident.reason == Reason.ONLY_STATIC_ASSETS


@pytest.mark.parametrize(("now", "complete", "reason"), [
    (10, 10, Reason.FAILING),  # the quiet period has not run
    (30, 12, Reason.DATA_INCOMPLETE),  # it has, but entries for it may still arrive
])
def test_an_open_incident_says_why_it_is_not_resolved_yet(now, complete, reason):
    out = advance(State(), [*failing(), req(2)], now=at(now), complete_until=at(complete),
                  rules=RULES)
    assert incident_of(out).reason == reason


def test_the_reason_is_in_the_json_of_once():
    resolved = incident_of(run([*failing(), req(5)], now=30))
    assert incident_json(resolved)["resolution_reason"] == "no_deploy_explains_it"
    held = incident_of(run([*failing(), req(5, "/robots.txt", asset=True)], now=30))
    assert incident_json(held)["resolution_reason"] == "only_static_assets"


def test_a_service_without_request_logs_resolves_on_silence_and_says_so():
    incident = incident_of(run([hit(0)], now=30))
    assert incident.reason == Reason.SILENCE_WITHOUT_REQUEST_LOGS
    assert "the service writes no request logs" in incident.resolution_note


# --- migration incidents: every run counts ------------------------------------------------------

def migrate(m: float, instance: str, outcome: MigrationOutcome, code: str | None = None,
            revision: str = "r43") -> MigrationEvent:
    return MigrationEvent(at(m), SVC, revision, instance, outcome, None, code,
                          "Can't reach database server at `10.0.0.3:5432`" if code else "")


def test_a_later_clean_run_on_another_instance_of_the_same_revision_resolves():
    # i1 starts clean, i2 cannot reach the database, i3 starts clean: before, i3's run was
    # dropped as a repeat of i1's and the incident never closed.
    obs = [migrate(0, "i1", MigrationOutcome.UP_TO_DATE),
           migrate(5, "i2", MigrationOutcome.ERROR, "P1001"),
           migrate(9, "i3", MigrationOutcome.UP_TO_DATE)]
    out = run(obs, now=10)
    (incident,) = [i for i in out.state.incidents.values() if i.signal == MIGRATION_SIGNAL]
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_at == at(9)
    assert incident.reason == Reason.MIGRATION_SUCCEEDED
    facts = out.state.revisions[(SVC, "r43")]
    assert [(m.outcome, m.instance_id) for m in facts.migrations] == [
        ("up_to_date", "i1"), ("error", "i2"), ("up_to_date", "i3")]


def test_every_failed_run_is_counted_and_kept():
    obs = [migrate(m, f"i{m}", MigrationOutcome.ERROR, "P1001") for m in (0, 2, 4)]
    out = run(obs, now=5)
    (incident,) = out.state.incidents.values()
    assert incident.count == 3 and incident.reason == Reason.MIGRATION_FAILING
    assert len(out.state.revisions[(SVC, "r43")].migrations) == 3


def test_p1001_reads_as_database_unreachable_never_none_pending():
    assert run_label(None, "error", "P1001") == (
        "migrate deploy failed (P1001: database unreachable)")
    assert run_label(None, "up_to_date", None) == "migrate deploy: no pending migrations"


def test_a_fix_deployed_while_the_incident_was_held_is_named_as_the_fix():
    # Only assets for an hour (held open), then r44 is deployed and serves /app: r44 is what
    # made the failing work succeed, although it came after the last match.
    obs = [*failing(), req(3, "/assets/a.js", asset=True),
           DeployEvent(at(60), SVC, "r44", DeployStage.READY),
           req(62, instance="i9", revision="r44")]
    out = run(obs, now=70)
    incident = incident_of(out)
    assert [t.kind for t in out.transitions] == [
        TransitionKind.OPENED, TransitionKind.QUIET_NO_TRAFFIC, TransitionKind.UPDATED,
        TransitionKind.RESOLVED]
    assert out.transitions[2].changes == ("r44 is ready",)
    assert incident.resolved_at == at(62)
    assert (incident.reason, incident.resolved_by) == (Reason.FIXED_BY_DEPLOY, "r44")


def test_a_revision_deployed_after_the_evidence_began_is_not_the_fix():
    obs = [*failing(), req(3, instance="i1"), DeployEvent(at(10), SVC, "r44", DeployStage.READY),
           req(11, instance="i9", revision="r44")]
    incident = incident_of(run(obs, now=30))
    assert (incident.reason, incident.resolved_by) == (Reason.NO_DEPLOY_EXPLAINS_IT, None)
