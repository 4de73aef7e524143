"""One check cycle: source -> classify -> correlate -> outbox -> deliver.

Rules: `now` is taken once, by the caller, and handed down; the order below is the exactly-once
argument. The cycle's conclusions and the messages they cause are committed together (step 5)
before anything is sent (step 6), and the checkpoint moves in that same transaction: a crash
before it re-reads the same entries (deduplicated by key), a crash after it only delays sending.
`monitor once` and `monitor run` both call `run_cycle`, with the same leadership code
(leadership.py; `once` in burst mode). Between entries, pages and sends the cycle looks at its
`Watch`: a shutdown abandons it before the commit, and its lease is renewed when due.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.classify import Classifier
from monitor.classify.prisma import PrismaParser
from monitor.classify.requests import AssetRule
from monitor.classify.signals import SignalMatcher, Signature
from monitor.config import Config
from monitor.correlate.incidents import Fold
from monitor.correlate.model import IncidentKind, Transition
from monitor.correlate.probe import Answer, Probe
from monitor.correlate.source_incident import source_health
from monitor.correlate.state import State
from monitor.entries import LogEntry
from monitor.messages import Message
from monitor.notify.message import Notifier
from monitor.notify.outbox import Delivery, drain
from monitor.notify.render import render
from monitor.output import CycleResult
from monitor.sources import replay
from monitor.sources.base import Probing, Source, SourceError
from monitor.store.base import RETENTION, CycleRecord, Lease, Store
from monitor.times import format_time
from monitor.window import (
    ReadStats,
    Window,
    complete_until,
    next_checkpoint,
    plan_window,
)

log = logging.getLogger(__name__)


def build_classifier(config: Config, services: Iterable[str],
                     project: str | None) -> Classifier:
    matcher = SignalMatcher([Signature(s.name, s.match) for s in config.signals])
    parser = PrismaParser() if config.migrations.tool == "prisma" else None
    return Classifier(services, matcher, parser, project,
                      AssetRule(config.evidence.ignore_paths))


def _render(config: Config, transition: Transition, project: str | None) -> list[Message]:
    """Render with the routing the config gives the incident: an error incident goes to its
    signal's channel and pings its mention, each falling back to slack.channel/slack.mention;
    migration and source incidents use slack.channel/slack.mention."""
    signal = config.signal(transition.incident.signal)
    routed = signal if transition.incident.kind is IncidentKind.ERROR else None
    return render(transition, project=project,
                  channel=(routed.channel if routed else None) or config.slack.channel,
                  mention=(routed.mention if routed else None) or config.slack.mention,
                  pattern=signal.match.pattern if signal is not None else None)


class Cancelled(Exception):
    """The cycle was abandoned (shutdown) before its commit: nothing of it was saved."""


class ClockBehind(ValueError):
    """`now` is before the unit's last completed check. A checkpoint never moves back: the
    window would be read again and every alert in it posted again, as new incidents."""

    def __init__(self, unit: str, now: datetime, last: datetime) -> None:
        super().__init__(f"{format_time(now)} is before the last completed check of {unit} "
                         f"({format_time(last)}): a check never moves the checkpoint back")
        self.unit, self.now, self.last = unit, now, last


@dataclass(frozen=True, slots=True)
class Watch:
    """What a long step looks at between entries, pages and sends: a shutdown (`stop`: the
    step is abandoned, Cancelled) and the unit's lease (`keep_alive`: renewed when due, so a
    check longer than the lease keeps it; LeaseLost when another instance took it over)."""

    stop: threading.Event | None = None
    keep_alive: Callable[[], None] | None = None

    def __call__(self, doing: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(f"shutting down {doing}")
        if self.keep_alive is not None:
            self.keep_alive()


def fresh_pages(store: Store, source: Source, window: Window, stats: ReadStats,
                watch: Watch = Watch()) -> Generator[list[LogEntry]]:
    """What the cycle classifies and folds, a page at a time: entries not processed before,
    deduplicated by (log name, insert id) against the store and within the read.

    A live source reads in timestamp order: its entries are folded a page as they come, while
    the source fetches the next page on its own thread (sources/cloud_logging.py), so the
    cycle's work overlaps the server's. A complete export may be in any order and of any size:
    it is replayed in event order, a page of `replay.PAGE_ENTRIES` at a time, and no entry
    outlives its page (sources/replay.py). Either way a cycle's memory does not grow with what
    it reads, beyond one key per entry.
    """
    if source.live:
        return _live(store, source.read(window, stats), watch)
    return _replayed(store, source.read(window, stats), watch)


def _live(store: Store, entries: Iterator[LogEntry],
          watch: Watch) -> Generator[list[LogEntry]]:
    read: set[str] = set()  # keys met earlier in this read: a read may overlap itself
    page: dict[str, LogEntry] = {}
    for entry in _watched(entries, watch):
        if entry.key not in read:
            read.add(entry.key)
            page[entry.key] = entry
            if len(page) >= replay.PAGE_ENTRIES:
                yield _unseen(store, page)
                page = {}
    if page:
        yield _unseen(store, page)


def _unseen(store: Store, page: dict[str, LogEntry]) -> list[LogEntry]:
    already = store.seen_keys(list(page))
    return [e for k, e in page.items() if k not in already]


def _replayed(store: Store, entries: Iterator[LogEntry],
              watch: Watch) -> Generator[list[LogEntry]]:
    pages = replay.replay_pages(_watched(entries, watch), replay.PAGE_ENTRIES)
    with contextlib.closing(pages):
        for page in pages:
            watch("while replaying")
            already = store.seen_keys([e.key for e in page])
            yield [e for e in page if e.key not in already] if already else page


# Entries between two looks at the Watch while reading: a look renews a lease when due, about a
# microsecond; a few hundred entries are well under a millisecond, far within any lease or grace.
WATCH_EVERY = 256


def _watched(entries: Iterator[LogEntry], watch: Watch) -> Iterator[LogEntry]:
    for n, entry in enumerate(entries):
        if n % WATCH_EVERY == 0:
            watch("while reading")
        yield entry


@dataclass(frozen=True, slots=True)
class _Asker:
    """The cycle's side of a probe: the query (the source) and the reading (classify)."""

    source: Probing
    classifier: Classifier
    stats: ReadStats

    def __call__(self, probe: Probe) -> Answer:
        entries, full = self.source.probe(probe, self.stats)
        return Answer(probe, tuple(self.classifier.requests(entries)), full)


def _settle(fold: Fold, probes: list[Probe], asker: _Asker | None, watch: Watch) -> None:
    """Answer what the fold asks until it asks nothing more: the core asks, the cycle queries,
    the core decides. Each round is bounded (two per span, `MAX_PROBES_PER_CYCLE` per incident),
    so this ends."""
    while probes:
        if asker is None:
            raise RuntimeError("a fold that does not probe asked for evidence")
        watch("while probing")
        probes = fold.answer([asker(p) for p in probes])


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
    since: timedelta | None = None,
    default_lookback: timedelta | None = None,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    lease: Lease | None = None,
    keep_alive: Callable[[], None] | None = None,
) -> CycleResult:
    """One cycle for one unit of work. With `stop` set (shutdown), it is abandoned before its
    commit and raises Cancelled: the checkpoint stays, the next run reads the same entries.

    With `lease`, every write is fenced by it (store/base.py): if another instance took the
    unit over meanwhile, LeaseLost is raised and nothing of this cycle was written or sent.
    `keep_alive` is called between entries, pages and sends (see `Watch`)."""
    watch = Watch(stop, keep_alive)
    lateness = config.poll.max_lateness
    checkpoint = store.checkpoint(unit)
    if not dry_run and checkpoint is not None and now < checkpoint.until:
        raise ClockBehind(unit, now, checkpoint.until)
    window = plan_window(checkpoint, now, since=since, default_lookback=default_lookback,
                         max_lateness=lateness)
    stats = ReadStats()
    state = store.load_state(unit)
    # a flood's sample is planned from what the last read measured (monitor/sampling.py)
    window = replace(window, rates=tuple(state.read_rates.items()))
    health = source_health(state, unit=unit, ok=True, reason="", now=now,
                           failures_before_alert=config.source.failures_before_alert)
    classifying = build_classifier(config, services, project)
    classifier = classifying.stream()
    asker = _Asker(source, classifying, stats) if isinstance(source, Probing) \
        and source.selective else None
    # The keys the commit keeps (see `forget` below); a replay is never cut short.
    keep_from = None if source.live else (window.received_before or now) - 2 * lateness
    seen: dict[str, datetime] = {}
    try:
        # 1. read what has not been seen, a page at a time (a live read is done on return)
        with contextlib.closing(fresh_pages(store, source, window, stats, watch)) as pages:
            # Bounded before the read by the window; the read's own cut (`stats.cut_at`) is
            # known at its end, and is never before an entry already folded (timestamp order).
            fold = Fold(health.state, rules=config.rules(unit), probing=asker is not None,
                        complete_until=complete_until(source, window, ReadStats(), now,
                                                      lateness))
            for page in pages:
                # 2. classify: entries -> observations
                # 3. correlate: state + observations -> state', transitions (pure, event time)
                #    (the fold may stop to ask for evidence: the cycle answers, it goes on)
                _settle(fold, fold.add(classifier.feed(page)), asker, watch)
                seen.update((e.key, e.timestamp) for e in page
                            if keep_from is None or e.timestamp >= keep_from)
            _settle(fold, fold.add(classifier.end()), asker, watch)
        _settle(fold, fold.close(now, complete_until(source, window, stats, now, lateness)),
                asker, watch)
    except SourceError as exc:
        return _failed_read(config, store, notifier, state, unit=unit, project=project, now=now,
                            window=window, stats=stats, error=exc, dry_run=dry_run,
                            lease=lease, keep_alive=keep_alive)
    outcome = fold.outcome
    if stats.rates is not None:
        outcome.state.read_rates = stats.rates
    transitions = health.transitions + outcome.transitions
    # 4. render: transitions -> messages, as data
    messages = [m for t in transitions for m in _render(config, t, project)]
    result = CycleResult(now, window, outcome.state, transitions, messages, stats,
                         dry_run=dry_run)
    if dry_run:
        return result
    watch("before the commit")
    # 5. commit state, dedupe keys, checkpoint and outbox in one transaction
    moved = next_checkpoint(window, stats, now, checkpoint)
    # No later read starts before moved.until - lateness (plan_window): older keys can go.
    # Twice that, for a clock that steps back. Keys older than that are not even written.
    forget = moved.until - 2 * lateness
    for key in [key for key, t in seen.items() if t < forget]:  # in place: a replay's are many
        del seen[key]
    store.commit_cycle(outcome.state, CycleRecord(
        unit=unit,
        checkpoint=moved,
        seen=seen,
        forget_before=forget,
        retain_after=moved.until - RETENTION,
        messages=messages,
        summary=_summary(now, stats, len(transitions), None),
        lease=lease,
    ))
    # 6. deliver what is queued (this cycle's and any left by an earlier failure), in order
    result.delivery = deliver(store, notifier, unit, lease, stop=stop, keep_alive=keep_alive)
    return result


def deliver(store: Store, notifier: Notifier, unit: str, lease: Lease | None,
            stop: threading.Event | None = None, deadline: float | None = None,
            keep_alive: Callable[[], None] | None = None) -> Delivery:
    """Drain the outbox; under a lease, only this unit's messages, each step fenced by it."""
    return drain(store, notifier, stop=stop, deadline=deadline, keep_alive=keep_alive,
                 leases={unit: lease} if lease is not None else None)


def _summary(now: datetime, stats: ReadStats, transitions: int,
             error: str | None) -> dict[str, object]:
    return {
        "checked_at": format_time(now),
        "ok": error is None,
        "error": error,
        "entries_read": stats.entries_read,
        "entries_skipped": stats.entries_skipped,
        "api_requests": stats.api_requests,
        "cut_at": format_time(stats.cut_at),
        "transitions": transitions,
    }


def _failed_read(config: Config, store: Store, notifier: Notifier, state: State, *, unit: str,
                 project: str | None, now: datetime, window: Window, stats: ReadStats,
                 error: SourceError, dry_run: bool, lease: Lease | None,
                 keep_alive: Callable[[], None] | None) -> CycleResult:
    """The read failed: nothing read is used, the checkpoint stays, the failure is counted.

    Entries yielded before the failure are dropped rather than half-used: the next cycle reads
    them again from the unchanged checkpoint, so nothing is skipped and nothing counted twice.
    """
    health = source_health(state, unit=unit, ok=False, reason=str(error), now=now,
                           failures_before_alert=config.source.failures_before_alert)
    messages = [m for t in health.transitions for m in _render(config, t, project)]
    result = CycleResult(now, window, health.state, health.transitions, messages, stats,
                         dry_run=dry_run, error=str(error))
    if not dry_run:
        store.commit_cycle(health.state, CycleRecord(
            unit=unit, checkpoint=None, seen={}, forget_before=None, messages=messages,
            summary=_summary(now, stats, len(health.transitions), str(error)), lease=lease))
        result.delivery = deliver(store, notifier, unit, lease, keep_alive=keep_alive)
    return result
