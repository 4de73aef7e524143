"""Three `monitor run` processes on one PostgreSQL database, against the local Cloud Logging
emulator and the local Slack server, while incidents open and resolve in two projects (two units
of work): the leader of a unit is killed (SIGKILL) again and again, a leader is paused past its
lease (SIGSTOP, then SIGCONT), and all three are restarted one after the other (SIGTERM).

Afterwards every transition reached Slack exactly once and in order, none was lost, each unit
had exactly one incident per wave of errors (no instance opened one twice), and every hand-over
happened within the lease plus a couple of intervals, and no unit was read twice within half an
interval. The figures are printed on every run.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from monitor.correlate.model import IncidentStatus
from monitor.emulator import Emulator
from monitor.emulator.server import RequestRecord
from monitor.messages import Message
from monitor.store.postgres import PostgresStore
from tests.e2e.test_delivery_faults import audit_delivery
from tests.e2e.test_service import free_port, get, wait_for
from tests.slack_server import SlackServer

UNITS = ("shop-a", "shop-b")
CHANNEL = "#alerts"
INTERVAL = 1.0  # poll.interval (s)
LEASE = 4.0  # state.lease (s): >= 2 intervals and >= slack.timeout + 2 s
WAVES = 5  # incidents per unit, one after the other (each after the first is a regression)
ERRORS_PER_WAVE = 4
WAVE_SECONDS = 10.0  # 2 s of errors, then quiet: resolve_after 3 s + max_lateness 2 s + polls
SETTLE = 90.0  # after the last wave, time allowed for every resolution to reach Slack


def config_text(emu: Emulator, slack: SlackServer, pg_url: str) -> str:
    targets = "\n".join(f"  - {{project: {u}, services: [spector]}}" for u in UNITS)
    return f"""
targets:
{targets}
source: {{type: cloud_logging, api_endpoint: '{emu.grpc_endpoint}'}}
poll: {{interval: {INTERVAL:.0f}s, max_lateness: 2s, first_lookback: 1m}}
signals:
  - {{name: missing-session-table, match: MissingSessionTableError, resolve_after: 3s}}
slack: {{token: {slack.token}, base_url: '{slack.base_url}', channel: '{CHANNEL}',
         update_every: 1h, min_interval: 0s, timeout: 1s}}
state: {{url: '{pg_url}', lease: {LEASE:.0f}s}}
"""


def error_entry(unit: str, wave: int, n: int) -> dict:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"insertId": f"{unit}-{wave}-{n}",
            "logName": f"projects/{unit}/logs/run.googleapis.com%2Fstderr",
            "timestamp": ts, "receiveTimestamp": ts, "severity": "ERROR",
            "resource": {"type": "cloud_run_revision",
                         "labels": {"service_name": "spector", "revision_name": "spector-0001-abc",
                                    "project_id": unit}},
            "labels": {"instanceId": "inst-1"},
            "textPayload": "MissingSessionTableError: Prisma session table does not exist."}


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def holder(self) -> str | None:
        """The instance id it reports on /healthz ("<id>: leader of ..." on its 2nd line)."""
        code, body = get(self.port, "/healthz")
        lines = body.splitlines()
        return lines[1].split(":", 1)[0] if code and len(lines) > 1 else None


@dataclass
class Fleet:
    config: Path
    tmp: Path
    instances: list[Instance] = field(default_factory=list)
    started: int = 0

    def start(self) -> Instance:
        self.started += 1
        port = free_port()
        log = self.tmp / f"monitor-{self.started}.log"
        env = {**os.environ, "PORT": str(port), "MONITOR_HTTP_HOST": "127.0.0.1"}
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config",
                                 str(self.config)], stdout=log.open("ab"),
                                stderr=subprocess.STDOUT, env=env)
        instance = Instance(proc, port, log)
        wait_for("an instance to be ready", lambda: get(port, "/readyz")[0] == 200
                 or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()[-3000:]
        self.instances.append(instance)
        return instance

    def by_holder(self, holder: str) -> Instance:
        for instance in self.instances:
            if instance.holder() == holder:
                return instance
        raise AssertionError(f"no running instance is {holder}")

    def remove(self, instance: Instance) -> None:
        self.instances.remove(instance)

    def stop_all(self) -> None:
        for instance in self.instances:
            if instance.proc.poll() is None:
                instance.proc.send_signal(signal.SIGCONT)
                instance.proc.kill()
                instance.proc.wait(timeout=10)


def cycle_clock(read: RequestRecord) -> str:
    """The clock of the cycle that made a read: the end of its window (`receiveTimestamp<`)."""
    match = re.search(r'receiveTimestamp<"([^"]+)"', read.filter)
    return match[1] if match else "?"


def leader(store: PostgresStore, unit: str) -> tuple[str, int] | None:
    """(holder, token) of the unit's live lease, if any."""
    for info in store.leases():
        if info.unit == unit and info.held and info.holder is not None:
            return info.holder, info.token
    return None


def new_leader(store: PostgresStore, unit: str, old: str) -> tuple[str, int]:
    """Wait until an instance other than `old` holds the unit's lease; its (holder, token)."""
    deadline = time.monotonic() + LEASE + 10
    while time.monotonic() < deadline:
        lead = leader(store, unit)
        if lead is not None and lead[0] != old:
            return lead
        time.sleep(0.1)
    raise AssertionError(f"{unit} was not taken over from {old} within {LEASE + 10:.0f}s")


def current_leader(store: PostgresStore, unit: str) -> tuple[str, int]:
    return new_leader(store, unit, old="")


def feed(emu: Emulator, stop: threading.Event) -> None:
    """Waves of errors in both units, staggered, each followed by quiet so it resolves."""
    for wave in range(WAVES):
        for n in range(ERRORS_PER_WAVE):
            for unit in UNITS:
                emu.store.append([error_entry(unit, wave, n)])
            if stop.wait(0.5):
                return
        if stop.wait(WAVE_SECONDS - ERRORS_PER_WAVE * 0.5):
            return


def test_three_instances_survive_kills_pauses_and_a_rolling_restart(tmp_path, pg_url, capsys):
    with Emulator(rest=False) as emu, SlackServer() as slack:
        config = tmp_path / "config.yaml"
        config.write_text(config_text(emu, slack, pg_url))
        fleet = Fleet(config, tmp_path)
        store = PostgresStore(pg_url)
        failovers: list[float] = []
        stop_feeding = threading.Event()
        feeder = threading.Thread(target=feed, args=(emu, stop_feeding), daemon=True)
        started = time.monotonic()
        try:
            for _ in range(3):
                fleet.start()
            wait_for("both units led", lambda: all(leader(store, u) for u in UNITS))
            feeder.start()

            def kill_leader(unit: str) -> None:
                holder, token = current_leader(store, unit)
                victim = fleet.by_holder(holder)
                victim.proc.kill()
                killed = time.monotonic()
                victim.proc.wait(timeout=10)
                fleet.remove(victim)
                _, new_token = new_leader(store, unit, old=holder)
                failovers.append(time.monotonic() - killed)
                assert new_token > token  # a new fencing token
                fleet.start()  # back to three

            # 1. the leader killed, again and again
            kills = 0
            for unit in ("shop-a", "shop-b", "shop-a"):
                time.sleep(4)
                kill_leader(unit)
                kills += 1
            # 2. a leader paused past its lease, then resumed
            time.sleep(2)
            holder, _ = current_leader(store, "shop-b")
            paused = fleet.by_holder(holder)
            paused.proc.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            new_leader(store, "shop-b", old=holder)
            failovers.append(time.monotonic() - stopped_at)
            time.sleep(max(0.0, stopped_at + LEASE + 2 - time.monotonic()))
            paused.proc.send_signal(signal.SIGCONT)
            # 3. a rolling restart: each instance stopped (SIGTERM) and replaced in turn
            time.sleep(3)
            restarts = 0
            for old in list(fleet.instances):
                old.proc.send_signal(signal.SIGTERM)
                assert old.proc.wait(timeout=15) == 0, old.log.read_text()[-3000:]
                fleet.remove(old)
                fleet.start()
                restarts += 1
                time.sleep(1)
            # the paused instance woke up: it must have noticed it lost the lease, not written
            assert "lost the lease" in paused.log.read_text() or \
                "lease of shop-b lost" in paused.log.read_text(), paused.log.read_text()[-3000:]

            feeder.join(timeout=WAVES * WAVE_SECONDS + 30)
            assert not feeder.is_alive()
            fed = time.monotonic()

            def settled() -> bool:
                state = store.load_state()
                resolved = [i for i in state.incidents.values()
                            if i.status is IncidentStatus.RESOLVED]
                return len(resolved) == WAVES * len(UNITS) and not store.queued()

            wait_for("every incident resolved and delivered", settled, timeout=SETTLE)
            settle_seconds = time.monotonic() - fed
        finally:
            stop_feeding.set()
            fleet.stop_all()

        # Exactly one incident per wave and unit: no instance opened one twice.
        state = store.load_state()
        per_unit = {u: sorted((i for i in state.incidents.values()
                               if i.id.startswith(f"{u}/")), key=lambda i: i.first_seen)
                    for u in UNITS}
        assert {u: len(v) for u, v in per_unit.items()} == {u: WAVES for u in UNITS}
        # Every message the outbox was given, per incident in order, reached Slack once.
        expected: list[Message] = []
        for incidents in per_unit.values():
            for incident in incidents:
                assert incident.status is IncidentStatus.RESOLVED
                expected += [s.message for s in store.sent(incident.id)]
        transitions = len(expected)
        assert transitions >= WAVES * len(UNITS) * 2
        audit = audit_delivery(slack, expected, channel=CHANNEL)
        leases = {i.unit: i.token for i in store.leases()}
        store.close()
        # A unit is never polled twice in one interval, hand-overs included: the reads (first
        # pages) of each project, by whichever instance, are an interval apart.
        gaps = []
        closest: tuple[float, str, RequestRecord, RequestRecord] | None = None
        for unit in UNITS:
            # a cycle's main read (its window ends at the cycle's clock); its follow-ups and
            # evidence probes, moments later, are part of the same cycle
            reads = sorted((r for r in emu.request_log
                            if r.page == 0 and r.resource_names == (f"projects/{unit}",)
                            and "receiveTimestamp<" in r.filter),
                           key=lambda r: r.at)
            for a, b in itertools.pairwise(reads):
                gaps.append(b.at - a.at)
                if closest is None or b.at - a.at < closest[0]:
                    closest = (b.at - a.at, unit, a, b)

        figures = {
            "kills (SIGKILL of a leader)": kills,
            "pauses (SIGSTOP past the lease)": 1,
            "rolling restarts (SIGTERM)": restarts,
            "instances started": fleet.started,
            "incidents": WAVES * len(UNITS),
            "messages delivered": transitions,
            "duplicates": audit.duplicates,
            "lost": audit.lost,
            "failover s (median/max)": f"{statistics.median(failovers):.1f}/"
                                       f"{max(failovers):.1f}",
            "lease tokens at the end": leases,
            "reads": len(gaps) + len(UNITS),
            "closest reads of a unit s": round(min(gaps), 2),
            "settle s after the last wave": round(settle_seconds, 1),
            "seconds": round(time.monotonic() - started, 1),
        }
        with capsys.disabled():
            print("\nchaos: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
            if closest is not None:
                # which cycles those were: each read's window ends at its cycle's clock
                gap, unit, a, b = closest
                print(f"closest reads of {unit}: {gap:.3f}s apart, {b.at - started:.1f}s into "
                      f"the run, of the cycles at {cycle_clock(a)} and {cycle_clock(b)}")
        assert (audit.duplicates, audit.lost, audit.problems) == (0, 0, [])
        # Bounded: a hand-over within the lease, plus a tick to notice and a tick to claim.
        assert max(failovers) <= LEASE + 3 * INTERVAL + 1
        assert min(gaps) >= 0.5 * INTERVAL
