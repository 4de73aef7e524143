"""What every source shares: the `Source` protocol, its read statistics and its one error type.

Why a protocol and not a base class: the file replay and the Cloud Logging poller share no code,
only a contract. `check.py` depends on this contract alone, so a scenario replayed from a file and
the same scenario read from production go through exactly the same code after the source.

Contract of `read`:
- yields `LogEntry` values (built with `monitor.entries.from_json`) whose timestamp is within
  `start <= timestamp <= end` (`None` = unbounded);
- a malformed entry is never fatal: it is counted in `stats.entries_skipped`, logged, and skipped;
- a failure that makes the rest of the data unreadable (missing file, broken JSON, API error) raises
  `SourceError`, after everything read before it has been yielded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from monitor.entries import LogEntry


class SourceError(Exception):
    """The source cannot deliver (the rest of) its entries; the message says which and where."""


@dataclass
class ReadStats:
    """Counters one check cycle reports in `stats` (see the CLI contract in DESIGN.md)."""

    entries_read: int = 0  # well-formed entries read, inside or outside the time window
    entries_skipped: int = 0  # malformed entries counted and skipped
    api_requests: int = 0  # Cloud Logging API calls made; always 0 for files


class Source(Protocol):
    """Anything that yields normalised log entries for a time window."""

    def read(
        self, start: datetime | None, end: datetime | None, stats: ReadStats
    ) -> Iterator[LogEntry]: ...
