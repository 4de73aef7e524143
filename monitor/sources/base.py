"""What every source shares: the `Source` protocol and its one error type.

Why a protocol and not a base class: the file replay and the Cloud Logging poller share no code,
only a contract. `check.py` depends on this contract alone, so a scenario replayed from a file and
the same scenario read from production go through exactly the same code after the source.

Contract of `read`:
- yields `LogEntry` values whose timestamp is within `window.start <= timestamp <= window.end`
  (`None` = unbounded) and, for a live source, that were received within
  `window.received_after <= receiveTimestamp < window.received_before`;
- a live source may stop early when its request budget for the cycle is spent: it then sets
  `stats.cut_at` to the timestamp of the last entry it yielded, having yielded every entry of the
  window up to that timestamp (reads are in timestamp order);
- a malformed entry is never fatal: it is counted in `stats.entries_skipped`, logged, and skipped;
- a failure that makes the rest of the data unreadable (missing file, broken JSON, API error) raises
  `SourceError`, after everything read before it has been yielded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from monitor.correlate.probe import Probe
from monitor.entries import LogEntry
from monitor.window import ReadStats, Window


class SourceError(Exception):
    """The source cannot deliver (the rest of) its entries; the message says which and where."""


class Source(Protocol):
    """Anything that yields normalised log entries for a window."""

    # A live source is still being written to: entries may arrive up to `max_lateness` late, so
    # its data is complete only up to the read's end minus that. A file is complete as it is.
    live: bool

    def read(self, window: Window, stats: ReadStats) -> Iterator[LogEntry]: ...


@runtime_checkable
class Probing(Source, Protocol):
    """A source that can read the needles only (then `selective`), and answers the evidence
    probes the core asks (`correlate.probe`): one small page of the request logs each. A source
    that wraps another (leadership's guard) forwards both, or a cycle through it would read the
    needles and never ask for the evidence of health."""

    selective: bool

    def probe(self, probe: Probe, stats: ReadStats) -> tuple[list[LogEntry], bool]: ...
