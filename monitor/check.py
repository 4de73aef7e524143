"""One check cycle: source -> classify -> correlate -> outbox -> deliver.

Rules: `now` is taken once, by the caller, and handed down; the order below is the exactly-once
argument. The cycle's conclusions and the messages they cause are committed together (step 5)
before anything is sent (step 6), and the checkpoint moves in that same transaction: a crash
before it re-reads the same entries (deduplicated by key), a crash after it only delays sending.
`monitor once` and `monitor run` both call `run_cycle`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.classify import Classifier
from monitor.classify.prisma import PrismaParser
from monitor.classify.signals import SignalMatcher, Signature
from monitor.config import Config
from monitor.correlate.incidents import advance
from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts, Transition
from monitor.correlate.state import Rules, State
from monitor.entries import LogEntry, format_time
from monitor.notify.message import Message, Notifier
from monitor.notify.outbox import Delivery, drain
from monitor.notify.render import render
from monitor.sources.base import ReadStats, Source
from monitor.store.base import CycleRecord, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime | None  # None: from the beginning of the source (a replayed export)
    end: datetime


@dataclass
class CycleResult:
    checked_at: datetime
    window: Window
    state: State
    transitions: list[Transition]
    messages: list[Message]
    stats: ReadStats
    delivery: Delivery = field(default_factory=Delivery)
    dry_run: bool = False

    @property
    def open_incidents(self) -> list[Incident]:
        return [i for i in self.state.incidents.values() if i.status is IncidentStatus.OPEN]

    def incidents_in_window(self) -> list[Incident]:
        """Open incidents, and those that saw activity or resolved within the window."""
        start = self.window.start
        return sorted(
            (
                i for i in self.state.incidents.values()
                if i.status is IncidentStatus.OPEN or start is None or i.last_seen >= start
                or (i.resolved_at is not None and i.resolved_at >= start)
            ),
            key=lambda i: (i.first_seen, i.id),
        )

    def revisions_in_window(self) -> list[RevisionFacts]:
        start = self.window.start
        return sorted(
            (f for f in self.state.revisions.values()
             if start is None or (f.last_seen is not None and f.last_seen >= start)),
            key=lambda f: (f.service, f.deployed_at or f.first_seen or self.checked_at, f.name),
        )


def build_classifier(config: Config, services: Iterable[str]) -> Classifier:
    matcher = SignalMatcher([Signature(s.name, s.match) for s in config.signals])
    parser = PrismaParser() if config.migrations.tool == "prisma" else None
    return Classifier(services, matcher, parser)


def _render(config: Config, transition: Transition, project: str | None) -> list[Message]:
    signal = config.signal(transition.incident.signal)
    return render(transition, channel=config.slack.channel, project=project,
                  pattern=signal.match.pattern if signal is not None else None)


def read_window(
    store: Store,
    unit: str,
    now: datetime,
    *,
    since: timedelta | None,
    default_lookback: timedelta | None,
    max_lateness: timedelta,
) -> Window:
    """Where this cycle starts reading.

    From the checkpoint minus `max_lateness`, so late entries are still seen (and deduplicated by
    key). `--since` may reach further back only for a store that has no checkpoint yet: entries
    older than the dedupe memory would otherwise be counted twice.
    """
    checkpoint = store.checkpoint(unit)
    floor = checkpoint - max_lateness if checkpoint is not None else None
    if since is not None:
        start: datetime | None = now - since
    elif floor is not None:
        start = floor
    else:
        start = now - default_lookback if default_lookback is not None else None
    if floor is not None and (start is None or start < floor):
        start = floor
    return Window(start, now)


def fresh_entries(store: Store, entries: Iterator[LogEntry]) -> list[LogEntry]:
    """Entries not processed before: deduplicated by (log name, insert id)."""
    batch: dict[str, LogEntry] = {}
    for entry in entries:
        batch.setdefault(entry.key, entry)
    already = store.seen_keys(list(batch))
    return [e for k, e in batch.items() if k not in already]


def run_cycle(
    config: Config,
    store: Store,
    source: Source,
    notifier: Notifier,
    *,
    unit: str,
    services: Iterable[str],
    project: str | None,
    now: datetime,
    complete_until: datetime,
    since: timedelta | None = None,
    default_lookback: timedelta | None = None,
    dry_run: bool = False,
) -> CycleResult:
    lateness = config.poll.max_lateness
    window = read_window(store, unit, now, since=since, default_lookback=default_lookback,
                         max_lateness=lateness)
    stats = ReadStats()
    # 1. read what has not been seen
    entries = fresh_entries(store, source.read(window.start, window.end, stats))
    # 2. classify: entries -> observations
    observations = build_classifier(config, services).classify(entries)
    # 3. correlate: state + observations -> state', transitions (pure, event time)
    outcome = advance(store.load_state(), observations, now=now,
                      complete_until=complete_until, rules=Rules.from_config(config))
    # 4. render: transitions -> messages, as data
    messages = [m for t in outcome.transitions for m in _render(config, t, project)]
    result = CycleResult(now, window, outcome.state, outcome.transitions, messages, stats,
                         dry_run=dry_run)
    if dry_run:
        return result
    # 5. commit state, dedupe keys, checkpoint and outbox in one transaction
    store.commit_cycle(outcome.state, CycleRecord(
        unit=unit,
        checkpoint=now,
        seen={e.key: e.timestamp for e in entries},
        # the next read starts at now - lateness; keep twice that for a clock that steps back
        forget_before=now - 2 * lateness,
        messages=messages,
        summary={
            "checked_at": format_time(now),
            "entries_read": stats.entries_read,
            "entries_skipped": stats.entries_skipped,
            "api_requests": stats.api_requests,
            "transitions": len(outcome.transitions),
        },
    ))
    # 6. deliver what is queued (this cycle's and any left by an earlier failure), in order
    result.delivery = drain(store, notifier)
    return result
