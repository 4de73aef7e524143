"""classify: log entries in, observations out.

Rules: pure (no clock, no store, no network); an entry of an unwatched service, or of another
project than the watched one, yields nothing (central log buckets and aggregated sinks hold other
projects' services under the same name: a staging `spector` is not production's);
the result is in event-time order whatever order the source read in, so a newest-first export and
an oldest-first API read give the same observations.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from monitor.classify.deploys import deploy_event, instance_event
from monitor.classify.observations import (
    Observation,
    RequestServed,
    RevisionSeen,
)
from monitor.classify.prisma import MigrationParser
from monitor.classify.requests import AssetRule
from monitor.classify.signals import SignalMatcher
from monitor.entries import EntryKind, LogEntry

# Migration output arrives as one entry per line; lines of a stream are kept for the parser only
# around tool output, so a busy app's other lines are never buffered.
_MIGRATION_HINTS = ("risma", "igration", "Error:", "Datasource", "DbError", "ERROR:")
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
        services, project = self.services, self.project
        ordered = in_event_order([e for e in entries if e.service in services
                                  and (project is None or e.project == project)])
        out: list[Observation] = []
        seen: dict[tuple[str, str], tuple[LogEntry, LogEntry]] = {}
        streams: dict[StreamKey, list[LogEntry]] = defaultdict(list)
        active_until: dict[StreamKey, datetime] = {}
        for entry in ordered:
            service = entry.service
            assert service is not None
            if entry.revision is not None:
                key = (service, entry.revision)
                first_last = seen.get(key)
                seen[key] = (first_last[0] if first_last else entry, entry)
            if entry.kind is EntryKind.REQUEST:
                if entry.http_status is not None:
                    url = entry.http_url
                    route, asset = self.assets.describe(url) if url else (None, False)
                    out.append(RequestServed(
                        entry.timestamp, service, entry.revision, entry.http_status,
                        entry.instance_id, route, asset))
                continue
            if entry.kind is EntryKind.AUDIT or entry.kind is EntryKind.SYSTEM:
                event = deploy_event(entry)
                if event is not None:
                    out.append(event)
                continue
            out.extend(self.matcher.hits(entry))
            if entry.kind is EntryKind.PLATFORM:  # Cloud Run's own lines: never tool output
                stopped = instance_event(entry)
                if stopped is not None:
                    out.append(stopped)
                continue
            if self.parser is not None:
                stream = (service, entry.revision, entry.instance_id)
                text = entry.text
                if any(h in text for h in _MIGRATION_HINTS):
                    active_until[stream] = entry.timestamp + _MIGRATION_CONTEXT
                    streams[stream].append(entry)
                else:
                    until = active_until.get(stream)
                    if until is not None and entry.timestamp <= until:
                        streams[stream].append(entry)
        for lines in streams.values():
            assert self.parser is not None
            out.extend(self.parser.parse(lines))
        for (service, revision), (first, last) in seen.items():
            out.append(RevisionSeen(first.timestamp, service, revision, first.location))
            if last is not first:
                out.append(RevisionSeen(last.timestamp, service, revision))
        out.sort(key=lambda o: o.at)
        return out
