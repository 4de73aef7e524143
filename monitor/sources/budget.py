"""The read budget: never more than N Logging API requests in any minute, and polite retries.

Rules: the limiter is a sliding window over the last 60 seconds, shared by every cycle of one
process, so a burst of retries or a backlog can never push the monitor past the project's read
quota (about 60 requests a minute, shared with people using Logs Explorer). Time and sleep are
injected, so tests run on a fake clock.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

WINDOW = 60.0  # seconds


@dataclass
class RateLimiter:
    per_minute: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep
    _sent: deque[float] = field(default_factory=deque)

    def wait_time(self) -> float:
        """Seconds until one more request fits in the window (0: now)."""
        now = self.clock()
        while self._sent and self._sent[0] <= now - WINDOW:
            self._sent.popleft()
        if len(self._sent) < self.per_minute:
            return 0.0
        return self._sent[0] + WINDOW - now

    def acquire(self) -> float:
        """Block until a request may be sent, record it, and say how long that took."""
        waited = 0.0
        while (delay := self.wait_time()) > 0:
            self.sleep(delay)
            waited += delay
        self._sent.append(self.clock())
        return waited


def backoff(base: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**n))."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**attempt))
        attempt += 1
