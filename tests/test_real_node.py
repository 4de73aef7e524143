"""Real Node.js error output (tests/data/real/node, see its README) against the shipped signal.

Each file holds Cloud Run LogEntries as `gcloud logging read --format=json` prints them, built from
what the real loggers printed for a real `MissingSessionTableError` (the Shopify package, run).
Every error form must be matched once per logged error, quote the error's message, and be caught by
the signal in config.yaml; the controls and the lines around the error must not match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.classify import Classifier
from monitor.classify.observations import ErrorHit
from monitor.classify.signals import SignalMatcher, Signature
from monitor.config import load_config
from monitor.entries import JSON_TEXT_FIELDS, EntryKind, LogEntry, from_json

DATA = Path(__file__).parent / "data" / "real" / "node"
CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
SHIPPED = ("MissingSessionTableError|Prisma \\w+ table does not exist|MissingSessionStorageError"
           "|Prisma session storage is not ready")
SIGNAL = "missing-session-table"
MESSAGE = "Prisma session table does not exist"
NOT_READY = "Prisma session storage is not ready"

# file -> indexes of the entries that carry the signature; each is one logged error
HITS: dict[str, list[int]] = {
    "console_error_split.json": [0],
    "console_error_grouped.json": [0],
    "console_error_one_entry.json": [0],
    "string_and_stack.json": [0, 1],
    "pino.json": [0, 1, 2],
    "winston.json": [0, 1],
    "bunyan.json": [0],
    "google_structured.json": [0, 1, 2],
    "google_logging_libraries.json": [0, 1, 2],
    "controls.json": [],
    "lost_error_text.json": [],  # the logger dropped the error's text: nothing to match
    # logging-winston / logging-bunyan with useMessageField: the payload is an object in
    # `message` (nodejs-logging-winston #704)
    "google_logging_libraries_message_object.json": [0, 1],
    # Node's crash print quotes the `throw` line [7] above the error [9]: one crash, one hit
    "crash_unhandled_rejection.json": [9],
    # after isReady(): MissingSessionStorageError, the same outage, named by the shipped signal
    "not_ready.json": [0],
}

def load(name: str) -> list[dict[str, Any]]:
    data = json.loads((DATA / name).read_text(encoding="utf-8"))
    assert isinstance(data, list) and data
    return data


def entries(name: str) -> list[LogEntry]:
    return [from_json(obj) for obj in load(name)]


def shipped_matcher() -> SignalMatcher:
    return SignalMatcher([Signature(SIGNAL, re.compile(SHIPPED))])


def config_matcher() -> SignalMatcher:
    config = load_config(CONFIG, env={"GOOGLE_CLOUD_PROJECT": "spector-prod"})
    return SignalMatcher([Signature(s.name, s.match) for s in config.signals])


def hit_indexes(matcher: SignalMatcher, name: str) -> list[int]:
    found = []
    for i, entry in enumerate(entries(name)):
        hits = [h for h in matcher.hits(entry) if h.signal == SIGNAL]
        assert len(hits) <= 1, f"{name}[{i}] counted {len(hits)} times"
        if hits:
            found.append(i)
    return found


def cases() -> list[Any]:
    return [pytest.param(name, idx, id=name) for name, idx in HITS.items()]


def samples() -> list[Any]:
    return [pytest.param(name, i, id=f"{name}[{i}]") for name, idx in HITS.items() for i in idx]


def test_every_file_is_listed_and_every_entry_is_a_cloud_run_entry():
    assert sorted(p.name for p in DATA.glob("*.json")) == sorted(HITS)
    for name in HITS:
        for obj, entry in zip(load(name), entries(name), strict=True):
            assert obj["resource"]["type"] == "cloud_run_revision"
            assert ("textPayload" in obj) != ("jsonPayload" in obj)
            assert entry.service == "spector" and entry.project == "spector-prod"
            assert entry.kind in (EntryKind.APP, EntryKind.PLATFORM)


@pytest.mark.parametrize(("name", "expected"), cases())
def test_the_shipped_signal_matches_exactly_the_entries_with_the_error(name, expected):
    assert hit_indexes(shipped_matcher(), name) == expected


@pytest.mark.parametrize(("name", "expected"), cases())
def test_the_classifier_counts_each_logged_error_once(name, expected):
    classifier = Classifier(["spector"], shipped_matcher(), None)
    hits = [o for o in classifier.classify(entries(name)) if isinstance(o, ErrorHit)]
    ids = [load(name)[i]["insertId"] for i in expected]
    assert sorted(h.insert_id for h in hits) == sorted(ids)
    assert all(h.signal == SIGNAL and h.service == "spector" for h in hits)


@pytest.mark.parametrize(("name", "expected"), cases())
def test_the_signal_in_config_yaml_catches_every_form(name, expected):
    assert hit_indexes(config_matcher(), name) == expected


@pytest.mark.parametrize(("name", "index"), samples())
def test_the_quoted_sample_holds_the_error_message(name, index):
    (hit,) = shipped_matcher().hits(entries(name)[index])
    assert (NOT_READY if name == "not_ready.json" else MESSAGE) in hit.sample


def test_the_shipped_signal_is_the_one_in_config_yaml():
    config = load_config(CONFIG, env={"GOOGLE_CLOUD_PROJECT": "spector-prod"})
    assert [s.match.pattern for s in config.signals] == [SHIPPED]


def test_a_class_and_its_message_in_an_error_object_are_quoted_as_one_line():
    (hit,) = shipped_matcher().hits(entries("pino.json")[0])
    assert hit.sample.startswith(f"MissingSessionTableError: {MESSAGE}")


def test_an_entry_whose_several_fields_match_counts_once():
    pattern = re.compile(SHIPPED)
    for name in ("pino.json", "bunyan.json", "winston.json"):
        for obj, entry in zip(load(name), entries(name), strict=True):
            fields = []
            for path in JSON_TEXT_FIELDS:
                value: Any = obj["jsonPayload"]
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                if isinstance(value, str) and pattern.search(value):
                    fields.append(".".join(path))
            assert len(fields) >= 2, (name, fields)
            assert len(shipped_matcher().hits(entry)) == 1
    (one,) = entries("console_error_one_entry.json")  # the signature twice in one text
    assert len(re.findall(SHIPPED, one.text)) >= 2 and len(shipped_matcher().hits(one)) == 1


def test_the_class_name_is_only_where_node_inspects_the_error():
    """String(err), err.stack, bunyan, winston: "Error: ..." (the class sets no `name`)."""
    assert load("console_error_split.json")[0]["textPayload"].startswith(
        f"MissingSessionTableError: {MESSAGE}")
    for string_or_stack in load("string_and_stack.json")[:2]:
        assert string_or_stack["textPayload"].startswith(f"Error: {MESSAGE}")
    pino = load("pino.json")[0]["jsonPayload"]["err"]
    assert pino["type"] == "MissingSessionTableError" and pino["stack"].startswith("Error: ")
    assert load("bunyan.json")[0]["jsonPayload"]["err"]["name"] == "Error"
    for name in ("string_and_stack.json", "bunyan.json", "winston.json", "google_structured.json"):
        for entry in entries(name):
            assert "MissingSessionTableError" not in entry.text  # only the message alternative


def test_the_crash_is_caught_on_its_error_line():
    crash = entries("crash_unhandled_rejection.json")
    (hit,) = shipped_matcher().hits(crash[9])
    assert hit.sample.startswith(f"MissingSessionTableError: {MESSAGE}")
    assert crash[-1].kind is EntryKind.PLATFORM and crash[-1].text == "Container called exit(1)."
