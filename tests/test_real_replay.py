"""The real-world corpus replayed end to end: `monitor once` over a file export, Slack over HTTP.

One afternoon of spector built only from tests/data/real (each file's README names its public
source): the package's real `MissingSessionTableError` written by `console.error` and pino at
14:05 on `spector-00042-wex`, whose error page then loads its scripts, styles and icons with 200s;
a gcloud deploy of `spector-00043-kab` that never becomes ready; four rejected deploy calls; the
fix `spector-00044-mop` deployed through the v2 Admin API (a long-running call, two entries); the
old instance shut down; a successful `/app` on the fix; and, from a central bucket, staging's
`spector` failing at the same time.

What must hold: the incident opens once and counts four logged errors; the assets keep it open and
the thread says so in one line; the rejected calls are not deploys; the fix is named; staging is
never counted; and a poller reading it in steps says exactly what the whole replay says.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from monitor.cli import main

REAL = Path(__file__).parent / "data" / "real"
ROOT = Path(__file__).resolve().parents[1]
FILES = ["node/console_error_split.json", "node/pino.json", "cloudrun/request_logs.json",
         "cloudrun/system_events.json", "cloudrun/audit_v1_rejected.json",
         "cloudrun/audit_v2_update_service.json", "cloudrun/central_bucket.json"]
INCIDENT = "spector:missing-session-table:20251209T140541Z"
END = datetime(2025, 12, 9, 16, 0, tzinfo=UTC)


def export(path: Path) -> Path:
    entries: list[dict[str, Any]] = []
    for name in FILES:
        entries += json.loads((REAL / name).read_text())
    # the gcloud deploy of spector-00043-kab (the v1 file's other entry renders the v2 deploy)
    entries.append(json.loads((REAL / "cloudrun/audit_v1_replace_service.json").read_text())[0])
    path.write_text(json.dumps(entries))
    return path


def config(tmp_path: Path, slack: Any = None) -> Path:
    """The shipped config.yaml, reading the export, with its state and Slack here."""
    text = (ROOT / "config.yaml").read_text()
    text = text.replace("type: cloud_logging          # cloud_logging | file",
                        f"type: file\n  path: {export(tmp_path / 'export.json')}")
    text = text.replace("${MONITOR_STATE_URL:-sqlite:///.monitor/state.db}",
                        f"sqlite:///{tmp_path}/state.db")
    if slack is not None:
        text = text.replace("token: ${SLACK_BOT_TOKEN:-}",
                            f"token: {slack.token}\n  base_url: {slack.base_url}\n"
                            "  min_interval: 0s")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def once(path: Path, now: datetime) -> tuple[int, dict[str, Any]]:
    result = CliRunner(env={"GOOGLE_CLOUD_PROJECT": "spector-prod"}).invoke(
        main, ["once", "--config", str(path), "--format", "json",
               "--now", now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code, doc = once(config(tmp_path_factory.mktemp("whole")), END)
    assert code == 0
    return doc


def test_one_incident_four_logged_errors_fixed_by_the_v2_deploy(whole):
    (incident,) = whole["incidents"]
    assert incident["id"] == INCIDENT
    assert incident["count"] == 4  # console.error once, pino three times: each counted once
    assert incident["revisions"] == {"spector-00042-wex": 4}  # never staging's 00019-tuv
    assert incident["introduced_by"] == "spector-00042-wex"
    assert incident["status"] == "resolved"
    assert incident["resolved_at"] == "2025-12-09T15:16:18.455021Z"  # the first /app on the fix
    assert incident["resolved_by"] == "spector-00044-mop"
    assert incident["resolution_reason"] == "fixed_by_deploy"


def test_revisions_say_what_was_deployed_and_what_was_only_seen(whole):
    revisions = {r["name"]: r for r in whole["revisions"]}
    assert "spector-00019-tuv" not in revisions  # staging, from the central bucket
    assert revisions["spector-00042-wex"]["deployed_at"] is None  # known from its logs only
    assert revisions["spector-00043-kab"]["deployed_at"] == "2025-12-09T14:31:07.241576Z"
    assert revisions["spector-00044-mop"]["deployed_at"] == "2025-12-09T15:13:28.960217Z"


def test_polling_tells_the_story_in_slack_once_and_in_order(tmp_path, whole, slack_server):
    path = config(tmp_path, slack_server)
    t, codes = datetime(2025, 12, 9, 14, 0, tzinfo=UTC), []
    seen: dict[str, dict[str, Any]] = {}
    while t < END:
        t = min(t + timedelta(minutes=10), END)
        code, doc = once(path, t)
        codes.append(code)
        seen.update({i["id"]: i for i in doc["incidents"]})  # the latest word on each
    assert codes[0] == 1 and codes[-1] == 0
    keys = ("count", "revisions", "status", "resolved_at", "resolved_by", "resolution_reason",
            "introduced_by")
    assert [{k: i[k] for k in keys} for i in seen.values()] == [
        {k: i[k] for k in keys} for i in whole["incidents"]]

    (root,) = slack_server.messages("#spector-alerts")[:1]
    replies = [r["text"] for r in root["replies"]]
    assert len(replies) == len(set(replies))
    holds = [r for r in replies if r.startswith(":hourglass:")]
    assert holds == [":hourglass: Quiet since 2025-12-09 14:05 UTC (15m), but only static assets "
                     "were served: keeping it open. _reason: `only_static_assets`_"]
    updates = "\n".join(r for r in replies if r.startswith(":arrow_up:"))
    assert "spector-00043-kab deployed" in updates
    assert "spector-00043-kab failed to become ready" in updates
    assert updates.count("deploy rejected: ") == 4
    assert "Revision named 'spector-00043-kab' with different configuration already exists." \
        in updates
    # the fix's deploy and readiness (15:13) fall inside update_every: the resolution names it
    resolved = replies[-1]
    assert resolved.startswith(":white_check_mark: *Resolved:*")
    assert "Fixed by revision `spector-00044-mop`" in resolved
    assert "7 static asset(s) not counted" in resolved
    assert "_reason: `fixed_by_deploy`_" in resolved
    assert "<!channel>" not in "".join(replies) and "@channel" not in "".join(replies)
