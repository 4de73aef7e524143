"""`monitor once` and `check-config` through the CLI: output contract and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from tests.helpers import export_entry, small_incident

INCIDENT_KEYS = {"id", "service", "signal", "kind", "severity", "status", "first_seen",
                 "last_seen", "count", "count_estimated", "count_bound",
                 "revisions", "introduced_by", "suspect_migrations",
                 "resolved_at", "resolved_by", "regression_of", "resolution_reason",
                 "migration"}
REVISION_KEYS = {"service", "name", "deployed_at", "first_seen", "last_seen", "migrations",
                 "errors"}


def write_config(tmp: Path, entries: list, extra: str = "") -> Path:
    (tmp / "logs.json").write_text(json.dumps(entries))
    config = tmp / "config.yaml"
    config.write_text(
        "services: [spector]\nproject: spector-prod\n"
        "source: {type: file, path: logs.json}\n"
        "signals: [{name: missing-session-table, match: MissingSessionTableError}]\n"
        f"state: {{url: 'sqlite:///{tmp}/state.db'}}\n{extra}")
    return config


def slack_config(server) -> str:
    return (f"slack: {{token: {server.token}, base_url: '{server.base_url}', "
            "min_interval: 0s}\n")


def roots(server, channel: str) -> list[dict]:
    """Top-level messages; a broadcast reply also shows in the channel, as in Slack."""
    return [m for m in server.messages(channel) if m.get("subtype") != "thread_broadcast"]


def once(config: Path, *args: str):
    return CliRunner().invoke(main, ["once", "--config", str(config), *args])


def test_json_contract_and_exit_code_when_resolved(tmp_path):
    result = once(write_config(tmp_path, small_incident()), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"checked_at", "window", "incidents", "revisions", "stats", "read_only"}
    assert doc["read_only"] is False and doc["stats"]["notifications_waiting"] == 0
    assert doc["checked_at"] == "2025-12-04T21:34:00Z"  # the newest entry is the clock
    assert doc["window"] == {"start": None, "end": "2025-12-04T21:34:00Z"}
    (incident,) = doc["incidents"]
    assert set(incident) == INCIDENT_KEYS
    assert incident["status"] == "resolved"
    assert incident["count"] == 2
    assert incident["introduced_by"] == "spector-00042-wex"
    assert incident["suspect_migrations"] == ["20251204205052_map_session_table_to_lowercase"]
    assert incident["resolved_by"] == "spector-00044-mop"
    assert incident["resolved_at"] == "2025-12-04T21:17:00Z"
    assert incident["regression_of"] is None and incident["migration"] is None
    assert all(set(r) == REVISION_KEYS for r in doc["revisions"])
    assert doc["stats"] == {"entries_read": len(small_incident()), "entries_skipped": 0,
                            "api_requests": 0, "follow_up_requests": 0, "probe_requests": 0,
                            "sampled": {},  # read whole: no flood
                            "notifications_sent": 5,  # 3 posts, 2 edits
                            "notifications_waiting": 0}


def test_exit_code_1_while_open_and_now_moves_the_clock(tmp_path):
    config = write_config(tmp_path, small_incident())
    result = once(config, "--now", "2025-12-04T21:05:00Z", "--format", "json")
    assert result.exit_code == 1
    (incident,) = json.loads(result.stdout)["incidents"]
    assert incident["status"] == "open" and incident["resolved_at"] is None


def test_second_run_posts_nothing_and_newer_data_continues_the_thread(tmp_path, slack_server):
    extra = (f"slack: {{token: {slack_server.token}, "
             f"base_url: '{slack_server.base_url}', min_interval: 0s, "
             "channel: '#spector-alerts'}\n")
    entries = small_incident()
    config = write_config(tmp_path, entries, extra)
    assert once(config, "--now", "2025-12-04T21:05:00Z").exit_code == 1
    assert len(slack_server.calls_to("chat.postMessage")) == 1
    assert once(config, "--now", "2025-12-04T21:05:00Z").exit_code == 1
    assert len(slack_server.calls_to("chat.postMessage")) == 1  # nothing new
    assert once(config).exit_code == 0  # the rest of the file: resolution, same thread
    (root,) = roots(slack_server, "#spector-alerts")
    assert "MissingSessionTableError" in root["text"]
    assert root["edited"]  # chat.update shows the resolved state
    assert [r["subtype"] for r in root["replies"] if "subtype" in r] == ["thread_broadcast"]
    calls = len(slack_server.calls)
    assert once(config).exit_code == 0
    assert len(slack_server.calls) == calls  # a third run over the same data says nothing


def test_dry_run_sends_and_saves_nothing(tmp_path, slack_server):
    extra = slack_config(slack_server)
    config = write_config(tmp_path, small_incident(), extra)
    result = once(config, "--dry-run")
    assert result.exit_code == 0
    assert "dry run" in result.stdout and "Resolved" in result.stdout
    assert slack_server.calls == []
    # nothing was saved: a real run afterwards still alerts
    posts = result.stdout.count("--- post_root") + result.stdout.count("--- reply")
    assert posts == 3  # the alert, an update (fix deployed, count doubled), the resolution
    assert once(config).exit_code == 0
    assert len(slack_server.calls_to("chat.postMessage")) == posts


def test_malformed_entries_are_counted_and_skipped(tmp_path):
    entries = [*small_incident(), "not an entry", {"insertId": "x"}]
    result = once(write_config(tmp_path, entries), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["stats"]["entries_skipped"] == 2


def test_unwatched_service_is_ignored(tmp_path):
    entries = [export_entry(1, 10, "MissingSessionTableError", service="spector-worker")]
    result = once(write_config(tmp_path, entries), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["incidents"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "five minutes"], "invalid duration"),
    (["--now", "yesterday"], "not an RFC3339 time"),
    (["--format", "xml"], "Invalid value for '--format'"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    result = once(write_config(tmp_path, small_incident()), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_config_error_exits_2_naming_the_key(tmp_path):
    config = write_config(tmp_path, [])
    config.write_text(config.read_text().replace("match: MissingSessionTableError",
                                                 "match: x, window: five minutes"))
    result = once(config)
    assert result.exit_code == 2
    assert "signals[0].window: invalid duration 'five minutes'" in result.stderr


def test_unreadable_source_exits_3(tmp_path):
    config = write_config(tmp_path, [])
    (tmp_path / "logs.json").unlink()
    result = once(config)
    assert result.exit_code == 3


def test_slack_failure_exits_3_and_keeps_the_message_queued(tmp_path, slack_server):
    extra = slack_config(slack_server)
    config = write_config(tmp_path, small_incident(), extra)
    slack_server.fail_next("chat.postMessage", times=1, status=500)
    result = once(config, "--now", "2025-12-04T21:05:00Z")
    assert result.exit_code == 3
    assert slack_server.token not in result.output
    assert slack_server.messages("#alerts") == []
    # not before its backoff (2 s after one failure), and still owed meanwhile: exit 3, not 1
    waiting = once(config, "--now", "2025-12-04T21:05:00Z")
    assert waiting.exit_code == 3
    assert "1 notification(s) not delivered yet" in waiting.output
    assert slack_server.messages("#alerts") == []
    time.sleep(2.1)
    assert once(config, "--now", "2025-12-04T21:05:00Z").exit_code == 1
    assert len(slack_server.messages("#alerts")) == 1


def test_check_config_masks_secrets(tmp_path):
    config = write_config(tmp_path, [], "slack: {token: xoxb-very-secret}\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0
    assert "xoxb-very-secret" not in result.output
    assert "token: '***'" in result.stdout


@pytest.mark.parametrize("url", [
    "postgresql://monitor@10.0.0.3/monitor?password=hunter2&sslmode=require",
    "postgresql://monitor:hunter2@10.0.0.3/monitor",
    "postgresql://monitor@/monitor?host=/cloudsql/p:r:i&password=hunter2",
])
def test_check_config_masks_a_database_password_in_every_form(tmp_path, url):
    config = write_config(tmp_path, [], "")
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path}/state.db", url))
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "***" in result.stdout


def test_console_script_is_installed_and_runs(tmp_path):
    config = write_config(tmp_path, small_incident())
    proc = subprocess.run([sys.executable, "-m", "monitor", "once", "--config", str(config),
                           "--format", "json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["incidents"][0]["status"] == "resolved"
