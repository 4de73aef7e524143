"""notify/http.py: what both Slack notifiers read alike about a failed call, as tables (STYLE 7)."""

from __future__ import annotations

import socket
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

import pytest
from slack_sdk.errors import SlackRequestError

from monitor.notify.http import Status, retry_after, status_of, transport_failure
from monitor.notify.message import DeliveryError
from monitor.notify.slack import classify_failure
from monitor.notify.webhook import classify_response
from tests.test_slack import api_error

STATUSES = [
    # (status, what it says, retryable)
    (200, Status.OK, False),
    (204, Status.OK, False),
    (400, Status.REFUSED, False),
    (401, Status.REFUSED, False),
    (403, Status.REFUSED, False),
    (404, Status.NOT_FOUND, False),
    (408, Status.TIMED_OUT, True),
    (410, Status.REFUSED, False),
    (429, Status.RATE_LIMITED, True),
    (500, Status.UNAVAILABLE, True),
    (502, Status.UNAVAILABLE, True),
    (503, Status.UNAVAILABLE, True),
    (504, Status.UNAVAILABLE, True),
    (0, Status.REFUSED, False),  # no status at all (a response object without one)
]


@pytest.mark.parametrize(("code", "status", "retryable"), STATUSES,
                         ids=[str(c[0]) for c in STATUSES])
def test_status_of(code: int, status: Status, retryable: bool) -> None:
    assert status_of(code) is status
    assert status.retryable is retryable


RETRY_AFTERS: list[tuple[str, Any, float | None]] = [
    ("seconds", {"Retry-After": "30"}, 30.0),
    ("any case", {"retry-after": "2"}, 2.0),
    ("a fraction", {"Retry-After": "1.5"}, 1.5),
    ("a list of values", {"Retry-After": ["5", "9"]}, 5.0),
    ("never negative", {"Retry-After": "-3"}, 0.0),
    ("not a number (an HTTP date)", {"Retry-After": "Wed, 21 Oct 2025 07:28:00 GMT"}, None),
    ("absent", {"Content-Type": "text/html"}, None),
    ("no headers", None, None),
    ("not a mapping", "Retry-After: 5", None),
]


@pytest.mark.parametrize(("headers", "seconds"), [c[1:] for c in RETRY_AFTERS],
                         ids=[c[0] for c in RETRY_AFTERS])
def test_retry_after(headers: Any, seconds: float | None) -> None:
    assert retry_after(headers) == seconds


HOOK = "https://hooks.slack.com/services/T0/B0/SecretPart"
TRANSPORT: list[tuple[str, Exception, bool, str]] = [
    ("a timeout", TimeoutError("timed out"), True, "Slack did not answer in time; will retry"),
    ("a timeout inside urllib", URLError(TimeoutError("timed out")), True,
     "cannot reach Slack (timed out); will retry"),
    ("refused", URLError(ConnectionRefusedError(111, "Connection refused")), True,
     "cannot reach Slack ([Errno 111] Connection refused); will retry"),
    ("no such host", URLError(socket.gaierror(-2, "Name or service not known")), True,
     "cannot reach Slack ([Errno -2] Name or service not known); will retry"),
    ("reset", ConnectionResetError(104, "reset"), True,
     "connection to Slack failed (ConnectionResetError); will retry"),
    ("closed early", RemoteDisconnected("closed"), True,
     "connection to Slack failed (RemoteDisconnected); will retry"),
    ("another OSError", OSError("x"), True, "connection to Slack failed (OSError); will retry"),
    ("a request the SDK refused", SlackRequestError(f"Invalid URL detected: {HOOK}"), False,
     "Slack request could not be made: Invalid URL detected: https://hooks.slack.com/services/***"),
    ("ours, passed through", DeliveryError("as it was", retryable=False), False, "as it was"),
    ("anything else", RuntimeError("boom"), False,
     "unexpected error talking to Slack: RuntimeError: boom"),
]


@pytest.mark.parametrize(("exc", "retryable", "says"), [c[1:] for c in TRANSPORT],
                         ids=[c[0] for c in TRANSPORT])
def test_transport_failure(exc: Exception, retryable: bool, says: str) -> None:
    err = transport_failure(exc)
    assert (err.retryable, err.retry_after) == (retryable, None)
    assert says in str(err) and "SecretPart" not in str(err)
    assert str(classify_failure(exc)) == str(err)  # the Web API notifier says the same


BOTH = [
    # (status, retried by the Web API notifier, retried by the webhook notifier)
    (429, True, True),
    (500, True, True),
    (503, True, True),
    (408, True, True),  # a proxy's request timeout: tried again, as any attempt in doubt
    (404, False, False),
    (400, False, False),
    (403, False, False),
]


@pytest.mark.parametrize(("status", "web_api", "webhook"), BOTH, ids=[str(c[0]) for c in BOTH])
def test_both_notifiers_read_a_bare_status_alike(status: int, web_api: bool,
                                                 webhook: bool) -> None:
    headers = {"Retry-After": "7"}
    api = classify_failure(api_error(None, status, headers))
    hook = classify_response(status, "", headers)
    assert (api.retryable, hook.retryable) == (web_api, webhook)
    if status == 429:
        assert (api.retry_after, hook.retry_after) == (7.0, 7.0)
        assert str(api).endswith(": rate limited: retry after 7s")
        assert str(hook).endswith(": rate limited: retry after 7s")
