"""What a check reads (`Window`), what the read counted (`ReadStats`), how far a unit has read
(`Checkpoint`), and how the checkpoint moves: pure values and functions.

Rules: a checkpoint only moves forward (the cycle refuses a clock before it: check.ClockBehind);
it moves by ingestion time for a live source, so an entry that arrives late is read in the cycle
after its arrival, and a read the budget cut short is finished before the window moves on.
Why here, below the sources and the store: a source is asked for a window and fills the stats,
the store keeps the checkpoint, and neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.times import format_time, parse_time


@dataclass(frozen=True, slots=True)
class Window:
    """What one cycle reads: by event time, and for live sources by ingestion time too."""

    start: datetime | None = None
    end: datetime | None = None
    received_after: datetime | None = None
    received_before: datetime | None = None
    # What the unit's last read measured of each class of matches, in entries a second
    # (monitor/sampling.py): a source that can read a flood as a sample plans it from them.
    rates: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a unit of work has read, as the store keeps it.

    `until`: every entry received (live sources) or stamped (files) before it has been read.
    A read cut short by the request budget leaves `cursor` (the last timestamp read) and
    `window_end` (the receive bound of that read), so the next cycle finishes the same window,
    in order, before it moves on.
    """

    until: datetime
    cursor: datetime | None = None
    window_end: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"until": format_time(self.until), "cursor": format_time(self.cursor),
                "window_end": format_time(self.window_end)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Checkpoint:
        return cls(
            until=parse_time(d["until"]),
            cursor=parse_time(d["cursor"]) if d.get("cursor") else None,
            window_end=parse_time(d["window_end"]) if d.get("window_end") else None,
        )


@dataclass
class ReadStats:
    """Counters one check cycle reports in `stats` (see the CLI contract in DESIGN.md)."""

    entries_read: int = 0  # well-formed entries read, inside or outside the time window
    entries_skipped: int = 0  # malformed entries counted and skipped
    api_requests: int = 0  # Cloud Logging API calls made; always 0 for files
    cut_at: datetime | None = None  # the budget ran out after entries stamped up to here
    follow_up_requests: int = 0  # of api_requests: reads of the lines around tool output
    probe_requests: int = 0  # of api_requests: evidence probes (correlate.probe)
    # A flood read as a sample (monitor/sampling.py): the heaviest weight each class was read
    # at, and the rates this read measured, which the next read plans its sample from (None:
    # the source measured nothing; the last rates stand).
    sampled: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] | None = None


class Read(Protocol):
    """What `complete_until` needs of a source: whether it is still being written to."""

    @property
    def live(self) -> bool: ...


# A live read starts this much before the checkpoint in ingestion time: an entry received just
# before the previous read's end may not have been listable yet. Deduplication absorbs the overlap.
RECEIVE_OVERLAP = timedelta(minutes=1)


def plan_window(
    checkpoint: Checkpoint | None,
    now: datetime,
    *,
    since: timedelta | None,
    default_lookback: timedelta | None,
    max_lateness: timedelta,
) -> Window:
    """What this cycle reads, from where the last one stopped.

    By ingestion time (`receiveTimestamp`) from the checkpoint, so an entry that arrives late is
    read in the cycle that follows its arrival; by event time no further back than
    `max_lateness`. `--since` reaches further back only for a store with no checkpoint yet:
    entries older than the dedupe memory would otherwise be counted twice. A read cut short by
    the budget is finished, in order, before the window moves on.
    """
    if checkpoint is None:
        if since is not None:
            start: datetime | None = now - since
        else:
            start = now - default_lookback if default_lookback is not None else None
        return Window(start=start, end=now, received_before=now)
    floor = checkpoint.until - max_lateness
    received_after = checkpoint.until - RECEIVE_OVERLAP
    if checkpoint.cursor is not None and checkpoint.window_end is not None:
        return Window(start=max(checkpoint.cursor, floor), end=checkpoint.window_end,
                      received_after=received_after, received_before=checkpoint.window_end)
    start = floor if since is None else max(now - since, floor)
    return Window(start=start, end=now, received_after=received_after, received_before=now)


def next_checkpoint(window: Window, stats: ReadStats, now: datetime,
                    previous: Checkpoint | None) -> Checkpoint:
    until = window.received_before or now
    if stats.cut_at is None:
        return Checkpoint(until=until)
    base = previous.until if previous is not None else (window.start or stats.cut_at)
    return Checkpoint(until=base, cursor=stats.cut_at, window_end=until)


def complete_until(source: Read, window: Window, stats: ReadStats, now: datetime,
                   max_lateness: timedelta) -> datetime:
    """No entry stamped before this can still arrive: quiet periods must end before it."""
    end = window.end or now
    complete = end - max_lateness if source.live else end
    return min(complete, stats.cut_at) if stats.cut_at is not None else complete
