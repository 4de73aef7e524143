"""Deliver rendered messages to Slack with slack-sdk's WebClient.

Rules:
- One call per message, no retries here: the outbox owns retrying (it knows the order and the
  exactly-once bookkeeping), so the client is built with no retry handlers and every failure is
  returned at once as a DeliveryError.
- Every failure goes through `classify_failure`, one pure function: retryable (429 with its
  Retry-After, 5xx, Slack's transient errors, network errors and timeouts) or permanent (auth,
  channel, scope, payload problems), with a message that says what to do. What it shares with
  the webhook (statuses, Retry-After, network failures, their wording) is in `notify/http.py`;
  Slack's error codes and their hints are this module's own.
- The token never appears in an error: messages are built from Slack's error code, never from
  the request, and are scrubbed again before they leave this module.
- Posts carry message metadata (the outbox key), so a message whose response was lost can be found
  in the channel's history instead of being posted twice.
"""

from __future__ import annotations

import re
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from monitor.messages import Action, Message, Thread
from monitor.notify.http import (
    FAILURES,
    Status,
    error_code,
    rate_limited,
    status_of,
    transport_failure,
    trouble,
    unexpected,
)
from monitor.notify.message import DeliveryError
from monitor.notify.render import context, link
from monitor.redact import hide
from monitor.safe import MAX_BLOCKS, safe_text

METADATA_EVENT = "monitor_message"  # event_type of the metadata on every post

_RETRYABLE_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                     "request_timeout"}
_HINTS = {
    "invalid_auth": "the Slack token is not valid: check SLACK_BOT_TOKEN (slack.token)",
    "not_authed": "no Slack token was sent: set SLACK_BOT_TOKEN (slack.token)",
    "token_revoked": "the Slack token was revoked: reinstall the app and use its new bot token",
    "token_expired": "the Slack token expired: reinstall the app and use its new bot token",
    "account_inactive": "the Slack app's user is deactivated: reinstall the app in the workspace",
    "channel_not_found": "channel {channel} does not exist or the bot cannot see it: check "
                         "slack.channel (a private channel must invite the bot)",
    "not_in_channel": "invite the bot to {channel} (/invite @bot)",
    "is_archived": "channel {channel} is archived: unarchive it or set another slack.channel",
    "missing_scope": "the token needs the {needed} scope: add it under OAuth & Permissions and "
                     "reinstall the app",
    "msg_too_long": "the message is longer than Slack accepts: a rendering bug, please report it",
    "invalid_blocks": "Slack rejected the message blocks: a rendering bug, please report it",
    "message_not_found": "the incident's thread root no longer exists in {channel}",
    "cant_update_message": "the root message was not posted by this bot and cannot be edited",
}
_SCOPE = re.compile(r"^[a-z0-9:._,-]{1,200}$")


def _request_channel(response: Any) -> str:
    """The channel the failed request named, from the request's body (never its headers)."""
    args = getattr(response, "req_args", None) or {}
    for part in ("json", "data", "params"):
        body = args.get(part) if isinstance(args, dict) else None
        if isinstance(body, dict) and isinstance(body.get("channel"), str):
            return safe_text(body["channel"], 100, one_line=True)
    return "the channel"


def _api_failure(exc: SlackApiError) -> DeliveryError:
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    data = getattr(response, "data", None)
    error = error_code(data.get("error") if isinstance(data, dict) else None)
    url = str(getattr(response, "api_url", "") or "")
    method = url.split("?", 1)[0].rsplit("/", 1)[-1] or "API call"
    where = f"Slack {method}"
    verdict = status_of(status)
    if verdict is Status.RATE_LIMITED or error == "ratelimited":
        return rate_limited(where, getattr(response, "headers", None))
    # Trouble is 5xx, a 408 (a proxy that stopped waiting: the attempt is counted, so a retry
    # looks before it posts again) or one of Slack's transient codes; as for the webhook.
    if verdict in (Status.UNAVAILABLE, Status.TIMED_OUT) or error in _RETRYABLE_ERRORS:
        return trouble(where, error or f"HTTP {status}")
    if error in _HINTS:
        needed = data.get("needed") if isinstance(data, dict) else None
        scope = needed if isinstance(needed, str) and _SCOPE.match(needed) else "chat:write"
        hint = _HINTS[error].format(channel=_request_channel(response), needed=scope)
        return DeliveryError(f"{where}: {error}: {hint}", retryable=False)
    if error is not None:
        return DeliveryError(f"{where}: {error}: see https://api.slack.com/methods/{method}",
                             retryable=False)
    if verdict is Status.NOT_FOUND:
        return DeliveryError(f"{where}: HTTP 404: check slack.base_url (it must end in /api/)",
                             retryable=False)
    return unexpected(where, status)


def classify_failure(exc: Exception) -> DeliveryError:
    """Map anything a Slack call raised to retryable or permanent, with what to do about it:
    Slack's answers here, everything else (network, timeouts) as `http.transport_failure`."""
    if isinstance(exc, SlackApiError):
        return _api_failure(exc)
    return transport_failure(exc)


class SlackNotifier:
    """The Notifier for Slack: roots with chat.postMessage, replies in their thread, chat.update."""

    def __init__(self, token: str, *, base_url: str | None = None,
                 client: WebClient | None = None, timeout: int = 15,
                 min_interval: float = 1.0) -> None:
        self._token = token
        self.min_interval = min_interval
        self.timeout = float(timeout)
        if client is None:
            kwargs: dict[str, Any] = {"token": token, "timeout": timeout, "retry_handlers": []}
            if base_url:
                kwargs["base_url"] = base_url
            client = WebClient(**kwargs)
        self._client = client
        self._channel_ids: dict[str, str] = {}

    def _failure(self, exc: Exception) -> DeliveryError:
        err = classify_failure(exc)
        text = hide(str(err), [self._token])  # defence in depth: classify never adds it
        if text != str(err):
            err = DeliveryError(text, retryable=err.retryable, retry_after=err.retry_after)
        return err

    def check_auth(self) -> str:
        """auth.test at start-up, so a bad token fails before the first incident does."""
        try:
            response = self._client.auth_test()
        except FAILURES as exc:
            raise self._failure(exc) from exc
        user, team = response.get("user"), response.get("team")
        return safe_text(f"{user} in {team}", 200, one_line=True)

    def _permalink_block(self, incident: str, linked: Thread) -> dict[str, Any]:
        label = f"incident {incident}"
        try:
            response = self._client.chat_getPermalink(channel=linked.channel,
                                                      message_ts=linked.ts)
            url = response.get("permalink")
        except FAILURES:
            url = None
        # Only a plain https URL becomes a link: anything else could break out of the markup.
        if isinstance(url, str) and re.fullmatch(r"https://[^\s<>|]+", url):
            return context(f"Previous incident thread: {link(url, label)}")
        return context(f"Previous incident thread: {safe_text(label, 200, one_line=True)} "
                       f"(ts {safe_text(linked.ts, 40, one_line=True)})")

    def _blocks(self, message: Message, linked: Thread | None) -> list[dict[str, Any]] | None:
        blocks = list(message.blocks)
        if message.link_thread_of and linked is not None:
            blocks = blocks[: MAX_BLOCKS - 1]
            blocks.append(self._permalink_block(message.link_thread_of, linked))
        return blocks or None

    def send(self, message: Message, root: Thread | None, linked: Thread | None = None) -> Thread:
        if message.action is not Action.POST_ROOT and root is None:
            raise ValueError(f"{message.key}: {message.action.value} needs the root's thread")
        blocks = self._blocks(message, linked)
        metadata = {"event_type": METADATA_EVENT,
                    "event_payload": {"key": message.key, "incident_id": message.incident_id}}
        try:
            if message.action is Action.POST_ROOT:
                response = self._client.chat_postMessage(
                    channel=message.channel, text=message.text, blocks=blocks, metadata=metadata)
                return Thread(str(response["channel"]), str(response["ts"]))
            assert root is not None
            if message.action is Action.REPLY:
                self._client.chat_postMessage(
                    channel=root.channel, thread_ts=root.ts, reply_broadcast=message.broadcast,
                    text=message.text, blocks=blocks, metadata=metadata)
            else:
                self._client.chat_update(channel=root.channel, ts=root.ts, text=message.text,
                                         blocks=blocks)
            return root
        except FAILURES as exc:
            raise self._failure(exc) from exc

    # --- finding a message whose delivery is in doubt ---------------------------------------

    def find(self, message: Message, root: Thread | None) -> Thread | None:
        """The thread of `message` if Slack already has it (a post whose answer was lost).

        Looks for the outbox key in the metadata of the channel's recent messages (a root) or of
        the thread's replies (a reply). Needs the history scopes (channels:history, and
        channels:read to turn a #name into an id); raises DeliveryError when it cannot look.
        """
        if message.action is Action.UPDATE_ROOT:
            return None  # chat.update is idempotent: doing it again is harmless
        try:
            if message.action is Action.POST_ROOT:
                channel = self._channel_id(message.channel)
                response = self._client.conversations_history(
                    channel=channel, include_all_metadata=True, limit=200)
            else:
                assert root is not None
                channel = root.channel
                response = self._client.conversations_replies(
                    channel=channel, ts=root.ts, include_all_metadata=True, limit=200)
        except FAILURES as exc:
            raise self._failure(exc) from exc
        for found in response.get("messages") or []:
            payload = (found.get("metadata") or {}).get("event_payload") or {}
            if payload.get("key") == message.key:
                if message.action is Action.POST_ROOT:
                    return Thread(channel, str(found["ts"]))
                return root
        return None

    def _channel_id(self, channel: str) -> str:
        """conversations.history wants an id; the config may name the channel."""
        if re.fullmatch(r"[CGD][A-Z0-9]{6,}", channel):
            return channel
        name = channel.lstrip("#")
        if name not in self._channel_ids:
            cursor = None
            while True:
                response = self._client.conversations_list(
                    types="public_channel,private_channel", limit=1000, cursor=cursor,
                    exclude_archived=True)
                for chan in response.get("channels") or []:
                    self._channel_ids[str(chan.get("name"))] = str(chan.get("id"))
                cursor = (response.get("response_metadata") or {}).get("next_cursor")
                if name in self._channel_ids or not cursor:
                    break
        if name not in self._channel_ids:
            raise DeliveryError(f"channel {channel} not found by conversations.list",
                                retryable=False)
        return self._channel_ids[name]
