"""How `monitor once` fails: a clock that moves back, a unit another instance leads, a message
still owed. Each exit code means what DESIGN.md and the README say, and nothing is posted twice.
"""

from __future__ import annotations

import json
from datetime import timedelta

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
