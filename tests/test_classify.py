"""classify: entries in, observations out (signals, deploys, migrations, traffic)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from monitor.classify import Classifier, event_order, in_event_order
from monitor.classify.deploys import deploy_event
from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    MigrationEvent,
    MigrationOutcome,
    RequestServed,
    RevisionSeen,
)
from monitor.classify.prisma import PrismaParser
from monitor.classify.signals import SignalMatcher, Signature
from monitor.entries import EntryKind
from tests.helpers import line

MISSING = Signature("missing-session-table", re.compile("MissingSessionTableError"))
TIMEOUT = Signature("timeout", re.compile(r"TimeoutError: .* exceeded \d+s"))
BAD = "20251204205052_map_session_table_to_lowercase"


def classifier(*signatures: Signature) -> Classifier:
    return Classifier(["spector"], SignalMatcher(signatures or (MISSING,)), PrismaParser())


def test_stack_trace_counts_once_on_the_line_with_the_signature():
    entries = [
        line(1, "MissingSessionTableError: Prisma session table does not exist."),
        line(1.001, "    at PrismaSessionStorage.ensureReady (/app/prisma.js:60:13)"),
        line(1.002, "    at async PrismaSessionStorage.loadSession (/app/prisma.js:80:5)"),
    ]
    hits = [o for o in classifier().classify(entries) if isinstance(o, ErrorHit)]
    assert len(hits) == 1
    assert hits[0].sample.startswith("MissingSessionTableError")
    assert hits[0].revision == "spector-00042-wex"


def test_one_entry_with_the_signature_twice_counts_once():
    text = "MissingSessionTableError: a\nCaused by MissingSessionTableError: b"
    assert len(SignalMatcher([MISSING]).hits(line(1, text))) == 1


def test_sample_is_the_matching_line_of_a_multiline_entry():
    (hit,) = SignalMatcher([MISSING]).hits(line(1, "Error handling request\n"
                                                "MissingSessionTableError: no table\n  at x"))
    assert hit.sample == "MissingSessionTableError: no table"


def test_several_signals_each_match_their_own():
    matcher = SignalMatcher([MISSING, TIMEOUT])
    assert [h.signal for h in matcher.hits(line(1, "TimeoutError: job exceeded 30s"))] == [
        "timeout"]
    assert matcher.hits(line(1, "all good")) == []


def test_unwatched_services_and_request_logs_never_match():
    entries = [line(1, "MissingSessionTableError", service="spector-worker"),
               line(2, "GET /MissingSessionTableError 500", kind=EntryKind.REQUEST, status=500)]
    obs = classifier().classify(entries)
    assert not [o for o in obs if isinstance(o, ErrorHit)]
    assert [o.status for o in obs if isinstance(o, RequestServed)] == [500]
    assert all(o.service == "spector" for o in obs)


def test_output_is_in_event_time_order_whatever_the_read_order():
    entries = [line(3, "MissingSessionTableError"), line(1, "hello"),
               line(2, "GET / 200", kind=EntryKind.REQUEST, status=200)]
    obs = classifier().classify(entries)
    assert [o.at for o in obs] == sorted(o.at for o in obs)
    seen = [o for o in obs if isinstance(o, RevisionSeen)]
    assert [s.at for s in seen] == [entries[1].timestamp, entries[0].timestamp]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3], [0, 2, 1, 3]])
def test_event_order_without_a_sort_only_when_already_in_order(order):
    a, b, c, d = line(1, "a"), line(2, "b"), line(2, "c"), line(3, "d")
    c = replace(c, insert_id="id0")  # same second as b, sorts before it by insert id
    entries = [[a, b, c, d][i] for i in order]
    assert in_event_order(entries) == sorted(entries, key=event_order)


def test_migration_output_of_two_interleaved_instances_is_reassembled_per_instance():
    a = ["Prisma schema loaded from prisma/schema.prisma",
         "3 migrations found in prisma/migrations",
         f"Applying migration `{BAD}`",
         "The following migration(s) have been applied:",
         "All migrations have been successfully applied."]
    b = ["Prisma schema loaded from prisma/schema.prisma",
         "3 migrations found in prisma/migrations",
         "No pending migrations to apply."]
    entries = []
    for i, text in enumerate(a):
        entries.append(line(10 + i, text, instance="A"))
    for i, text in enumerate(b):
        entries.append(line(10.5 + i, text, instance="B"))
    events = [o for o in classifier().classify(entries) if isinstance(o, MigrationEvent)]
    assert {(e.instance_id, e.outcome, e.name) for e in events} == {
        ("A", MigrationOutcome.APPLIED, BAD), ("B", MigrationOutcome.UP_TO_DATE, None)}


def test_error_block_context_lines_reach_the_parser():
    texts = ["Error: P3018", "", "A migration failed to apply.",
             f"Migration name: {BAD}", "Database error code: 42P07", "Database error:",
             'relation "session" already exists']
    entries = [line(100 + i, t) for i, t in enumerate(texts)]
    (event,) = [o for o in classifier().classify(entries) if isinstance(o, MigrationEvent)]
    assert (event.outcome, event.code, event.name) == (MigrationOutcome.FAILED, "P3018", BAD)


def test_no_migration_parser_when_the_tool_is_none():
    c = Classifier(["spector"], SignalMatcher([MISSING]), None)
    obs = c.classify([line(1, "No pending migrations to apply.")])
    assert not [o for o in obs if isinstance(o, MigrationEvent)]


def audit(seconds, payload, kind=EntryKind.AUDIT, revision=""):
    return line(seconds, "", kind=kind, revision=revision, raw={"protoPayload": payload})


def test_deploy_from_admin_activity_audit_log():
    e = audit(1, {"methodName": "google.cloud.run.v1.Services.ReplaceService",
                  "authenticationInfo": {"principalEmail": "dev@spector.example"},
                  "response": {"spec": {"template": {"metadata": {
                      "name": "spector-00044-mop"}}}}})
    assert deploy_event(e) == DeployEvent(e.timestamp, "spector", "spector-00044-mop",
                                          DeployStage.DEPLOYED, "deployed by dev@spector.example")


def test_ready_and_failed_from_system_events():
    ok = audit(1, {"status": {"message": "Ready condition status changed to True for Revision "
                                         "spector-00044-mop."}}, kind=EntryKind.SYSTEM)
    bad = audit(2, {"status": {"message": "Ready condition status changed to False for Revision "
                                          "spector-00045-zzz with message: Container failed"}},
                kind=EntryKind.SYSTEM)
    assert deploy_event(ok).stage is DeployStage.READY
    assert deploy_event(ok).revision == "spector-00044-mop"
    assert deploy_event(bad).stage is DeployStage.FAILED
    assert deploy_event(bad).revision == "spector-00045-zzz"


def test_other_audit_entries_are_not_deploys():
    assert deploy_event(audit(1, {"methodName": "google.cloud.run.v1.Services.SetIamPolicy"})) \
        is None
    assert deploy_event(line(1, "Ready condition status changed to True for Revision x.")) is None
