"""A local Slack Web API for tests: enough of Slack to deliver incidents to, and to break on cue.

Rules:
- Real HTTP on 127.0.0.1 (port 0), so tests drive the real slack-sdk WebClient, or a subprocess
  pointed at `base_url`, exactly as production does.
- Behaves like Slack where our code depends on it: errors are HTTP 200 with `{"ok": false}`
  (except injected statuses), channels are addressed by name or by the id a post returns,
  ts values increase, metadata is only returned with `include_all_metadata`. It is stricter
  where that catches bugs: a reply to an unknown thread fails with `thread_not_found`.
- Every call is recorded (method, params, headers, status, error) under one lock, so tests can
  assert on order and count from any thread.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TOKEN = "xoxb-test-0000-secret-token"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 200
    error: str | None = None
    at: float = field(default_factory=time.monotonic)  # when the server received it


@dataclass
class _Fault:
    times: int
    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    after: bool = False  # delay after the call took effect: a "lost response"


@dataclass
class _Msg:
    ts: str
    channel: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    metadata: dict[str, Any] | None = None
    edited: bool = False
    replies: list[_Msg] = field(default_factory=list)

    def to_json(self, with_metadata: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text,
                             "blocks": self.blocks, "user": "U0BOT", "bot_id": "B0BOT"}
        if self.thread_ts:
            d["thread_ts"] = self.thread_ts
        if self.reply_broadcast:
            d["subtype"] = "thread_broadcast"
        if self.replies:
            d.update(thread_ts=self.ts, reply_count=len(self.replies))
        if self.edited:
            d["edited"] = {"user": "U0BOT", "ts": self.ts}
        if with_metadata and self.metadata:
            d["metadata"] = self.metadata
        return d


class SlackError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


class SlackServer:
    """`with SlackServer() as slack: WebClient(token=slack.token, base_url=slack.base_url)`."""

    def __init__(self, token: str = TOKEN, *, channels: list[str] | None = None) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._ids: dict[str, str] = {}  # channel name -> id
        self._roots: dict[str, list[_Msg]] = {}  # channel id -> top-level messages, oldest first
        self._by_ts: dict[tuple[str, str], _Msg] = {}
        self._clock = 0
        self._open_channels = channels is None
        for name in channels or []:
            self._channel(name, create=True)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/api/"

    def start(self) -> SlackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> SlackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls ----------------------------------------------------------------------
    def fail_next(self, method: str, times: int = 1, *, status: int = 200,
                  error: str | None = None, retry_after: float | None = None) -> None:
        """The next `times` calls of `method` fail. 429 defaults to `ratelimited`; a 5xx with no
        error answers a non-JSON body, like a proxy in front of Slack would."""
        if error is None and status in (200, 429):
            error = "ratelimited" if status == 429 else "internal_error"
        with self._lock:
            self._faults.setdefault(method, []).append(
                _Fault(times, status, error, retry_after))

    def delay_next(self, method: str, seconds: float, times: int = 1, *,
                   after: bool = False) -> None:
        """Slow down the next calls; `after=True` applies the call first (response lost)."""
        with self._lock:
            self._faults.setdefault(method, []).append(
                _Fault(times, delay=seconds, after=after))

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def channel_id(self, name: str) -> str:
        with self._lock:
            return self._channel(name, create=True)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """The channel as people see it now, edits applied: top-level messages oldest first, each
        with its `replies`. A broadcast reply is in both places, as in Slack's channel view."""
        with self._lock:
            cid = self._channel(channel, create=True)
            return [dict(m.to_json(), replies=[r.to_json() for r in m.replies])
                    for m in self._roots[cid]]

    # --- the Web API ------------------------------------------------------------------------
    def _channel(self, name: str, *, create: bool = False) -> str:
        if name in self._roots:
            return name
        key = name.lstrip("#")
        if key not in self._ids:
            if not (create or self._open_channels):
                raise SlackError("channel_not_found")
            self._ids[key] = f"C{len(self._ids) + 1:08d}"
            self._roots[self._ids[key]] = []
        return self._ids[key]

    def _message(self, channel: str, ts: Any) -> _Msg:
        msg = self._by_ts.get((self._channel(channel), str(ts)))
        if msg is None:
            raise SlackError("message_not_found")
        return msg

    def _next_ts(self) -> str:
        self._clock += 100
        return f"{1_700_000_000 + self._clock // 1_000_000}.{self._clock % 1_000_000:06d}"

    def _api(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"url": "https://test.slack.example/", "team": "Test", "user": "monitor",
                    "team_id": "T0TEST", "user_id": "U0BOT", "bot_id": "B0BOT"}
        if method == "chat.postMessage":
            cid = self._channel(str(p.get("channel", "")))
            if not p.get("text") and not p.get("blocks"):
                raise SlackError("no_text")
            msg = _Msg(self._next_ts(), cid, str(p.get("text") or ""), p.get("blocks") or [],
                       metadata=p.get("metadata"))
            if p.get("thread_ts"):
                root = self._by_ts.get((cid, str(p["thread_ts"])))
                if root is None or root.thread_ts:
                    raise SlackError("thread_not_found")
                msg.thread_ts, msg.reply_broadcast = root.ts, _truthy(p.get("reply_broadcast"))
                root.replies.append(msg)
                if msg.reply_broadcast:
                    self._roots[cid].append(msg)
            else:
                self._roots[cid].append(msg)
            self._by_ts[(cid, msg.ts)] = msg
            return {"channel": cid, "ts": msg.ts, "message": msg.to_json()}
        if method == "chat.update":
            msg = self._message(str(p.get("channel", "")), p.get("ts"))
            msg.text, msg.edited = str(p.get("text") or msg.text), True
            if p.get("blocks") is not None:
                msg.blocks = p["blocks"]
            return {"channel": msg.channel, "ts": msg.ts, "text": msg.text}
        if method == "chat.getPermalink":
            msg = self._message(str(p.get("channel", "")), p.get("message_ts"))
            url = f"https://test.slack.example/archives/{msg.channel}/p{msg.ts.replace('.', '')}"
            if msg.thread_ts:
                url += f"?thread_ts={msg.thread_ts}&cid={msg.channel}"
            return {"channel": msg.channel, "permalink": url}
        if method == "conversations.list":
            chans = [{"id": cid, "name": name, "is_channel": True, "is_member": True}
                     for name, cid in self._ids.items()]
            start, limit = int(p.get("cursor") or 0), int(p.get("limit") or 100)
            more = start + limit < len(chans)
            return {"channels": chans[start:start + limit],
                    "response_metadata": {"next_cursor": str(start + limit) if more else ""}}
        if method in ("conversations.history", "conversations.replies"):
            if str(p.get("channel", "")) not in self._roots:  # like Slack: an id, not a #name
                raise SlackError("channel_not_found")
            cid = self._channel(str(p.get("channel", "")))
            meta = _truthy(p.get("include_all_metadata"))
            if method == "conversations.history":
                found = list(reversed(self._roots[cid]))
            else:
                root = self._message(cid, p.get("ts"))
                found = [root, *root.replies]
            start, limit = int(p.get("cursor") or 0), int(p.get("limit") or 100)
            page = found[start:start + limit]
            more = start + limit < len(found)
            return {"messages": [m.to_json(meta) for m in page], "has_more": more,
                    "response_metadata": {"next_cursor": str(start + limit) if more else ""}}
        raise SlackError("unknown_method")

    def handle(self, method: str, params: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """One request: auth, injected faults, then the method; returns (status, headers, body)."""
        call = Call(method, params, headers)
        with self._lock:
            self._calls.append(call)
            queue = self._faults.get(method, [])
            fault = queue[0] if queue else None
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
        if fault is not None and fault.delay and not fault.after:
            time.sleep(fault.delay)
        status, extra = 200, {}
        body: dict[str, Any] = {"ok": True}
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
        if fault is not None and not fault.delay:
            status, body = fault.status, {"ok": False, "error": fault.error}
            if fault.retry_after is not None:
                extra["Retry-After"] = f"{fault.retry_after:g}"
        elif not token:
            body = {"ok": False, "error": "not_authed"}
        elif token != self.token:
            body = {"ok": False, "error": "invalid_auth"}
        else:
            with self._lock:
                try:
                    body = {"ok": True, **self._api(method, params)}
                except SlackError as exc:
                    body = {"ok": False, "error": exc.error}
        if fault is not None and fault.delay and fault.after:
            time.sleep(fault.delay)
        call.status, call.error = status, body.get("error")
        if body.get("error") is None and not body["ok"]:
            return status, {"Content-Type": "text/html", **extra}, b"<html>upstream error</html>"
        return status, {"Content-Type": "application/json; charset=utf-8", **extra}, \
            json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                if not url.path.startswith("/api/"):
                    self.send_error(404)
                    return
                params: dict[str, Any] = dict(parse_qsl(url.query))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "json" in (self.headers.get("Content-Type") or ""):
                    params.update(json.loads(raw or b"{}"))
                else:
                    params.update(parse_qsl(raw.decode()))
                for key in ("blocks", "metadata"):  # form bodies carry these as JSON strings
                    if isinstance(params.get(key), str):
                        params[key] = json.loads(params[key])
                status, headers, body = server.handle(
                    url.path.removeprefix("/api/"), params, dict(self.headers.items()))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
