"""What a check reads (`Window`) and how far a unit has read (`Checkpoint`): values.

Why here, below the sources and the store: a source is asked for a window, the store keeps the
checkpoint, and the cycle (`check.plan_window`, `check.next_checkpoint`) moves one into the
other; neither side imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.times import format_time, parse_time


@dataclass(frozen=True, slots=True)
class Window:
    """What one cycle reads: by event time, and for live sources by ingestion time too."""

    start: datetime | None = None
    end: datetime | None = None
    received_after: datetime | None = None
    received_before: datetime | None = None


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
