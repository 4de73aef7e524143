"""Text PostgreSQL cannot hold, stored so that it comes back as it was.

Why: log text is untrusted and may carry anything, but JSONB cannot hold NUL or a lone surrogate,
and `text` cannot hold NUL. Such characters (and U+E000, the escape itself, so that decoding is
exact) are stored as U+E000 + 4 hex digits and restored on reading: any text round-trips, and
ordinary text, the whole of it in practice, is stored as it is, readable in SQL. Every string
the PostgreSQL store writes goes through `enc_text` (or `enc`, for JSON values) and every string
it reads through `dec_text` (`dec`).
"""

from __future__ import annotations

import re
from typing import Any

from psycopg.types.json import Jsonb

_ESC = "\ue000"
_UNSAFE = re.compile("[\x00\ud800-\udfff\ue000]")
_ESCAPED = re.compile("\ue000([0-9a-f]{4})")


def enc_text(s: str) -> str:
    return _UNSAFE.sub(lambda m: f"{_ESC}{ord(m[0]):04x}", s)


def dec_text(s: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), s) if _ESC in s else s


def enc(value: Any) -> Any:
    """A JSON value that JSONB can hold."""
    if isinstance(value, str):
        return enc_text(value)
    if isinstance(value, dict):
        return {enc_text(str(k)): enc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [enc(v) for v in value]
    return value


def dec(value: Any) -> Any:
    if isinstance(value, str):
        return dec_text(value)
    if isinstance(value, dict):
        return {dec_text(k): dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [dec(v) for v in value]
    return value


def jsonb(value: Any) -> Jsonb:
    """A JSON value as a JSONB parameter."""
    return Jsonb(enc(value))
