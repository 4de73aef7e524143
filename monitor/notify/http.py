"""What the Web API and webhook notifiers share about a failed call to Slack over HTTP.

Rules:
- Pure: a status, headers or an exception in, a verdict or a DeliveryError out; no I/O.
- One wording, whichever notifier failed: "rate limited: retry after 30s", "Slack is having
  trouble (...); will retry", "cannot reach Slack (...); will retry", "Slack did not answer in
  time; will retry".
- Nothing of the request is quoted (it holds the token, or the webhook's secret URL); an
  exception's own text is scrubbed and cut before it is.
- What belongs to one notifier stays in its module: Slack's error codes and what to do about
  them, which answer means what for it, and hiding its own secret once more.

Both notifiers call Slack through slack-sdk's clients (urllib underneath), with no retry
handlers: every failure reaches the outbox, which owns retrying.
"""

from __future__ import annotations

import http.client
import re
from enum import Enum
from typing import Any
from urllib.error import URLError

from slack_sdk.errors import SlackClientError, SlackRequestError

from monitor.notify.message import DeliveryError
from monitor.redact import scrub

# What a client call may raise: the SDK's own errors, and urllib's (network, timeouts, HTTP).
FAILURES = (SlackClientError, OSError, http.client.HTTPException)

_CODE = re.compile(r"^[a-z0-9_]{1,64}$")  # what a Slack error code looks like


class Status(Enum):
    """What an HTTP status alone says about trying the same request again."""

    OK = "ok"  # 2xx
    RATE_LIMITED = "rate limited"  # 429: again after its Retry-After
    TIMED_OUT = "request timeout"  # 408: the server stopped waiting for the request
    UNAVAILABLE = "server trouble"  # 5xx: Slack's side, for a while
    NOT_FOUND = "not found"  # 404: nothing answers at that URL
    REFUSED = "refused"  # any other answer: the request itself is wrong

    @property
    def retryable(self) -> bool:
        return self in (Status.RATE_LIMITED, Status.TIMED_OUT, Status.UNAVAILABLE)


def status_of(code: int) -> Status:
    if 200 <= code < 300:
        return Status.OK
    if code == 429:
        return Status.RATE_LIMITED
    if code == 408:
        return Status.TIMED_OUT
    if code >= 500:
        return Status.UNAVAILABLE
    if code == 404:
        return Status.NOT_FOUND
    return Status.REFUSED


def error_code(text: object) -> str | None:
    """`text` when it looks like a Slack error code (`no_service`), else None: an HTML error
    page, or anything else a proxy answered, is never quoted."""
    return text if isinstance(text, str) and _CODE.match(text) else None


def header(headers: Any, name: str) -> str | None:
    """A header's value, matched without regard to case; None when absent or not a mapping."""
    if not hasattr(headers, "items"):
        return None
    for key, value in headers.items():
        if str(key).lower() == name.lower():
            return str(value[0] if isinstance(value, list | tuple) and value else value)
    return None


def retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (never negative); None when absent or not a number."""
    value = header(headers, "Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def rate_limited(where: str, headers: Any) -> DeliveryError:
    after = retry_after(headers)
    wait = f": retry after {after:g}s" if after is not None else ""
    return DeliveryError(f"{where}: rate limited{wait}", retryable=True, retry_after=after)


def trouble(where: str, what: str) -> DeliveryError:
    return DeliveryError(f"{where}: Slack is having trouble ({what}); will retry", retryable=True)


def unexpected(where: str, status: int) -> DeliveryError:
    return DeliveryError(f"{where}: unexpected response (HTTP {status})", retryable=False)


def transport_failure(exc: Exception) -> DeliveryError:
    """Anything a client call raised instead of returning an answer: the network and timeouts
    are retryable; a request the SDK refused to make, or an error of our own, is not."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, SlackRequestError):
        return DeliveryError(f"Slack request could not be made: {scrub(str(exc))[:300]}",
                             retryable=False)
    if isinstance(exc, TimeoutError):  # also socket.timeout
        return DeliveryError("Slack did not answer in time; will retry", retryable=True)
    if isinstance(exc, URLError):
        reason = scrub(str(exc.reason))[:300]
        return DeliveryError(f"cannot reach Slack ({reason}); will retry", retryable=True)
    if isinstance(exc, ConnectionError | http.client.HTTPException | OSError):
        return DeliveryError(f"connection to Slack failed ({type(exc).__name__}); will retry",
                             retryable=True)
    return DeliveryError(f"unexpected error talking to Slack: {type(exc).__name__}: "
                         f"{scrub(str(exc))[:300]}", retryable=False)
