"""How `monitor once` fails: a clock that moves back, a unit another instance leads, a message
still owed. Each exit code means what DESIGN.md and the README say, and nothing is posted twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.store import open_store
from tests.helpers import small_incident
from tests.test_cli import once, roots, slack_config, write_config


def test_a_clock_before_the_last_check_is_refused_and_nothing_is_posted_again(tmp_path,
                                                                              slack_server):
    config = write_config(tmp_path, small_incident(), slack_config(slack_server))
    assert once(config).exit_code == 0  # the whole export: opened and resolved
    posted = len(slack_server.calls_to("chat.postMessage"))
    earlier = once(config, "--now", "2025-12-04T21:05:00Z")
    assert earlier.exit_code == 2
    assert ("--now 2025-12-04T21:05:00Z is before the last completed check of spector-prod "
            "(2025-12-04T21:34:00Z): a check never moves the checkpoint back") in earlier.output
    # the next ordinary run reads nothing again and posts nothing again
    assert once(config).exit_code == 0
    assert len(slack_server.calls_to("chat.postMessage")) == posted
    assert len(roots(slack_server, "#alerts")) == 1
    # a dry run may look at an earlier time: nothing is saved or sent
    assert once(config, "--now", "2025-12-04T21:05:00Z", "--dry-run").exit_code == 0
    assert len(slack_server.calls_to("chat.postMessage")) == posted


def test_a_unit_led_by_another_instance_is_checked_read_only_and_says_so(tmp_path):
    config = write_config(tmp_path, small_incident())
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        (lease,) = store.claim("run-vm-1", ["spector-prod"], timedelta(minutes=5), 1)
        result = once(config, "--format", "json")
        assert result.exit_code == 4
        doc = json.loads(result.stdout)
        assert doc["read_only"] is True
        assert doc["incidents"][0]["status"] == "resolved"  # the conclusions are still given
        assert ("spector-prod: led by another instance, checked read-only (nothing saved or "
                "sent") in result.stderr
        assert store.checkpoint("spector-prod") is None  # nothing saved
        text = once(config)
        assert text.exit_code == 4 and "(read-only: another instance leads this unit" in text.stdout
        store.release(lease)
        assert once(config).exit_code == 0  # free again: a normal check
    finally:
        store.close()


@pytest.mark.parametrize("what", ["garbage", "truncated", "directory"])
@pytest.mark.parametrize("command", ["once", "status", "report"])
def test_a_state_path_that_is_not_a_monitor_database_exits_3_and_says_so(tmp_path, what,
                                                                           command):
    config = write_config(tmp_path, small_incident())
    state = tmp_path / "state.db"
    if what == "truncated":
        assert once(config).exit_code == 0
        data = state.read_bytes()
        for extra in ("-wal", "-shm"):
            (tmp_path / f"state.db{extra}").unlink(missing_ok=True)
        state.write_bytes(data[: len(data) // 3])
    elif what == "garbage":
        state.write_bytes(b"not a database, but long enough to have a header" * 10)
    else:
        state.mkdir()
    result = CliRunner().invoke(main, [command, "--config", str(config)])
    assert result.exit_code == 3, result.output
    assert "not a monitor database" in result.stderr
    assert "Traceback" not in result.output


def test_an_unexpected_error_is_one_line_and_exit_3_never_1(tmp_path, monkeypatch):
    """Python exits 1 on a traceback, which a deploy gate reads as "an incident is open"."""
    import monitor.cli

    config = write_config(tmp_path, small_incident())

    def broken(*args, **kwargs):
        raise RuntimeError("boom in\nthe middle postgresql://u:hunter2@db/x")

    monkeypatch.setattr(monitor.cli, "run_cycle", broken)
    result = CliRunner().invoke(main, ["once", "--config", str(config)])
    assert result.exit_code == 3
    assert result.stderr == ("monitor: unexpected error: RuntimeError: boom in the middle "
                             "postgresql://u:***@db/x (the traceback: --log-level DEBUG)\n")


def test_the_traceback_of_an_unexpected_error_is_logged_at_debug(tmp_path):
    config = write_config(tmp_path, small_incident())
    code = ("import sys, monitor.cli\n"
            "def broken(*a, **k): raise RuntimeError('boom')\n"
            "monitor.cli.run_cycle = broken\n"
            "sys.argv = ['monitor', 'once', '--config', sys.argv[1], '--log-level', 'DEBUG']\n"
            "monitor.cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 3
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: boom (the traceback: --log-level DEBUG)")


@pytest.mark.parametrize(("args", "message"), [
    (["--now", "0001-01-01T00:00:00Z"], "'0001-01-01T00:00:00Z' is out of range"),
    (["--now", "9999-12-31T00:00:00Z"], "is out of range (years 1900 to 2999)"),
    (["--since", "1000000d"], "invalid duration '1000000d': at most 3650d"),
    (["--since", "99999999999999999d"], "at most 3650d"),
])
def test_clock_and_lookback_out_of_range_are_usage_errors(tmp_path, args, message):
    config = write_config(tmp_path, small_incident())
    result = once(config, *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_entries_no_clock_can_hold_are_skipped_and_counted(tmp_path):
    entries = small_incident()
    bad = [dict(entries[0], insertId="y1", timestamp="0001-01-01T00:00:00Z"),
           dict(entries[0], insertId="y9", timestamp="9999-12-31T23:59:59Z"),
           dict(entries[0], insertId="int", timestamp=1733349791)]
    config = write_config(tmp_path, [*entries, *bad])
    result = once(config, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["entries_skipped"] == 3


def test_a_lone_surrogate_in_a_revision_name_commits_and_commits_again(tmp_path):
    entries = [dict(e, resource={**e["resource"], "labels": {
        **e["resource"]["labels"], "revision_name": "spector-\ud800"}}) for e in small_incident()]
    config = write_config(tmp_path, entries)
    first = once(config, "--format", "json")
    assert first.exit_code == 0, first.output
    assert once(config).exit_code == 0  # the next run of the same export too
    (incident,) = json.loads(first.stdout)["incidents"]
    assert incident["revisions"] == {"spector-\ufffd": 2}


def test_a_check_longer_than_its_lease_keeps_it_and_owes_nothing(tmp_path, slack_server):
    """`once` has no ticks to renew on: a check that outlasts its lease (here five messages
    paced 1.25 s apart: 5 s of a 3 s lease) keeps renewing it, so every send still has
    slack.timeout + 1 s of lease left and nothing waits (it used to exit 3, owing four)."""
    config = write_config(tmp_path, small_incident(), slack_config(slack_server).replace(
        "min_interval: 0s", "min_interval: 1.25s, timeout: 1s") + "poll: {interval: 1s}\n")
    config.write_text(config.read_text().replace("state.db'}", "state.db', lease: 3s}"))
    result = once(config, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["stats"]["notifications_sent"], doc["stats"]["notifications_waiting"]) == (5, 0)
    assert len(roots(slack_server, "#alerts")) == 1
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        assert store.queued() == []
    finally:
        store.close()
