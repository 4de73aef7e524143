"""Cloud Run's own entries, as real ones are shaped: tests/data/real/cloudrun (README: sources).

Audit entries of accepted and rejected deploy calls (Admin API v1 and v2), system events, the
platform's `varlog/system` lines, request logs with an error page's static assets, and a
central bucket holding two projects' `spector`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.classify import Classifier
from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    InstanceStopped,
    Observation,
    RequestServed,
)
from monitor.classify.prisma import PrismaParser
from monitor.classify.signals import SignalMatcher, Signature
from monitor.correlate import revisions as rev
from monitor.entries import LogEntry, from_json

DATA = Path(__file__).parent / "data" / "real" / "cloudrun"
MISSING = Signature("missing-session-table",
                    re.compile("MissingSessionTableError|Prisma session table does not exist"))
OLD, STUCK, FIX = "spector-00042-wex", "spector-00043-kab", "spector-00044-mop"


def load(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((DATA / name).read_text())
    return entries


def entries(name: str) -> list[LogEntry]:
    return [from_json(e) for e in load(name)]


def observe(*names: str, project: str | None = "spector-prod") -> list[Observation]:
    classifier = Classifier(["spector"], SignalMatcher([MISSING]), PrismaParser(), project)
    return classifier.classify([e for n in names for e in entries(n)])


def deploys(*names: str) -> list[DeployEvent]:
    return [o for o in observe(*names) if isinstance(o, DeployEvent)]


# --- audit: what was deployed, and what was only asked for --------------------------------------

def test_gcloud_replace_service_names_its_revision_and_the_console_one_names_none():
    first, second = deploys("audit_v1_replace_service.json")
    assert (first.stage, first.revision) == (DeployStage.DEPLOYED, STUCK)
    assert "deployer@spector-prod.iam.gserviceaccount.com" in first.message
    # The console's call names no revision; its response's latestCreatedRevisionName is the
    # previous one (written before the new revision exists): never taken as the new one.
    assert load("audit_v1_replace_service.json")[1]["protoPayload"]["response"]["status"][
        "latestCreatedRevisionName"] == STUCK
    assert (second.stage, second.revision) == (DeployStage.DEPLOYED, None)


@pytest.mark.parametrize("name", ["audit_v1_rejected.json", "audit_v2_rejected.json"])
def test_a_rejected_call_is_never_a_deploy(name):
    events = deploys(name)
    assert len(events) == len(load(name))
    assert all(e.stage is DeployStage.REJECTED and e.revision is None for e in events)
    messages = [e.message for e in events]
    if name == "audit_v1_rejected.json":
        assert messages[0].startswith(f"Revision named '{STUCK}' with different configuration "
                                      "already exists. (code 6")
        assert "Permission 'run.services.update' denied" in messages[1]


def test_rejected_calls_leave_no_deployed_revision():
    revisions: dict = {}
    for event in deploys("audit_v1_rejected.json", "audit_v2_rejected.json"):
        rev.fold(revisions, event)
    assert revisions == {}


def test_a_v2_long_running_update_is_one_deploy_named_from_its_last_entry():
    (event,) = deploys("audit_v2_update_service.json")
    last = load("audit_v2_update_service.json")[1]
    assert last["operation"]["last"] is True
    assert (event.stage, event.revision) == (DeployStage.DEPLOYED, FIX)
    assert event.at == from_json(last).timestamp


def test_an_unfinished_v2_call_says_nothing_until_it_ends():
    first = load("audit_v2_update_service.json")[0]
    assert deploys_of([first]) == []


def deploys_of(raw: list[dict[str, Any]]) -> list[DeployEvent]:
    classifier = Classifier(["spector"], SignalMatcher([MISSING]), None, "spector-prod")
    return [o for o in classifier.classify([from_json(e) for e in raw])
            if isinstance(o, DeployEvent)]


def test_a_failed_v2_call_is_rejected_even_on_its_last_entry():
    last = json.loads(json.dumps(load("audit_v2_update_service.json")[1]))
    last["protoPayload"]["status"] = {"code": 9, "message": "Revision 'spector-00044-mop' is not "
                                                            "ready and cannot serve traffic."}
    (event,) = deploys_of([last])
    assert event.stage is DeployStage.REJECTED and event.revision is None


# --- system events and the platform's own lines -------------------------------------------------

def test_system_events_say_which_revision_failed_and_which_became_ready():
    events = [(e.stage, e.revision) for e in deploys("system_events.json")]
    assert events == [(DeployStage.FAILED, STUCK), (DeployStage.READY, FIX),
                      (DeployStage.READY, FIX)]  # "for Service spector." names no revision


def test_instances_that_exit_or_are_shut_down_are_gone():
    stopped = [(o.revision, o.instance_id[:10], o.message.split(".")[0])
               for o in observe("system_events.json") if isinstance(o, InstanceStopped)]
    assert stopped == [
        (OLD, "0069c7a988", "Container terminated on signal 9"),
        (STUCK, "00a41e8c1d", "Container called exit(1)"),
        (OLD, "0069c7a988", "Shutting down user disabled instance"),
    ]


def test_a_revision_known_from_its_entries_only_is_first_seen_not_deployed():
    revisions: dict = {}
    for obs in observe("request_logs.json"):
        rev.fold(revisions, obs)
    facts = revisions[("spector", OLD)]
    assert facts.deployed_at is None and facts.arrival[0] == "first seen"
    assert facts.to_json()["deployed_at"] is None


# --- request logs: an error page and its assets --------------------------------------------------

def test_request_logs_tell_app_routes_from_the_assets_an_error_page_loads():
    served = [(o.status, o.route, o.asset) for o in observe("request_logs.json")
              if isinstance(o, RequestServed)]
    assert served == [
        (500, "/app", False),
        (200, "/assets/index-abc123.js", True),
        (200, "/build/root-xyz.css", True),
        (200, "/assets/index-abc123.js.map", True),
        (200, "/assets/inter-var-9f3e1a.woff2", True),
        (200, "/assets/logo-7d2c.svg", True),
        (200, "/favicon.ico", True),
        (500, "/auth/session-token", False),
        (200, "/robots.txt", True),
        (504, "/app", False),
        (200, "/app", False),
    ]


def test_failed_routes_are_kept_per_revision():
    revisions: dict = {}
    for obs in observe("request_logs.json"):
        rev.fold(revisions, obs)
    assert set(revisions[("spector", OLD)].failed_routes) == {"/app", "/auth/session-token"}
    assert revisions[("spector", FIX)].failed_routes == {}


# --- a central bucket ---------------------------------------------------------------------------

def test_a_central_bucket_counts_only_the_watched_project():
    served = [o for o in observe("central_bucket.json") if isinstance(o, RequestServed)]
    assert [(o.revision, o.status) for o in served] == [(FIX, 500)]
    staging = observe("central_bucket.json", project="spector-staging")
    assert [o.revision for o in staging if isinstance(o, RequestServed)] == ["spector-00019-tuv"]


def test_every_entry_names_its_project_from_labels_or_log_name():
    projects = {e.project for n in sorted(p.name for p in DATA.glob("*.json")) for e in entries(n)}
    assert projects == {"spector-prod", "spector-staging"}
