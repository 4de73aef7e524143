"""Times and durations: parsed from outside, and written for machines and for people.

Why one module: a time is read from log entries, the store, the config and the command line,
and written into JSON, SQL, gcloud filters, Slack and the write-up. Each form is defined once
here, so a stored time, a printed time and a filter's bound cannot drift apart.

- `parse_time` / `format_time`: RFC 3339 in UTC with a `Z` (Cloud Logging's form; nanoseconds
  are cut to microseconds), the one form of every JSON output.
- `sortable`: fixed-width RFC 3339 with microseconds, for text that must sort as time does
  (SQLite columns, gcloud filter bounds).
- `minute` / `second`: for people ("2025-12-04 21:03 UTC").
- `parse_duration` / `format_duration`: the config's `30s`, `5m`, `1h30m`; `for_people`:
  "1h 12m", short enough for a phone.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any


class BadTime(ValueError):
    """Text that is not an RFC 3339 time."""


class TimeOutOfRange(BadTime):
    """A well-formed time outside EARLIEST .. LATEST."""


# The times the monitor reasons about. Outside them an entry cannot be real (Cloud Logging keeps
# entries for at most 10 years), and a window or lookback around it would overflow `datetime`.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def parse_time(value: str) -> datetime:
    """RFC3339 with up to nanosecond precision ("2025-12-04T21:03:11.123456789Z") to aware UTC.

    `datetime.fromisoformat` accepts at most microseconds, so extra digits are cut, not rounded:
    ordering between entries of the same microsecond is kept by the source's read order.
    """
    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dot = s.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        frac = s[dot + 1 : end]
        if len(frac) > 6:
            s = s[: dot + 1] + frac[:6] + s[end:]
    try:
        t = datetime.fromisoformat(s)
    except ValueError as exc:
        raise BadTime(f"bad timestamp {value!r}") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    try:
        return checked_time(t.astimezone(UTC))
    except OverflowError:  # year 1 with a positive offset
        raise TimeOutOfRange(f"timestamp {value!r} is out of range") from None


def checked_time(t: datetime) -> datetime:
    """`t`, or TimeOutOfRange when it lies outside EARLIEST .. LATEST."""
    if not EARLIEST <= t < LATEST:
        raise TimeOutOfRange(f"timestamp {t.isoformat()} is out of range "
                             f"({EARLIEST.year}..{LATEST.year - 1})")
    return t


def format_time(t: datetime | None) -> str | None:
    """RFC3339 UTC with a `Z`, the one format every output of the monitor uses."""
    if t is None:
        return None
    t = t.astimezone(UTC)
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def sortable(t: datetime) -> str:
    """Fixed-width RFC 3339 with microseconds, so string order is time order (RFC 3339 with an
    optional fraction is not: '...00.5Z' sorts before '...00Z'). `isoformat` is the cheap way
    to it: this runs once per dedupe key written."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.isoformat(timespec="microseconds")[:26] + "Z"


def minute(t: datetime | None) -> str:
    """For people, to the minute: "2025-12-04 21:03 UTC"."""
    return "unknown" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def second(t: datetime | None, missing: str = "-") -> str:
    """For people, to the second: "2025-12-04 21:03:07 UTC"."""
    return missing if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- durations ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# No duration the monitor uses is longer; anything past it is a typo (`1000000d`), and a date
# that far from now would overflow `datetime`.
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """"30s", "5m", "2h", "1d", "1h30m", or a number of seconds; at most MAX_DURATION."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if isinstance(value, int) and value > MAX_DURATION.total_seconds():
            shown = str(value) if value < 10**15 else f"a {len(str(value))}-digit number"
            raise ValueError(f"invalid duration {shown}: at most "
                             f"{format_duration(MAX_DURATION)}")
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: must be a number of seconds >= 0")
        return _bounded(value, value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return _bounded(total, value)
    raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 5m, 2h, 1d)")


def _bounded(seconds: float, value: Any) -> timedelta:
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"invalid duration {value!r}: at most {format_duration(MAX_DURATION)}")
    return timedelta(seconds=seconds)


def format_duration(d: timedelta) -> str:
    """The shortest exact form, as the config writes it: 900 s -> "15m", 5400 s -> "1h30m"."""
    seconds = int(d.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


def for_people(d: timedelta | float, parts: int = 3) -> str:
    """1h 12m, 3m, 45s: precise enough for people, short enough for a phone. `d` is a duration
    or seconds; seconds are shown only under a minute, at most `parts` units, the largest first,
    and a negative duration as its size (the caller says "ago" or "ahead")."""
    seconds = abs(int(d.total_seconds() if isinstance(d, timedelta) else d))
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    shown = [f"{value}{unit}" for value, unit in ((days, "d"), (hours, "h"), (minutes, "m"))
             if value]
    return " ".join(shown[:parts])
