"""The monitor's own incident: opens after N failed reads, resolves when reading works again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.correlate.model import IncidentKind, IncidentStatus, TransitionKind
from monitor.correlate.source_incident import SOURCE_SIGNAL, source_health
from monitor.correlate.state import State
from monitor.notify.render import render

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REASON = "PERMISSION_DENIED reading logs of project spector-prod: needs roles/logging.viewer"


def cycles(outcomes: list[bool], state: State | None = None, n: int = 3):
    state = state or State()
    kinds = []
    for i, ok in enumerate(outcomes):
        out = source_health(state, unit="spector-prod", ok=ok, reason="" if ok else REASON,
                            now=T0 + timedelta(minutes=i), failures_before_alert=n)
        state = out.state
        kinds.append([t.kind.value for t in out.transitions])
    return state, kinds


def test_opens_after_n_consecutive_failures_only():
    _, kinds = cycles([False, False, True, False, False])
    assert kinds == [[], [], [], [], []]  # the success reset the count
    state, kinds = cycles([False, False, False, False])
    assert kinds == [[], [], ["opened"], []]
    (incident,) = state.incidents.values()
    assert (incident.kind, incident.signal, incident.count) == (
        IncidentKind.SOURCE, SOURCE_SIGNAL, 4)
    assert incident.status is IncidentStatus.OPEN
    assert incident.reason == "cannot_read"


def test_resolves_when_reading_works_and_reopens_as_a_regression():
    state, kinds = cycles([False, False, False, True])
    assert kinds[-1] == ["resolved"]
    (incident,) = state.incidents.values()
    assert incident.resolution_note == "reading logs works again after 3 failed check(s)"
    assert incident.reason == "reading_works_again"
    state, kinds = cycles([False, False, False], state)
    assert kinds[-1] == ["regressed"]
    new = [i for i in state.incidents.values() if i.status is IncidentStatus.OPEN]
    assert new[0].regression_of == incident.id


def test_success_without_an_incident_says_nothing():
    state, kinds = cycles([True, True])
    assert kinds == [[], []] and state.incidents == {}


def test_the_alert_says_what_is_wrong_and_what_to_do():
    state = State()
    for i in range(3):
        out = source_health(state, unit="spector-prod", ok=False, reason=REASON,
                            now=T0 + timedelta(minutes=i), failures_before_alert=3)
        state = out.state
    (transition,) = out.transitions
    assert transition.kind is TransitionKind.OPENED
    (root,) = render(transition, channel="#ops", project="spector-prod")
    assert "cannot read logs for spector-prod" in root.text
    blocks = str(root.blocks)
    assert "roles/logging.viewer" in blocks and "3 failed checks" in blocks
