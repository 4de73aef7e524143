"""`monitor run` as a real subprocess against the Cloud Logging emulator and the local Slack server.

Entries are appended to the emulator while it runs; the alert and then the resolution must arrive
in Slack; /metrics and /healthz must tell the truth; SIGTERM must end it cleanly with its state
saved; and a restart must continue without posting anything again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.emulator import Emulator
from monitor.store import open_store
from monitor.window import Checkpoint
from tests.slack_server import SlackServer

REVISION = "spector-00042-wex"
FIX = "spector-00044-mop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def entry(n: int, text: str | None = None, *, status: int | None = None,
          revision: str = REVISION) -> dict:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    log = "run.googleapis.com%2Frequests" if status else "run.googleapis.com%2Fstderr"
    e: dict = {"insertId": f"svc-{n}", "logName": f"projects/spector-prod/logs/{log}",
               "timestamp": ts, "receiveTimestamp": ts, "severity": "ERROR",
               "resource": {"type": "cloud_run_revision",
                            "labels": {"service_name": "spector", "revision_name": revision,
                                       "project_id": "spector-prod"}},
               "labels": {"instanceId": "inst-1"}}
    if status:
        e["httpRequest"] = {"status": status, "requestMethod": "GET", "requestUrl": "/app"}
    else:
        e["textPayload"] = text
    return e


class Monitor:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        env = {**os.environ, "PORT": str(port), "MONITOR_HTTP_HOST": "127.0.0.1"}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
        wait_for("/readyz", lambda: get(port, "/readyz")[0] == 200)

    def metric(self, name: str) -> float:
        _, text = get(self.port, "/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if name + "{" in line and "}" not in line.split(" ")[0]:
                    continue
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        return code, time.monotonic() - started


@pytest.fixture
def world(tmp_path) -> Iterator[tuple[Emulator, SlackServer, Path]]:
    with Emulator(rest=False) as emu, SlackServer() as slack:
        config = tmp_path / "config.yaml"
        config.write_text(f"""
project: spector-prod
services: [spector]
source: {{type: cloud_logging, api_endpoint: '{emu.grpc_endpoint}'}}
poll: {{interval: 1s, max_lateness: 2s, first_lookback: 1m}}
signals:
  - {{name: missing-session-table, match: MissingSessionTableError, resolve_after: 3s}}
slack: {{token: {slack.token}, base_url: '{slack.base_url}', channel: '#spector-alerts',
         update_every: 1h}}
state: {{url: 'sqlite:///{tmp_path}/state.db'}}
""")
        yield emu, slack, config


def roots(slack: SlackServer) -> list[dict]:
    return [m for m in slack.messages("#spector-alerts") if m.get("subtype") != "thread_broadcast"]


def test_run_alerts_resolves_reports_and_stops_cleanly(world, tmp_path):
    emu, slack, config = world
    monitor = Monitor(config, free_port(), tmp_path / "run.log")
    try:
        code, body = get(monitor.port, "/healthz")
        assert (code, body.splitlines()[0]) == (200, "ok")
        assert "leader of spector-prod (token 1); 1 instance(s) alive" in body
        assert monitor.metric("monitor_leader") == 1.0
        assert monitor.metric("monitor_lease_held") == 1.0  # {unit="spector-prod"}
        assert monitor.metric("monitor_instances_alive") == 1.0
        emu.store.append([entry(1, "MissingSessionTableError: Prisma session table does not "
                                   "exist.")])
        wait_for("the alert in Slack", lambda: roots(slack))
        (root,) = roots(slack)
        assert "MissingSessionTableError" in root["text"]
        # the fix serves successfully; silence with traffic resolves it
        feeding = threading.Event()

        def feed() -> None:
            n = 100
            while not feeding.is_set():
                emu.store.append([entry(n, status=200, revision=FIX)])
                n += 1
                time.sleep(0.3)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            wait_for("the resolution in Slack",
                     lambda: any(r.get("subtype") == "thread_broadcast"
                                 for r in roots(slack)[0]["replies"]), timeout=40)
        finally:
            feeding.set()
            feeder.join()
        wait_for("the root edited to show the resolution (a second later: 1 message/s)",
                 lambda: roots(slack)[0]["text"].startswith(":white_check_mark: RESOLVED"))
        assert monitor.metric("monitor_cycles_total") >= 3  # the "ok" series comes first
        assert monitor.metric("monitor_api_requests_total") >= 3
        assert monitor.metric("monitor_notifications_total") >= 3
        assert monitor.metric("monitor_notifications_queued") == 0
        _, text = get(monitor.port, "/metrics")
        assert 'monitor_cycles_total{outcome="error"} 0.0' in text
        assert "monitor_checkpoint_lag_seconds" in text
        assert get(monitor.port, "/healthz")[0] == 200
    finally:
        code, took = monitor.stop()
    assert code == 0
    assert took < 10  # Cloud Run's grace period
    posted = len(slack.calls_to("chat.postMessage"))
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(store.checkpoint("spector-prod"), Checkpoint)
    assert store.queued() == []
    store.close()
    log = (tmp_path / "run.log").read_text()
    assert slack.token not in log
    # a restart continues: a few more cycles, nothing posted again
    again = Monitor(config, free_port(), tmp_path / "run.log")
    try:
        wait_for("three cycles after the restart",
                 lambda: again.metric("monitor_cycles_total") >= 3)
    finally:
        assert again.stop()[0] == 0
    assert len(slack.calls_to("chat.postMessage")) == posted


def test_a_monitor_that_cannot_read_says_so_in_slack(world, tmp_path):
    import grpc

    emu, slack, config = world
    emu.fail_next(grpc.StatusCode.PERMISSION_DENIED, times=10_000)
    monitor = Monitor(config, free_port(), tmp_path / "fail.log")
    try:
        wait_for("the 'cannot read logs' alert", lambda: roots(slack))
        assert "cannot read logs for spector-prod" in roots(slack)[0]["text"]
        assert monitor.metric("monitor_cycles_total") == 0  # no ok cycle
        _, text = get(monitor.port, "/metrics")
        assert 'monitor_cycles_total{outcome="failed"}' in text
    finally:
        assert monitor.stop()[0] == 0
