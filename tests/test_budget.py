"""The request budget never lets more than N requests through in any 60 seconds."""

from __future__ import annotations

import random

from monitor.sources.budget import RateLimiter, backoff


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_never_more_than_n_in_any_minute():
    clock = FakeClock()
    limiter = RateLimiter(5, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(23):
        limiter.acquire()
        sent.append(clock.t)
        clock.t += 0.5  # the request itself
    for i, t in enumerate(sent):
        assert sum(1 for u in sent if t <= u < t + 60) <= 5, i
    assert sent[:5] == [0.0, 0.5, 1.0, 1.5, 2.0]  # a quiet start is not delayed
    assert sent[5] == 60.0


def test_backoff_grows_to_its_cap_with_jitter():
    delays = backoff(1.0, 16.0, random.Random(7))
    got = [next(delays) for _ in range(8)]
    caps = [1, 2, 4, 8, 16, 16, 16, 16]
    assert all(0 <= d <= c for d, c in zip(got, caps, strict=True))
    assert len(set(got)) == len(got)
