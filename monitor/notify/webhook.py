"""Deliver rendered messages through a Slack Incoming Webhook, for teams without a bot token.

A webhook is a URL that posts into the one channel it was created for, and does nothing else. What
that rules out, and what the monitor does instead:
- One channel: the hook decides where messages go; `slack.channel` only names it in the monitor's
  own output, and `signals[].channel` is refused by the config (it would be silently ignored).
- No threads: a post returns no `ts`, so nothing can be posted under it. The alert (POST_ROOT) and
  every reply (updates, "quiet but no traffic yet", the resolution) are each their own channel
  message; a reply's text is prefixed with the incident's service and signal
  (`[spector · missing-session-table] `) so it reads on its own. `reply_broadcast` has no meaning.
- No edits: UPDATE_ROOT (the alert re-rendered with current figures) is skipped, not sent; the
  alert keeps the figures it was posted with and the replies carry the new ones.
- No history: `find` cannot look whether a post arrived, so delivery is at least once. A crash or a
  lost answer after Slack accepted a post makes the outbox post it again, and that message shows
  twice (at most once more per crash or lost answer). With a bot token the monitor looks first and
  posts exactly once.
- No permalinks: a regression cannot link the earlier thread; its alert names the earlier incident.
- No start-up check: a webhook can only be tested by posting to it.

Rules, as in slack.py:
- One call per message, no retries here: the outbox owns retrying, so the client is built with no
  retry handlers and every failure is returned at once as a DeliveryError.
- Failures are classified by one pure function, `classify_response`: 429 (with Retry-After), 408,
  5xx and network errors are retryable; Slack's 4xx answers (`invalid_token`, `no_service`,
  `channel_is_archived`, `action_prohibited`, ...) are permanent, with what to do about them.
  Statuses, Retry-After and network failures are read as the Web API notifier reads them
  (`notify/http.py`); the webhook's error codes and hints are this module's own.
- The URL is the secret (its path is the credential). It never appears in an error or a log:
  messages are built from the HTTP status and Slack's error code only, the SDK's own logger (which
  writes the URL at debug level) is silenced, and every error text is checked for the URL again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.webhook import WebhookClient

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
from monitor.notify.render import section
from monitor.redact import hide
from monitor.safe import MAX_SECTION, MAX_TEXT, safe_text, truncate

# slack-sdk logs the URL (and bodies) at debug level and failures at error level; the monitor
# reports every failure itself, without the URL.
_SDK_LOG = logging.getLogger("monitor.notify.webhook.sdk")
_SDK_LOG.setLevel(logging.CRITICAL + 1)
_SDK_LOG.propagate = False

_NEW_HOOK = ("create a new Incoming Webhook for the channel and set SLACK_WEBHOOK_URL "
             "(slack.webhook_url)")
_HINTS = {
    "invalid_token": f"the webhook URL is not valid (revoked or mistyped): {_NEW_HOOK}",
    "no_service": f"the webhook was removed or disabled, or its app uninstalled: {_NEW_HOOK}",
    "no_team": f"the webhook's workspace no longer exists: {_NEW_HOOK}",
    "channel_not_found": f"the webhook's channel no longer exists: {_NEW_HOOK}",
    "channel_is_archived": "the webhook's channel is archived: unarchive it, or create a webhook "
                           "for another channel and set SLACK_WEBHOOK_URL",
    "action_prohibited": "the workspace does not allow this webhook to post there (an admin "
                         "restriction): ask a workspace admin, or use a bot token (slack.token)",
    "posting_to_general_channel_denied": "only admins may post to this channel: create the "
                                         "webhook for another channel",
    "invalid_payload": "Slack could not read the message: a rendering bug, please report it",
    "invalid_blocks": "Slack rejected the message blocks: a rendering bug, please report it",
    "invalid_blocks_format": "Slack rejected the message blocks: a rendering bug, please report "
                             "it",
    "no_text": "the message had no text: a rendering bug, please report it",
    "user_not_found": "a user named in the message does not exist: check the mentions",
}


def classify_response(status: int, body: str, headers: Mapping[str, Any] | Any) -> DeliveryError:
    """A webhook's non-2xx answer as retryable or permanent, with what to do about it.

    Slack answers a webhook with a status and a bare error code in the body (`no_service`).
    Only a body that looks like a code is quoted: anything else (an HTML error page) is not.
    """
    error = error_code((body or "").strip())
    where = "Slack webhook"
    verdict = status_of(status)
    if verdict is Status.RATE_LIMITED or error in ("rate_limited", "ratelimited"):
        return rate_limited(where, headers)
    if verdict in (Status.UNAVAILABLE, Status.TIMED_OUT):
        return trouble(where, f"HTTP {status}" + (f" {error}" if error else ""))
    if error in _HINTS:
        return DeliveryError(f"{where}: {error} (HTTP {status}): {_HINTS[error]}",
                             retryable=False)
    if error is not None:
        return DeliveryError(f"{where}: {error} (HTTP {status}): see "
                             "https://api.slack.com/messaging/webhooks#handling_errors",
                             retryable=False)
    if verdict is Status.NOT_FOUND:
        return DeliveryError(f"{where}: HTTP 404: no webhook answers at slack.webhook_url: "
                             f"{_NEW_HOOK}", retryable=False)
    return unexpected(where, status)


def reply_prefix(incident_id: str) -> str:
    """`[service · signal] ` from an incident id `service:signal:time`, for a message that is not
    in a thread and must say which incident it is about."""
    parts = incident_id.split(":")
    name = f"{parts[0]} · {':'.join(parts[1:-1])}" if len(parts) >= 3 else incident_id
    return f"[{safe_text(name, 200, one_line=True)}] "


def _prefixed(prefix: str, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`blocks` with `prefix` leading the first section (or a new first section); a message
    without blocks stays without (its text carries the prefix)."""
    if not blocks:
        return []
    out = list(blocks)
    for i, block in enumerate(out):
        if block.get("type") == "section" and isinstance(block.get("text"), dict):
            text = block["text"]
            out[i] = {**block, "text": {**text, "text": truncate(prefix + str(text.get("text", "")),
                                                                 MAX_SECTION)}}
            return out
    return [section(prefix.strip()), *out]


class WebhookNotifier:
    """The Notifier for an Incoming Webhook: every alert and reply is its own channel message."""

    def __init__(self, url: str, *, timeout: int = 15, min_interval: float = 1.0,
                 client: WebhookClient | None = None) -> None:
        self._url = url
        path = urlsplit(url).path.strip("/")
        self._secrets = [url, url.rstrip("/"), path]
        self.min_interval = min_interval
        self.timeout = float(timeout)
        self._client = client or WebhookClient(url, timeout=timeout, retry_handlers=[],
                                               logger=_SDK_LOG)
        self._posted = 0

    def _hide(self, text: str) -> str:
        return hide(text, self._secrets)

    def _failure(self, exc: Exception) -> DeliveryError:
        err = transport_failure(exc)
        return DeliveryError(self._hide(str(err)), retryable=err.retryable,
                             retry_after=err.retry_after)

    def send(self, message: Message, root: Thread | None, linked: Thread | None = None) -> Thread:
        if message.action is not Action.POST_ROOT and root is None:
            raise ValueError(f"{message.key}: {message.action.value} needs the root's thread")
        if message.action is Action.UPDATE_ROOT:
            assert root is not None
            return root  # a webhook cannot edit: the replies carry the new figures
        text, blocks = message.text, list(message.blocks)
        if message.action is Action.REPLY:
            prefix = reply_prefix(message.incident_id)
            text, blocks = truncate(prefix + text, MAX_TEXT), _prefixed(prefix, blocks)
        try:
            response = self._client.send(text=text, blocks=blocks or None)
        except FAILURES as exc:
            err = self._failure(exc)
            # The cause is kept for tracebacks only when it does not quote the URL.
            if self._hide(str(exc)) != str(exc):
                raise err from None
            raise err from exc
        status = int(getattr(response, "status_code", 0) or 0)
        if status_of(status) is not Status.OK:
            err = classify_response(status, str(getattr(response, "body", "") or ""),
                                    getattr(response, "headers", None))
            raise DeliveryError(self._hide(str(err)), retryable=err.retryable,
                                retry_after=err.retry_after)
        self._posted += 1
        if message.action is Action.POST_ROOT:
            return Thread("webhook", f"webhook-{self._posted}")
        assert root is not None
        return root

    def find(self, message: Message, root: Thread | None) -> Thread | None:
        """A webhook has no history to search: a message in doubt is posted again (at least
        once; with a bot token, `SlackNotifier.find` makes it exactly once)."""
        return None
