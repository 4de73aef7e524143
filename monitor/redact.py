"""Secrets out of everything the monitor writes: messages, logs, errors, check-config.

Why one module: a secret reaches output by many roads (a database URL in an error, a token in a
log line, a password in a traceback), and each road used to have its own mask. Now every output
goes through `scrub` (anything shaped like a secret), `mask_url` (a database URL's password, in
every form libpq takes) or `hide` (the known secret values themselves: the Slack token, a
webhook's URL, the store's password, then `scrub`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.I)
# libpq takes a password as a URL parameter (`?password=`) or a conninfo pair (`password=...`).
_PARAM_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"&]+)""", re.I)
_SLACK_TOKEN = re.compile(r"\b(xox[abposr]|xapp)-[A-Za-z0-9-]+")
_WEBHOOK = re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+")
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]+", re.I)
_KEY_VALUE = re.compile(
    r"""\b(\w*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token))(["']?\s*[=:]\s*)"""
    r"""("[^"]*"|'[^']*'|[^\s"',;&]+)""",
    re.I,
)


def mask_url(url: str) -> str:
    """A database URL (or any text holding one) without its password, in every form libpq takes:
    `postgresql://monitor:hunter2@db/x` -> `postgresql://monitor:***@db/x`, and
    `...?password=hunter2` or `password=hunter2` -> `password=***`."""
    url = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _PARAM_PASSWORD.sub(r"\1***", url)


def hide(text: str, secrets: Iterable[str]) -> str:
    """`text` without the given secret values (longest first, so a secret that contains another
    is hidden whole; values under 4 characters are too common to replace), then `scrub`bed."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return scrub(text)


def scrub(text: str) -> str:
    """Mask secrets a log line may carry: URL passwords, Slack tokens, bearer tokens, passwords."""
    text = mask_url(text)
    text = _SLACK_TOKEN.sub(lambda m: f"{m[1]}-***", text)
    text = _WEBHOOK.sub(r"\1***", text)
    text = _BEARER.sub(r"\1 ***", text)
    return _KEY_VALUE.sub(_mask_value, text)


def _mask_value(m: re.Match[str]) -> str:
    quote_ = m[3][0] if m[3][:1] in ("'", '"') else ""
    return f"{m[1]}{m[2]}{quote_}***{quote_}"
