"""The store contract: every test runs against SQLite and against PostgreSQL (the real server,
a throwaway database per test session, an empty schema per test: tests/conftest.py)."""

from __future__ import annotations

import sqlite3
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
from monitor.notify.message import Action, Message, Thread
from monitor.sources.base import Checkpoint
from monitor.store import open_store
from monitor.store.base import CycleRecord
from monitor.store.postgres import MIGRATIONS as PG_MIGRATIONS
from monitor.store.sqlite import MIGRATIONS, SQLiteStore

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
    s.pending[("spector", "other")] = [(T0, "spector-00042-wex", "sample")]
    s.request_services = {"spector"}
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
    s.pending[("spector", "other")] = [(T0, odd, odd)]
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
