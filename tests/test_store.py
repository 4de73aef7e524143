"""The store contract: every test runs against SQLite and against PostgreSQL (the real server,
a throwaway database per test session, an empty schema per test: tests/conftest.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.correlate.model import (
    Incident,
    IncidentKind,
    IncidentStatus,
    MigrationRecord,
    RevisionFacts,
)
from monitor.correlate.state import State
from monitor.instance import instance_id
from monitor.messages import Action, Message, Thread
from monitor.store import open_store
from monitor.store.base import CycleRecord, Lease, LeaseLost
from monitor.store.plan import canonical
from monitor.store.postgres import MIGRATIONS as PG_MIGRATIONS
from monitor.store.sqlite import MIGRATIONS, SQLiteStore
from monitor.window import Checkpoint

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def incident(status=IncidentStatus.OPEN) -> Incident:
    return Incident(
        id="spector:missing-session-table:20251204T210300Z", service="spector",
        signal="missing-session-table", kind=IncidentKind.ERROR, severity="critical",
        status=status, first_seen=T0, last_seen=T0 + timedelta(minutes=5), count=7,
        revisions={"spector-00042-wex": 7}, introduced_by="spector-00042-wex",
        suspect_migrations=["20251204205052_map_session_table_to_lowercase"], sample="boom",
        notified_at=T0, changes=["now also failing on revision r43"],
    )


def state() -> State:
    s = State()
    i = incident()
    s.incidents[i.id] = i
    s.revisions[("spector", "spector-00042-wex")] = RevisionFacts(
        service="spector", name="spector-00042-wex", first_seen=T0, last_seen=T0, ready=True,
        ready_at=T0, errors={"missing-session-table": 7}, requests_failed=7,
        migrations=[MigrationRecord("20251204205052_map_session_table_to_lowercase", "applied",
                                    None, T0)])
    s.pending[("spector", "other")] = [(T0, "spector-00042-wex", "sample", "inst-1")]
    s.request_services = {"spector"}
    s.read_rates = {"missing-session-table": 5012.5, "": 3.0}  # a flood's, for the next read
    return s


def message(n: int, action=Action.POST_ROOT, incident_id="inc") -> Message:
    return Message(key=f"{incident_id}#{n}.0", incident_id=incident_id, action=action,
                   channel="#alerts", text=f"message {n}")


AT_T0 = Checkpoint(T0)


def record(messages=(), checkpoint=AT_T0, seen=None, forget_before=None) -> CycleRecord:
    return CycleRecord(unit="spector-prod", checkpoint=checkpoint, seen=seen or {},
                       forget_before=forget_before, messages=list(messages),
                       summary={"checked_at": "x"})


def test_state_round_trips(store):
    original = state()
    store.commit_cycle(original, record())
    loaded = store.load_state()
    assert loaded.incidents == original.incidents
    assert loaded.revisions == original.revisions
    assert loaded.pending == original.pending
    assert loaded.request_services == {"spector"}
    assert loaded.read_rates == original.read_rates
    assert store.checkpoint("spector-prod") == Checkpoint(T0)
    assert store.checkpoint("other-unit") is None
    cut = Checkpoint(T0, cursor=T0 + timedelta(minutes=3), window_end=T0 + timedelta(minutes=9))
    store.commit_cycle(original, record(checkpoint=cut))
    assert store.checkpoint("spector-prod") == cut
    store.commit_cycle(original, record(checkpoint=None))  # a failed read leaves it alone
    assert store.checkpoint("spector-prod") == cut
    assert store.last_cycle() == {"checked_at": "x"}


def test_incident_updates_replace_the_stored_document(store):
    s = state()
    store.commit_cycle(s, record())
    s.incidents[incident().id].status = IncidentStatus.RESOLVED
    s.incidents[incident().id].count = 9
    store.commit_cycle(s, record())
    (loaded,) = store.load_state().incidents.values()
    assert (loaded.status, loaded.count) == (IncidentStatus.RESOLVED, 9)


def test_seen_keys_and_their_pruning(store):
    store.commit_cycle(State(), record(seen={"a": T0, "b": T0 + timedelta(hours=1)}))
    assert store.seen_keys(["a", "b", "c"]) == {"a", "b"}
    store.commit_cycle(State(), record(forget_before=T0 + timedelta(minutes=30)))
    assert store.seen_keys(["a", "b"]) == {"b"}
    many = [f"k{i}" for i in range(1200)]  # more than one IN (...) chunk
    store.commit_cycle(State(), record(seen=dict.fromkeys(many, T0 + timedelta(hours=2))))
    assert store.seen_keys([*many, "zz"]) == set(many)


def test_outbox_is_ordered_and_enqueueing_the_same_key_twice_is_a_no_op(store):
    store.commit_cycle(state(), record([message(1), message(2, Action.REPLY)]))
    store.commit_cycle(state(), record([message(1), message(2, Action.REPLY), message(3)]))
    assert [q.message.key for q in store.queued()] == ["inc#1.0", "inc#2.0", "inc#3.0"]


def test_mark_sent_records_the_thread_of_a_root(store):
    s = state()
    root = Message(key="r#1.0", incident_id=incident().id, action=Action.POST_ROOT,
                   channel="#alerts", text="alert")
    store.commit_cycle(s, record([root, message(2, Action.REPLY, incident().id)]))
    assert store.thread(incident().id) is None
    first, second = store.queued()
    store.mark_attempt(first)
    store.mark_failed(first, "ratelimited", T0 + timedelta(seconds=30))
    (again, _) = store.queued()
    assert (again.attempts, again.last_error) == (1, "ratelimited")
    assert again.next_attempt_at == T0 + timedelta(seconds=30)
    store.mark_sent(again, Thread("C123", "1700000000.000100"))
    assert store.thread(incident().id) == Thread("C123", "1700000000.000100")
    assert [q.message.key for q in store.queued()] == [second.message.key]
    store.mark_sent(second, Thread("C123", "1700000000.000200"))
    assert store.queued() == []
    # a reply does not move the thread root
    assert store.thread(incident().id) == Thread("C123", "1700000000.000100")


def test_an_attempt_is_counted_with_its_time(store):
    store.commit_cycle(state(), record([message(1)]))
    (fresh,) = store.queued()
    assert (fresh.attempts, fresh.attempted_at, fresh.last_error, fresh.next_attempt_at) == (
        0, None, None, None)
    before = datetime.now(UTC)
    store.mark_attempt(fresh)
    store.mark_attempt(fresh)  # counted from the store, not from the stale `fresh`
    (tried,) = store.queued()
    assert tried.attempts == 2
    assert before - timedelta(seconds=1) <= tried.attempted_at <= datetime.now(UTC)
    assert tried.attempted_at.utcoffset() == timedelta(0)


def test_a_failed_commit_changes_nothing(store, monkeypatch):
    store.commit_cycle(State(), record(checkpoint=Checkpoint(T0)))
    bad = state()
    bad.incidents["x"] = "not an incident"  # type: ignore[assignment]
    with pytest.raises(AttributeError):  # any failure mid-transaction
        store.commit_cycle(bad, record([message(1)],
                                       checkpoint=Checkpoint(T0 + timedelta(hours=1))))
    assert store.checkpoint("spector-prod") == Checkpoint(T0)
    assert store.queued() == []
    assert store.load_state().incidents == {}


def test_schema_is_versioned_and_migration_is_idempotent(store_url):
    first = open_store(store_url)
    migrations = MIGRATIONS if isinstance(first, SQLiteStore) else PG_MIGRATIONS
    first.commit_cycle(state(), record([message(1)]))
    assert first.schema_version == len(migrations)
    first.close()
    second = open_store(store_url)  # opening again migrates nothing and keeps the data
    assert second.schema_version == len(migrations)
    assert second.load_state().incidents.keys() == state().incidents.keys()
    assert [q.message.key for q in second.queued()] == ["inc#1.0"]
    second.migrate()  # and so does migrating again
    assert second.schema_version == len(migrations)
    second.close()
    if store_url.startswith("sqlite:///"):
        path = store_url.removeprefix("sqlite:///")
        version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
        assert version == len(MIGRATIONS)


def test_commit_cycle_run_twice_leaves_what_running_it_once_leaves(store):
    """A COMMIT whose answer was lost is run again (postgres.py): this is why that is safe."""
    s = state()
    cycle = record([message(1), message(2, Action.REPLY)], seen={"a": T0},
                   forget_before=T0 - timedelta(hours=1))
    store.commit_cycle(s, cycle)
    once = (store.load_state(), store.checkpoint("spector-prod"), store.queued(),
            store.seen_keys(["a"]), store.last_cycle())
    store.commit_cycle(s, cycle)
    twice = (store.load_state(), store.checkpoint("spector-prod"), store.queued(),
             store.seen_keys(["a"]), store.last_cycle())
    assert twice == once
    # a message already sent is not queued again either
    first = store.queued()[0]
    store.mark_sent(first, Thread("C1", "1.0"))
    store.commit_cycle(s, cycle)
    assert [q.message.key for q in store.queued()] == ["inc#2.0"]


def test_state_comes_back_in_the_order_it_was_first_committed(store):
    """The core iterates incidents and revisions in state order (which incident resolves first,
    which revision wins a tie): updates must not reorder them."""
    s = State()
    for n in (3, 1, 2):
        i = incident()
        i.id = f"spector:sig{n}:x"
        i.signal = f"sig{n}"
        s.incidents[i.id] = i
        s.revisions[("spector", f"rev-{n}")] = RevisionFacts(service="spector", name=f"rev-{n}")
    store.commit_cycle(s, record())
    for n in (1, 3):  # updated: rewritten rows
        s.incidents[f"spector:sig{n}:x"].count = 100 + n
        s.revisions[("spector", f"rev-{n}")].requests_ok = n
    late = incident()
    late.id, late.signal = "spector:sig0:x", "sig0"
    s.incidents[late.id] = late
    store.commit_cycle(s, record())
    loaded = store.load_state()
    assert list(loaded.incidents) == ["spector:sig3:x", "spector:sig1:x", "spector:sig2:x",
                                      "spector:sig0:x"]
    assert list(loaded.revisions) == [("spector", "rev-3"), ("spector", "rev-1"),
                                      ("spector", "rev-2")]
    assert loaded.incidents == s.incidents


def test_text_from_the_logs_round_trips_whatever_it_holds(store):
    """Log text is untrusted: NUL, lone surrogates, the private-use escape, emoji."""
    odd = "a\x00b \ud800 \ue000 \ue0000041 \U0001f525 é \\u0000"
    s = state()
    s.incidents[incident().id].sample = odd
    s.incidents[incident().id].revisions = {odd: 1}
    s.pending[("spector", "other")] = [(T0, odd, odd, odd)]
    key = "projects/p/logs/x\x00" + odd.replace("\ud800", "")
    error = "slack said: \x00 \ue000"
    store.commit_cycle(s, record([message(1)], seen={key: T0}))
    loaded = store.load_state()
    assert loaded.incidents == s.incidents
    assert loaded.pending == s.pending
    assert store.seen_keys([key, "other"]) == {key}
    (queued,) = store.queued()
    store.mark_failed(queued, error)
    assert store.queued()[0].last_error == error


def test_open_incidents_oldest_first(store):
    s = state()
    old = incident()
    old.id, old.first_seen = "old", T0 - timedelta(days=1)
    done = incident(IncidentStatus.RESOLVED)
    done.id = "done"
    s.incidents.update({"old": old, "done": done})
    store.commit_cycle(s, record())
    assert [i.id for i in store.open_incidents()] == ["old", incident().id]


@pytest.mark.parametrize("offset", [timedelta(microseconds=500_000), timedelta(0)])
def test_seen_pruning_is_by_time_to_the_microsecond(store, offset, request):
    """A key stamped after `forget_before` stays, even within the same second."""
    store.commit_cycle(State(), record(seen={"kept": T0 + offset, "gone": T0 - offset
                                             - timedelta(microseconds=1)}))
    store.commit_cycle(State(), record(forget_before=T0))
    assert store.seen_keys(["kept", "gone"]) == {"kept"}


def test_unsupported_url():
    with pytest.raises(ValueError, match=r"state\.url"):
        open_store("mysql://user@host/db")


def test_a_dedupe_key_with_a_lone_surrogate_is_stored_and_found(store):
    key = "projects/p/logs/x\x1fid-\ud800"
    store.commit_cycle(State(), record(seen={key: T0}))
    assert store.seen_keys([key, "other"]) == {key}


def test_sent_messages_are_listed_per_incident_in_order(store):
    enqueue_ = [message(1, incident_id="a"), message(2, Action.REPLY, incident_id="a"),
                message(3, incident_id="b")]
    store.commit_cycle(state(), record(enqueue_))
    first, second, other = store.queued()
    assert store.sent("a") == []
    store.mark_sent(first, Thread("C1", "1.1"))
    store.mark_sent(other, Thread("C1", "1.2"))
    store.mark_sent(second, Thread("C1", "1.1"))
    sent = store.sent("a")
    assert [s.message.key for s in sent] == ["a#1.0", "a#2.0"]
    assert [s.ts for s in sent] == ["1.1", "1.1"]
    assert all(s.sent_at.tzinfo is not None for s in sent)


def test_retention_deletes_old_resolved_incidents_and_revisions_only(store):
    s = state()
    old = incident(IncidentStatus.RESOLVED)
    old.id, old.resolved_at = "old", T0 - timedelta(days=40)
    s.incidents["old"] = old
    s.revisions[("spector", "ancient")] = RevisionFacts(
        service="spector", name="ancient", first_seen=T0 - timedelta(days=50),
        last_seen=T0 - timedelta(days=45))
    store.commit_cycle(s, CycleRecord(unit="u", checkpoint=AT_T0, seen={}, forget_before=None,
                                      messages=[], retain_after=T0 - timedelta(days=30)))
    loaded = store.load_state()
    assert set(loaded.incidents) == {incident().id}  # the open one stays, the old resolved goes
    assert set(loaded.revisions) == {("spector", "spector-00042-wex")}


def test_retention_takes_a_deleted_incidents_thread_and_sent_messages_with_it(store):
    s = state()
    old = incident(IncidentStatus.RESOLVED)
    old.id, old.resolved_at = "old", T0 - timedelta(days=40)
    s.incidents["old"] = old
    keep = incident().id
    store.commit_cycle(s, CycleRecord(unit="u", checkpoint=AT_T0, seen={}, forget_before=None,
                                      messages=[message(1, incident_id="old"),
                                                message(1, incident_id=keep),
                                                message(2, Action.REPLY, incident_id="old")]))
    first, other, unsent = store.queued()
    store.mark_sent(first, Thread("C1", "1.1"))
    store.mark_sent(other, Thread("C1", "2.1"))
    retain = CycleRecord(unit="u", checkpoint=AT_T0, seen={}, forget_before=None, messages=[],
                         retain_after=T0 - timedelta(days=30))
    store.commit_cycle(store.load_state("u"), retain)
    # "old" still owes a reply in its thread: it stays, thread and all, until that is sent
    assert "old" in store.load_state("u").incidents
    assert store.thread("old") == Thread("C1", "1.1")
    assert [q.message.key for q in store.queued()] == [unsent.message.key]  # never dropped
    store.mark_sent(unsent, Thread("C1", "1.1"))
    store.commit_cycle(store.load_state("u"), retain)
    assert "old" not in store.load_state("u").incidents
    assert store.thread("old") is None and store.sent("old") == []
    assert store.thread(keep) == Thread("C1", "2.1")  # the open incident keeps its thread
    assert [s.message.key for s in store.sent(keep)] == [other.message.key]


def test_a_jump_far_ahead_never_strands_the_resolution_it_queues(store):
    """A clock 90 days ahead resolves an incident and puts it past retention in one commit:
    the resolution queued in that commit still finds its thread."""
    s = state()
    inc = s.incidents[incident().id]
    store.commit_cycle(s, CycleRecord(unit="u", checkpoint=AT_T0, seen={}, forget_before=None,
                                      messages=[message(1, incident_id=inc.id)]))
    (root,) = store.queued()
    store.mark_sent(root, Thread("C1", "1.1"))
    later = store.load_state("u")
    resolved = later.incidents[inc.id]
    resolved.status, resolved.resolved_at = IncidentStatus.RESOLVED, T0 + timedelta(minutes=20)
    store.commit_cycle(later, CycleRecord(
        unit="u", checkpoint=Checkpoint(T0 + timedelta(days=90)), seen={}, forget_before=None,
        messages=[message(2, Action.REPLY, incident_id=inc.id)],
        retain_after=T0 + timedelta(days=60)))
    (reply,) = store.queued()
    assert reply.message.incident_id == inc.id
    assert store.thread(inc.id) == Thread("C1", "1.1")  # where the reply goes
    assert inc.id in store.load_state("u").incidents


def test_sqlite_rewrites_only_the_documents_that_changed(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/w.db")
    s = state()
    store.commit_cycle(s, record())
    loaded = store.load_state()
    before = store._db.total_changes
    store.commit_cycle(loaded, record())  # nothing changed: meta and checkpoint only
    unchanged = store._db.total_changes - before
    loaded.incidents[incident().id].count += 1
    before = store._db.total_changes
    store.commit_cycle(loaded, record())
    assert store._db.total_changes - before == unchanged + 1  # that one incident
    assert store.load_state().incidents[incident().id].count == 8
    store.close()


def test_sqlite_rewrites_a_row_of_an_older_form_once(tmp_path):
    """A row written before the commit plan (not its canonical JSON) is rewritten canonical by
    the next commit, then left alone: what a row holds is known from its text."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/o.db")
    store.commit_cycle(state(), record())
    store._db.execute("UPDATE incidents SET data = ?", (json.dumps(incident().to_state()),))
    loaded = store.load_state()
    before = store._db.total_changes
    store.commit_cycle(loaded, record())
    first = store._db.total_changes - before
    before = store._db.total_changes
    store.commit_cycle(store.load_state(), record())
    assert store._db.total_changes - before == first - 1  # the incident, once
    (text,) = store._db.execute("SELECT data FROM incidents").fetchone()
    assert json.loads(text) == incident().to_state() and text == canonical(json.loads(text))
    store.close()


def test_a_rolled_back_write_is_written_again(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/r.db")
    s = state()
    store.commit_cycle(s, record())
    s.incidents[incident().id].count = 99
    bad = record(messages=[message(1)])
    s.incidents["x"] = "not an incident"  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        store.commit_cycle(s, bad)
    del s.incidents["x"]
    store.commit_cycle(s, record())
    assert store.load_state().incidents[incident().id].count == 99
    store.close()


# --- leases and fencing (store/base.py) ------------------------------------------------------

UNIT = "spector-prod"
MINUTE = timedelta(minutes=1)
SHORT = timedelta(milliseconds=300)  # a lease or heartbeat that a test waits out


def wait_until(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def claim_when_expired(store, holder: str, unit: str = UNIT) -> Lease:
    """`holder` claims `unit` as soon as its current lease has expired (the store's clock)."""
    claimed: list[Lease] = []
    wait_until(lambda: claimed.extend(store.claim(holder, [unit], MINUTE, 1)) or claimed,
               f"the lease of {unit} expired")
    return claimed[0]


def handed_over(store, unit: str = UNIT) -> tuple[Lease, Lease]:
    """`a` held the unit, then `b` took it over: a's lease is stale, b's current."""
    (stale,) = store.claim("a", [unit], MINUTE, 1)
    store.release(stale)
    (current,) = store.claim("b", [unit], MINUTE, 1)
    return stale, current


def fenced(lease: Lease, messages=(), **changes) -> CycleRecord:
    return replace(record(messages), unit=lease.unit, lease=lease, **changes)


def test_a_first_claim_gets_token_1_and_a_held_lease_cannot_be_claimed(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    assert (lease.unit, lease.holder, lease.token, lease.polled_at) == (UNIT, "a", 1, None)
    assert lease.expires_at - lease.acquired_at == MINUTE
    assert store.claim("b", [UNIT], MINUTE, 1) == []
    assert store.claim("a", [UNIT], MINUTE, 1) == []  # a holder renews; it does not re-claim


def test_an_expired_lease_is_taken_over_with_the_next_token(store):
    (first,) = store.claim("a", [UNIT], SHORT, 1)
    second = claim_when_expired(store, "b")
    assert (second.holder, second.token) == ("b", 2)
    assert store.renew(first, MINUTE) is None  # a, back from a pause, has lost it
    (info,) = store.leases()
    assert (info.holder, info.token) == ("b", 2)


def test_renew_keeps_the_token_and_extends_the_lease(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    renewed = store.renew(lease, 2 * MINUTE)
    assert renewed is not None
    assert (renewed.holder, renewed.token, renewed.acquired_at) == ("a", 1, lease.acquired_at)
    assert renewed.expires_at > lease.expires_at
    (info,) = store.leases()
    assert (info.token, info.expires_at) == (1, renewed.expires_at)


def test_renew_fails_once_another_holder_took_over(store):
    stale, current = handed_over(store)
    assert store.renew(stale, MINUTE) is None
    assert store.renew(current, MINUTE) is not None
    (info,) = store.leases()
    assert (info.holder, info.token) == ("b", 2)


def test_a_released_lease_is_claimable_at_once_with_the_next_token(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    store.release(lease)
    (info,) = store.leases()
    assert info.holder is None and not info.held and info.token == 1
    (again,) = store.claim("b", [UNIT], MINUTE, 1)
    assert again.token == 2
    store.release(lease)  # a stale release leaves the new holder alone
    assert [(i.holder, i.token, i.held) for i in store.leases()] == [("b", 2, True)]


def test_leave_releases_all_of_a_holders_leases_and_only_those(store):
    store.heartbeat("a", MINUTE)
    store.heartbeat("b", MINUTE)
    assert len(store.claim("a", ["u1", "u2"], MINUTE, 2)) == 2
    assert len(store.claim("b", ["u3"], MINUTE, 1)) == 1
    store.leave("a")
    assert {i.unit: i.holder for i in store.leases()} == {"u1": None, "u2": None, "u3": "b"}
    assert store.heartbeat("b", MINUTE) == 1  # `a` no longer counts as alive
    taken = store.claim("b", ["u1", "u2", "u3"], MINUTE, 3)
    assert sorted((t.unit, t.token) for t in taken) == [("u1", 2), ("u2", 2)]


def test_claim_takes_at_most_limit_units(store):
    units = ["u1", "u2", "u3"]
    assert store.claim("a", units, MINUTE, 0) == []
    first = store.claim("a", units, MINUTE, 2)
    assert len(first) == 2
    rest = store.claim("b", units, MINUTE, 2)
    assert [lease.unit for lease in rest] == sorted(set(units) - {f.unit for f in first})
    assert store.claim("c", units, MINUTE, 2) == []


def test_heartbeat_counts_only_instances_whose_heartbeat_has_not_expired(store):
    assert store.heartbeat("a", SHORT) == 1
    assert store.heartbeat("b", MINUTE) == 2
    assert store.heartbeat("b", MINUTE) == 2  # the same instance again
    wait_until(lambda: store.heartbeat("b", MINUTE) == 1, "a's heartbeat expired")
    assert store.heartbeat("a", MINUTE) == 2  # a is back


def test_leases_report_holder_token_and_whether_the_holder_is_alive(store):
    store.heartbeat("a", MINUTE)
    store.heartbeat("frozen", SHORT)
    (held,) = store.claim("a", ["u1", "u0"], MINUTE, 1)  # u0 gets a row, never a holder
    assert held.unit == "u0"
    store.claim("frozen", ["u2"], MINUTE, 1)
    (free,) = store.claim("a", ["u3"], MINUTE, 1)
    store.release(free)
    wait_until(lambda: store.heartbeat("a", MINUTE) == 1, "frozen's heartbeat expired")
    info = {i.unit: i for i in store.leases()}
    assert list(info) == ["u0", "u1", "u2", "u3"]
    u0, u1, u2, u3 = info.values()
    assert (u0.holder, u0.token, u0.held, u0.holder_alive) == ("a", 1, True, True)
    assert u0.acquired_at is not None and u0.expires_at is not None
    assert u0.expires_at - u0.now > MINUTE - timedelta(seconds=10)
    assert (u1.holder, u1.token, u1.held, u1.acquired_at, u1.expires_at, u1.polled_at) == (
        None, 0, False, None, None, None)
    # stuck: the holder's heartbeat expired, its lease not yet
    assert (u2.holder, u2.token, u2.held, u2.holder_alive) == ("frozen", 1, True, False)
    assert (u3.holder, u3.token, u3.held) == (None, 1, False)


def snapshot(store, unit: str = UNIT):
    """Everything a cycle and its deliveries can write for `unit`."""
    (lease,) = [i for i in store.leases() if i.unit == unit]
    return (store.load_state(unit), store.load_state(), store.checkpoint(unit), store.queued(),
            store.seen_keys(["old", "new"]), store.last_cycle(), lease.polled_at,
            store.thread(incident().id), store.sent(incident().id))


def test_a_commit_under_a_lost_lease_raises_and_writes_nothing(store):
    (lease,) = store.claim("a", [UNIT], SHORT, 1)
    store.commit_cycle(state(), fenced(lease, [message(1)], seen={"old": T0}))
    taken = claim_when_expired(store, "b")
    before = snapshot(store)
    changed = state()
    changed.incidents[incident().id].count = 99
    late = incident()
    late.id = "spector:late:x"
    changed.incidents[late.id] = late
    changed.request_services.add("other")
    stale = fenced(lease, [message(2)], checkpoint=Checkpoint(T0 + timedelta(hours=1)),
                   seen={"new": T0 + timedelta(hours=1)}, forget_before=T0 + MINUTE,
                   summary={"checked_at": "stale"}, retain_after=T0 + timedelta(days=60))
    with pytest.raises(LeaseLost, match="b holds it"):
        store.commit_cycle(changed, stale)
    assert snapshot(store) == before
    # The refused documents are not taken for written: the new holder writes them all.
    store.commit_cycle(changed, replace(stale, lease=taken, retain_after=None))
    assert store.load_state(UNIT) == changed
    assert store.seen_keys(["old", "new"]) == {"new"}


def test_delivery_writes_under_a_lost_lease_raise_and_change_nothing(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    root = Message(key="r#1.0", incident_id=incident().id, action=Action.POST_ROOT,
                   channel="#alerts", text="alert")
    store.commit_cycle(state(), fenced(lease, [root]))
    (queued,) = store.queued()
    store.mark_attempt(queued, lease)  # still held: counted
    store.release(lease)
    (taken,) = store.claim("b", [UNIT], MINUTE, 1)
    before = snapshot(store)
    assert before[3][0].attempts == 1
    with pytest.raises(LeaseLost):
        store.mark_attempt(queued, lease)
    with pytest.raises(LeaseLost):
        store.mark_sent(queued, Thread("C1", "1.0"), lease)
    with pytest.raises(LeaseLost):
        store.mark_failed(queued, "boom", T0, lease=lease)
    assert snapshot(store) == before
    store.mark_sent(queued, Thread("C1", "1.0"), taken)
    assert store.queued() == [] and store.thread(incident().id) == Thread("C1", "1.0")


def test_a_send_is_not_started_that_the_lease_would_not_cover(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    store.commit_cycle(state(), fenced(lease, [message(1)]))
    (queued,) = store.queued()
    with pytest.raises(LeaseLost, match="ends in less than"):
        store.mark_attempt(queued, lease, min_left=2 * MINUTE)
    assert store.queued()[0].attempts == 0
    store.mark_attempt(queued, lease, min_left=timedelta(seconds=10))
    assert store.queued()[0].attempts == 1


def test_a_commit_records_when_the_unit_was_polled(store):
    (lease,) = store.claim("a", [UNIT], MINUTE, 1)
    assert store.leases()[0].polled_at is None
    store.commit_cycle(state(), fenced(lease))
    (info,) = store.leases()
    assert info.polled_at is not None and abs(info.now - info.polled_at) < timedelta(seconds=10)
    store.release(lease)
    (taken,) = store.claim("b", [UNIT], MINUTE, 1)
    assert taken.polled_at == info.polled_at and taken.now is not None


# --- the state partitioned by unit -----------------------------------------------------------


def unit_state(unit: str, failed: int) -> State:
    """`state()` as unit `unit` has it: the same service and revision names as any other unit's,
    the incident id prefixed as with several units (Rules.namespace)."""
    s = state()
    i = s.incidents.pop(incident().id)
    i.id = f"{unit}/{i.id}"
    s.incidents[i.id] = i
    s.revisions[("spector", "spector-00042-wex")].requests_failed = failed
    s.pending = {("spector", "other"): [(T0, "spector-00042-wex", f"sample of {unit}", None)]}
    s.request_services = {"spector", f"{unit}-only"}
    return s


def unit_record(unit: str, messages=(), **changes) -> CycleRecord:
    return replace(record(messages), unit=unit, **changes)


def test_each_unit_loads_its_own_state_and_status_loads_them_all(store):
    prod, staging = unit_state("prod", 1), unit_state("staging", 2)
    store.commit_cycle(prod, unit_record("prod"))
    store.commit_cycle(staging, unit_record("staging"))
    assert store.load_state("prod") == prod
    assert store.load_state("staging") == staging
    assert store.load_state("test") == State()
    prod.revisions[("spector", "spector-00042-wex")].requests_failed = 10
    store.commit_cycle(prod, unit_record("prod"))
    assert store.load_state("prod") == prod
    assert store.load_state("staging") == staging
    everything = store.load_state()
    assert set(everything.incidents) == {*prod.incidents, *staging.incidents}
    assert everything.request_services == {"spector", "prod-only", "staging-only"}
    assert everything.pending[("spector", "other")] in (prod.pending[("spector", "other")],
                                                        staging.pending[("spector", "other")])


def test_pruning_and_retention_of_one_unit_spare_the_other_units(store, monkeypatch):
    monkeypatch.setattr("monitor.store.plan.RETENTION", timedelta(0))  # sent = old enough
    for unit in ("prod", "staging"):
        s = unit_state(unit, 1)
        old = incident(IncidentStatus.RESOLVED)
        old.id, old.resolved_at = f"{unit}/old", T0 - timedelta(days=40)
        s.incidents[old.id] = old
        s.revisions[("spector", "ancient")] = RevisionFacts(
            service="spector", name="ancient", first_seen=T0 - timedelta(days=50),
            last_seen=T0 - timedelta(days=45))
        done = message(1, incident_id=f"{unit}/old")
        store.commit_cycle(s, unit_record(unit, [done], seen={f"{unit}-key": T0 - MINUTE}))
        (queued,) = store.queued([unit])
        store.mark_sent(queued, Thread("C1", f"{unit}.1"))
    store.commit_cycle(store.load_state("prod"), unit_record(
        "prod", forget_before=T0, retain_after=T0 - timedelta(days=30)))
    assert store.seen_keys(["prod-key", "staging-key"]) == {"staging-key"}
    prod, staging = store.load_state("prod"), store.load_state("staging")
    assert set(prod.incidents) == {f"prod/{incident().id}"}
    assert set(staging.incidents) == {f"staging/{incident().id}", "staging/old"}
    assert ("spector", "ancient") not in prod.revisions
    assert ("spector", "ancient") in staging.revisions
    assert store.sent("prod/old") == []
    assert [s.message.key for s in store.sent("staging/old")] == ["staging/old#1.0"]


def test_queued_can_be_limited_to_some_units(store):
    for n, unit in enumerate(["u1", "u2", "u3"]):
        store.commit_cycle(State(), unit_record(unit, [message(n, incident_id=unit)]))
    assert [(q.unit, q.message.key) for q in store.queued()] == [
        ("u1", "u1#0.0"), ("u2", "u2#1.0"), ("u3", "u3#2.0")]
    assert [q.unit for q in store.queued(["u3", "u1"])] == ["u1", "u3"]
    assert [q.unit for q in store.queued({"u2"})] == ["u2"]
    assert store.queued([]) == []


# --- SQLite only -----------------------------------------------------------------------------


def test_sqlite_migration_4_gives_the_rows_of_a_single_unit_to_it(tmp_path):
    path = tmp_path / "v3.db"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        old.executescript(script)
    i, facts = incident(), state().revisions[("spector", "spector-00042-wex")]
    old.execute("INSERT INTO incidents (id, service, signal, status, first_seen, data) "
                "VALUES (?, ?, ?, ?, ?, ?)", (i.id, i.service, i.signal, i.status.value,
                                              "2025-12-04T21:00:00.000000Z",
                                              json.dumps(i.to_state())))
    old.execute("INSERT INTO revisions (service, name, data) VALUES (?, ?, ?)",
                (facts.service, facts.name, json.dumps(facts.to_state())))
    old.execute("INSERT INTO seen (key, ts) VALUES ('old-key', '2025-12-04T20:00:00.000000Z')")
    old.execute("INSERT INTO outbox (key, incident_id, payload, created_at) VALUES (?, ?, ?, ?)",
                ("inc#1.0", "inc", json.dumps(message(1).to_json()), "2025-12-04T21:00:00Z"))
    old.execute("INSERT INTO checkpoints (unit, value) VALUES (?, ?)",
                (UNIT, json.dumps(AT_T0.to_json())))
    old.execute("INSERT INTO meta (key, value) VALUES ('correlate', ?)", (json.dumps({
        "request_services": ["spector"], "source_failures": {UNIT: 2},
        "pending": {"spector\x1fother": [["2025-12-04T21:00:00Z", "spector-00042-wex",
                                          "sample"]]}}),))
    old.execute("PRAGMA user_version = 3")
    old.commit()
    old.close()

    store = SQLiteStore(f"sqlite:///{path}")
    assert store.schema_version == len(MIGRATIONS) == 4
    loaded = store.load_state(UNIT)
    assert loaded.incidents == {i.id: i}
    assert loaded.revisions == {("spector", "spector-00042-wex"): facts}
    # a pending match stored before instances were kept reads with none
    assert loaded.pending == {("spector", "other"): [(T0, "spector-00042-wex", "sample", None)]}
    assert (loaded.request_services, loaded.source_failures) == ({"spector"}, {UNIT: 2})
    assert [q.unit for q in store.queued([UNIT])] == [UNIT]
    store.commit_cycle(loaded, record(forget_before=T0))  # the unit's own keys are pruned
    assert store.seen_keys(["old-key"]) == set()
    assert store.load_state(UNIT) == loaded
    store.close()


def test_sqlite_a_lease_of_a_dead_local_process_is_claimable_at_once(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # exited: a dead pid
    me = instance_id()
    dead = me.replace(f"-{os.getpid()}-", f"-{child.stdout.strip()}-")
    store = SQLiteStore(f"sqlite:///{tmp_path}/d.db")
    store.claim(f"once-{dead}", [UNIT], MINUTE, 1)
    assert store.claim(me, ["other"], MINUTE, 1)[0].token == 1
    (taken,) = store.claim(me, [UNIT], MINUTE, 1)  # a killed `monitor once` blocks no one
    assert (taken.holder, taken.token) == (me, 2)
    store.close()
