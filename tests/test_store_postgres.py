"""What is specific to PostgreSQL: concurrent start-up, lost connections, secrets, URL forms.

The behaviour both stores share is tests/test_store.py. Here the store talks to the real server
through tests/pgproxy.py, which cuts connections between and inside transactions.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.types.json import Jsonb

from monitor.correlate.state import State
from monitor.messages import Action, Message, Thread
from monitor.redact import hide
from monitor.store import open_store
from monitor.store.base import CycleRecord, Lease, LeaseLost
from monitor.store.postgres import (
    MIGRATION_LOCK,
    MIGRATIONS,
    PostgresStore,
    StoreUnavailable,
    connection_params,
)
from monitor.window import Checkpoint
from tests.pgproxy import PgProxy
from tests.test_store import incident, state, wait_until

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
PASSWORD = "hunter2-secret"  # trust auth ignores it; it must never be shown


def msg(n: int) -> Message:
    return Message(key=f"inc#{n}.0", incident_id="inc", action=Action.POST_ROOT if n == 0
                   else Action.REPLY, channel="#alerts", text=f"message {n}")


def cycle(n: int, messages: list[Message] | None = None) -> CycleRecord:
    return CycleRecord(unit="spector-prod", checkpoint=Checkpoint(T0 + timedelta(minutes=n)),
                       seen={f"e{n}": T0 + timedelta(minutes=n)}, forget_before=None,
                       messages=[msg(n)] if messages is None else messages,
                       summary={"cycle": n})


def direct(url: str, query: str, params: tuple = ()) -> list[tuple]:
    """Read (or change) the database past the proxy and the store."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def checkpoint_of(url: str) -> str | None:
    rows = direct(url, "SELECT value->>'until' FROM checkpoints WHERE unit = 'spector-prod'")
    return rows[0][0] if rows else None


def outbox_of(url: str) -> list[tuple[int, str]]:
    return [(i, k) for i, k in direct(url, "SELECT id, key FROM outbox ORDER BY id")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy():
    with PgProxy() as p:
        yield p


@pytest.fixture
def proxied(pg_url, proxy) -> str:
    """The test database through the proxy, with a password in the URL."""
    parts = urlsplit(pg_url)
    return parts._replace(netloc=f"postgres:{PASSWORD}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
def no_secret_logged(caplog):
    caplog.set_level(logging.DEBUG)
    yield caplog
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


# --- schema ------------------------------------------------------------------------------


def open_together(url: str, n: int) -> tuple[list[PostgresStore], list[BaseException]]:
    """`n` instances open the store at the same moment, each on its own connection."""
    barrier = threading.Barrier(n)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            opened.append(PostgresStore(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return opened, errors


def test_instances_starting_together_make_one_schema(pg_url):
    """Four instances open the store on an empty database at the same moment, three times."""
    for _ in range(3):
        direct(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        opened, errors = open_together(pg_url, 4)
        assert errors == [] and len(opened) == 4
        assert [s.schema_version for s in opened] == [len(MIGRATIONS)] * 4
        assert direct(pg_url, "SELECT version FROM schema_version ORDER BY version") == [
            (n,) for n in range(1, len(MIGRATIONS) + 1)]
        opened[0].commit_cycle(state(), cycle(1))
        assert [q.message.key for q in opened[3].queued()] == ["inc#1.0"]
        for s in opened:
            s.close()


def test_a_current_schema_is_opened_without_waiting_for_the_migration_lock(pg_url):
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        started = time.monotonic()
        PostgresStore(pg_url).close()  # `monitor status` while another instance migrates
        assert time.monotonic() - started < 2


def test_schema_types(pg_url):
    PostgresStore(pg_url).close()
    columns = dict(((t, c), d) for t, c, d in direct(
        pg_url, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public'"))
    for doc in [("incidents", "data"), ("revisions", "data"), ("outbox", "payload"),
                ("meta", "value"), ("checkpoints", "value")]:
        assert columns[doc] == "jsonb"
    for at in [("seen", "ts"), ("incidents", "first_seen"), ("outbox", "next_attempt_at"),
               ("outbox", "created_at"), ("outbox", "sent_at"), ("checkpoints", "until")]:
        assert columns[at] == "timestamp with time zone"
    assert columns[("outbox", "id")] == "bigint"
    assert direct(pg_url, "SELECT pg_get_serial_sequence('outbox', 'id') IS NOT NULL") == [
        (True,)]


# --- lost connections --------------------------------------------------------------------


def test_connections_dropped_between_cycles_are_replaced(proxied, proxy, pg_url,
                                                         no_secret_logged):
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1))
    assert proxy.drop_all() == 1
    assert store.checkpoint("spector-prod") == Checkpoint(T0 + timedelta(minutes=1))
    assert proxy.drop_all() == 1
    store.commit_cycle(state(), cycle(2))
    assert proxy.drop_all() == 1
    assert [q.message.key for q in store.queued()] == ["inc#1.0", "inc#2.0"]
    assert proxy.connections == 4
    store.close()
    assert outbox_of(pg_url) == [(1, "inc#1.0"), (2, "inc#2.0")]


def test_a_transaction_cut_before_its_commit_is_run_again(proxied, proxy, pg_url,
                                                         no_secret_logged):
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1))
    proxy.drop_on(b"INSERT INTO seen")  # mid-transaction: incidents already written
    store.commit_cycle(state(), cycle(2, [msg(2), msg(3)]))
    assert proxy.dropped == 1 and proxy.connections == 2
    assert checkpoint_of(pg_url) == "2025-12-04T21:02:00Z"
    assert [k for _, k in outbox_of(pg_url)] == ["inc#1.0", "inc#2.0", "inc#3.0"]
    assert store.seen_keys(["e1", "e2"]) == {"e1", "e2"}
    assert any("commit the cycle" in r.getMessage() for r in no_secret_logged.records)
    store.close()


def test_a_commit_whose_answer_was_lost_is_run_again_and_changes_nothing(proxied, proxy, pg_url,
                                                                         no_secret_logged):
    """The COMMIT reaches the server and commits; its answer never comes back. The store cannot
    know, runs the cycle again, and the idempotent writes make that harmless."""
    store = PostgresStore(proxied, backoff=0.01)
    proxy.drop_on(b"COMMIT", deliver=True)
    store.commit_cycle(state(), cycle(1, [msg(0), msg(1)]))
    assert proxy.dropped == 1 and proxy.connections == 2
    # ids 1 and 2: the first run's rows. Had it not committed, the second run's inserts would
    # have had 3 and 4 (a sequence does not roll back).
    assert outbox_of(pg_url) == [(1, "inc#0.0"), (2, "inc#1.0")]
    assert checkpoint_of(pg_url) == "2025-12-04T21:01:00Z"
    assert store.load_state().incidents == state().incidents
    store.close()


def test_a_lost_commit_of_a_delivery_attempt_is_looked_up_not_counted_twice(
        proxied, proxy, pg_url, no_secret_logged):
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1, [msg(0)]))
    proxy.drop_on(b"COMMIT", deliver=True)  # committed, answer lost: pg_xact_status says so
    store.mark_attempt(store.queued()[0])
    assert store.queued()[0].attempts == 1
    proxy.drop_on(b"COMMIT")  # never arrived: aborted, so it is run again
    store.mark_attempt(store.queued()[0])
    assert store.queued()[0].attempts == 2
    proxy.drop_on(b"UPDATE outbox")
    store.mark_attempt(store.queued()[0])
    assert store.queued()[0].attempts == 3
    assert proxy.dropped == 3
    proxy.drop_on(b"COMMIT", deliver=True)
    store.mark_sent(store.queued()[0], Thread("C1", "1.0"))
    assert store.queued() == [] and store.thread("inc") == Thread("C1", "1.0")
    store.close()


def test_a_lost_commit_whose_session_lives_on_is_ended_then_run_again_once(
        proxied, proxy, pg_url, no_secret_logged):
    """A delivery attempt's COMMIT never reaches the server, and the server is not told that
    the connection is gone (a network partition): the old session stays "idle in transaction",
    holding the row, and pg_xact_status says "in progress". The store ends that session (its
    transaction aborts), finds it aborted and runs the attempt again: counted once."""
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1, [msg(0)]))
    queued = store.queued()[0]
    old = store._pg.backend
    proxy.drop_on(b"COMMIT", hold=True)
    store.mark_attempt(queued)
    assert proxy.held == 1
    assert old is not None and store._pg.backend != old
    assert direct(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                  (old[0],)) == [(0,)]
    assert store.queued()[0].attempts == 1
    assert direct(pg_url, "SELECT attempts FROM outbox") == [(1,)]
    store.close()


@pytest.mark.parametrize("cut", [b"COMMIT", b"INSERT INTO seen"])
def test_a_lost_cycle_whose_session_lives_on_is_run_again_without_waiting_on_its_locks(
        cut, proxied, proxy, pg_url, no_secret_logged):
    """A cycle's connection is cut at its COMMIT, or in the middle, and the server keeps the
    session open in its transaction, holding the rows it wrote. The re-run would wait on those
    locks until the server noticed (hours); the store ends that session first."""
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1))
    proxy.drop_on(cut, hold=True)
    done = threading.Event()
    threading.Thread(target=lambda: (store.commit_cycle(state(), cycle(2)), done.set()),
                     daemon=True).start()
    assert done.wait(20), direct(pg_url, "SELECT pid, state, wait_event_type, query "
                                         "FROM pg_stat_activity")
    assert proxy.held == 1
    assert checkpoint_of(pg_url) == "2025-12-04T21:02:00Z"
    assert [k for _, k in outbox_of(pg_url)] == ["inc#1.0", "inc#2.0"]
    store.close()


def test_a_lost_commit_still_running_on_the_server_is_ended_then_run_again_once(
        proxied, proxy, pg_url, no_secret_logged):
    """The COMMIT reaches the server, but it is still running (a deferred trigger that takes
    seconds stands in for a slow commit) when its answer is lost: "in progress". The store ends
    the session before the commit completes, so it aborts, and the attempt is run again."""
    store = PostgresStore(proxied, backoff=0.01)
    store.commit_cycle(state(), cycle(1, [msg(0)]))
    queued = store.queued()[0]
    # Slow the first commit only: a sequence is not rolled back with the transaction.
    direct(pg_url, "CREATE SEQUENCE slow_commits")
    direct(pg_url, """CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN
                          IF nextval('slow_commits') = 1 THEN PERFORM pg_sleep(30); END IF;
                          RETURN NULL;
                      END $$""")
    direct(pg_url, "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON outbox "
                   "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()")
    proxy.deliver_grace = 0.05
    proxy.drop_on(b"COMMIT", deliver=True)
    started = time.monotonic()
    store.mark_attempt(queued)
    assert time.monotonic() - started < 10  # not the 30 s of the trigger
    assert proxy.dropped == 1
    # the first run aborted (its sleep cut short), the second one committed
    assert direct(pg_url, "SELECT last_value FROM slow_commits") == [(2,)]
    assert store.queued()[0].attempts == 1
    store.close()


def test_a_server_away_for_a_while_is_waited_for(proxied, proxy, no_secret_logged):
    store = PostgresStore(proxied, attempts=6, backoff=0.1)
    proxy.drop_all()
    proxy.refuse(0.5)
    started = time.monotonic()
    store.commit_cycle(state(), cycle(1))
    assert time.monotonic() - started >= 0.5
    assert store.checkpoint("spector-prod") == Checkpoint(T0 + timedelta(minutes=1))
    store.close()


def test_a_server_away_too_long_fails_the_cycle_and_leaves_the_checkpoint(
        proxied, proxy, pg_url, no_secret_logged):
    store = PostgresStore(proxied, attempts=3, backoff=0.05)
    store.commit_cycle(state(), cycle(1))
    proxy.drop_on(b"COMMIT")  # the cycle's transaction is cut at its end, and the server is gone
    proxy.refuse(60)
    with pytest.raises(StoreUnavailable) as caught:
        store.commit_cycle(state(), cycle(2))
    assert isinstance(caught.value, OSError)  # the CLI reports it as "cannot open the store"
    text = "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in text
    assert f"postgres:***@127.0.0.1:{proxy.port}" in str(caught.value)
    assert "after 3 attempt(s)" in str(caught.value)
    assert checkpoint_of(pg_url) == "2025-12-04T21:01:00Z"  # the old one
    assert [k for _, k in outbox_of(pg_url)] == ["inc#1.0"]
    proxy.refuse(0)
    store.commit_cycle(state(), cycle(2))  # the next cycle goes through
    assert checkpoint_of(pg_url) == "2025-12-04T21:02:00Z"
    store.close()


def test_cycles_under_random_connection_loss_end_consistent(proxied, proxy, pg_url,
                                                            no_secret_logged):
    """Cycles (commit, then deliver the queued message) while connections are cut at random
    moments, COMMITs included, until at least 100 cycles ran and 50 connections were cut. A
    cycle the store gives up on is run again, as the next scheduled cycle would (same
    checkpoint, same messages). Afterwards: every message once, in order; the last checkpoint;
    every message sent."""
    store = PostgresStore(proxied, attempts=4, backoff=0.005)
    rng = random.Random(8)
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(rng.uniform(0.005, 0.05)):
            proxy.drop_all()

    cutter = threading.Thread(target=chaos, daemon=True)
    cutter.start()
    gave_up = n = 0
    try:
        while n < 100 or (proxy.dropped < 50 and n < 2000):
            if n % 5 == 0:
                proxy.drop_on(b"COMMIT", deliver=rng.random() < 0.5)
            while True:
                try:
                    store.commit_cycle(state(), cycle(n))
                    queued = store.queued()
                    if queued:
                        store.mark_attempt(queued[0])
                        store.mark_sent(queued[0], Thread("C1", f"{n}.0"))
                    break
                except StoreUnavailable:
                    gave_up += 1
            n += 1
    finally:
        stop.set()
        cutter.join()
    assert proxy.dropped >= 50
    assert [k for _, k in outbox_of(pg_url)] == [f"inc#{i}.0" for i in range(n)]
    assert checkpoint_of(pg_url) == format(T0 + timedelta(minutes=n - 1), "%Y-%m-%dT%H:%M:%SZ")
    assert direct(pg_url, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    assert direct(pg_url, "SELECT min(attempts) >= 1 FROM outbox") == [(True,)]
    assert store.seen_keys([f"e{i}" for i in range(n)]) == {f"e{i}" for i in range(n)}
    store.close()
    print(f"random loss: {n} cycles, {proxy.dropped} connections cut, {proxy.connections} "
          f"opened, {gave_up} cycle(s) given up and run again")


def test_monitor_once_in_steps_through_lost_connections(pg_url, proxy, proxied, tmp_path,
                                                        slack_server, no_secret_logged,
                                                        monkeypatch):
    """The spector replay polled in steps, as in test_scenario_spector, on PostgreSQL through
    the proxy: each check loses the answer to its cycle's COMMIT, or the COMMIT itself, and a
    connection in the middle of its deliveries. Same conclusions, each Slack message once."""
    from tests.test_scenario_spector import config_for, once_json

    monkeypatch.setattr("monitor.store.pg_session.BACKOFF", 0.01)
    proxy.deliver_grace = 0.05
    config = config_for(tmp_path, slack_server)
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path}/state.db", proxied))
    t = datetime(2025, 12, 4, 20, 0, tzinfo=UTC)
    end = datetime(2025, 12, 13, 2, 14, 25, 999999, tzinfo=UTC)
    step, seen, unfired = 0, {}, 0
    while t < end:
        t, step = min(t + timedelta(hours=6), end), step + 1
        proxy.drop_on(b"COMMIT", after=b"INSERT INTO meta", deliver=step % 2 == 0)
        proxy.drop_on(b"UPDATE outbox SET attempts")
        _, doc = once_json(config, "--now", t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        seen.update({i["id"]: i for i in doc["incidents"]})
        unfired += proxy.clear_rules()  # a check that sends nothing leaves its second rule
    assert proxy.dropped == 2 * step - unfired and proxy.dropped > step
    store = PostgresStore(pg_url)
    assert store.queued() == []
    assert {i.id: i.status.value for i in store.load_state().incidents.values()} == {
        i["id"]: "resolved" for i in seen.values()}
    assert len(seen) == 2
    (session,) = [i for i in seen.values() if i["signal"] == "missing-session-table"]
    assert (session["count"], session["revisions"], session["resolved_by"]) == (
        157, {"spector-00042-wex": 144, "spector-00043-fiz": 13}, "spector-00044-mop")
    store.close()
    posts = slack_server.calls_to("chat.postMessage")
    keys = [c.params["metadata"]["event_payload"]["key"] for c in posts]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for (k,) in direct(
        pg_url, "SELECT key FROM outbox WHERE payload->>'action' <> 'update_root'")}
    for root in [m for m in slack_server.messages("#spector-alerts")
                 if m.get("subtype") != "thread_broadcast"]:
        texts = [r["text"] for r in root["replies"]]
        assert len(texts) == len(set(texts)) and "Resolved" in texts[-1]


# --- secrets and URLs --------------------------------------------------------------------


def test_an_unreachable_server_is_reported_without_the_password(no_secret_logged, monkeypatch):
    url = f"postgresql://monitor:{PASSWORD}@127.0.0.1:{free_port()}/monitor"
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStore(url, attempts=2, backoff=0.01)
    message = str(caught.value)
    print(message)
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))
    assert "monitor:***@127.0.0.1" in message
    assert "Connection refused" in message or "connection" in message.lower()
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    monkeypatch.setattr("monitor.store.pg_session.MAX_BACKOFF", 0.01)
    with pytest.raises(OSError):  # what `monitor once/run/status` catch around open_store
        open_store(url.replace("postgresql://", "postgres://"))


def test_a_bad_url_is_a_value_error_without_the_password():
    with pytest.raises(ValueError) as caught:
        PostgresStore(f"postgresql://monitor:{PASSWORD}@db:notaport/monitor?bogus=1")
    assert PASSWORD not in str(caught.value)
    assert "state.url" in str(caught.value)


def test_mask_hides_passwords_in_every_shape():
    for text in [
        f"postgresql://monitor:{PASSWORD}@db:5432/x failed",
        f"invalid connection option: host=db password={PASSWORD} user=monitor",
        f"host=db password='{PASSWORD} with spaces' user=monitor",
        f"postgresql://monitor@db/x?password={PASSWORD}&sslmode=require",
    ]:
        masked = hide(text, [PASSWORD])
        assert PASSWORD not in masked and "with spaces" not in masked and "***" in masked
    assert hide("just hunter2-secret", [PASSWORD]) == "just ***"
    assert "sslmode=require" in hide(f"postgresql://m@db/x?password={PASSWORD}&sslmode=require", ())


def test_url_forms():
    cloud_sql = connection_params("postgresql://monitor@/monitor?host=/cloudsql/proj:europe-west1:db")
    assert (cloud_sql["host"], cloud_sql["user"], cloud_sql["dbname"]) == (
        "/cloudsql/proj:europe-west1:db", "monitor", "monitor")
    assert "password" not in cloud_sql  # from PGPASSWORD (Secret Manager) or the URL
    tcp = connection_params(f"postgresql://monitor:{PASSWORD}@10.0.0.3:5432/monitor"
                            "?connect_timeout=9&sslmode=require")
    assert (tcp["host"], tcp["port"], tcp["password"], tcp["sslmode"]) == (
        "10.0.0.3", "5432", PASSWORD, "require")
    assert tcp["connect_timeout"] == "9" and tcp["keepalives"] == "1"  # the URL wins
    assert connection_params("postgres://m@h/d")["dbname"] == "d"


def test_postgres_scheme_selects_the_store(pg_url):
    store = open_store(pg_url.replace("postgresql://", "postgres://", 1))
    assert isinstance(store, PostgresStore)
    store.commit_cycle(State(), cycle(1))
    store.close()


def test_a_closed_store_refuses_work(pg_url):
    store = PostgresStore(pg_url)
    store.close()
    with pytest.raises(Exception, match="closed"):
        store.queued()


def test_an_incident_survives_the_instance(pg_url):
    """A restart (a new instance, the old one gone) finds the incident and its thread."""
    first = PostgresStore(pg_url)
    first.commit_cycle(state(), cycle(0))
    (root,) = first.queued()
    first.mark_attempt(root)
    first.mark_sent(root, Thread("C1", "1.0"))
    first.close()
    second = PostgresStore(pg_url)
    assert second.load_state().incidents[incident().id] == incident()
    assert second.thread("inc") == Thread("C1", "1.0") and second.queued() == []
    second.close()


# --- leases between instances ------------------------------------------------------------

UNITS = [f"u{n}" for n in range(6)]
MINUTE = timedelta(minutes=1)


def claim_together(url: str, holders: list[str], limit: int) -> dict[str, list[Lease]]:
    """Each holder, on its own store (connection), claims UNITS at the same moment."""
    stores = [PostgresStore(url) for _ in holders]
    barrier = threading.Barrier(len(holders))
    claimed: dict[str, list[Lease]] = {}
    errors: list[BaseException] = []

    def claim(store: PostgresStore, holder: str) -> None:
        try:
            barrier.wait()
            claimed[holder] = store.claim(holder, UNITS, MINUTE, limit)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=pair)
               for pair in zip(stores, holders, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for store in stores:
        store.close()
    assert errors == []
    return claimed


def test_instances_claiming_together_split_the_units(pg_url):
    """Five rounds: the first creates the lease rows, the next ones find them (released)."""
    for round_ in range(1, 6):
        claimed = claim_together(pg_url, ["a", "b", "c"], limit=2)
        units = [lease.unit for leases in claimed.values() for lease in leases]
        assert sorted(units) == UNITS, f"round {round_}: {claimed}"  # each unit once
        assert sorted(len(leases) for leases in claimed.values()) == [2, 2, 2]
        assert {lease.token for leases in claimed.values() for lease in leases} == {round_}
        direct(pg_url, "UPDATE leases SET holder = NULL, expires_at = now()")


def test_a_claim_passes_over_a_unit_whose_lease_a_write_is_fencing(pg_url):
    """The old holder's fenced write holds the lease row FOR SHARE until it ends: a claim made
    meanwhile neither waits for it nor takes the unit under it."""
    store = PostgresStore(f"{pg_url}?options=-c%20lock_timeout%3D3s")  # a wait fails the test
    store.claim("a", ["u1", "u2"], timedelta(milliseconds=200), 2)
    with psycopg.connect(pg_url) as writer:  # a transaction, like commit_cycle's
        writer.execute("SELECT holder, token FROM leases WHERE unit = 'u1' FOR SHARE")
        started = time.monotonic()
        claimed: list[Lease] = []
        wait_until(lambda: claimed.extend(store.claim("b", ["u1", "u2"], MINUTE, 2)) or claimed,
                   "a's leases expired")
        assert [(lease.unit, lease.token) for lease in claimed] == [("u2", 2)]
        assert time.monotonic() - started < 5
        assert store.claim("b", ["u1"], MINUTE, 1) == []
        writer.rollback()
    (taken,) = store.claim("b", ["u1"], MINUTE, 1)
    assert (taken.holder, taken.token) == ("b", 2)
    store.close()


def test_a_claim_does_not_wait_for_another_instances_lease_update(pg_url):
    """A renew (or claim, or a commit's polled_at) of another instance not yet committed:
    a claim passes that unit over instead of waiting, as the others' refresh would stall."""
    store = PostgresStore(f"{pg_url}?options=-c%20lock_timeout%3D3s")  # a wait fails the test
    store.claim("a", ["u1", "u2"], MINUTE, 1)
    with psycopg.connect(pg_url) as renew:
        renew.execute("UPDATE leases SET renewed_at = now() WHERE unit = 'u1'")
        started = time.monotonic()
        assert [lease.unit for lease in store.claim("b", ["u1", "u2"], MINUTE, 2)] == ["u2"]
        assert time.monotonic() - started < 2
        renew.rollback()
    store.close()


def test_a_write_waiting_on_a_change_of_holder_is_refused_once_it_committed(pg_url):
    """The other order: a claim has taken the lease row (not yet committed) when the old
    holder's write starts. The fence waits for the claim, then sees the new holder."""
    store = PostgresStore(pg_url)
    (lease,) = store.claim("a", ["spector-prod"], MINUTE, 1)
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            store.commit_cycle(state(), CycleRecord(
                unit="spector-prod", checkpoint=Checkpoint(T0), seen={"e": T0},
                forget_before=None, messages=[msg(1)], lease=lease))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(pg_url) as claim:
        claim.execute("UPDATE leases SET holder = 'b', token = token + 1, acquired_at = now(), "
                      "expires_at = now() + interval '1 minute' WHERE unit = 'spector-prod'")
        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: direct(pg_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")
                   == [(1,)], "the fence waits for the claim")
        assert outcome == []
        claim.commit()
    writer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost)
    assert store.load_state().incidents == {} and store.queued() == []
    assert checkpoint_of(pg_url) is None and store.seen_keys(["e"]) == set()
    store.close()


# --- migrations --------------------------------------------------------------------------


def test_migration_2_gives_the_rows_of_a_single_unit_to_it(pg_url, monkeypatch):
    monkeypatch.setattr("monitor.store.pg_schema.MIGRATIONS", MIGRATIONS[:1])
    PostgresStore(pg_url).close()
    i, facts = incident(), state().revisions[("spector", "spector-00042-wex")]
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO incidents (id, service, signal, status, first_seen, data) "
                     "VALUES (%s, %s, %s, %s, %s, %s)", (i.id, i.service, i.signal,
                                                         i.status.value, T0, Jsonb(i.to_state())))
        conn.execute("INSERT INTO revisions (service, name, data) VALUES (%s, %s, %s)",
                     (facts.service, facts.name, Jsonb(facts.to_state())))
        conn.execute("INSERT INTO seen (key, ts) VALUES ('old-key', %s)", (T0,))
        conn.execute("INSERT INTO checkpoints (unit, value, until, updated_at) "
                     "VALUES ('spector-prod', %s, %s, now())",
                     (Jsonb(Checkpoint(T0).to_json()), T0))
        conn.execute("INSERT INTO meta (key, value) VALUES ('correlate', %s)", (Jsonb({
            "request_services": ["spector"], "source_failures": [["spector-prod", 2]],
            "pending": [["spector", "other", [["2025-12-04T21:00:00Z", "spector-00042-wex",
                                               "sample"]]]]}),))
    monkeypatch.undo()

    store = PostgresStore(pg_url)
    assert store.schema_version == len(MIGRATIONS) == 2
    loaded = store.load_state("spector-prod")
    assert loaded.incidents == {i.id: i}
    assert loaded.revisions == {("spector", "spector-00042-wex"): facts}
    assert loaded.pending == {("spector", "other"): [(T0, "spector-00042-wex", "sample", None)]}
    assert (loaded.request_services, loaded.source_failures) == ({"spector"},
                                                                 {"spector-prod": 2})
    store.commit_cycle(loaded, CycleRecord(unit="spector-prod", checkpoint=None, seen={},
                                           forget_before=T0 + timedelta(minutes=1), messages=[]))
    assert store.seen_keys(["old-key"]) == set()  # the unit's own key, pruned with its unit
    assert direct(pg_url, "SELECT count(*) FROM revisions") == [(1,)]  # updated, not added
    store.close()


# --- only what changed is written --------------------------------------------------------


def row_versions(url: str) -> dict[str, str]:
    """Each incident's and revision's row version: a new xmin means the row was rewritten."""
    return dict(direct(url, "SELECT 'i ' || id, xmin::text FROM incidents UNION ALL "
                            "SELECT 'r ' || name, xmin::text FROM revisions"))


def test_an_unchanged_document_is_not_rewritten(pg_url):
    """Also when it holds what JSONB spells its own way: escaped text, key order, non-ASCII."""
    odd = 'a\x00b \ud800 \ue000 "q" \\ / \x01\x1f\x7f\t\n \U0001f525 é \u2028'
    s = state()
    s.incidents[incident().id].sample = odd
    s.incidents[incident().id].revisions = {odd: 1, "r": 2, "é": 3, "spector-00042-wex": 7}
    s.revisions[("spector", "spector-00042-wex")].errors = {odd: 1, "zz": 2, "é": 3}
    PostgresStore(pg_url).commit_cycle(s, cycle(1))
    store = PostgresStore(pg_url)  # another instance: it knows only what it loads
    loaded = store.load_state("spector-prod")
    assert loaded.incidents == s.incidents
    before = row_versions(pg_url)
    store.commit_cycle(loaded, cycle(2))
    assert row_versions(pg_url) == before
    loaded.incidents[incident().id].count += 1
    store.commit_cycle(loaded, cycle(3))
    after = row_versions(pg_url)
    assert after[f"i {incident().id}"] != before[f"i {incident().id}"]
    assert after["r spector-00042-wex"] == before["r spector-00042-wex"]
    store.commit_cycle(loaded, cycle(4))  # what it wrote itself, it knows as written too
    assert row_versions(pg_url) == after
    store.close()
