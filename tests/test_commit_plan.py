"""The commit plan (store/plan.py) without a database: what a cycle writes and deletes.

The stores only execute it; tests/test_store.py checks that both do, on real databases.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.correlate.model import IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.messages import Action
from monitor.store.base import RETENTION, CycleRecord, Lease, correlate_doc
from monitor.store.plan import (
    OutboxRow,
    canonical,
    digest,
    incident_key,
    loaded_state,
    plan_commit,
    revision_key,
)
from monitor.window import Checkpoint
from tests.test_store import incident, message, state

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
UNIT = "spector-prod"
REVISION = ("spector", "spector-00042-wex")


def record(messages=(), **changes) -> CycleRecord:
    return replace(CycleRecord(unit=UNIT, checkpoint=Checkpoint(T0), seen={}, forget_before=None,
                               messages=list(messages), summary={"checked_at": "x"}), **changes)


def jsonb_order(value):
    """A value with its members in another order, as JSONB gives them back (shorter first)."""
    if isinstance(value, dict):
        return {k: jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(k), k))}
    if isinstance(value, list):
        return [jsonb_order(v) for v in value]
    return value


def held_for(s: State, unit: str = UNIT, reorder=lambda doc: doc):
    """What a store holds after loading `s` (its rows as a store would give them back)."""
    return loaded_state(
        ((unit, d, digest(d)) for d in (reorder(json.loads(json.dumps(i.to_state())))
                                        for i in s.incidents.values())),
        ((unit, d, digest(d)) for d in (reorder(json.loads(json.dumps(f.to_state())))
                                        for f in s.revisions.values())),
        [correlate_doc(s)])


# --- change detection ------------------------------------------------------------------------


def test_a_first_commit_writes_every_document():
    plan = plan_commit(state(), record(), {})
    assert [i.id for i in plan.incidents] == [incident().id]
    assert [(f.service, f.name) for f in plan.revisions] == [REVISION]
    assert set(plan.written) == {incident_key(UNIT, incident().id), revision_key(UNIT, *REVISION)}


def test_what_the_store_holds_unchanged_is_not_written_again():
    loaded, held = held_for(state())
    assert loaded.incidents == state().incidents and loaded.revisions == state().revisions
    plan = plan_commit(loaded, record(), held)
    assert (plan.incidents, plan.revisions, plan.written) == ([], [], {})


def test_member_order_is_no_change():
    """PostgreSQL gives a document back with JSONB's member order: still unchanged."""
    s = state()
    s.incidents[incident().id].revisions = {"zz-long-name": 1, "a": 2, "é": 3}
    s.revisions[REVISION].errors = {"zz-long-name": 1, "a": 2}
    loaded, held = held_for(s, reorder=jsonb_order)
    assert list(loaded.incidents[incident().id].revisions) == ["a", "é", "zz-long-name"]
    plan = plan_commit(loaded, record(), held)
    assert (plan.incidents, plan.revisions) == ([], [])


def test_only_the_documents_that_changed_are_written():
    loaded, held = held_for(state())
    loaded.incidents[incident().id].count += 1
    plan = plan_commit(loaded, record(), held)
    (row,) = plan.incidents
    assert plan.revisions == []
    assert set(plan.written) == {incident_key(UNIT, incident().id)}
    changed = loaded.incidents[incident().id]
    assert (row.id, row.status, row.first_seen, row.doc) == (
        changed.id, "open", T0, changed.to_state())
    assert row.doc["count"] == 8
    assert row.text == canonical(row.doc) and json.loads(row.text) == row.doc


def test_the_same_value_in_another_json_type_is_a_change():
    """1, 1.0 and true are equal to Python, not in JSON: the digest tells them apart."""
    assert len({digest({"x": 1}), digest({"x": 1.0}), digest({"x": True})}) == 3
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": [1, 2]}) != digest({"a": [2, 1]})  # a list keeps its order


def test_the_canonical_text_holds_any_log_text_as_ascii():
    odd = "a\x00b \ud800 \ue000 \U0001f525 é"
    text = canonical({"sample": odd})
    assert text.isascii() and json.loads(text) == {"sample": odd}


def test_a_plan_does_not_change_what_the_store_holds_until_it_is_remembered():
    """A commit that rolled back must be written again: only `remember` updates the store."""
    loaded, held = held_for(state())
    loaded.incidents[incident().id].count = 99
    before = dict(held)
    first = plan_commit(loaded, record(), held)
    assert held == before
    again = plan_commit(loaded, record(), held)  # the rolled-back write, planned again
    assert [i.text for i in again.incidents] == [i.text for i in first.incidents]
    again.remember(held, gone=[])
    assert plan_commit(loaded, record(), held).incidents == []


def test_each_unit_holds_its_own_documents():
    s = state()
    _, held = held_for(s, unit="staging")
    plan = plan_commit(s, record(), held)  # the same documents, another unit
    assert [i.id for i in plan.incidents] == [incident().id] and len(plan.revisions) == 1


# --- the rest of the cycle -------------------------------------------------------------------


def test_the_record_is_carried_as_it_is():
    lease = Lease(UNIT, "a", 3, T0, T0 + timedelta(minutes=1))
    seen = {f"k{n}": T0 for n in range(3)}
    cut = Checkpoint(T0, cursor=T0 + timedelta(minutes=3))
    s = state()
    plan = plan_commit(s, record([message(1), message(2, Action.REPLY)], seen=seen,
                                 checkpoint=cut, forget_before=T0 - timedelta(hours=1),
                                 lease=lease), {})
    assert (plan.unit, plan.lease, plan.checkpoint, plan.forget_before) == (
        UNIT, lease, cut, T0 - timedelta(hours=1))
    assert plan.seen is seen  # not copied: a replay's keys are many
    assert plan.outbox == [OutboxRow("inc#1.0", "inc", message(1).to_json()),
                           OutboxRow("inc#2.0", "inc", message(2, Action.REPLY).to_json())]
    assert (plan.correlate_key, plan.correlate) == (f"correlate:{UNIT}", correlate_doc(s))
    assert plan.summary == {"checked_at": "x"}
    assert plan.retention is None
    assert plan_commit(s, record(checkpoint=None, summary={}), {}).summary is None


# --- retention -------------------------------------------------------------------------------


def aged(s: State, days: int = 40) -> State:
    """`s` with an incident resolved `days` ago and a revision last seen then."""
    old = incident(IncidentStatus.RESOLVED)
    old.id, old.resolved_at = "old", T0 - timedelta(days=days)
    s.incidents["old"] = old
    s.revisions[("spector", "ancient")] = RevisionFacts(
        service="spector", name="ancient", first_seen=T0 - timedelta(days=days + 5),
        last_seen=T0 - timedelta(days=days))
    return s


def test_retention_takes_old_resolved_incidents_and_old_revisions_only():
    s = aged(state())
    recent = incident(IncidentStatus.RESOLVED)
    recent.id, recent.resolved_at = "recent", T0 - timedelta(days=29)
    s.incidents["recent"] = recent
    s.revisions[("spector", "never-seen")] = RevisionFacts(service="spector", name="never-seen")
    retention = plan_commit(s, record(retain_after=T0 - timedelta(days=30)), {}).retention
    assert retention is not None
    assert retention.incidents == ("old",)  # not the open one, not the recent one
    assert retention.revisions == (("spector", "ancient"),)
    assert retention.sent_kept_for == RETENTION
    assert retention.deletable(waiting=set()) == ["old"]


def test_retention_is_by_time_not_by_text():
    """Half a second after the horizon is after it (as text, '...00.5Z' sorts before '...00Z')."""
    s = aged(state())
    s.incidents["old"].resolved_at = T0 + timedelta(microseconds=500_000)
    assert plan_commit(s, record(retain_after=T0), {}).retention.incidents == ()
    s.incidents["old"].resolved_at = T0 - timedelta(microseconds=1)
    assert plan_commit(s, record(retain_after=T0), {}).retention.incidents == ("old",)


def test_an_incident_with_a_message_waiting_is_never_deleted():
    s = aged(state())
    retention = plan_commit(s, record(retain_after=T0 - timedelta(days=30)), {}).retention
    assert retention.deletable(waiting={"old"}) == []  # an older message still to send


def test_a_jump_far_ahead_never_strands_the_resolution_it_queues():
    """A clock 90 days ahead resolves an incident and puts it past retention in one commit:
    the resolution queued in that commit keeps the incident (and its thread)."""
    s = state()
    inc = s.incidents[incident().id]
    inc.status, inc.resolved_at = IncidentStatus.RESOLVED, T0 + timedelta(minutes=20)
    plan = plan_commit(s, record([message(2, Action.REPLY, incident_id=inc.id)],
                                 retain_after=T0 + timedelta(days=60)), {})
    assert plan.retention is not None and plan.retention.incidents == ()
    assert plan.retention.deletable(waiting=set()) == []


def test_remember_forgets_what_retention_deleted():
    s = aged(state())
    loaded, held = held_for(s)
    loaded.incidents[incident().id].count += 1
    plan = plan_commit(loaded, record(retain_after=T0 - timedelta(days=30)), held)
    plan.remember(held, gone=plan.retention.deletable(waiting=set()))
    assert incident_key(UNIT, "old") not in held
    assert revision_key(UNIT, "spector", "ancient") not in held
    assert held[incident_key(UNIT, incident().id)] == digest(
        loaded.incidents[incident().id].to_state())
    # recreated later with the very same content, it is written again, not taken as stored
    again = aged(loaded)
    assert {i.id for i in plan_commit(again, record(), held).incidents} == {"old"}
