"""Leadership: the fair share (`plan`), refresh against real stores, due(), and which holders
of this host are gone (`gone_locally`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from monitor.check import Cancelled
from monitor.correlate.state import State
from monitor.instance import gone_locally, instance_id
from monitor.leadership import Change, Leadership, Plan, plan
from monitor.store import open_store
from monitor.store.base import CycleRecord, Lease, LeaseLost
from monitor.window import ReadStats, Window
from tests.test_store import claim_when_expired, wait_until

UNITS = ["u1", "u2", "u3"]
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


# --- plan ----------------------------------------------------------------------------------


def test_plan_one_instance_takes_every_unit():
    assert plan(UNITS, set(), alive=1) == Plan(release=[], claim=3)
    assert plan(UNITS, set(), alive=0) == Plan(release=[], claim=3)  # not yet counted
    assert plan(UNITS, set(UNITS), alive=1) == Plan(release=[], claim=0)


def test_plan_shares_three_units_between_two_instances_two_and_one():
    assert plan(UNITS, set(), alive=2) == Plan(release=[], claim=2)
    assert plan(UNITS, {"u1", "u2"}, alive=2) == Plan(release=[], claim=0)
    assert plan(UNITS, {"u3"}, alive=2) == Plan(release=[], claim=1)  # claims; none is free


def test_plan_releases_the_surplus_when_an_instance_joins():
    assert plan(UNITS, set(UNITS), alive=2) == Plan(release=["u3"], claim=0)
    assert plan(UNITS, set(UNITS), alive=3) == Plan(release=["u2", "u3"], claim=0)
    assert plan(["u1"], set(), alive=3) == Plan(release=[], claim=1)  # more instances than units


def test_plan_releases_units_no_longer_in_the_config():
    assert plan(["u1", "u2"], {"u1", "gone"}, alive=1) == Plan(release=["gone"], claim=1)


# --- Leadership on a real store ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request, tmp_path):
    """Opens another instance's store (a connection of its own) on one shared database."""
    url = (f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    opened = []

    def another():
        opened.append(open_store(url))
        return opened[-1]

    yield another
    for store in opened:
        store.close()


def leader(store, holder: str, ttl: timedelta = MINUTE, interval: timedelta = HOUR):
    return Leadership(store=store, holder=holder, units=list(UNITS), ttl=ttl, interval=interval)


def test_two_instances_split_the_units_and_one_takes_all_when_the_other_leaves(stores):
    a, b = leader(stores(), "a"), leader(stores(), "b")
    assert a.refresh() == [Change(u, "acquired", 1) for u in UNITS]  # alone: all of them
    assert b.refresh() == [] and (b.alive, b.role) == (2, "standby")
    assert a.refresh() == [Change("u3", "released", 1)]  # b counts now: a keeps its share
    assert b.refresh() == [Change("u3", "acquired", 2)]
    assert (sorted(a.held), sorted(b.held)) == (["u1", "u2"], ["u3"])
    assert a.refresh() == [] and b.refresh() == []  # stable
    assert a.role == "leader" and "u1 (token 1)" in a.describe()
    b.leave()
    assert b.held == {} and b.role == "standby"
    assert a.refresh() == [Change("u3", "acquired", 3)]
    assert (sorted(a.held), a.alive) == (UNITS, 1)


def test_a_lease_taken_over_while_its_leader_paused_shows_as_lost(stores):
    a = leader(stores(), "a", ttl=timedelta(milliseconds=300))
    a.refresh()
    claim_when_expired(stores(), "c", "u1")  # a froze past its leases; c took one
    assert a.refresh() == [Change("u1", "lost", 1)]
    assert sorted(a.held) == ["u2", "u3"]  # renewed: nobody else wanted them
    assert not a.due("u1")


def test_a_unit_taken_over_is_due_one_interval_after_its_last_poll(stores):
    a = leader(stores(), "a")
    a.refresh()
    assert all(a.due(u) for u in UNITS)  # never polled
    a.store.commit_cycle(State(), CycleRecord(unit="u1", checkpoint=None, seen={},
                                              forget_before=None, messages=[],
                                              lease=a.held["u1"]))
    a.leave()
    b = leader(stores(), "b")
    b.refresh()
    assert sorted(b.held) == UNITS
    assert not b.due("u1")  # a polled it moments ago
    assert b.due("u2") and b.due("u3")  # never polled
    b.interval = timedelta(0)
    assert b.due("u1")  # its last poll is an interval ago
    b.interval = HOUR
    assert b.refresh() == [] and b.due("u1")  # the next tick, one interval later


def lease(polled_ago: timedelta | None) -> Lease:
    now = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
    return Lease("u1", "b", 2, now, now + MINUTE,
                 now - polled_ago if polled_ago is not None else None, now)


@pytest.mark.parametrize(("polled_ago", "fresh", "due"), [
    (timedelta(seconds=10), True, False),  # taken over just after the old leader's poll
    (timedelta(seconds=60), True, True),  # an interval ago
    (timedelta(hours=1), True, True),
    (None, True, True),  # never polled
    (timedelta(seconds=10), False, True),  # held since an earlier tick
])
def test_due(polled_ago, fresh, due):
    held = Leadership(store=None, holder="b", units=["u1"], ttl=MINUTE,  # type: ignore[arg-type]
                      interval=MINUTE, held={"u1": lease(polled_ago)},
                      fresh={"u1"} if fresh else set())
    assert held.due("u1") is due
    assert held.due("u2") is False  # not held


# --- reads: at most one per interval, hand-overs included ------------------------------------


class Recorded:
    """A source that records when it was read."""

    live = True

    def __init__(self) -> None:
        self.reads: list[float] = []

    def read(self, window, stats):
        self.reads.append(time.monotonic())
        yield from ()


def test_a_leader_paused_past_its_lease_does_not_read_on_waking(stores):
    """Paused (SIGSTOP) between its renewal and its read, long enough for another instance to
    take the unit over: on waking it must not read once more before noticing."""
    a = leader(stores(), "a", ttl=timedelta(milliseconds=300), interval=timedelta(0))
    a.refresh()
    source = Recorded()
    claim_when_expired(stores(), "c", "u1")  # a froze past its leases; c took one
    with pytest.raises(LeaseLost, match="taken over before this read"):
        list(a.guard("u1", source).read(Window(), ReadStats()))
    assert source.reads == [] and "u1" not in a.held
    list(a.guard("u2", source).read(Window(), ReadStats()))  # expired, but nobody took it
    assert len(source.reads) == 1 and a.held["u2"].token == 1


def test_a_read_needs_an_interval_of_lease_left(stores):
    """A tick that outran its lease (the renewal came before a slow check of another unit)
    renews before reading, so no instance can claim the unit within an interval of the read."""
    a = leader(stores(), "a", ttl=timedelta(seconds=2), interval=timedelta(seconds=1))
    a.refresh()
    before = a.held["u1"].expires_at
    a.clock = lambda: time.monotonic() + 1.5  # 1.5 s later: 0.5 s of lease left
    a.reading("u1")
    assert a.held["u1"].expires_at > before  # renewed first


def test_a_unit_is_read_at_most_once_an_interval_by_its_leader(stores):
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> bool:
        slept.append(seconds)
        now[0] += seconds
        return False

    a = Leadership(store=stores(), holder="a", units=list(UNITS), ttl=HOUR, interval=MINUTE,
                   sleep=sleep, clock=lambda: now[0])
    a.refresh()
    a.reading("u1")
    now[0] += 45  # a tick that came early (a late one before it)
    a.reading("u1")
    assert slept == [15]
    a.sleep = lambda seconds: True  # stopped while waiting
    with pytest.raises(Cancelled):
        a.reading("u1")


@pytest.mark.parametrize("how", ["leave", "rebalance"])
def test_a_unit_read_moments_ago_is_handed_over_an_interval_after_the_read(stores, how):
    """A cycle that read and did not commit (abandoned at SIGTERM): `polled_at` is older than
    that read, so the next leader must not get the unit before an interval has passed."""
    interval = timedelta(milliseconds=600)
    a = leader(stores(), "a", interval=interval)
    a.refresh()
    a.reading("u3")
    read = time.monotonic()
    b = leader(stores(), "b", interval=interval)
    if how == "leave":
        a.leave()
        assert a.store.leases()[2].holder_alive is False  # a no longer counts
    else:
        b.refresh()  # b counts now: a releases u3, its surplus
        assert a.refresh() == [Change("u3", "released", 1)]
    taken: list[float] = []
    while "u3" not in b.held:
        b.refresh()
        taken.append(time.monotonic())
        assert taken[-1] - read < 5
    assert taken[-1] - read >= interval.total_seconds()
    assert len(taken) > 1  # it was not free at once
    assert b.held["u3"].token == 2


# --- gone_locally --------------------------------------------------------------------------


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    pid = int(child.stdout)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), "the child is reaped")
    return pid


def here(pid: int) -> str:
    """An instance id of this host, as instance_id() makes it, for process `pid`."""
    return instance_id().replace(f"-{os.getpid()}-", f"-{pid}-")


def test_a_dead_process_of_this_host_is_gone(dead_pid):
    holder = here(dead_pid)
    assert gone_locally(holder)
    assert gone_locally(f"once-{holder}")  # `monitor once` holds leases too


def test_a_live_process_or_another_host_or_garbage_is_not_gone(dead_pid, monkeypatch):
    assert not gone_locally(instance_id())  # this process
    assert not gone_locally(f"once-{instance_id()}")
    assert not gone_locally(f"some-other-host-{dead_pid}-abc123")
    for garbage in ["", "-", "x", "a-b", "a-b-c", f"{dead_pid}", "--", "\x00-1-2"]:
        assert not gone_locally(garbage), garbage
    monkeypatch.setenv("K_REVISION", "spector-00042-wex")  # on Cloud Run: the revision
    holder = here(dead_pid)
    assert holder.startswith(f"spector-00042-wex-{dead_pid}-")
    assert gone_locally(holder)


# --- burst mode: the leases of `monitor once` -----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def expiries(store) -> dict[str, datetime]:
    return {info.unit: info.expires_at for info in store.leases()}


def burst(store, units=UNITS, ttl=MINUTE, min_left=timedelta(seconds=11), clock=None):
    return Leadership(store=store, holder="once-a", units=list(units), ttl=ttl, interval=HOUR / 60,
                      burst=True, min_left=min_left, clock=clock or Clock())


def test_a_burst_takes_every_free_unit_without_counting_itself_alive(stores):
    running = leader(stores(), "run-a")
    running.refresh()
    running.store.release(running.held.pop("u3"))
    once = burst(stores())
    assert once.refresh() == [Change("u3", "acquired", 2)]
    assert running.refresh() == []  # the instance of `run` keeps its share: once is not alive
    assert sorted(running.held) == ["u1", "u2"] and running.alive == 1
    once.leave()
    assert once.held == {} and [i.holder for i in once.store.leases() if i.unit == "u3"] == [None]


def test_a_burst_renews_every_lease_once_a_third_of_it_has_passed(stores):
    clock = Clock()
    once = burst(stores(), clock=clock)
    once.refresh()
    before = expiries(once.store)
    clock.t = 19.0
    once.keep("u1")
    assert once.renewals == 0 and expiries(once.store) == before  # a clock read, nothing more
    clock.t = 21.0
    once.keep("u1")
    assert once.renewals == 3  # the later units' too: they wait their turn
    assert all(expiries(once.store)[u] > before[u] for u in UNITS)
    assert {u: lease.token for u, lease in once.held.items()} == {u: 1 for u in UNITS}
    clock.t = 21.0 + 19.0
    once.keep("u3")
    assert once.renewals == 3


def test_a_burst_renews_when_a_send_needs_more_than_two_thirds_of_the_lease(stores):
    clock = Clock()
    once = burst(stores(), units=["u1"], ttl=timedelta(seconds=12), clock=clock)
    once.refresh()
    once.keep("u1")
    assert once.renewals == 0
    clock.t = 1.5  # 10.5 s left: too little for a send that needs 11
    once.keep("u1")
    assert once.renewals == 1


def test_a_burst_says_a_unit_taken_over_is_lost_and_keeps_the_others(stores):
    clock = Clock()
    once = burst(stores(), ttl=timedelta(milliseconds=300), min_left=timedelta(0), clock=clock)
    once.refresh()
    claim_when_expired(stores(), "run-b", "u2")  # once was slow; an instance of run took u2
    clock.t = 10.0
    once.keep("u1")
    assert sorted(once.held) == ["u1", "u3"]
    with pytest.raises(LeaseLost, match="u2: the lease was taken over during this check"):
        once.keep("u2")
