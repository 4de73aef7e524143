"""Outbox draining: in order per incident; a failure holds back only its own incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from monitor.correlate.state import State
from monitor.messages import Action, Message
from monitor.notify.outbox import drain
from monitor.notify.slack import SlackNotifier
from monitor.store import open_store
from monitor.store.base import CycleRecord


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
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("b", 1, Action.POST_ROOT),
            msg("a", 2, Action.REPLY), msg("b", 2, Action.REPLY))
    slack_server.fail_next("chat.postMessage", times=1, status=503)  # a's root
    result = drain(store, notifier)
    assert (result.sent, result.failed, result.waiting) == (2, 1, 1)
    assert [m["text"] for m in slack_server.messages("#alerts")] == ["b 1"]
    (first, second) = store.queued()
    assert (first.message.key, first.attempts) == ("a#1.0", 1)
    assert "503" in (first.last_error or "") or "retry" in (first.last_error or "").lower()
    assert second.message.key == "a#2.0"
    # not before its backoff
    assert drain(store, notifier).waiting == 2
    # Slack is back: a's messages go out, in order, and nothing of b is repeated
    result = drain(store, notifier, now=datetime.now(UTC) + timedelta(seconds=3))
    assert (result.sent, result.failed) == (2, 0)
    texts = {m["text"]: [r["text"] for r in m["replies"]]
             for m in slack_server.messages("#alerts")}
    assert texts == {"b 1": ["b 2"], "a 1": ["a 2"]}
    # 4 delivered + 1 failed try; the failed root was looked up in the history first
    assert len(slack_server.calls_to("chat.postMessage")) == 5
    assert len(slack_server.calls_to("conversations.history")) == 1


def test_a_message_whose_answer_was_lost_is_found_not_posted_twice(store, slack_server):
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0,
                             timeout=1)
    enqueue(store, msg("a", 1, Action.POST_ROOT), msg("a", 2, Action.REPLY))
    slack_server.delay_next("chat.postMessage", 2.0, after=True)  # accepted, then no answer
    result = drain(store, notifier)
    assert (result.sent, result.failed) == (0, 1)
    later = datetime.now(UTC) + timedelta(minutes=1)
    result = drain(store, notifier, now=later)
    assert (result.found, result.sent) == (1, 1)
    (root,) = [m for m in slack_server.messages("#alerts")]
    assert root["text"] == "a 1" and [r["text"] for r in root["replies"]] == ["a 2"]
    assert store.queued() == []


def test_one_message_per_interval_per_channel(store, slack_server):
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url,
                             min_interval=0.3)
    enqueue(store, *(msg(f"i{n}", 1, Action.POST_ROOT) for n in range(4)),
            msg("x", 1, Action.POST_ROOT, channel="#other"))
    drain(store, notifier)
    calls = [c for c in slack_server.calls if c.method == "chat.postMessage"]
    assert len(calls) == 5
    times = [c.at for c in calls if c.params["channel"] == "#alerts"]
    assert all(b - a >= 0.29 for a, b in pairwise(times))


def test_a_reply_without_a_posted_root_waits(store, slack_server):
    enqueue(store, msg("c", 2, Action.REPLY))
    notifier = SlackNotifier(slack_server.token, base_url=slack_server.base_url, min_interval=0)
    result = drain(store, notifier)
    assert (result.sent, result.waiting) == (0, 1)
    assert slack_server.calls == []
