"""SlackNotifier: the real slack-sdk WebClient against the local server; the failure table."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

import pytest
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web import SlackResponse

from monitor.messages import Action, Message, Thread
from monitor.notify.console import ConsoleNotifier
from monitor.notify.message import DeliveryError, Notifier
from monitor.notify.slack import SlackNotifier, classify_failure
from monitor.notify.webhook import WebhookNotifier
from tests.slack_server import SlackServer
from tests.test_render import SECRETS, hostile_messages, texts
from tests.test_webhook import SECRET as HOOK_SECRET
from tests.test_webhook import HookServer

CHANNEL = "#spector-alerts"


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


@pytest.fixture
def notifier(slack: SlackServer) -> SlackNotifier:
    return SlackNotifier(slack.token, base_url=slack.base_url)


def message(action: Action, n: int = 0, **kw: Any) -> Message:
    blocks = kw.pop("blocks", [{"type": "section", "text": {"type": "mrkdwn", "text": f"b{n}"}}])
    return Message(key=f"inc-1#1.{n}", incident_id="inc-1", action=action, channel=CHANNEL,
                   text=kw.pop("text", f"message {n}"), blocks=blocks, **kw)


# --- the lifecycle against the local server ---------------------------------------------------

def test_root_reply_broadcast_and_update(slack: SlackServer, notifier: SlackNotifier) -> None:
    root = notifier.send(message(Action.POST_ROOT, 0), None)
    assert root == Thread(slack.channel_id(CHANNEL), "1700000000.000100")
    assert notifier.send(message(Action.REPLY, 1), root) == root
    assert notifier.send(message(Action.REPLY, 2, broadcast=True), root) == root
    assert notifier.send(message(Action.UPDATE_ROOT, 3, text="resolved"), root) == root

    [shown] = [m for m in slack.messages(CHANNEL) if m["ts"] == root.ts]
    assert shown["text"] == "resolved" and "edited" in shown
    assert shown["blocks"][0]["text"]["text"] == "b3"
    assert [r["text"] for r in shown["replies"]] == ["message 1", "message 2"]
    assert [r.get("subtype") for r in shown["replies"]] == [None, "thread_broadcast"]
    posts = slack.calls_to("chat.postMessage")
    assert posts[1].params["thread_ts"] == root.ts and posts[1].params["reply_broadcast"] is False
    assert posts[2].params["reply_broadcast"] is True
    assert posts[0].headers["Authorization"] == f"Bearer {slack.token}"
    assert posts[0].params["metadata"]["event_payload"]["key"] == "inc-1#1.0"


def test_history_finds_a_post_by_its_metadata(slack: SlackServer, notifier: SlackNotifier) -> None:
    root = notifier.send(message(Action.POST_ROOT, 0), None)
    client = notifier._client
    history = client.conversations_history(channel=root.channel, include_all_metadata=True)
    assert history["messages"][0]["metadata"]["event_payload"]["key"] == "inc-1#1.0"
    plain = client.conversations_history(channel=root.channel)
    assert "metadata" not in plain["messages"][0]


def test_reply_or_update_without_a_root_is_a_bug(notifier: SlackNotifier) -> None:
    for action in (Action.REPLY, Action.UPDATE_ROOT):
        with pytest.raises(ValueError, match="needs the root"):
            notifier.send(message(action), None)


def test_regression_links_the_previous_thread(slack: SlackServer,
                                              notifier: SlackNotifier) -> None:
    old = notifier.send(message(Action.POST_ROOT, 0), None)
    new = notifier.send(message(Action.POST_ROOT, 1, link_thread_of="inc-0"), None, linked=old)
    [shown] = [m for m in slack.messages(CHANNEL) if m["ts"] == new.ts]
    last = shown["blocks"][-1]
    assert last["type"] == "context"
    link = f"https://test.slack.example/archives/{old.channel}/p{old.ts.replace('.', '')}"
    assert f"Previous incident thread: <{link}|incident inc-0>" in last["elements"][0]["text"]


def test_a_failing_permalink_never_fails_the_send(slack: SlackServer,
                                                  notifier: SlackNotifier) -> None:
    old = notifier.send(message(Action.POST_ROOT, 0), None)
    slack.fail_next("chat.getPermalink", error="internal_error")
    new = notifier.send(message(Action.POST_ROOT, 1, link_thread_of="inc-0"), None, linked=old)
    [shown] = [m for m in slack.messages(CHANNEL) if m["ts"] == new.ts]
    text = shown["blocks"][-1]["elements"][0]["text"]
    assert text.startswith("Previous incident thread: incident inc-0") and "<" not in text


def test_429_surfaces_as_retryable_with_retry_after(slack: SlackServer,
                                                   notifier: SlackNotifier) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    assert caught.value.retryable and caught.value.retry_after == 7
    assert len(slack.calls_to("chat.postMessage")) == 1  # no hidden retries in the client
    assert notifier.send(message(Action.POST_ROOT), None).ts  # and the next try goes through


@pytest.mark.parametrize(("status", "error", "retryable"), [
    (500, None, True), (503, "service_unavailable", True), (200, "channel_not_found", False),
    (200, "not_in_channel", False), (200, "invalid_blocks", False)])
def test_server_failures_are_classified(slack: SlackServer, notifier: SlackNotifier, status: int,
                                        error: str | None, retryable: bool) -> None:
    slack.fail_next("chat.postMessage", status=status, error=error)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    assert caught.value.retryable is retryable
    assert slack.token not in str(caught.value)


def test_fail_next_counts_down(slack: SlackServer, notifier: SlackNotifier) -> None:
    slack.fail_next("chat.postMessage", 2, status=500)
    for _ in range(2):
        with pytest.raises(DeliveryError):
            notifier.send(message(Action.POST_ROOT), None)
    notifier.send(message(Action.POST_ROOT), None)
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500, 500, 200]
    assert len(slack.messages(CHANNEL)) == 1


def test_a_lost_response_leaves_the_post_findable(slack: SlackServer) -> None:
    notifier = SlackNotifier(slack.token, base_url=slack.base_url, timeout=1)
    slack.delay_next("chat.postMessage", 1.5, after=True)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    assert caught.value.retryable
    [posted] = slack.messages(CHANNEL)  # Slack has it: the outbox must look before it re-posts
    assert posted["metadata"]["event_payload"]["key"] == "inc-1#1.0"


def test_a_timeout_is_retryable(slack: SlackServer) -> None:
    notifier = SlackNotifier(slack.token, base_url=slack.base_url, timeout=1)
    slack.delay_next("chat.postMessage", 2)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    assert caught.value.retryable


def test_an_unreachable_slack_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = SlackNotifier("xoxb-x", base_url=f"http://127.0.0.1:{port}/api/")
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    assert caught.value.retryable


def test_check_auth(slack: SlackServer, notifier: SlackNotifier) -> None:
    assert notifier.check_auth() == "monitor in Test"
    bad = "xoxb-wrong-token-0000"
    with pytest.raises(DeliveryError) as caught:
        SlackNotifier(bad, base_url=slack.base_url).check_auth()
    assert not caught.value.retryable
    assert "invalid_auth" in str(caught.value) and bad not in str(caught.value)
    assert slack.calls_to("auth.test")[-1].error == "invalid_auth"


# --- classify_failure as a table --------------------------------------------------------------

TOKEN = "xoxb-1111-2222-tablesecret"


def api_error(error: str | None, status: int = 200, headers: dict[str, str] | None = None,
              **data: Any) -> SlackApiError:
    body: dict[str, Any] = {"ok": False, **data}
    if error is not None:
        body["error"] = error
    response = SlackResponse(
        client=None, http_verb="POST", api_url="https://slack.com/api/chat.postMessage",
        req_args={"headers": {"Authorization": f"Bearer {TOKEN}"},
                  "json": {"channel": "#spector-alerts", "token": TOKEN}},
        data=body, headers=headers or {}, status_code=status)
    return SlackApiError("failed", response)  # type: ignore[no-untyped-call]


CASES: list[tuple[str, Exception, bool, float | None, str]] = [
    ("429", api_error("ratelimited", 429, {"Retry-After": "30"}), True, 30.0, "rate limited"),
    ("429 lowercase header", api_error("ratelimited", 429, {"retry-after": "2"}), True, 2.0, ""),
    ("429 without header", api_error("ratelimited", 429), True, None, "rate limited"),
    ("500 html", api_error("Received HTML, not JSON <html>", 500), True, None, "HTTP 500"),
    ("502", api_error(None, 502), True, None, "HTTP 502"),
    ("internal_error", api_error("internal_error"), True, None, "internal_error"),
    ("fatal_error", api_error("fatal_error"), True, None, "fatal_error"),
    ("service_unavailable", api_error("service_unavailable"), True, None, ""),
    ("request_timeout", api_error("request_timeout"), True, None, ""),
    ("URLError", URLError(ConnectionRefusedError(111, "Connection refused")), True, None,
     "cannot reach Slack"),
    ("TimeoutError = socket.timeout", TimeoutError("timed out"), True, None, "in time"),
    ("ConnectionError", ConnectionResetError(104, "reset"), True, None, "connection"),
    ("RemoteDisconnected", RemoteDisconnected("closed"), True, None, "connection"),
    ("invalid_auth", api_error("invalid_auth"), False, None, "SLACK_BOT_TOKEN"),
    ("not_authed", api_error("not_authed"), False, None, "SLACK_BOT_TOKEN"),
    ("token_revoked", api_error("token_revoked"), False, None, "reinstall"),
    ("account_inactive", api_error("account_inactive"), False, None, "deactivated"),
    ("channel_not_found", api_error("channel_not_found"), False, None, "slack.channel"),
    ("not_in_channel", api_error("not_in_channel"), False, None,
     "invite the bot to #spector-alerts (/invite @bot)"),
    ("is_archived", api_error("is_archived"), False, None, "archived"),
    ("missing_scope", api_error("missing_scope", needed="chat:write"), False, None,
     "the token needs the chat:write scope"),
    ("msg_too_long", api_error("msg_too_long"), False, None, "longer than Slack"),
    ("invalid_blocks", api_error("invalid_blocks"), False, None, "blocks"),
    ("other error", api_error("some_new_error"), False, None, "some_new_error"),
    ("404", api_error(None, 404), False, None, "base_url"),
    ("request error", SlackRequestError(f"bad {TOKEN}"), False, None, "could not be made"),
    ("unexpected", RuntimeError(f"boom {TOKEN}"), False, None, "RuntimeError"),
]


@pytest.mark.parametrize(("exc", "retryable", "retry_after", "says"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_failure(exc: Exception, retryable: bool, retry_after: float | None,
                          says: str) -> None:
    err = classify_failure(exc)
    assert (err.retryable, err.retry_after) == (retryable, retry_after)
    assert says in str(err)
    assert TOKEN not in str(err) and "tablesecret" not in str(err)


# --- the contract every Notifier keeps (STYLE.md item 11) -------------------------------------

CONTRACT_TOKEN = "xoxb-9999-8888-contractSECRET"


@dataclass
class Contract:
    notifier: Notifier
    broken: Notifier  # the same kind of notifier, set up to fail
    delivered: Callable[[], list[str]]  # every text that reached the destination
    not_acted_upon: tuple[str, ...]  # what must never arrive raw
    secrets: tuple[str, ...] = ()  # the notifier's own credentials, beyond the token


def _slack_contract(slack: SlackServer) -> Contract:
    def delivered() -> list[str]:
        return texts(slack.messages(CHANNEL))

    return Contract(SlackNotifier(slack.token, base_url=slack.base_url),
                    SlackNotifier(CONTRACT_TOKEN, base_url=slack.base_url), delivered,
                    ("<!channel>", "<!here>", "<@U", "<https://evil", "\x1b", "\x07"))


def _console_contract() -> Contract:
    out, closed = io.StringIO(), io.StringIO()
    closed.close()
    return Contract(ConsoleNotifier(out), ConsoleNotifier(closed), lambda: [out.getvalue()],
                    ("\x1b", "\x07", "\x00", "\ud800"))


def _webhook_contract(hook: HookServer) -> Contract:
    return Contract(WebhookNotifier(hook.url, min_interval=0),
                    WebhookNotifier(hook.wrong_url, min_interval=0), hook.texts,
                    ("<!channel>", "<!here>", "<@U", "<https://evil", "\x1b", "\x07"),
                    (HOOK_SECRET, hook.path, "/services/T0/B0/gone"))


@pytest.fixture
def hook() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server


@pytest.mark.parametrize("kind", ["slack", "console", "webhook"])
def test_notifier_contract(kind: str, slack: SlackServer, hook: HookServer) -> None:
    if kind == "webhook":
        contract = _webhook_contract(hook)
    else:
        contract = _slack_contract(slack) if kind == "slack" else _console_contract()
    root: Thread | None = None
    for m in hostile_messages():
        thread = contract.notifier.send(m, root)
        root = thread if m.action is Action.POST_ROOT else root
    shown = "\n".join(contract.delivered())
    assert "!channel" in shown and "evil.example" in shown  # shown, as text
    for needle in (*contract.not_acted_upon, *SECRETS, CONTRACT_TOKEN, *contract.secrets):
        assert needle not in shown, needle

    with pytest.raises(DeliveryError) as caught:
        contract.broken.send(hostile_messages()[0], None)
    told = f"{caught.value} {caught.value.__cause__}"
    for secret in (*SECRETS, CONTRACT_TOKEN, slack.token, *contract.secrets):
        assert secret not in told
