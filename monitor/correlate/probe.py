"""Evidence probes: what the core asks of the logs when a decision needs it, and the answer.

Rules: plain values, no I/O. A cycle that reads the needles and not the haystack (queries
`Selection`) never sees successful requests in bulk, yet resolving an error incident needs them
(DESIGN.md, "Resolution needs evidence, not silence"). So when an incident's quiet period has run
on complete data and its evidence does not yet show health, the fold stops and asks (`Probe`);
the cycle runs the probe's one query (a small page) and hands back the requests it found
(`Answer`); the fold goes on from where it stopped and decides. h11's pattern: the core says
what it needs, the caller does the I/O.

Three rounds at most per question. `EVIDENCE` asks for exactly what may count (2xx/3xx app
requests on the routes that failed, from a revision that did not fail or from the instances that
did). Only when it finds none, `CONTEXT` asks for any request of the service in the same span, so
the thread can say why it is held (only static assets, only other routes, ...), and, for a
service not yet known to write request logs, looks back a day to learn whether it does: a
worker's silence may resolve, a web service's may not. And when health is shown and a resolution
is about to name its fix, `FIX` asks whether the candidate revisions served successfully since
the last match, which only their successes (never selected) can say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from monitor.classify.observations import RequestServed

# The requests one probe reads: enough to show health (a handful do), small enough to cost one
# cheap request however busy the service.
PROBE_PAGE = 50
# How far back a service is looked at to learn whether it writes request logs at all.
REQUEST_LOG_LOOKBACK = timedelta(days=1)
# Probes one incident may ask in one cycle: beyond them it waits for the cycle's last tick.
MAX_PROBES_PER_CYCLE = 6


class Round(StrEnum):
    EVIDENCE = "evidence"  # the successes that may count
    CONTEXT = "context"  # any request: why it is held, and whether request logs exist
    FIX = "fix"  # the successes of revisions that may be named as the fix: did they serve?


@dataclass(frozen=True, slots=True)
class Probe:
    """One question: the request logs of `service` served in `(since, until]`."""

    incident: str
    service: str
    since: datetime
    until: datetime
    round: Round
    routes: tuple[str, ...] = ()  # the routes that failed (empty: any app route)
    not_revisions: tuple[str, ...] = ()  # the failing revisions: another one may show health
    instances: tuple[str, ...] = ()  # the failing instances (up, or before they shut down)
    any_instance: bool = False  # every failing instance shut down: any instance may
    look_back: bool = False  # CONTEXT, for a service not yet known to write request logs
    revisions: tuple[str, ...] = ()  # FIX: the candidates asked about

    @property
    def reads_from(self) -> datetime:
        """Where the query starts: `since`, or a day back to learn whether request logs exist
        (what it finds before `since` only says that; it is no evidence)."""
        return min(self.since, self.until - REQUEST_LOG_LOOKBACK) if self.look_back \
            else self.since


@dataclass(frozen=True, slots=True)
class Answer:
    """What the cycle found for `probe`: its requests in time order, and whether the page was
    full (then there may be more: the core counts what it got, which is a lower bound)."""

    probe: Probe
    requests: tuple[RequestServed, ...]
    full: bool = False
