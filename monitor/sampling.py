"""A flood read as a sample: how heavy a sample each class of matches needs, and what each entry
read stands for. Pure values and functions; the source (sources/cloud_logging.py) calls them.

Why sampling and not log-based metrics (issue 16, item 3): a sample costs no other API, no other
quota and no other dependency, it is the same query (`queries.Selection` with `weights`), and
the entries it reads are still evidence (revision, instance, the line itself) rather than a
number. Its price is an estimate in place of a count, which every count shown says, with its
bound (correlate/model.py `Incident.count_text`).

Rules:
- A class is a signal (by name), `queries.FAILED_REQUESTS`, or `queries.APP_LINES` (every app
  line, when the selection's patterns do not fit in a filter). Everything else the query asks
  for (tool output, deploys, Cloud Run's own lines) is read whole, always: `WHOLE` counts it.
- Weights are powers of two: the query's `sample(insertId, 1/w)` hashes the insert id, so the
  sample of a heavier weight is within that of a lighter one, and an entry selected by two
  classes is read at the lighter weight: what it stands for is the smallest weight among its
  classes (`Weigher`), which keeps every class's estimate unbiased (each entry read counts
  1/P(read)).
- A class whose share of the budget fits is read whole: during a flood of one signal another
  signal's one match is still read, and counted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from monitor.entries import EntryKind, LogEntry
from monitor.queries import APP_LINES, FAILED_REQUESTS, Selection
from monitor.regex import Regex, compile_regex
from monitor.window import Window

WHOLE = ""  # the rate of what is always read whole; never a weight's key
# A read is planned to fill this share of its page budget: room for a flood that grows between
# two reads, and for estimates that are only estimates.
FILL = 0.5
MAX_WEIGHT = 2**20  # one in a million: beyond that a count says little anyway
# No read is planned over less than this: a read of a few milliseconds says nothing of a rate.
MIN_SECONDS = 1.0

Weights = Mapping[str, int]
Rates = Mapping[str, float]  # a class's entries a second, as the query selects them unsampled


def seconds(window: Window, until: datetime | None = None) -> float | None:
    """How long a stretch of traffic `window` reads (up to `until`, where a read was cut):
    from its start by event time or by ingestion time, whichever is later, to its end. None
    when it has no start (a first read of everything): no rate can be said of it."""
    starts = [t for t in (window.start, window.received_after) if t is not None]
    end = until or window.received_before or window.end
    if not starts or end is None:
        return None
    return max(MIN_SECONDS, (end - max(starts)).total_seconds())


def plan(rates: Rates, span: float | None, budget: int) -> dict[str, int]:
    """The weights that keep a read of `span` seconds within `FILL` of `budget` entries.

    What is always read whole (`rates[WHOLE]`) is left alone; the rest of the room is shared
    equally among the sampleable classes, a class that needs less than its share giving the
    rest to the others (water-filling), and each class over its share is sampled at the
    lightest power of two that brings it within. No weights when everything fits."""
    if span is None or not rates:
        return {}
    volumes = {k: r * span for k, r in rates.items() if k != WHOLE and r > 0}
    whole = rates.get(WHOLE, 0.0) * span
    target = budget * FILL
    if whole + sum(volumes.values()) <= target:
        return {}
    room = max(target - whole, target / 4)
    left = dict(volumes)
    while left:
        share = room / len(left)
        fits = {k: v for k, v in left.items() if v <= share}
        if not fits:
            break
        for k, v in fits.items():
            room -= v
            del left[k]
    if not left:
        return {}
    share = max(room / len(left), 1.0)
    return {k: min(MAX_WEIGHT, 2 ** math.ceil(math.log2(v / share))) for k, v in left.items()}


@dataclass
class Tally:
    """What a read found of each class, as estimates of what it would have found unsampled:
    each entry read adds its weight to each of its classes (`Weigher`)."""

    classes: dict[str, float] = field(default_factory=dict)
    whole: int = 0  # entries of no sampleable class

    def rates(self, span: float | None) -> dict[str, float] | None:
        if span is None:
            return None
        rates = {k: v / span for k, v in self.classes.items() if v}
        if self.whole:
            rates[WHOLE] = self.whole / span
        return rates


class Weigher:
    """What each entry a selective read returns stands for, under the read's `weights`: the
    client's mirror of `Selection.clause` (its patterns, RE2 as the server's `=~`)."""

    def __init__(self, selection: Selection, weights: Weights, whole_app: bool) -> None:
        self.weights = dict(weights)
        self.whole_app = whole_app  # the clause selected every app line (`Selection.by_pattern`)
        self.app_weight = Selection.app_weight(weights)
        self.signals: list[tuple[str, Regex]] = [(n, compile_regex(p))
                                                 for n, p in selection.signals]
        self.tool = compile_regex(selection.tool) if selection.tool else None

    def classes(self, entry: LogEntry) -> list[str]:
        kind = entry.kind
        if kind is EntryKind.REQUEST:
            status = entry.http_status
            return [FAILED_REQUESTS] if status is not None and status >= 500 else []
        if kind is not EntryKind.APP:
            return []
        text = entry.text
        if self.tool is not None and self.tool.found(text):
            return []  # the tool's output is asked for whole, whatever else it says
        if self.whole_app:
            return [APP_LINES]
        return [name for name, pattern in self.signals if pattern.found(text)]

    def weigh(self, entry: LogEntry, tally: Tally) -> LogEntry:
        """`entry` with the weight it was read at, counted in `tally`."""
        classes = self.classes(entry)
        if not classes:
            tally.whole += 1
            return entry
        if classes == [APP_LINES]:
            weight = self.app_weight
        else:
            weight = min(self.weights.get(c, 1) for c in classes)
        counts = tally.classes
        for c in classes:
            counts[c] = counts.get(c, 0.0) + weight
        return entry if weight == 1 else replace(entry, weight=weight)
