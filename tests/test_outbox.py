"""Outbox draining: in order per incident; a failure holds back only its own incident.

The decisions are tables (`hold_reason`, `in_doubt_for`, `retry_at`); the drains run on a
`FakeClock`, so backoff, in-doubt waits and pacing pass on the test's clock, never the wall's.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from monitor.correlate.state import State
from monitor.messages import Action, Message, Queued, Thread
from monitor.notify.message import DeliveryError
from monitor.notify.outbox import (
    MAX_BACKOFF,
    HoldReason,
    Progress,
    drain,
    hold_reason,
    in_doubt_for,
    retry_at,
)
from monitor.notify.slack import SlackNotifier
from monitor.store import open_store
from monitor.store.base import CycleRecord

H = HoldReason
S = timedelta(seconds=1)


class FakeClock:
    """Wall and monotonic time that move only when the test, or a drain's wait, moves them.

    It starts at the real time: the store stamps each attempt with the real clock, and how long
    an attempt stays in doubt is measured from that stamp."""

    def __init__(self) -> None:
        self.wall = datetime.now(UTC)
        self.mono = 1_000.0
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    @property
    def drives(self) -> dict[str, Callable[..., Any]]:
        """drain's clock arguments: `drain(store, notifier, **clock.drives)`."""
        return {"now": self.now, "sleep": self.sleep, "monotonic": self.monotonic}


# --- the decisions, as tables ------------------------------------------------------------------

NOW = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
ROOT = Thread("C1", "1700000000.000100")
POST, REPLY, EDIT = Action.POST_ROOT, Action.REPLY, Action.UPDATE_ROOT


def q(action: Action = REPLY, incident: str = "a", *, attempts: int = 0,
      due: datetime | None = None, attempted: datetime | None = None, link: str | None = None,
      unit: str = "u") -> Queued:
    message = Message(key=f"{incident}#1.0", incident_id=incident, action=action,
                      channel="#alerts", text="t", link_thread_of=link)
    return Queued(1, message, attempts, None, due, attempted, unit)


def known(*threads: str, unsent: tuple[str, ...] = ("a", "r"), blocked: tuple[str, ...] = (),
          ending: tuple[str, ...] = (), lost: tuple[str, ...] = ()) -> Progress:
    """A drain that knows the roots of `threads`, and has held or lost what the rest says."""
    return Progress({i: ROOT for i in threads}, frozenset(unsent), set(blocked), set(ending),
                    set(lost))


REGRESSION = q(POST, "r", link="a")  # a regression's alert, linking incident a's thread

HOLDS: list[tuple[str, Queued, Progress, float | None, float, HoldReason | None]] = [
    # (case, queued, what the drain knows, seconds left, seconds in doubt, reason)
    ("a root, nothing against it", q(POST), known(), None, 0, None),
    ("a reply under its root", q(), known("a"), None, 0, None),
    ("a reply before its root", q(), known(), None, 0, H.NO_ROOT),
    ("an edit before its root", q(EDIT), known(), None, 0, H.NO_ROOT),
    ("its retry due now", q(due=NOW), known("a"), None, 0, None),
    ("its backoff not over", q(due=NOW + S), known("a"), None, 0, H.NOT_DUE),
    ("behind a held message of its incident", q(), known("a", blocked=("a",)), None, 0, H.BLOCKED),
    ("another incident held: it goes on", q(), known("a", blocked=("b",)), None, 0, None),
    ("a regression before the thread it links", REGRESSION, known(), None, 0, H.NO_LINK),
    ("a regression, the linked thread posted", REGRESSION, known("a"), None, 0, None),
    ("a regression, its link not queued", REGRESSION, known(unsent=("r",)), None, 0, None),
    ("past the deadline", q(POST), known(), -0.1, 0, H.OUT_OF_TIME),
    ("stopping", q(POST), known(), 0.0, 0, H.OUT_OF_TIME),
    ("before the deadline", q(POST), known(), 9.0, 0, None),
    ("in doubt, the wait fits the deadline", q(POST, attempts=1), known(), 5.0, 3, None),
    ("in doubt past the deadline", q(POST, attempts=1), known(), 2.0, 3, H.IN_DOUBT),
    ("in doubt, no deadline: it waits", q(POST, attempts=1), known(), None, 30, None),
    ("its unit's lease ending", q(POST), known(ending=("u",)), None, 0, H.LEASE_ENDING),
    ("its unit's lease lost", q(POST), known(lost=("u",)), None, 0, H.LEASE_LOST),
    ("another unit's lease lost", q(POST), known(lost=("v",)), None, 0, None),
    ("a lost lease first, even out of time", q(POST), known(lost=("u",)), 0.0, 0, H.LEASE_LOST),
    ("out of time first, even in backoff", q(due=NOW + S), known("a"), 0.0, 0, H.OUT_OF_TIME),
    ("held behind first, even without a root", q(), known(blocked=("a",)), None, 0, H.BLOCKED),
]


@pytest.mark.parametrize(("queued", "progress", "left", "doubt", "reason"),
                         [c[1:] for c in HOLDS], ids=[c[0] for c in HOLDS])
def test_hold_reason(queued: Queued, progress: Progress, left: float | None, doubt: float,
                     reason: HoldReason | None) -> None:
    assert hold_reason(queued, NOW, progress, time_left=left, doubt=doubt) is reason


DOUBTS = [
    # (case, queued, the notifier's timeout, seconds an earlier attempt may still land)
    ("never attempted", q(attempted=NOW), 15, 0.0),
    ("attempted, no time recorded", q(attempts=1), 15, 0.0),
    ("just attempted: its timeout + 1 s", q(attempts=1, attempted=NOW), 15, 16.0),
    ("a short timeout: + half of it", q(attempts=1, attempted=NOW), 1, 1.5),
    ("attempted 10 s ago", q(attempts=1, attempted=NOW - 10 * S), 15, 6.0),
    ("attempted a minute ago", q(attempts=1, attempted=NOW - 60 * S), 15, 0.0),
    ("the console: no timeout", q(attempts=1, attempted=NOW), 0, 0.0),
]


@pytest.mark.parametrize(("queued", "timeout", "seconds"), [c[1:] for c in DOUBTS],
                         ids=[c[0] for c in DOUBTS])
def test_in_doubt_for(queued: Queued, timeout: float, seconds: float) -> None:
    assert in_doubt_for(queued, NOW, timeout) == seconds


def later(retry_after: float | None = None) -> DeliveryError:
    return DeliveryError("x", retryable=True, retry_after=retry_after)


RETRIES = [
    # (case, the failure, attempts so far, next try after)
    ("Slack's Retry-After", later(30), 1, 30 * S),
    ("Retry-After 0", later(0), 4, 0 * S),
    ("first failure: 2 s", later(), 1, 2 * S),
    ("third failure: 8 s", later(), 3, 8 * S),
    ("capped", later(), 20, MAX_BACKOFF),
]


@pytest.mark.parametrize(("error", "attempts", "after"), [c[1:] for c in RETRIES],
                         ids=[c[0] for c in RETRIES])
def test_retry_at(error: DeliveryError, attempts: int, after: timedelta) -> None:
    assert retry_at(error, attempts, NOW) == NOW + after


# --- draining a real store ---------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def msg(incident: str, n: int, action: Action, channel: str = "#alerts") -> Message:
    return Message(key=f"{incident}#{n}.0", incident_id=incident, action=action,
                   channel=channel, text=f"{incident} {n}")


def enqueue(store, *messages: Message) -> None:
    store.commit_cycle(State(), CycleRecord(unit="u", checkpoint=None, seen={},
                                            forget_before=None, messages=list(messages)))


def test_replies_follow_their_root_in_order(store, slack_server):
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY),
            msg("a", 3, Action.UPDATE_ROOT), msg("a", 4, Action.REPLY))
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0)
    result = drain(store, notifier)
    assert (result.sent, result.failed, result.waiting) == (4, 0, 0)
    (root,) = slack_server.messages("#alerts")
    assert root["text"] == "a 3"  # edited by the update
    assert [r["text"] for r in root["replies"]] == ["a 2", "a 4"]
    assert store.queued() == []


def test_a_failure_holds_back_its_incident_only(store, slack_server):
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0)
    clock = FakeClock()
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("b", 1, Action.POST_ROOT),
            msg("a", 2, Action.REPLY), msg("b", 2, Action.REPLY))
    slack_server.fail_next("chat.postMessage", times=1, status=503)  # a's root
    result = drain(store, notifier, **clock.drives)
    assert (result.sent, result.failed, result.waiting) == (2, 1, 1)
    assert result.held == {H.BLOCKED: 1}
    assert [m["text"] for m in slack_server.messages("#alerts")] == ["b 1"]
    (first, second) = store.queued()
    assert (first.message.key, first.attempts) == ("a#1.0", 1)
    assert "503" in (first.last_error or "") or "retry" in (first.last_error or "").lower()
    assert second.message.key == "a#2.0"
    # not before its backoff
    assert drain(store, notifier, **clock.drives).held == {H.NOT_DUE: 1, H.BLOCKED: 1}
    # Slack is back, the backoff over: a's messages go out, in order, and nothing of b is repeated
    clock.advance(3)
    doubt = in_doubt_for(first, clock.now(), notifier.timeout)
    result = drain(store, notifier, **clock.drives)
    assert (result.sent, result.failed, result.held) == (2, 0, {})
    # the failed try might still have landed until its timeout: waited out, on the test's clock
    assert clock.slept == [pytest.approx(doubt)] and doubt > 10
    texts = {m["text"]: [r["text"] for r in m["replies"]]
             for m in slack_server.messages("#alerts")}
    assert texts == {"b 1": ["b 2"], "a 1": ["a 2"]}
    # 4 delivered + 1 failed try; the failed root was looked up in the history first
    assert len(slack_server.calls_to("chat.postMessage")) == 5
    assert len(slack_server.calls_to("conversations.history")) == 1


def test_a_message_whose_answer_was_lost_is_found_not_posted_twice(store, slack_server):
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0,
                             timeout=1)
    clock = FakeClock()
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY))
    slack_server.delay_next("chat.postMessage", 2.0, after=True)  # accepted, then no answer
    result = drain(store, notifier, **clock.drives)  # the client's 1 s timeout is real time
    assert (result.sent, result.failed) == (0, 1)
    clock.advance(60)
    result = drain(store, notifier, **clock.drives)
    assert (result.found, result.sent, clock.slept) == (1, 1, [])
    (root,) = [m for m in slack_server.messages("#alerts")]
    assert root["text"] == "a 1" and [r["text"] for r in root["replies"]] == ["a 2"]
    assert store.queued() == []


def test_one_message_per_interval_per_channel(store, slack_server, monkeypatch):
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url,
                             min_interval=0.3)
    clock = FakeClock()
    sends: list[tuple[str, float]] = []  # (channel, when it was sent, on the drain's clock)
    send = notifier.send
    monkeypatch.setattr(notifier, "send", lambda m, root, linked=None: (
        sends.append((m.channel, clock.monotonic())), send(m, root, linked))[1])
    enqueue(store, *(msg(f"i{n}", 1, Action.POST_ROOT) for n in range(4)),
            msg("x", 1, Action.POST_ROOT, channel="#other"))
    drain(store, notifier, **clock.drives)
    calls = [c for c in slack_server.calls if c.method == "chat.postMessage"]
    assert [c.params["channel"] for c in calls] == ["#alerts"] * 4 + ["#other"]
    times = [t for channel, t in sends if channel == "#alerts"]
    assert [round(b - a, 9) for a, b in pairwise(times)] == [0.3, 0.3, 0.3]
    assert len(clock.slept) == 3  # #other's first message did not wait for #alerts


def test_a_reply_without_a_posted_root_waits(store, slack_server):
    enqueue(store, msg("c", 2, Action.REPLY))
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0)
    result = drain(store, notifier)
    assert (result.sent, result.waiting, result.held) == (0, 1, {H.NO_ROOT: 1})
    assert slack_server.calls == []


# --- the steps, time and leases, with a notifier in memory -------------------------------------

class Recorder:
    """A Notifier in memory: logs its calls into `steps`, fails as `failures` says."""

    def __init__(self, steps: list[str], *, timeout: float = 15.0, min_interval: float = 0.0,
                 found: Thread | None = None) -> None:
        self.steps, self.timeout, self.min_interval = steps, timeout, min_interval
        self._found = found
        self.failures: list[DeliveryError] = []

    def send(self, message: Message, root: Thread | None, linked: Thread | None = None) -> Thread:
        self.steps.append(f"send {message.key}")
        if self.failures:
            raise self.failures.pop(0)
        return root or Thread("C1", f"ts-{message.key}")

    def find(self, message: Message, root: Thread | None) -> Thread | None:
        self.steps.append(f"find {message.key}")
        return self._found


class Spy:
    """The store, with its marks logged into `steps`."""

    def __init__(self, store: Any, steps: list[str]) -> None:
        self._store, self._steps = store, steps

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not name.startswith("mark_"):
            return attr

        def logged(queued: Queued, *args: Any, **kwargs: Any) -> Any:
            self._steps.append(f"{name} {queued.message.key}")
            return attr(queued, *args, **kwargs)
        return logged


def test_pace_keep_alive_claim_send_mark_in_that_order(store):
    steps: list[str] = []
    clock = FakeClock()
    clock.sleep = lambda seconds: (steps.append("pace"), FakeClock.sleep(clock, seconds))[0]
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY))
    notifier = Recorder(steps, min_interval=1.0)
    result = drain(Spy(store, steps), notifier, keep_alive=lambda: steps.append("keep alive"),
                   **clock.drives)
    assert result.sent == 2
    assert steps == ["keep alive", "mark_attempt a#1.0", "send a#1.0", "mark_sent a#1.0",
                     "pace", "keep alive", "mark_attempt a#2.0", "send a#2.0", "mark_sent a#2.0"]


def test_in_doubt_it_looks_first_and_a_found_message_is_only_marked(store):
    steps: list[str] = []
    enqueue(store, msg("a", 1, Action.POST_ROOT))
    (queued,) = store.queued()
    store.mark_attempt(queued)  # an attempt whose fate is unknown (a crash mid-request)
    clock = FakeClock()
    clock.advance(60)
    result = drain(Spy(store, steps), Recorder(steps, found=Thread("C1", "9.9")), **clock.drives)
    assert (result.found, result.sent, steps) == (1, 0, ["find a#1.0", "mark_sent a#1.0"])
    assert store.thread("a") == Thread("C1", "9.9")


def test_a_failure_is_marked_with_its_retry_and_holds_its_incident(store):
    steps: list[str] = []
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY),
            msg("b", 1, Action.POST_ROOT))
    notifier = Recorder(steps)
    notifier.failures.append(DeliveryError("rate limited", retryable=True, retry_after=30))
    clock = FakeClock()
    result = drain(Spy(store, steps), notifier, **clock.drives)
    assert (result.sent, result.failed, result.held, result.errors) == (
        1, 1, {H.BLOCKED: 1}, ["rate limited"])
    assert steps == ["mark_attempt a#1.0", "send a#1.0", "mark_failed a#1.0",
                     "mark_attempt b#1.0", "send b#1.0", "mark_sent b#1.0"]
    assert store.queued()[0].next_attempt_at == clock.now() + 30 * S


def test_waiting_out_a_doubt_that_the_deadline_cannot_hold(store):
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("b", 1, Action.POST_ROOT))
    (a, _) = store.queued()
    store.mark_attempt(a)
    clock, steps = FakeClock(), []
    notifier = Recorder(steps, timeout=15)
    result = drain(store, notifier, deadline=clock.monotonic() + 5, **clock.drives)
    # a may still land for about 16 s: no wait of 16 s in a drain given 5; b goes on
    assert (result.sent, result.held, clock.slept) == (1, {H.IN_DOUBT: 1}, [])
    assert steps == ["send b#1.0"]
    result = drain(store, notifier, deadline=clock.monotonic() + 30, **clock.drives)
    assert result.found == 0 and result.sent == 1 and clock.slept == [pytest.approx(16, abs=1)]


def test_past_the_deadline_or_stopping_nothing_is_sent(store):
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("b", 1, Action.POST_ROOT))
    clock, steps = FakeClock(), []
    result = drain(store, Recorder(steps), deadline=clock.monotonic() - 1, **clock.drives)
    assert (result.held, steps) == ({H.OUT_OF_TIME: 2}, [])
    stop = threading.Event()
    stop.set()
    result = drain(store, Recorder(steps), stop=stop, **clock.drives)
    assert (result.held, steps) == ({H.OUT_OF_TIME: 2}, [])


def test_a_lease_ending_waits_and_a_lost_lease_stops_its_unit(store):
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY),
            msg("b", 1, Action.POST_ROOT))
    steps: list[str] = []
    notifier = Recorder(steps, timeout=15)  # a send needs 16 s of lease left
    (short,) = store.claim("me", ["u"], timedelta(seconds=10), 1)
    result = drain(store, notifier, leases={"u": short})
    assert (result.sent, result.held, result.lost, steps) == (0, {H.LEASE_ENDING: 3}, set(), [])
    assert [q.attempts for q in store.queued()] == [0, 0, 0]  # nothing counted, nothing sent

    renewed = store.renew(short, timedelta(minutes=1))
    stale = dataclasses.replace(renewed, token=renewed.token + 1)  # another holder's token
    result = drain(store, notifier, leases={"u": stale})
    assert (result.sent, result.held, result.lost, steps) == (0, {H.LEASE_LOST: 3}, {"u"}, [])

    result = drain(store, notifier, leases={"u": renewed})
    assert (result.sent, result.held, store.queued()) == (3, {}, [])
