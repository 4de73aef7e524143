"""Slack's pace: at most one message a second to a channel (chat.postMessage's rate limit, see
FACTS.md), so a burst of transitions is spread out instead of answered with 429s.

Why its own module: the outbox decides what to send and in which order; how fast one channel
may be written to is the notifier's limit (`Notifier.min_interval`), kept here with its clock
and its wait injectable, so no test sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Pacer:
    """Spaces sends to one channel by `interval` seconds (`slack.min_interval`)."""

    interval: float
    sleep: Callable[[float], object]
    monotonic: Callable[[], float] = time.monotonic
    last: dict[str, float] = field(default_factory=dict)

    def wait(self, channel: str) -> None:
        if self.interval <= 0:
            return
        due = self.last.get(channel, float("-inf")) + self.interval - self.monotonic()
        if due > 0:
            self.sleep(due)

    def sent(self, channel: str) -> None:
        self.last[channel] = self.monotonic()
