"""Property tests: classify turns any batch of entries into observations, never an exception, with
at most one ErrorHit per entry per signal, in event-time order whatever the read order
(monitor.classify.Classifier with the config's SignalMatcher and the PrismaParser)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from monitor.check import build_classifier
from monitor.classify import Classifier
from monitor.classify.observations import (
    DeployEvent,
    ErrorHit,
    InstanceStopped,
    MigrationEvent,
    RequestServed,
    RevisionSeen,
)
from monitor.classify.signals import SAMPLE_LIMIT
from monitor.config import parse_config
from monitor.entries import EntryKind, LogEntry
from monitor.times import EARLIEST, LATEST

SERVICES = ["spector", "spector-worker"]
SIGNALS = [
    {"name": "missing-session-table", "match": "MissingSessionTableError"},
    {"name": "prisma-table", "match": r"Prisma \w+ table does not exist"},
    {"name": "any-error", "match": "(?i)error"},
    {"name": "timeout", "match": r"TimeoutError: .* exceeded \d+s"},
    {"name": "anything", "match": "."},
    {"name": "empty-ok", "match": "x*"},  # matches the empty string: every entry
]

# --- strategies -------------------------------------------------------------------------------

# The lines classify reacts to: signatures, Prisma's output, Cloud Run's own lines.
_pieces = st.sampled_from([
    "MissingSessionTableError", "MissingSessionTableError: Prisma session table does not exist.",
    "Prisma session table does not exist", "TimeoutError: job exceeded 30s", "    throw new ",
    "\tthrow ", "Prisma schema loaded from prisma/schema.prisma",
    "Datasource \"db\": PostgreSQL database", "Environment variables loaded",
    "Applying migration `20251204205052_map_session_table_to_lowercase`", "Applying migration `",
    "The following migration(s) have been applied:", "The following migrations have been applied",
    "\u2514\u2500 20251204205052_x/", "\u251c\u2500\u2500 a/", "\u2514\u2500",
    "All migrations have been successfully applied.", "No pending migrations to apply.",
    "Error: P3009", "Error: P3018", "Error: P1001: Can't reach database server", "Error: ",
    "Error:", "Error: P3005:", "ERROR:", "DbError", "migrate found failed migrations",
    "The `20251204205052_x` migration started at 2025-12-04 21:00:00 UTC failed",
    "Migration name: 20251204205052_x", "Database error code: 42P01", "Database error:",
    "Database error: relation does not exist", "Migration x marked as rolled back.",
    "Migration y marked as applied.", "igration", "risma",
    "Ready condition status changed to True for Revision spector-00042-wex.",
    "Ready condition status changed to False for Revision spector-00043-fiz with message: x",
    "Shutting down user disabled instance", "Container called exit(1).",
    "Container terminated on signal 9.", "\x1b[31m", "\x1b[0m", "\x1b[", "\n", "\r", "\r\n",
    " ", "`", "\x00", "\u202e", "<!channel>",
])
text = st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=10).map("".join)
long_text = st.builds(lambda a, n, b: a + "x" * n + b, text, st.integers(0, 5000), text)
maybe = st.one_of(st.none(), st.just(""), text)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner,
                                                                         max_size=3)),
    max_leaves=8,
)
# An audit or system entry's protoPayload, of the shapes classify.deploys reads, or anything.
proto = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "methodName": st.one_of(st.sampled_from([
        "google.cloud.run.v1.Services.ReplaceService", "google.cloud.run.v2.Services.UpdateService",
        "google.cloud.run.v1.Services.CreateService", "x.Services.DeleteService"]), json_values),
    "status": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "code": st.one_of(st.integers(), st.text(max_size=3), json_values),
        "message": st.one_of(text, json_values)})),
    "authenticationInfo": st.one_of(json_values, st.fixed_dictionaries(
        {"principalEmail": json_values})),
    "response": json_values, "request": json_values,
}))
raw = st.one_of(st.just({}), st.fixed_dictionaries({"protoPayload": proto}, optional={
    "operation": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "last": json_values, "first": json_values}))}))
times = st.datetimes(min_value=EARLIEST.replace(tzinfo=None),
                     max_value=(LATEST - timedelta(microseconds=1)).replace(tzinfo=None),
                     timezones=st.just(EARLIEST.tzinfo))


_kinds = st.sampled_from(list(EntryKind))
_severities = st.sampled_from(["DEFAULT", "ERROR", ""])
_projects = st.sampled_from(["spector-prod", "spector-staging", None])
_services = st.sampled_from([*SERVICES, "other", None])
_revisions = st.one_of(st.sampled_from(["spector-00042-wex", "spector-00043-fiz"]), maybe)
_instances = st.one_of(st.sampled_from(["i1", "i2"]), maybe)
_texts = st.one_of(text, long_text)
_statuses = st.one_of(st.none(), st.integers(-1, 1000), st.integers())
_locations = st.one_of(st.none(), st.just("us-central1"), text)
_urls = st.one_of(st.none(), text, st.builds(lambda p: "https://x" + p, text))
_offsets = st.integers(-300, 300)


@st.composite
def entry(draw: st.DrawFn, n: int, base: Any) -> LogEntry:
    """The n-th entry of a batch; times cluster around `base` so streams and windows interact."""
    near = base + timedelta(seconds=draw(_offsets))
    at = near if EARLIEST <= near < LATEST and draw(st.booleans()) else draw(times)
    kind = draw(_kinds)
    return LogEntry(
        insert_id=f"id{n}", log_name="projects/spector-prod/logs/x", timestamp=at,
        severity=draw(_severities), kind=kind,
        project=draw(_projects), service=draw(_services), revision=draw(_revisions),
        instance_id=draw(_instances), text=draw(_texts), http_status=draw(_statuses),
        raw=draw(raw) if kind in (EntryKind.AUDIT, EntryKind.SYSTEM) else {},
        location=draw(_locations), http_url=draw(_urls),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[LogEntry]:
    base = draw(times)
    return [draw(entry(n, base)) for n in range(draw(st.integers(0, 15)))]


@st.composite
def classifiers(draw: st.DrawFn) -> tuple[Classifier, int]:
    signals = draw(st.lists(st.sampled_from(SIGNALS), min_size=1, max_size=len(SIGNALS),
                            unique_by=lambda s: s["name"]))
    config = parse_config({
        "project": "spector-prod", "services": SERVICES, "signals": signals,
        "migrations": {"tool": draw(st.sampled_from(["prisma", "none"]))},
    }, env={})
    project = draw(st.sampled_from(["spector-prod", None]))
    return build_classifier(config, SERVICES, project), len(signals)


def _pieces_of(e: LogEntry) -> int:
    return max(1, len(e.text.splitlines()))


# --- properties -------------------------------------------------------------------------------

@given(classifiers(), batches())
@example((build_classifier(parse_config({"project": "p", "services": SERVICES,
                                         "signals": SIGNALS}, env={}), SERVICES, None),
          len(SIGNALS)),
         [])
def test_any_batch_gives_bounded_observations_in_event_order(
        built: tuple[Classifier, int], entries: list[LogEntry]) -> None:
    classifier, n_signals = built
    out = classifier.classify(entries)
    watched = [e for e in entries if e.service in SERVICES
               and (classifier.project is None or e.project == classifier.project)]
    by_id = {e.insert_id: e for e in watched}
    kinds = Counter(type(o) for o in out)

    assert [o.at for o in out] == sorted(o.at for o in out)
    assert all(o.service in SERVICES for o in out)
    hits = [o for o in out if isinstance(o, ErrorHit)]
    assert len(hits) == len({(h.insert_id, h.signal) for h in hits}), "one hit per entry/signal"
    assert len(hits) <= len(watched) * n_signals
    for h in hits:
        source = by_id[h.insert_id]
        assert source.kind is not EntryKind.REQUEST
        assert len(h.sample) <= SAMPLE_LIMIT and h.sample in source.text
        assert (h.at, h.service, h.revision, h.instance_id) == (
            source.timestamp, source.service, source.revision, source.instance_id)
    requests = [e for e in watched if e.kind is EntryKind.REQUEST and e.http_status is not None]
    assert kinds[RequestServed] == len(requests)
    assert kinds[DeployEvent] <= sum(e.kind in (EntryKind.AUDIT, EntryKind.SYSTEM)
                                     for e in watched)
    assert kinds[InstanceStopped] <= sum(e.kind is EntryKind.PLATFORM for e in watched)
    revisions = {(e.service, e.revision) for e in watched if e.revision is not None}
    assert kinds[RevisionSeen] <= 2 * len(revisions)
    app_lines = sum(_pieces_of(e) for e in watched if e.kind is EntryKind.APP)
    assert kinds[MigrationEvent] <= 2 * app_lines
    for o in out:
        if isinstance(o, MigrationEvent):
            assert len(o.message) <= 500


@given(classifiers(), batches(), st.randoms(use_true_random=False))
def test_the_read_order_does_not_change_the_observations(
        built: tuple[Classifier, int], entries: list[LogEntry], rnd: Any) -> None:
    """Newest first (gcloud's export), oldest first (the API) or shuffled: the same result."""
    classifier, _ = built
    expected = classifier.classify(entries)
    assert classifier.classify(list(reversed(entries))) == expected
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert classifier.classify(shuffled) == expected


@given(classifiers(), batches(), st.text(st.characters(categories=["Cs"]), min_size=1),
       st.integers(min_value=0))
@example((build_classifier(parse_config({"project": "p", "services": SERVICES,
                                         "signals": SIGNALS[:1]}, env={}), SERVICES, None), 1),
         [LogEntry("id0", "projects/p/logs/x", EARLIEST, "DEFAULT", EntryKind.APP, "p",
                   "spector", None, None, "x")], "\ud800", 0)
def test_a_lone_surrogate_in_the_text_is_classified_like_any_text(
        built: tuple[Classifier, int], entries: list[LogEntry], surrogate: str, at: int) -> None:
    classifier, _ = built
    if entries:
        i = at % len(entries)
        e = entries[i]
        entries[i] = dataclasses.replace(e, text=e.text[:at % (len(e.text) + 1)] + surrogate
                                         + e.text[at % (len(e.text) + 1):])
    classifier.classify(entries)
