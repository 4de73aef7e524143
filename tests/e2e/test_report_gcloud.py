"""Every `gcloud logging read` command the spector write-up prints, run for real.

The real gcloud CLI, with a throwaway CLOUDSDK_CONFIG pointing its Logging endpoint at the local
emulator's REST server (FACTS.md), loaded with the demo export: each command must be accepted
(the emulator rejects what it does not understand, as Cloud Logging does) and return what the
report claims: exactly `expect_count` entries, or entries showing each expected name. gcloud
costs about a second per call, so identical commands (the two incidents share the fixing
revision's) run once: 6 calls.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.emulator import Emulator, EntryStore
from monitor.report import Verification, build, report_markdown
from monitor.store import open_store
from tests.test_report import EXPORT, demo_config, load

GCLOUD = shutil.which("gcloud")
pytestmark = pytest.mark.skipif(GCLOUD is None and not os.environ.get("CI"),
                                reason="gcloud is not installed")


@pytest.fixture(scope="module")
def verifications(tmp_path_factory: pytest.TempPathFactory) -> list[Verification]:
    config = load(demo_config(tmp_path_factory.mktemp("report-gcloud")))
    store = open_store(config.state.url)
    try:
        report = build(config, store)
    finally:
        store.close()
    assert len(report.reports) == 2
    text = report_markdown(report)
    unique: dict[str, Verification] = {}
    for rep in report.reports:
        for v in rep.verifications:
            assert v.command in text  # printed as it is run
            unique.setdefault(v.command, v)
    return list(unique.values())


@pytest.fixture(scope="module")
def gcloud_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    store = EntryStore()
    store.load(EXPORT)
    with Emulator(store) as emulator:
        home = tmp_path_factory.mktemp("gcloud-config")
        (home / "configurations").mkdir()
        (home / "active_config").write_text("default")
        # what `gcloud config set api_endpoint_overrides/logging ...` and
        # `gcloud config set auth/disable_credentials true` write, without two slow calls
        (home / "configurations" / "config_default").write_text(
            "[api_endpoint_overrides]\n"
            f"logging = {emulator.rest_endpoint}/\n"
            "[auth]\ndisable_credentials = True\n"
            "[core]\ndisable_usage_reporting = True\n"
            "[component_manager]\ndisable_update_check = True\n")
        yield {**os.environ, "CLOUDSDK_CONFIG": str(home)}


def run(command: str, env: dict[str, str]) -> list[dict[str, Any]]:
    argv = shlex.split(command)
    assert argv[:3] == ["gcloud", "logging", "read"]
    assert "--format=json" in argv and any(a.startswith("--project=") for a in argv)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return entries


def test_the_demo_prints_few_commands(verifications: list[Verification]) -> None:
    assert 4 <= len(verifications) <= 8
    for v in verifications:
        assert 'timestamp>="' in v.filter and 'timestamp<"' in v.filter
        assert v.url.startswith("https://console.cloud.google.com/logs/query;query=")


def test_every_command_returns_what_the_report_claims(
        verifications: list[Verification], gcloud_env: dict[str, str]) -> None:
    seen = {}
    for v in verifications:
        entries = run(v.command, gcloud_env)
        seen[v.id] = len(entries)
        if v.expect_count is not None:
            assert len(entries) == v.expect_count, (v.claim, v.command)
        text = json.dumps(entries)
        for expected in v.expect_texts:
            assert expected in text, (v.claim, expected)
    # the claims themselves, as the spector post-mortem states them
    assert seen["errors"] in (157, 2)
    assert seen["quiet"] == 0
    assert seen["requests_ok"] == 21
    assert seen["requests_failed"] == 157
