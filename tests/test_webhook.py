"""WebhookNotifier: the real slack-sdk WebhookClient against a local hook; the failure table.

The local hook (`HookServer`, 127.0.0.1, port 0) answers like Slack's Incoming Webhooks: 200 `ok`
at its one secret path, 404 `no_service` anywhere else, and whatever a test queues (429 with
Retry-After, 500, 410 `channel_is_archived`, ...). It records every body it was sent.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor.config import parse_config
from monitor.correlate.model import TransitionKind
from monitor.messages import Action, Message, Thread
from monitor.notify import build
from monitor.notify.message import DeliveryError
from monitor.notify.render import render
from monitor.notify.webhook import WebhookNotifier, classify_response, reply_prefix
from tests.test_render import HOSTILE, incident, texts, transition

SECRET = "B0SECRETHOOK/xYzSecretPathPart123"
INCIDENT = "spector:missing-session-table:20251204T210308Z"
PREFIX = "[spector · missing-session-table] "


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class HookServer:
    """A Slack Incoming Webhook on 127.0.0.1: records bodies, answers what it is told to."""

    def __init__(self) -> None:
        self.path = f"/services/T0TEAM/{SECRET}"
        self.bodies: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers)
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server._lock:
                    server.requests.append((self.path, dict(self.headers)))
                    if self.path != server.path:
                        answer = Answer(404, "no_service")
                    else:
                        answer = server._answers.pop(0) if server._answers else Answer(200, "ok")
                        if answer.status == 200:
                            server.bodies.append(json.loads(raw))
                if answer.delay:
                    time.sleep(answer.delay)
                payload = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"
        self.wrong_url = f"http://127.0.0.1:{self._server.server_address[1]}/services/T0/B0/gone"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def answer(self, status: int, body: str, *, delay: float = 0.0,
               headers: dict[str, str] | None = None) -> None:
        """The next post to the hook gets this answer (not recorded as delivered)."""
        with self._lock:
            self._answers.append(Answer(status, body, dict(headers or {}), delay))

    def texts(self) -> list[str]:
        """Every text that reached the channel: each message's text and its blocks' texts."""
        return [t for body in self.bodies for t in [body.get("text", ""),
                                                   *texts(body.get("blocks") or [])]]

    def __enter__(self) -> HookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hook() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server


@pytest.fixture
def notifier(hook: HookServer) -> WebhookNotifier:
    return WebhookNotifier(hook.url, min_interval=0)


def message(action: Action, n: int = 0, **kw: Any) -> Message:
    blocks = kw.pop("blocks", [{"type": "section", "text": {"type": "mrkdwn", "text": f"b{n}"}}])
    return Message(key=f"{INCIDENT}#1.{n}", incident_id=INCIDENT, action=action,
                   channel="#spector-alerts", text=kw.pop("text", f"message {n}"), blocks=blocks,
                   **kw)


def told(err: BaseException) -> str:
    """Everything an error could show: its text, and its cause's (a logged traceback)."""
    return f"{err} {err.__cause__!r} {err.__cause__}"


# --- each kind of message ---------------------------------------------------------------------

def test_root_is_posted_and_numbered(hook: HookServer, notifier: WebhookNotifier) -> None:
    assert notifier.send(message(Action.POST_ROOT, 0), None) == Thread("webhook", "webhook-1")
    assert notifier.send(message(Action.POST_ROOT, 1), None) == Thread("webhook", "webhook-2")
    first = hook.bodies[0]
    assert first["text"] == "message 0"
    assert first["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": "b0"}}]
    # a webhook has no threads and no metadata: nothing but the message itself is sent
    assert set(first) == {"text", "blocks"}
    assert all(path == hook.path for path, _ in hook.requests)


def test_a_reply_is_its_own_message_prefixed_with_the_incident(
        hook: HookServer, notifier: WebhookNotifier) -> None:
    root = notifier.send(message(Action.POST_ROOT, 0), None)
    assert notifier.send(message(Action.REPLY, 1), root) == root
    assert notifier.send(message(Action.REPLY, 2, broadcast=True), root) == root
    reply, broadcast = hook.bodies[1:]
    assert reply["text"] == f"{PREFIX}message 1"
    assert reply["blocks"][0]["text"]["text"] == f"{PREFIX}b1"
    assert broadcast["text"] == f"{PREFIX}message 2"
    for body in (reply, broadcast):  # no thread to reply in, nothing to broadcast
        assert "thread_ts" not in body and "reply_broadcast" not in body


def test_a_reply_without_a_section_gets_one(hook: HookServer, notifier: WebhookNotifier) -> None:
    root = notifier.send(message(Action.POST_ROOT, 0), None)
    notifier.send(message(Action.REPLY, 1, blocks=[]), root)
    ctx = {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}]}
    notifier.send(message(Action.REPLY, 2, blocks=[ctx]), root)
    assert "blocks" not in hook.bodies[1] and hook.bodies[1]["text"] == f"{PREFIX}message 1"
    first, second = hook.bodies[2]["blocks"]
    assert first["type"] == "section" and first["text"]["text"] == PREFIX.strip()
    assert second == ctx


def test_updates_of_the_root_are_skipped(hook: HookServer, notifier: WebhookNotifier) -> None:
    root = notifier.send(message(Action.POST_ROOT, 0), None)
    assert notifier.send(message(Action.UPDATE_ROOT, 1, text="edited"), root) == root
    assert len(hook.requests) == 1 and [b["text"] for b in hook.bodies] == ["message 0"]


def test_reply_or_update_without_a_root_is_a_bug(notifier: WebhookNotifier) -> None:
    for action in (Action.REPLY, Action.UPDATE_ROOT):
        with pytest.raises(ValueError, match="needs the root"):
            notifier.send(message(action), None)


def test_find_cannot_look(notifier: WebhookNotifier) -> None:
    root = Thread("webhook", "webhook-1")
    for action in Action:
        assert notifier.find(message(action), root) is None


@pytest.mark.parametrize(("incident_id", "prefix"), [
    (INCIDENT, PREFIX),
    ("spector-prod:source:20251204T210308Z", "[spector-prod · source] "),
    ("odd", "[odd] "),
    ("svc:<!channel>:20251204T210308Z", "[svc · &lt;!channel&gt;] "),
])
def test_reply_prefix(incident_id: str, prefix: str) -> None:
    assert reply_prefix(incident_id) == prefix


def test_the_lifecycle_as_rendered(hook: HookServer, notifier: WebhookNotifier) -> None:
    """Open, update, resolve, rendered for real: three posts, the two edits skipped, the
    configured mention raw on the alert, the hostile sample escaped."""
    inc = incident(id=INCIDENT, sample=HOSTILE)
    root: Thread | None = None
    for kind in (TransitionKind.OPENED, TransitionKind.UPDATED):
        for m in render(transition(kind, inc, changes=("7 matches now (was 1)",)),
                        channel="#spector-alerts", project="spector-prod",
                        mention="<!subteam^S0123ABC>"):
            thread = notifier.send(m, root)
            root = thread if m.action is Action.POST_ROOT else root
    alert, update = hook.bodies
    assert alert["text"].startswith("<!subteam^S0123ABC> :rotating_light: spector:")
    assert "&lt;!channel&gt;" in "\n".join(texts(alert["blocks"]))
    assert update["text"].startswith(f"{PREFIX}:arrow_up: *Update:* now 3 errors")
    assert "<!subteam" not in json.dumps(update)


# --- failures ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "headers", "retryable", "retry_after", "says"), [
    (429, "rate_limited", {"Retry-After": "7"}, True, 7.0, "rate limited: retry after 7s"),
    (500, "rollup_error", {}, True, None, "HTTP 500 rollup_error"),
    (503, "<html>down</html>", {}, True, None, "HTTP 503"),
    (404, "no_service", {}, False, None, "no_service"),
    (403, "invalid_token", {}, False, None, "create a new Incoming Webhook"),
    (410, "channel_is_archived", {}, False, None, "archived"),
    (403, "action_prohibited", {}, False, None, "admin"),
    (400, "invalid_payload", {}, False, None, "rendering bug"),
])
def test_failures_are_classified(hook: HookServer, notifier: WebhookNotifier, status: int,
                                 body: str, headers: dict[str, str], retryable: bool,
                                 retry_after: float | None, says: str) -> None:
    hook.answer(status, body, headers=headers)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(message(Action.POST_ROOT), None)
    err = caught.value
    assert (err.retryable, err.retry_after) == (retryable, retry_after)
    assert says in str(err)
    assert SECRET not in told(err) and "xYzSecret" not in told(err) and hook.url not in told(err)
    assert len(hook.requests) == 1  # no hidden retries in the client
    assert notifier.send(message(Action.POST_ROOT), None).ts  # and the next try goes through


def test_a_wrong_url_is_permanent_and_never_quoted(hook: HookServer) -> None:
    with pytest.raises(DeliveryError) as caught:
        WebhookNotifier(hook.wrong_url).send(message(Action.POST_ROOT), None)
    assert not caught.value.retryable and "no_service" in str(caught.value)
    assert "gone" not in told(caught.value) and "/services/" not in told(caught.value)


def test_a_timeout_is_retryable(hook: HookServer) -> None:
    hook.answer(200, "ok", delay=1.5)
    with pytest.raises(DeliveryError) as caught:
        WebhookNotifier(hook.url, timeout=1).send(message(Action.POST_ROOT), None)
    assert caught.value.retryable and SECRET not in told(caught.value)


def test_an_unreachable_hook_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T0/{SECRET}"
    with pytest.raises(DeliveryError) as caught:
        WebhookNotifier(url).send(message(Action.POST_ROOT), None)
    assert caught.value.retryable and SECRET not in told(caught.value)


def test_the_url_never_reaches_a_log(hook: HookServer, notifier: WebhookNotifier,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    notifier.send(message(Action.POST_ROOT), None)
    hook.answer(500, "rollup_error")
    with pytest.raises(DeliveryError):
        notifier.send(message(Action.POST_ROOT), None)
    assert SECRET not in caplog.text and "xYzSecret" not in caplog.text


CASES: list[tuple[str, int, str, dict[str, str], bool, float | None, str]] = [
    ("429 header", 429, "rate_limited", {"Retry-After": "30"}, True, 30.0, "rate limited"),
    ("429 lowercase", 429, "", {"retry-after": "2"}, True, 2.0, "retry after 2s"),
    ("429 bad header", 429, "", {"Retry-After": "soon"}, True, None, "rate limited"),
    ("408", 408, "", {}, True, None, "HTTP 408"),
    ("502 html", 502, "<html>Bad gateway</html>", {}, True, None, "HTTP 502"),
    ("no_team", 404, "no_team", {}, False, None, "workspace"),
    ("channel_not_found", 404, "channel_not_found", {}, False, None, "channel no longer exists"),
    ("posting denied", 403, "posting_to_general_channel_denied", {}, False, None, "admins"),
    ("user_not_found", 400, "user_not_found", {}, False, None, "mentions"),
    ("unknown code", 400, "some_new_error", {}, False, None, "some_new_error"),
    ("html 404", 404, "<html>not found</html>", {}, False, None, "slack.webhook_url"),
    ("html 400", 400, "<b>no</b>", {}, False, None, "unexpected response (HTTP 400)"),
]


@pytest.mark.parametrize(("status", "body", "headers", "retryable", "retry_after", "says"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_response(status: int, body: str, headers: dict[str, str], retryable: bool,
                           retry_after: float | None, says: str) -> None:
    err = classify_response(status, body, headers)
    assert (err.retryable, err.retry_after) == (retryable, retry_after)
    assert says in str(err)
    assert "<" not in str(err) and "html" not in str(err)  # an error page is never quoted


# --- chosen by the config ---------------------------------------------------------------------

def test_build_picks_the_webhook(hook: HookServer) -> None:
    data = {"project": "p", "services": ["spector"],
            "signals": [{"name": "missing-session-table", "match": "x"}],
            "slack": {"webhook_url": "${SLACK_WEBHOOK_URL:-}", "min_interval": "2s"}}
    config = parse_config(data, env={"SLACK_WEBHOOK_URL": hook.url})
    notifier = build(config, io.StringIO())
    assert isinstance(notifier, WebhookNotifier) and notifier.min_interval == 2.0
    notifier.send(message(Action.POST_ROOT), None)
    assert len(hook.bodies) == 1
    assert type(build(parse_config(data, env={}), io.StringIO())).__name__ == "ConsoleNotifier"
