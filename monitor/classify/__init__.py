"""classify: log entries in, observations out.

Rules: pure (no clock, no store, no network); an entry of an unwatched service, or of another
project than the watched one, yields nothing (central log buckets and aggregated sinks hold other
projects' services under the same name: a staging `spector` is not production's);
the result is in event-time order whatever order the source read in, so a newest-first export and
an oldest-first API read give the same observations.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.classify.deploys import deploy_event, instance_event
from monitor.classify.observations import (
    Observation,
    RequestServed,
    RevisionSeen,
)
from monitor.classify.prisma import MigrationParser, MigrationStream
from monitor.classify.requests import AssetRule
from monitor.classify.signals import SignalMatcher
from monitor.entries import EntryKind, LogEntry

# Migration output arrives as one entry per line; lines of a stream are kept for the parser only
# around tool output, so a busy app's other lines are never buffered.
MIGRATION_HINTS = ("risma", "igration", "Error:", "Datasource", "DbError", "ERROR:")
# What a read of the needles selects of `prisma migrate` output (an RE2 pattern, as the server's
# `=~`; Python's `re` reads it alike): the lines only the CLI prints, with its ANSI colours
# (FORCE_COLOR) allowed between `Error:` and the code (tests/data/real/prisma). Not the words
# `prisma`, `migration` or `Error:`: an app's own errors say them (`MissingSessionTableError:
# Prisma session table does not exist ... if the migration wasn't run`), and they would be read
# whole in a flood of them.
_ANSI = r"(?:\x1b\[[0-9;]*m)*"
TOOL_LINES = (rf"Prisma schema loaded from|Datasource|migrations? found in|Applying migration"
              rf"|have been applied|successfully applied|No pending migrations"
              rf"|Error: {_ANSI}P[13][0-9]{{3}}|Migration name:|marked as (?:rolled back|applied)"
              rf"|migration started at|[└├]─+ [0-9]+_")  # the applied tree's names
# Where the read meets one of these block headers, it reads the instance's lines around it: the
# block's lines that name nothing above (a P3018's `Database error code: 42P01`, a P3005's
# explanation). P1xxx: connection, P3xxx: migrate.
TOOL_HEADERS = re.compile(rf"Prisma schema loaded from|have been applied|Error: {_ANSI}P[13]")
_MIGRATION_CONTEXT = timedelta(minutes=2)

StreamKey = tuple[str, str | None, str | None]


def event_order(entry: LogEntry) -> tuple[datetime, str]:
    return (entry.timestamp, entry.insert_id)


def in_event_order(entries: list[LogEntry]) -> list[LogEntry]:
    """`entries` sorted by `event_order`, without the sort when they already are.

    The API reads in timestamp order, so the usual batch needs no sort; a cheap pass over the
    timestamps proves it. Equal timestamps (ordered by insert id) and any other order are sorted.
    """
    stamps = [e.timestamp for e in entries]
    if all(map(operator.lt, stamps, stamps[1:])):
        return entries
    return sorted(entries, key=event_order)


class Classifier:
    def __init__(
        self,
        services: Iterable[str],
        matcher: SignalMatcher,
        parser: MigrationParser | None,
        project: str | None = None,
        assets: AssetRule | None = None,
    ) -> None:
        self.services = frozenset(services)
        self.project = project  # None (a file source without one): every project's entries
        self.assets = assets or AssetRule()
        self.matcher = matcher
        self.parser = parser

    def classify(self, entries: Iterable[LogEntry]) -> list[Observation]:
        """All observations of a batch, in event time order."""
        stream = self.stream()
        return stream.feed(entries) + stream.end()

    def requests(self, entries: Iterable[LogEntry]) -> list[RequestServed]:
        """The request logs among `entries` (a probe's answer), as the stream files them."""
        out = []
        for e in entries:
            if (e.kind is EntryKind.REQUEST and e.http_status is not None
                    and e.service in self.services
                    and (self.project is None or e.project == self.project)):
                route, asset = self.assets.describe(e.http_url) if e.http_url else (None, False)
                assert e.service is not None
                out.append(RequestServed(e.timestamp, e.service, e.revision, e.http_status,
                                         e.instance_id, route, asset))
        return sorted(out, key=lambda r: r.at)

    def stream(self) -> ClassifyStream:
        """`classify` a page at a time, for a read too big to hold (a replayed export)."""
        return ClassifyStream(self)


@dataclass(slots=True)
class _Migrations:
    """One (service, revision, instance) stream's tool output, parsed as it is read."""

    reader: MigrationStream
    until: datetime  # later lines join only if they look like tool output: its context ended


Held = tuple[datetime, int, int, Observation]  # (at, rank, sequence, observation)
_DIRECT, _PARSED, _SEEN = 0, 1, 2  # the order of one instant's observations, as one batch has it


class ClassifyStream:
    """Classification of pages that come in event order, each no earlier than the one before.

    Each page is classified as `classify` does a batch (its `RevisionSeen` are the page's first
    and last entry of each revision), but a migration stream's parse carries over from page to
    page, and observations come out in event order: each as soon as nothing still to be read
    can come before it (an unfinished Prisma error block holds back what follows it). So a
    replay keeps no entry, only the parsers' state and the few observations held back.

    A tool output block still open when its stream's context ends (`_MIGRATION_CONTEXT` after
    its last tool line) is reported then, as it is: a line that comes later is not part of it.
    """

    def __init__(self, classifier: Classifier) -> None:
        self.c = classifier
        self.migrations: dict[StreamKey, _Migrations] = {}
        self.held: list[Held] = []
        self.seq = 0
        self.latest: datetime | None = None  # the newest entry classified so far

    def hold(self, rank: int, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self.seq += 1
            self.held.append((obs.at, rank, self.seq, obs))

    def feed(self, entries: Iterable[LogEntry]) -> list[Observation]:
        """Classify one page; the observations nothing still to come can precede."""
        c = self.c
        services, project = c.services, c.project
        ordered = in_event_order([e for e in entries if e.service in services
                                  and (project is None or e.project == project)])
        direct: list[Observation] = []
        # each revision's first and last entry of the page (the first's key comes first)
        firsts: dict[tuple[str, str], LogEntry] = {}
        lasts: dict[tuple[str, str], LogEntry] = {}
        # one lookup each per page, not per entry: this runs for every entry read
        add, describe, hits, parser = direct.append, c.assets.describe, c.matcher.hits, c.parser
        request, audit, system, platform = (EntryKind.REQUEST, EntryKind.AUDIT,
                                            EntryKind.SYSTEM, EntryKind.PLATFORM)
        for entry in ordered:
            service, revision, kind = entry.service, entry.revision, entry.kind
            assert service is not None
            if revision is not None:
                key = (service, revision)
                if key not in firsts:
                    firsts[key] = entry
                lasts[key] = entry
            if kind is request:
                status = entry.http_status
                if status is not None:
                    url = entry.http_url
                    route, asset = describe(url) if url else (None, False)
                    add(RequestServed(entry.timestamp, service, revision, status,
                                      entry.instance_id, route, asset, entry.weight))
                continue
            if kind is audit or kind is system:
                event = deploy_event(entry)
                if event is not None:
                    add(event)
                continue
            direct.extend(hits(entry))
            if kind is platform:  # Cloud Run's own lines: never tool output
                stopped = instance_event(entry)
                if stopped is not None:
                    add(stopped)
                continue
            if parser is not None:
                self.tool_line((service, revision, entry.instance_id), entry, parser)
        self.hold(_DIRECT, direct)
        for (service, revision), first in firsts.items():
            self.hold(_SEEN, [RevisionSeen(first.timestamp, service, revision, first.location)])
            last = lasts[service, revision]
            if last is not first:
                self.hold(_SEEN, [RevisionSeen(last.timestamp, service, revision)])
        if ordered and (self.latest is None or ordered[-1].timestamp > self.latest):
            self.latest = ordered[-1].timestamp
        latest = self.latest
        if latest is None:
            return []
        pending = [latest]  # the newest instant may continue in the next page
        for m in self.migrations.values():
            since = m.reader.pending_since
            if since is not None and m.until < latest:
                self.hold(_PARSED, m.reader.end())
            elif since is not None:
                pending.append(since)
        return self.release(min(pending))

    def tool_line(self, stream: StreamKey, entry: LogEntry, parser: MigrationParser) -> None:
        """Migration output arrives as one entry per line: the lines of a stream go to its
        parser around tool output only, so a busy app's other lines are never parsed."""
        m = self.migrations.get(stream)
        if m is not None and entry.timestamp > m.until and m.reader.pending_since is not None:
            self.hold(_PARSED, m.reader.end())
        if any(h in entry.text for h in MIGRATION_HINTS):
            until = entry.timestamp + _MIGRATION_CONTEXT
            if m is None:
                m = self.migrations[stream] = _Migrations(parser.stream(), until)
            m.until = until
        elif m is None or entry.timestamp > m.until:
            return
        self.hold(_PARSED, m.reader.add(entry))

    def end(self) -> list[Observation]:
        """The read is over: every stream's open output is reported, everything comes out."""
        for m in self.migrations.values():
            self.hold(_PARSED, m.reader.end())
        return self.release(None)

    def release(self, before: datetime | None) -> list[Observation]:
        held = self.held
        held.sort()  # by (at, rank, sequence): the sequence is unique, observations never compare
        n = len(held) if before is None else bisect.bisect_left(held, before, key=lambda h: h[0])
        self.held = held[n:]
        return [h[3] for h in held[:n]]
