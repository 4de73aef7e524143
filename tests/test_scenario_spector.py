"""The spector incident, replayed from the demo export: the conclusions an engineer needs.

The same export is replayed whole, and in many small steps as a poller would see it; both must
reach the same conclusions, and the Slack threads must hold each message once, in order.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOWER = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"


def config_for(tmp_path: Path, slack=None) -> Path:
    text = (EXAMPLES / "config.yaml").read_text()
    text = text.replace("spector-incident.json", str(EXAMPLES / "spector-incident.json"))
    text = text.replace("sqlite:///.monitor/demo.db", f"sqlite:///{tmp_path}/state.db")
    if slack is not None:
        text = text.replace('token: ""', f"token: {slack.token}\n  base_url: {slack.base_url}"
                                         "\n  min_interval: 0s")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def once_json(config: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["once", "--config", str(config), "--format", "json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> dict:
    code, doc = once_json(config_for(tmp_path_factory.mktemp("whole")))
    assert code == 0
    return doc


def by_signal(doc: dict, signal: str) -> dict:
    (incident,) = [i for i in doc["incidents"] if i["signal"] == signal]
    return incident


def test_missing_session_table_incident(replay):
    i = by_signal(replay, "missing-session-table")
    assert i["kind"] == "error" and i["severity"] == "critical"
    assert i["status"] == "resolved"
    assert i["first_seen"] == "2025-12-04T21:03:08.987886Z"
    assert i["last_seen"] == "2025-12-13T01:07:05.218128Z"
    assert i["count"] == 157
    assert i["revisions"] == {"spector-00042-wex": 144, "spector-00043-fiz": 13}
    assert i["introduced_by"] == "spector-00042-wex"
    assert i["suspect_migrations"] == [LOWER]
    assert i["resolved_by"] == "spector-00044-mop"
    assert i["resolved_at"] == "2025-12-13T01:22:05.218128Z"  # 15 quiet minutes after the last
    assert i["regression_of"] is None and i["migration"] is None


def test_migration_incident_names_the_blocking_migration(replay):
    i = by_signal(replay, "migration-failed")
    assert i["kind"] == "migration"
    assert i["migration"] == {"name": LOWER, "outcome": "blocked", "code": "P3009"}
    assert i["revisions"] == {"spector-00042-wex": 1, "spector-00043-fiz": 1}  # P3018, P3009
    assert i["first_seen"].startswith("2025-12-05T03:10:14")
    assert i["status"] == "resolved" and i["resolved_by"] == "spector-00044-mop"
    assert i["resolved_at"].startswith("2025-12-13T01:06:02")


def test_revision_facts(replay):
    revs = {r["name"]: r for r in replay["revisions"]}
    assert list(revs) == ["spector-00041-kav", "spector-00042-wex", "spector-00043-fiz",
                          "spector-00044-mop"]  # the worker service is not watched
    assert revs["spector-00041-kav"]["migrations"] == []
    assert [(m["name"], m["outcome"], m["code"]) for m in revs["spector-00042-wex"]["migrations"]] \
        == [(LOWER, "applied", None), (None, "up_to_date", None), (LOWER, "failed", "P3018")]
    assert [(m["name"], m["outcome"]) for m in revs["spector-00043-fiz"]["migrations"]] == [
        (LOWER, "blocked")]
    assert [(m["name"], m["outcome"]) for m in revs["spector-00044-mop"]["migrations"]] == [
        (LOWER, "rolled_back"), (LOWER, "applied"), (FIX, "applied")]
    assert revs["spector-00042-wex"]["deployed_at"].startswith("2025-12-04T21:02:00")
    assert revs["spector-00044-mop"]["errors"] == {}
    assert revs["spector-00043-fiz"]["errors"] == {"missing-session-table": 13}


def test_stats(replay):
    assert replay["stats"]["entries_read"] == 1601
    assert replay["stats"]["entries_skipped"] == 0
    assert replay["stats"]["api_requests"] == 0


def test_demo_text_tells_the_story(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo keeps its state in ./.monitor
    result = CliRunner().invoke(main, ["once", "--config", str(EXAMPLES / "config.yaml"),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "introduced by spector-00042-wex" in out
    assert f'npx prisma migrate resolve --rolled-back "{LOWER}"' in out
    assert "fixed by revision spector-00044-mop" in out
    assert f"{FIX}` applied" in out


def test_polling_in_steps_reaches_the_same_conclusions(tmp_path, replay, slack_server):
    """Replay as a poller: a check every 6 hours of event time, then a final one."""
    config = config_for(tmp_path, slack_server)
    t = datetime(2025, 12, 4, 20, 0, tzinfo=UTC)
    end = datetime(2025, 12, 13, 2, 14, 25, 999999, tzinfo=UTC)
    codes, seen = [], {}
    while t < end:
        t = min(t + timedelta(hours=6), end)
        code, doc = once_json(config, "--now", t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        codes.append(code)
        seen.update({i["id"]: i for i in doc["incidents"]})  # the latest word on each
    assert codes[0] == 1 and codes[-1] == 0
    strip = ("count", "revisions", "last_seen", "first_seen", "resolved_at", "resolved_by",
             "status", "introduced_by", "suspect_migrations", "migration", "id")
    final = {i["id"]: {k: i[k] for k in strip} for i in seen.values()}
    whole = {i["id"]: {k: i[k] for k in strip} for i in replay["incidents"]}
    assert final == whole
    # Slack: one thread per incident; each message once; resolution broadcast last.
    roots = [m for m in slack_server.messages("#spector-alerts")
             if m.get("subtype") != "thread_broadcast"]
    assert len(roots) == 2
    for root in roots:
        texts = [r["text"] for r in root["replies"]]
        assert len(texts) == len(set(texts))
        assert "Resolved" in texts[-1]
        assert root["replies"][-1].get("subtype") == "thread_broadcast"
        assert root["text"].startswith(":white_check_mark: RESOLVED")
    posts = slack_server.calls_to("chat.postMessage")
    keys = [c.params["metadata"]["event_payload"]["key"] for c in posts]
    assert len(keys) == len(set(keys))
