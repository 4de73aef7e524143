"""`monitor status`: the store's view, from a store filled by real cycles over the demo export.

Nothing here is faked but the failing notifier (a stand-in for an unreachable Slack): the store is
the real SQLite store, the cycles are `run_cycle` over `FileSource`.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.check import run_cycle
from monitor.config import Config, parse_config
from monitor.messages import Message, Thread
from monitor.notify.console import ConsoleNotifier
from monitor.notify.message import DeliveryError
from monitor.notify.outbox import drain
from monitor.output import INCIDENT_KEYS, REVISION_KEYS
from monitor.safe import clean
from monitor.sources.file import FileSource
from monitor.status import status_report, status_text
from monitor.store.sqlite import SQLiteStore
from monitor.times import for_people, format_time
from tests.helpers import export_entry

EXPORT = Path(__file__).resolve().parents[1] / "examples" / "spector-incident.json"
LOWER = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"
UNIT = "spector-prod"
FIRST_DAY = datetime(2025, 12, 5, tzinfo=UTC)


def make_config(tmp_path: Path, path: Path = EXPORT, **extra: object) -> Config:
    return parse_config({
        "project": UNIT, "services": ["spector"],
        "source": {"type": "file", "path": str(path)},
        "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError",
                     "severity": "critical", "open_after": 1, "window": "5m",
                     "resolve_after": "15m"}],
        "migrations": {"tool": "prisma"},
        "state": {"url": f"sqlite:///{tmp_path}/state.db"},
        **extra,
    }, env={})


class FailingNotifier:
    """Slack, unreachable: every send fails and may be retried."""

    min_interval = 0.0
    timeout = 0.0

    def find(self, message: Message, root: Thread | None) -> Thread | None:
        raise DeliveryError("boom", retryable=True)

    def send(self, message: Message, root: Thread | None, linked: Thread | None = None) -> Thread:
        raise DeliveryError("boom", retryable=True)


def cycle(config: Config, store: SQLiteStore, now: datetime | None = None, notifier=None,
          path: Path | None = None) -> datetime:
    source = FileSource(path or config.source.path or EXPORT)
    now = now or source.latest_timestamp()
    assert now is not None
    run_cycle(config, store, source, notifier or ConsoleNotifier(io.StringIO()), unit=UNIT,
              services=["spector"], project=UNIT, now=now)
    return now


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> tuple[Config, SQLiteStore, datetime]:
    """The whole export, replayed in one cycle: both incidents resolved on 2025-12-13."""
    tmp = tmp_path_factory.mktemp("replayed")
    config = make_config(tmp)
    store = SQLiteStore(config.state.url)
    end = cycle(config, store)
    yield config, store, end
    store.close()


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def signals(incidents: list[dict]) -> list[str]:
    return [i["signal"] for i in incidents]


def test_resolved_incidents_are_recent_newest_first(replayed):
    config, store, end = replayed
    report = status_report(config, store, end + timedelta(minutes=2))
    assert report["incidents"]["open"] == []
    recent = report["incidents"]["recent"]
    # resolved 01:22:05 and 01:06:02 on 2025-12-13: the later one first
    assert signals(recent) == ["missing-session-table", "migration-failed"]
    assert all(tuple(i) == INCIDENT_KEYS and i["status"] == "resolved" for i in recent)
    assert recent[0]["resolved_by"] == "spector-00044-mop"
    assert recent[0]["suspect_migrations"] == [LOWER]
    assert recent[1]["migration"] == {"name": LOWER, "outcome": "blocked", "code": "P3009"}


@pytest.mark.parametrize(("now", "expected"), [
    ("2025-12-20T01:00:00Z", ["missing-session-table", "migration-failed"]),
    ("2025-12-20T01:10:00Z", ["missing-session-table"]),  # 7 days after 01:06:02, not 01:22:05
    ("2025-12-21T00:00:00Z", []),
])
def test_recent_means_resolved_within_seven_days_of_now(replayed, now, expected):
    config, store, _ = replayed
    report = status_report(config, store, datetime.fromisoformat(now))
    assert signals(report["incidents"]["recent"]) == expected
    assert report["checked_at"] == now


def test_an_open_incident_on_the_first_day(tmp_path, store):
    config = make_config(tmp_path)
    cycle(config, store, now=FIRST_DAY)
    report = status_report(config, store, FIRST_DAY + timedelta(minutes=5))
    (incident,) = report["incidents"]["open"]
    assert incident["signal"] == "missing-session-table" and incident["status"] == "open"
    assert incident["introduced_by"] == "spector-00042-wex"
    assert incident["suspect_migrations"] == [LOWER]
    assert incident["resolved_at"] is None
    assert report["incidents"]["recent"] == []  # the migration failure comes at 03:10 on the 5th
    text = status_text(report)
    assert text.splitlines()[0] == "1 incident open; last check 5m ago: ok"
    assert "  OPEN     spector:missing-session-table:20251204T210308Z  [critical]" in text


def test_revisions_newest_first_with_migrations_and_readiness(replayed):
    config, store, end = replayed
    revisions = status_report(config, store, end)["revisions"]
    assert [r["name"] for r in revisions] == ["spector-00044-mop", "spector-00043-fiz",
                                              "spector-00042-wex", "spector-00041-kav"]
    assert all(tuple(r) == (*REVISION_KEYS, "ready", "ready_at", "requests_ok",
                            "requests_failed") for r in revisions)
    revs = {r["name"]: r for r in revisions}
    assert (LOWER, "applied") in [(m["name"], m["outcome"])
                                  for m in revs["spector-00042-wex"]["migrations"]]
    assert (FIX, "applied") in [(m["name"], m["outcome"])
                                for m in revs["spector-00044-mop"]["migrations"]]
    assert revs["spector-00042-wex"]["deployed_at"].startswith("2025-12-04T21:02:00")
    assert revs["spector-00042-wex"]["errors"] == {"missing-session-table": 144}
    assert revs["spector-00042-wex"]["requests_failed"] == 144
    mop = revs["spector-00044-mop"]
    assert mop["ready"] is True and mop["ready_at"].startswith("2025-12-13T01:06")
    assert mop["requests_ok"] > 0 and mop["requests_failed"] == 0
    assert revs["spector-00041-kav"]["ready"] is None  # no system event says


def test_checkpoint_lag_and_last_cycle(replayed):
    config, store, end = replayed
    report = status_report(config, store, end + timedelta(minutes=14, seconds=30))
    (unit,) = report["units"]
    lease = unit["lease"]
    assert {k: v for k, v in unit.items() if k != "lease"} == {
        "unit": UNIT, "project": UNIT, "services": ["spector"],
        "checkpoint": {"until": format_time(end), "cursor": None, "window_end": None},
        "lag_seconds": 870.0,
    }
    assert lease["state"] == "free" and lease["holder"] is None
    cycle_ = report["last_cycle"]
    assert cycle_["checked_at"] == format_time(end)
    assert cycle_["ok"] is True and cycle_["error"] is None
    assert (cycle_["entries_read"], cycle_["entries_skipped"], cycle_["api_requests"]) \
        == (1601, 0, 0)
    assert cycle_["transitions"] > 0 and cycle_["cut_at"] is None
    assert report["outbox"] == {"queued": 0, "messages": []}
    text = status_text(report)
    assert text.splitlines()[0] == "nothing open; last check 14m ago: ok"
    assert f"  {UNIT} (spector): read up to " in text and "14m behind (870s)" in text
    assert "1601 entries read, 0 skipped, 0 API request(s)" in text
    assert "outbox: empty" in text
    assert json.loads(json.dumps(report)) == report


def test_text_shows_the_story(replayed):
    config, store, end = replayed
    text = status_text(status_report(config, store, end))
    assert "  RESOLVED spector:migration-failed:20251205T031014Z  [critical]" in text
    assert f"migration: {LOWER} blocked (P3009)" in text
    assert "resolved 2025-12-13 01:22:05 UTC by spector-00044-mop" in text
    assert f"{FIX} applied" in text
    assert "spector/spector-00043-fiz: deployed 2025-12-13 00:41:03 UTC, ready" in text
    assert len(text.splitlines()) < 60


def test_undelivered_messages_stay_in_the_outbox_with_their_error(tmp_path, store):
    config = make_config(tmp_path)
    end = cycle(config, store, notifier=FailingNotifier())
    report = status_report(config, store, end)
    outbox = report["outbox"]
    assert outbox["queued"] == len(outbox["messages"]) > 0
    roots = [m for m in outbox["messages"] if m["action"] == "post_root"]
    assert {m["incident_id"].split(":")[1] for m in roots} \
        == {"missing-session-table", "migration-failed"}
    assert all(m["attempts"] == 1 and m["last_error"] == "boom" for m in roots)
    # what follows a failed root waits behind it, untried
    assert all(m["attempts"] == 0 and m["last_error"] is None
               for m in outbox["messages"] if m["action"] != "post_root")
    assert set(outbox["messages"][0]) == {"key", "incident_id", "action", "attempts",
                                          "last_error"}
    text = status_text(report)
    assert text.splitlines()[0] == ("nothing open; last check 0s ago: ok; "
                                    f"{outbox['queued']} notification(s) not yet delivered")
    assert f"outbox: {outbox['queued']} message(s) queued" in text
    assert "post_root: 1 attempt(s), last error: boom" in text
    # once their backoff has passed, the outbox delivers them
    drain(store, ConsoleNotifier(io.StringIO()), now=datetime.now(UTC) + timedelta(seconds=3))
    assert status_report(config, store, end)["outbox"] == {"queued": 0, "messages": []}


def test_a_failed_check_is_shown_in_the_header(tmp_path, store):
    config = make_config(tmp_path)
    end = cycle(config, store)
    cycle(config, store, now=end + timedelta(minutes=1), path=tmp_path / "gone.json")
    report = status_report(config, store, end + timedelta(minutes=15))
    assert report["last_cycle"]["ok"] is False and "gone.json" in report["last_cycle"]["error"]
    assert report["units"][0]["checkpoint"]["until"] == format_time(end)  # it did not move
    header = status_text(report).splitlines()[0]
    assert header.startswith("nothing open; last check 14m ago: FAILED: ")
    assert "gone.json" in header


def test_log_text_is_cleaned_for_the_terminal(tmp_path, store):
    hostile = "spector-00099-\x1b[31mred\x1b[0m\x07"
    export = tmp_path / "hostile.json"
    export.write_text(json.dumps([
        export_entry(0, 0, "Prisma schema loaded from prisma/schema.prisma", revision=hostile),
        export_entry(1, 0.5, "Applying migration `20251230000000_\x1b]0;pwned\x07evil`",
                     revision=hostile),
        export_entry(3, 1, "All migrations have been successfully applied.", revision=hostile),
        export_entry(2, 60, "MissingSessionTableError: \x1b[2J boom", revision=hostile),
    ]))
    config = make_config(tmp_path, path=export)
    end = cycle(config, store)
    report = status_report(config, store, end)
    (revision,) = report["revisions"]  # JSON keeps the facts as they were read
    assert revision["name"] == hostile
    assert revision["migrations"][0]["name"] == "20251230000000_\x1b]0;pwned\x07evil"
    text = status_text(report)
    assert "\x1b" not in text and "\x07" not in text
    assert clean(text) == text
    assert "spector/spector-00099-red0m" not in text  # the whole sequence went, not just ESC
    assert "spector/spector-00099-red: first seen" in text
    assert "introduced by: spector-00099-red" in text
    assert "migrations: 20251230000000_evil applied" in text  # an OSC title sequence, gone
    assert "suspect migrations: 20251230000000_evil" in text


def test_an_empty_store(tmp_path, store):
    now = datetime(2025, 12, 13, 2, 0, tzinfo=UTC)
    report = status_report(make_config(tmp_path), store, now)
    assert report == {
        "checked_at": "2025-12-13T02:00:00Z",
        "units": [{"unit": UNIT, "project": UNIT, "services": ["spector"], "checkpoint": None,
                   "lag_seconds": None,
                   "lease": {"state": "free", "holder": None, "token": 0, "since": None,
                             "expires_at": None, "polled_at": None, "expires_in": None}}],
        "last_cycle": None,
        "incidents": {"open": [], "recent": []},
        "revisions": [],
        "outbox": {"queued": 0, "messages": []},
    }
    text = status_text(report)
    assert text.splitlines()[0] == "nothing open; no check has run yet"
    assert "never read" in text and "none seen yet" in text


def test_reads_the_store_only(tmp_path, store):
    """A Cloud Logging config with no credentials anywhere: status needs none."""
    config = parse_config({
        "targets": [{"project": "a-prod", "services": ["api"]},
                    {"project": "b-prod", "services": ["web", "worker"]}],
        "source": {"type": "cloud_logging", "api_endpoint": "127.0.0.1:9"},
        "signals": [{"name": "boom", "match": "Boom"}],
    }, env={})
    report = status_report(config, store, datetime(2025, 12, 13, tzinfo=UTC))
    assert [(u["unit"], u["services"], u["checkpoint"]) for u in report["units"]] == [
        ("a-prod", ["api"], None), ("b-prod", ["web", "worker"], None)]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m"), (14 * 60 + 59, "14m"), (3 * 3600 + 5 * 60, "3h 5m"),
    (2 * 86400 + 4 * 3600, "2d 4h"), (-120, "2m"),
])
def test_human_durations(seconds, text):
    assert for_people(seconds, 2) == text


def test_status_shows_who_leads_each_unit_and_a_stuck_lease(tmp_path):
    """A live leader is named with its token; one whose heartbeat stopped is STUCK, with the time
    its lease has left; once the lease ran out the next instance is said to take it."""
    config = make_config(tmp_path)
    store = SQLiteStore(f"sqlite:///{tmp_path}/leases.db")
    now = datetime.now(UTC)
    store.heartbeat("vm-1-aaaaaa", timedelta(minutes=5))
    store.claim("vm-1-aaaaaa", [UNIT], timedelta(minutes=3), limit=1)
    (unit,) = status_report(config, store, now)["units"]
    assert unit["lease"]["state"] == "held" and unit["lease"]["token"] == 1
    assert unit["lease"]["holder"] == "vm-1-aaaaaa" and unit["lease"]["since"] is not None
    text = status_text(status_report(config, store, now))
    assert "led by vm-1-aaaaaa since " in text and "(token 1)" in text

    store.leave("vm-1-aaaaaa")  # the instance row goes; put the lease back as a crash leaves it
    store._db.execute("UPDATE leases SET holder = 'vm-1-aaaaaa', expires_at = ?",
                      ((now + timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    (unit,) = status_report(config, store, now)["units"]
    assert unit["lease"]["state"] == "stuck"
    assert "STUCK: led by vm-1-aaaaaa, which stopped (no heartbeat); its lease expires in" \
        in status_text(status_report(config, store, now))

    store._db.execute("UPDATE leases SET expires_at = ?",
                      ((now - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    (unit,) = status_report(config, store, now)["units"]
    assert unit["lease"]["state"] == "expired"
    assert "the next instance takes it" in status_text(status_report(config, store, now))
    store.close()
