"""A replayed export is folded page by page in event order, and concludes what the whole file
concludes, whatever the file's order, its size or the page size.

Layers: `sources.replay.replay_pages` (event order and dedupe with bounded memory),
`classify.ClassifyStream` (classification carried over pages), `correlate.incidents.Fold`
(`advance` a page at a time), and the cycle over them (`check.fresh_pages`), end to end with
`monitor once` on the demo export.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import tempfile
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from monitor.check import Cancelled, build_classifier, run_cycle
from monitor.classify import Classifier
from monitor.classify.observations import MigrationEvent, MigrationOutcome, RevisionSeen
from monitor.classify.prisma import PrismaParser
from monitor.classify.signals import SignalMatcher, Signature
from monitor.cli import main
from monitor.config import load_config
from monitor.correlate.incidents import Fold, advance
from monitor.correlate.state import State
from monitor.entries import EntryKind, LogEntry
from monitor.leadership import Leadership
from monitor.notify.console import ConsoleNotifier
from monitor.sources import replay
from monitor.sources.file import FileSource
from monitor.sources.replay import event_order, replay_pages
from monitor.store import open_store
from monitor.store.base import LeaseLost
from monitor.window import ReadStats, Window
from tests.helpers import line
from tests.test_store import claim_when_expired

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPORT = EXAMPLES / "spector-incident.json"  # 1,601 entries, newest first: it spills
MISSING = Signature("missing-session-table", re.compile("MissingSessionTableError"))


def demo_entries() -> list[LogEntry]:
    return list(FileSource(EXPORT).read(Window(), ReadStats()))


def pages(entries: list[LogEntry], size: int) -> list[list[LogEntry]]:
    return [entries[i:i + size] for i in range(0, len(entries), size)]


# --- replay_pages: event order, each key once, bounded ----------------------------------------


@pytest.mark.parametrize("spill_after", [0, 5, 100_000])  # on disk from the first, or in memory
def test_pages_come_in_event_order_each_key_once_whatever_the_read_order(spill_after):
    entries = [line(s, f"line {s}") for s in (5, 1, 3, 3, 2, 4, 0)]
    entries[3] = replace(entries[3], insert_id="id-a")  # same instant: insert id decides
    twin = replace(entries[1], text="a later copy")  # same key read again: the first stays
    read = [*entries, twin]
    random.Random(3).shuffle(read)
    read.remove(twin)
    read.append(twin)
    got = [e for page in replay_pages(read, 3, spill_after=spill_after) for e in page]
    assert got == sorted(entries, key=event_order)
    assert [e.text for e in got if e.key == twin.key] == [entries[1].text]
    assert [len(p) for p in replay_pages(read, 3, spill_after=spill_after)] == [3, 3, 1]


def test_an_entry_comes_back_from_disk_as_it_was_read():
    entries = sorted(demo_entries(), key=event_order)
    back = [e for page in replay_pages(reversed(entries), 100, spill_after=10) for e in page]
    assert back == entries
    assert [e.raw for e in back] == [e.raw for e in entries]  # raw is not compared by ==
    assert [e.timestamp.tzinfo for e in back] == [e.timestamp.tzinfo for e in entries]


def test_the_spill_is_removed_when_the_read_ends_or_stops(tmp_path: Path):
    entries = [line(s, "x") for s in range(50)]
    list(replay_pages(entries, 10, spill_after=5, directory=tmp_path))
    assert list(tmp_path.iterdir()) == []
    stopped = replay_pages(entries, 10, spill_after=5, directory=tmp_path)
    next(stopped)
    assert len(list(tmp_path.iterdir())) == 1
    stopped.close()
    assert list(tmp_path.iterdir()) == []

    def broken():
        yield from entries
        raise OSError("the export went away")

    with pytest.raises(OSError):
        list(replay_pages(broken(), 10, spill_after=5, directory=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_nothing_read_is_no_page():
    assert list(replay_pages([], 10)) == []


# --- ClassifyStream: one batch's observations, a page at a time ------------------------------


def classifier() -> Classifier:
    return Classifier(["spector"], SignalMatcher([MISSING]), PrismaParser(), "spector-prod")


def streamed(entries: list[LogEntry], size: int) -> list[Any]:
    stream = classifier().stream()
    out = [o for page in pages(entries, size) for o in stream.feed(page)]
    return out + stream.end()


@pytest.mark.parametrize("size", [1, 7, 250, 100_000])
def test_pages_classify_as_one_batch(size):
    """Migration output split across pages is parsed as one stream; only `RevisionSeen` is per
    page (each page's first and last entry of a revision, as a cycle's batch has them)."""
    entries = sorted(demo_entries(), key=event_order)
    whole = classifier().classify(entries)
    got = streamed(entries, size)
    assert [o for o in got if not isinstance(o, RevisionSeen)] == [
        o for o in whole if not isinstance(o, RevisionSeen)]
    assert [o.at for o in got] == sorted(o.at for o in got)
    assert sum(isinstance(o, MigrationEvent) for o in got) >= 5  # split across pages at 1, 7
    first = {(o.service, o.revision): o for o in reversed(got) if isinstance(o, RevisionSeen)}
    assert first == {(o.service, o.revision): o for o in reversed(whole)
                     if isinstance(o, RevisionSeen)}


def test_an_error_block_still_open_when_its_stream_goes_quiet_is_reported_then():
    """A P3018 block whose database error never came is reported at its own last line; the
    stream's next tool output, minutes later, is not read as the end of that block."""
    texts = [(0, "Error: P3018"), (1, "A migration failed to apply."),
             (2, "Migration name: 20251204205052_map_session_table_to_lowercase")]
    entries = [line(s, t) for s, t in texts]
    later = line(600, "MissingSessionTableError: Prisma session table does not exist.")
    for size in (1, 2, 10):
        events = [o for o in streamed([*entries, later], size) if isinstance(o, MigrationEvent)]
        assert [(e.outcome, e.code, e.name, e.at) for e in events] == [
            (MigrationOutcome.FAILED, "P3018", "20251204205052_map_session_table_to_lowercase",
             entries[-1].timestamp)]


def test_what_an_open_block_may_still_say_is_held_back():
    """Nothing after the open block comes out before it is complete: the fold stays in order."""
    stream = classifier().stream()
    out = stream.feed([line(0, "Error: P3018"),
                       line(1, "GET /app 200", kind=EntryKind.REQUEST, status=200)])
    assert out == []  # the block may still be reported at 0 s
    out = stream.feed([line(2, "Database error code: 42P07"), line(3, "Database error:"),
                       line(4, 'relation "session" already exists'), line(5, "ok")])
    assert [(type(o).__name__, o.at.second) for o in out] == [
        ("RevisionSeen", 0), ("RequestServed", 1), ("RevisionSeen", 1), ("RevisionSeen", 2),
        ("MigrationEvent", 4)]  # the newest instant (5 s) may go on in the next page
    assert [(type(o).__name__, o.at.second) for o in stream.end()] == [("RevisionSeen", 5)]


# --- Fold: advance a page at a time -----------------------------------------------------------


def test_folding_pages_is_advancing_once():
    config = load_config(EXAMPLES / "config.yaml")
    rules = config.rules()
    entries = sorted(demo_entries(), key=event_order)
    observations = build_classifier(config, ["spector"], "spector-prod").classify(entries)
    now = entries[-1].timestamp
    whole = advance(State(), observations, now=now, complete_until=now, rules=rules)
    fold = Fold(State(), complete_until=now, rules=rules)
    for page in pages(observations, 13):
        fold.add(page)
    paged = fold.finish(now)
    assert [(t.kind, t.at, t.reason, t.incident.to_json()) for t in paged.transitions] == [
        (t.kind, t.at, t.reason, t.incident.to_json()) for t in whole.transitions]
    assert {k: f.to_state() for k, f in paged.state.revisions.items()} == {
        k: f.to_state() for k, f in whole.state.revisions.items()}


def test_a_fold_refuses_an_observation_older_than_one_it_folded():
    config = load_config(EXAMPLES / "config.yaml")
    obs = classifier().classify([line(10, "MissingSessionTableError"), line(20, "hello")])
    fold = Fold(State(), complete_until=obs[-1].at, rules=config.rules())
    fold.add(obs[1:])
    with pytest.raises(ValueError, match="folded after"):
        fold.add(obs[:1])


# --- the cycle: `monitor once` over the demo export in any order ------------------------------


def once(export: Path, tmp: Path) -> tuple[dict[str, Any], str]:
    """`monitor once --format json` replaying `export` with a fresh store: the JSON and the
    console notifications (what Slack would be told)."""
    text = (EXAMPLES / "config.yaml").read_text()
    text = text.replace("spector-incident.json", str(export))
    text = text.replace("sqlite:///.monitor/demo.db", f"sqlite:///{tmp}/state.db")
    config = tmp / "config.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["once", "--config", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def as_shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    return once(EXPORT, tmp_path_factory.mktemp("shipped"))


def reordered(items: list[Any], order: str) -> list[Any]:
    if order == "oldest first":
        return items[::-1]
    if order == "shuffled":
        return random.Random(14).sample(items, len(items))
    if order == "each twice":
        return items + items[::-1]
    return items


@pytest.mark.parametrize("fmt", ["array", "json lines", "gzip array"])
@pytest.mark.parametrize("order", ["newest first", "oldest first", "shuffled", "each twice"])
def test_the_export_concludes_the_same_whatever_its_order(tmp_path, as_shipped, order, fmt):
    items = reordered(json.loads(EXPORT.read_text()), order)
    path = tmp_path / "export.json"
    if fmt == "json lines":
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    elif fmt == "gzip array":
        path.write_bytes(gzip.compress(json.dumps(items, indent=2).encode()))
    else:
        path.write_text(json.dumps(items, indent=2))
    doc, told = once(path, tmp_path)
    shipped, shipped_told = as_shipped
    assert doc["stats"]["entries_read"] == len(items)  # every copy read, each key used once
    assert {**doc, "stats": None} == {**shipped, "stats": None}
    assert told == shipped_told
    assert [i["status"] for i in doc["incidents"]] == ["resolved", "resolved"]


@pytest.mark.parametrize("size", [1, 7, 5000])
def test_the_page_size_changes_nothing(tmp_path, as_shipped, monkeypatch, size):
    monkeypatch.setattr(replay, "PAGE_ENTRIES", size)
    assert once(EXPORT, tmp_path) == as_shipped


def test_the_replay_concludes_what_one_batch_of_the_whole_file_does(as_shipped):
    """The reference: every entry classified as one batch and advanced once, as before."""
    config = load_config(EXAMPLES / "config.yaml")
    entries = demo_entries()
    now = max(e.timestamp for e in entries)
    observations = build_classifier(config, ["spector"], "spector-prod").classify(entries)
    whole = advance(State(), observations, now=now, complete_until=now,
                    rules=config.rules("spector-prod"))
    doc, _ = as_shipped
    assert sorted(json.dumps(i.to_json(), sort_keys=True)
                  for i in whole.state.incidents.values()) == sorted(
        json.dumps(i, sort_keys=True) for i in doc["incidents"])
    assert len(doc["revisions"]) == len(whole.state.revisions)


def test_a_second_replay_of_the_same_export_counts_nothing_twice(tmp_path):
    """The dedupe keys the replay commits are those a later read can meet again."""
    first, _ = once(EXPORT, tmp_path)
    config = tmp_path / "config.yaml"
    result = CliRunner().invoke(main, ["once", "--config", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["notifications_sent"] == 0
    store = open_store(load_config(config).state.url)
    try:
        state = store.load_state("spector-prod")
    finally:
        store.close()
    assert sorted(i.count for i in state.incidents.values()) == sorted(
        i["count"] for i in first["incidents"])


def test_a_spilled_replay_cleans_up_after_itself(tmp_path, monkeypatch):
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    once(EXPORT, tmp_path)
    assert list(spill.iterdir()) == []


def test_window_bounds_of_a_replay_hold(tmp_path):
    """`--now` replays only what came before it, page by page as well."""
    text = (EXAMPLES / "config.yaml").read_text().replace(
        "spector-incident.json", str(EXPORT)).replace(
        "sqlite:///.monitor/demo.db", f"sqlite:///{tmp_path}/state.db")
    (tmp_path / "config.yaml").write_text(text)
    result = CliRunner().invoke(main, ["once", "--config", str(tmp_path / "config.yaml"),
                                       "--format", "json", "--now",
                                       "2025-12-05T00:00:00Z"])
    assert result.exit_code == 1, result.output  # the first day: the incident is open
    doc = json.loads(result.stdout)
    assert [(i["signal"], i["status"]) for i in doc["incidents"]] == [
        ("missing-session-table", "open")]
    assert all(i["last_seen"] <= doc["checked_at"] for i in doc["incidents"])


def test_keys_with_lone_surrogates_spill_and_sort_as_text():
    odd = [replace(line(1, "x"), insert_id=i) for i in ("\ud800b", "a\udfff", "\u00e9", "a")]
    odd.append(replace(odd[0], log_name="projects/p/logs/\ud83d"))
    got = [e for page in replay_pages([*odd, odd[1]], 2, spill_after=1) for e in page]
    assert got == sorted(odd, key=event_order)


def test_a_replay_stopped_midway_saves_nothing_and_leaves_no_spill(tmp_path, monkeypatch):
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    shipped = load_config(EXAMPLES / "config.yaml")
    config = shipped.model_copy(update={"state": shipped.state.model_copy(
        update={"url": f"sqlite:///{tmp_path}/state.db"})})
    store = open_store(config.state.url)
    stop = threading.Event()
    looked_up = store.seen_keys

    def seen_keys(keys: list[str]) -> set[str]:
        stop.set()  # SIGTERM while the first page is folded
        return looked_up(keys)

    monkeypatch.setattr(store, "seen_keys", seen_keys)
    source = FileSource(EXPORT)
    try:
        with pytest.raises(Cancelled):
            run_cycle(config, store, source, ConsoleNotifier(io.StringIO()), unit="spector-prod",
                      services=["spector"], project="spector-prod",
                      now=source.latest_timestamp() or datetime.now(UTC), stop=stop)
        assert store.checkpoint("spector-prod") is None
        assert store.load_state("spector-prod").incidents == {}
    finally:
        store.close()
    assert list(spill.iterdir()) == []


def test_a_replay_whose_lease_is_taken_over_midway_saves_and_sends_nothing(tmp_path):
    """`monitor once` renews its lease as a long replay goes on (Leadership.keep); when the
    renewal finds another instance took the unit over, the replay stops before its commit."""
    shipped = load_config(EXAMPLES / "config.yaml")
    config = shipped.model_copy(update={"state": shipped.state.model_copy(
        update={"url": f"sqlite:///{tmp_path}/state.db"})})
    store, other = open_store(config.state.url), open_store(config.state.url)
    ticks = iter(range(0, 10**9, 60))  # a minute passes between two looks at the clock
    once = Leadership(store=store, holder="once-a", units=["spector-prod"],
                      ttl=timedelta(milliseconds=300), interval=timedelta(milliseconds=100),
                      burst=True, clock=lambda: float(next(ticks)))
    once.refresh()
    lease = once.held["spector-prod"]
    source = FileSource(EXPORT)
    now = source.latest_timestamp() or datetime.now(UTC)
    try:
        claim_when_expired(other, "run-b", "spector-prod")
        with pytest.raises(LeaseLost, match="taken over during this check"):
            run_cycle(config, store, source, ConsoleNotifier(io.StringIO()), unit="spector-prod",
                      services=["spector"], project="spector-prod", now=now, lease=lease,
                      keep_alive=lambda: once.keep("spector-prod"))
        assert store.checkpoint("spector-prod") is None
        assert store.load_state("spector-prod").incidents == {} and store.queued() == []
    finally:
        store.close()
        other.close()
