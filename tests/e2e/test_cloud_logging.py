"""The Cloud Logging source, driving the real client over gRPC (and REST) against the emulator.

What must hold: every entry counted once however late or out of order it arrives; a crash between
read and store loses nothing; requests per cycle = pages, whatever the number of signals; quota
errors back off and recover; the monitor says when it cannot read; and the same conclusions as
the file replay of the same entries.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from monitor import sources
from monitor.check import run_cycle
from monitor.cli import main
from monitor.config import parse_config
from monitor.correlate.model import IncidentStatus
from monitor.correlate.source_incident import SOURCE_SIGNAL
from monitor.emulator import Emulator
from monitor.notify.console import ConsoleNotifier
from monitor.sources.budget import RateLimiter
from monitor.sources.cloud_logging import CloudLoggingSource
from monitor.store import open_store
from monitor.store.sqlite import SQLiteStore
from tests.helpers import export_entry

EXPORT = Path(__file__).resolve().parents[2] / "examples" / "spector-incident.json"
PROJECT = "spector-prod"
T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)


def rfc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    """Fake monotonic time for the source's retries and budget: tests never sleep."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@pytest.fixture
def emulator():
    with Emulator(rest=True) as emu:
        yield emu


def config(n_signals: int = 1, **source):
    signals = [{"name": "missing-session-table", "match": "MissingSessionTableError"}]
    signals += [{"name": f"other-{i}", "match": f"NeverSeenError{i}"} for i in range(n_signals - 1)]
    return parse_config({
        "project": PROJECT, "services": ["spector"],
        "source": {"type": "cloud_logging", **source},
        "signals": signals, "poll": {"max_lateness": "10m"},
    }, env={})


def source(emu: Emulator, transport: str = "grpc", clock: Clock | None = None, **kw):
    clock = clock or Clock()
    endpoint = emu.grpc_endpoint if transport == "grpc" else emu.rest_endpoint
    return CloudLoggingSource(
        project=PROJECT, services=["spector"], transport=transport, api_endpoint=endpoint,
        limiter=RateLimiter(1000, clock=clock, sleep=clock.sleep), sleep=clock.sleep,
        clock=clock, **kw)


def cycle(cfg, store, src, now: datetime):
    return run_cycle(cfg, store, src, ConsoleNotifier(open("/dev/null", "w")), unit=PROJECT,
                     services=["spector"], project=PROJECT, now=now,
                     default_lookback=timedelta(hours=3))


def error_entry(n: int, seconds: float, revision="spector-00042-wex", instance="inst-1"):
    return export_entry(n, seconds, "MissingSessionTableError: Prisma session table does not "
                        "exist.", revision=revision, instance=instance)


def incident_count(store) -> int:
    state = store.load_state()
    return sum(i.count for i in state.incidents.values() if i.signal == "missing-session-table")


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_late_and_out_of_order_entries_are_counted_once(emulator, store, transport):
    now = T0 + timedelta(minutes=5)
    emulator.store.append([error_entry(i, 60 * i) for i in range(5)], received_at=T0)
    src = source(emulator, transport)
    cfg = config()
    cycle(cfg, store, src, now)
    assert incident_count(store) == 5
    # two entries stamped in the past arrive late, on another instance, interleaved in time
    emulator.store.append([error_entry(10, 90, instance="inst-2"),
                           error_entry(11, 150, instance="inst-2")],
                          received_at=now + timedelta(seconds=20))
    cycle(cfg, store, src, now + timedelta(minutes=1))
    assert incident_count(store) == 7
    # read again (overlapping windows, restarts): nothing counted twice
    cycle(cfg, store, src, now + timedelta(minutes=2))
    cycle(cfg, store, src, now + timedelta(minutes=2, seconds=1))
    assert incident_count(store) == 7


def test_an_entry_later_than_max_lateness_is_not_read(emulator, store):
    now = T0 + timedelta(minutes=30)
    src, cfg = source(emulator), config()
    cycle(cfg, store, src, now)
    emulator.store.append([error_entry(1, 0)], received_at=now + timedelta(seconds=10))
    cycle(cfg, store, src, now + timedelta(minutes=1))  # stamped 31 min before: too late
    assert incident_count(store) == 0


class CrashingStore(SQLiteStore):
    """The real store, dying once between the read and the commit (a crash mid-cycle)."""

    crash = True

    def commit_cycle(self, state, record):
        if self.crash:
            self.crash = False
            raise SystemExit("killed between read and store")
        super().commit_cycle(state, record)


def test_a_crash_between_read_and_store_loses_nothing(emulator, tmp_path):
    url = f"sqlite:///{tmp_path}/crash.db"
    emulator.store.append([error_entry(i, 60 * i) for i in range(4)], received_at=T0)
    now = T0 + timedelta(minutes=20)
    crashing = CrashingStore(url)
    with pytest.raises(SystemExit):
        cycle(config(), crashing, source(emulator), now)
    crashing.close()
    store = open_store(url)  # the restarted monitor
    assert store.checkpoint(PROJECT) is None
    cycle(config(), store, source(emulator), now + timedelta(minutes=1))
    assert incident_count(store) == 4
    store.close()


@pytest.mark.parametrize("n_signals", [1, 20])
def test_requests_per_cycle_equal_pages_whatever_the_signals(emulator, store, n_signals):
    emulator.store.append([export_entry(i, i, f"line {i}") for i in range(2500)],
                          received_at=T0 + timedelta(hours=1))
    emulator.reset_counters()
    result = cycle(config(n_signals), store, source(emulator), T0 + timedelta(hours=1, minutes=1))
    assert result.stats.entries_read == 2500
    assert result.stats.api_requests == 3 == emulator.requests  # 1000 + 1000 + 500


def test_quota_errors_back_off_and_recover(emulator, store):
    emulator.store.append([error_entry(i, i) for i in range(3)], received_at=T0)
    emulator.reset_counters()
    emulator.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, times=2)
    clock = Clock()
    result = cycle(config(), store, source(emulator, clock=clock), T0 + timedelta(minutes=5))
    assert result.error is None
    assert result.stats.api_requests == 3 == emulator.requests
    assert len(clock.slept) == 2 and all(s >= 5 for s in clock.slept)
    assert incident_count(store) == 3


def test_a_failure_on_a_later_page_leaves_the_checkpoint_and_the_next_cycle_reads_all(
        emulator, store):
    emulator.store.append([error_entry(i, i) for i in range(1500)], received_at=T0)
    emulator.fail_next(grpc.StatusCode.PERMISSION_DENIED, times=1, after_pages=1)
    result = cycle(config(), store, source(emulator), T0 + timedelta(hours=1))
    assert result.error is not None and "roles/logging.viewer" in result.error
    assert store.checkpoint(PROJECT) is None
    assert incident_count(store) == 0
    result = cycle(config(), store, source(emulator), T0 + timedelta(hours=1, minutes=1))
    assert result.error is None
    assert incident_count(store) == 1500


def test_unavailable_gives_up_inside_the_cycle_budget(emulator, store):
    emulator.fail_next(grpc.StatusCode.UNAVAILABLE, times=100)
    clock = Clock()
    result = cycle(config(), store, source(emulator, clock=clock,
                                           retry_for=timedelta(seconds=30)), T0)
    assert result.error is not None and "UNAVAILABLE" in result.error
    assert clock.t <= 30 + 16  # never sleeps past the retry deadline (+ one capped delay)


def test_a_backlog_is_worked_off_over_cycles_in_order(emulator, store):
    emulator.store.append([error_entry(i, i) for i in range(4500)], received_at=T0)
    src = source(emulator, max_pages=2)
    now = T0 + timedelta(hours=2)
    reads = []
    for minute in range(4):
        result = cycle(config(), store, src, now + timedelta(minutes=minute))
        reads.append(result.stats.entries_read)
        assert result.stats.api_requests <= 2
    assert reads[0] == 2000 and sum(reads) >= 4500
    assert incident_count(store) == 4500
    assert store.checkpoint(PROJECT).cursor is None  # the backlog is done


def test_the_monitor_says_when_it_cannot_read(emulator, store):
    cfg = config(failures_before_alert=3)
    emulator.fail_next(grpc.StatusCode.PERMISSION_DENIED, times=3)
    for minute in range(3):
        result = cycle(cfg, store, source(emulator), T0 + timedelta(minutes=minute))
    (incident,) = store.load_state().incidents.values()
    assert incident.signal == SOURCE_SIGNAL and incident.status is IncidentStatus.OPEN
    assert "roles/logging.viewer" in incident.sample
    assert [m.action.value for m in result.messages] == ["post_root"]
    result = cycle(cfg, store, source(emulator), T0 + timedelta(minutes=3))
    (incident,) = store.load_state().incidents.values()
    assert incident.status is IncidentStatus.RESOLVED


def conclusions(doc: dict) -> dict:
    keep = ("id", "status", "count", "revisions", "first_seen", "last_seen", "introduced_by",
            "suspect_migrations", "resolved_at", "resolved_by", "migration")
    return {i["id"]: {k: i[k] for k in keep} for i in doc["incidents"]}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_once_against_the_emulator_matches_the_file_replay(tmp_path, emulator, transport):
    """The spector story, read three ways: the needles (the default), everything
    (`select: false`) and the file replay. The same conclusions, from a fraction of the entries."""
    entries = json.loads(EXPORT.read_text())
    emulator.store.load(EXPORT)  # received as the export says: a few ms after each was written
    end = "2025-12-13T02:30:00Z"  # past the last entry by more than max_lateness
    common = ("services: [spector]\nproject: spector-prod\n"
              "signals: [{name: missing-session-table, match: MissingSessionTableError}]\n")
    endpoint = emulator.grpc_endpoint if transport == "grpc" else emulator.rest_endpoint
    docs = {}
    for name, select in (("needles", "true"), ("everything", "false")):
        live = write(tmp_path, f"{name}.yaml", common + (
            f"source: {{type: cloud_logging, transport: {transport}, api_endpoint: '{endpoint}',"
            f" select: {select}}}\nstate: {{url: 'sqlite:///{tmp_path}/{name}.db'}}\n"))
        run = CliRunner().invoke(main, ["once", "--config", str(live), "--format", "json",
                                        "--now", end, "--since", "10d"])
        assert run.exit_code == 0, run.output
        docs[name] = json.loads(run.stdout)
    replay = write(tmp_path, "replay.yaml", common + (
        f"source: {{type: file, path: '{EXPORT}'}}\n"
        f"state: {{url: 'sqlite:///{tmp_path}/replay.db'}}\n"))
    b = CliRunner().invoke(main, ["once", "--config", str(replay), "--format", "json",
                                  "--now", end])
    assert b.exit_code == 0, b.output
    replay_doc = json.loads(b.stdout)
    assert conclusions(docs["needles"]) == conclusions(replay_doc)
    assert conclusions(docs["everything"]) == conclusions(replay_doc)
    assert len(conclusions(replay_doc)) == 2
    # reading everything: the filter reads the watched service only (spector-worker's entries
    # never leave the API), 1,601 entries in two pages
    spector = [e for e in entries if e["resource"]["labels"]["service_name"] == "spector"]
    assert docs["everything"]["stats"]["entries_read"] == len(spector)
    assert docs["everything"]["stats"]["api_requests"] == 2
    # the needles: one page of matches, migration output, deploys and failed requests, the
    # lines around Prisma's blocks, and the evidence of health asked for in a small probe
    stats = docs["needles"]["stats"]
    served = [e for e in spector if e.get("httpRequest", {}).get("status", 500) < 400]
    assert len(served) > 100  # requests served: only probes read any of them
    assert stats["entries_read"] <= len(spector) - len(served) + stats["probe_requests"] * 50
    assert stats["api_requests"] == 1 + stats["follow_up_requests"] + stats["probe_requests"]
    assert stats["follow_up_requests"] >= 1 and stats["probe_requests"] >= 1


def test_the_spector_story_cycle_by_cycle_reads_the_needles_and_concludes_the_same(
        tmp_path, emulator):
    """As `monitor run` polls: a cycle every five minutes across the fix (13 December, 00:00 to
    02:30), after one that caught up on the eight days before. Reading the needles and asking
    for evidence tells the same transitions, at the same event times, as reading everything."""
    emulator.store.load(EXPORT)
    told, stores = {}, {}
    for select in (True, False):
        cfg = parse_config({
            "project": PROJECT, "services": ["spector"],
            "source": {"type": "cloud_logging", "api_endpoint": emulator.grpc_endpoint,
                       "select": select, "max_pages_per_cycle": 100},
            "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError"}],
            "poll": {"max_lateness": "10m"},
        }, env={})
        store = stores[select] = SQLiteStore(str(tmp_path / f"{select}.db"))
        src = sources.build(cfg, cfg.units[0], RateLimiter(10**6))
        start = datetime(2025, 12, 13, 0, 0, tzinfo=UTC)
        told[select] = []
        requests = []
        for now in [start, *(start + timedelta(minutes=5 * k) for k in range(1, 31))]:
            result = run_cycle(cfg, store, src, ConsoleNotifier(io.StringIO()),
                               unit=PROJECT, services=["spector"], project=PROJECT, now=now,
                               default_lookback=timedelta(days=10))
            assert result.error is None
            requests.append(result.stats.api_requests)
            # an update is told at a tick (see tests/test_probes.py): compared by its cycle
            told[select] += [(now, t.kind.value, t.incident.id, t.incident.resolved_by,
                              None if t.kind.value == "updated" else t.at)
                             for t in result.transitions]
        if select:
            assert max(requests[1:]) <= 4  # a page, a follow-up, two probes at the most
    assert told[True] == told[False]
    resolved = [(i, by) for _, k, i, by, _ in told[True] if k == "resolved"]
    assert resolved == [("spector:migration-failed:20251205T031014Z", "spector-00044-mop"),
                        ("spector:missing-session-table:20251204T210308Z", "spector-00044-mop")]
    final = {s: {i.id: (i.status, i.count, i.introduced_by, i.resolved_by, i.resolved_at,
                        tuple(i.suspect_migrations))
                 for i in st.load_state().incidents.values()} for s, st in stores.items()}
    assert final[True] == final[False]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_struct_payload_entries_are_normalised_like_text_ones(emulator, store, transport):
    structured = export_entry(1, 10)
    structured["jsonPayload"] = {"message": "request failed",
                                 "error": {"name": "MissingSessionTableError",
                                           "message": "Prisma session table does not exist."}}
    emulator.store.append([structured, error_entry(2, 20)], received_at=T0)
    result = cycle(config(), store, source(emulator, transport), T0 + timedelta(minutes=5))
    assert result.error is None
    assert incident_count(store) == 2


def test_a_slow_page_past_the_timeout_is_retried(emulator, store):
    emulator.store.append([error_entry(1, 10)], received_at=T0)
    emulator.delay_next(1.5, times=1)
    clock = Clock()
    result = cycle(config(), store, source(emulator, clock=clock,
                                           timeout=timedelta(seconds=0.5)),
                   T0 + timedelta(minutes=5))
    assert result.error is None
    assert result.stats.api_requests == 2 and len(clock.slept) == 1
    assert incident_count(store) == 1


def test_the_filters_the_monitor_builds_parse_in_the_emulator(emulator):
    from monitor.emulator.query import compile_filter
    from monitor.window import Window

    src = source(emulator, request_sample=0.1)
    for window in (Window(), Window(start=T0, end=T0), Window(start=T0, end=T0,
                                                              received_after=T0,
                                                              received_before=T0)):
        compile_filter(src.filter_for(window))  # raises QueryError if it is not valid


def in_project(entry: dict, project: str) -> dict:
    """The same entry written by another project (its logName and resource label say which)."""
    entry = json.loads(json.dumps(entry))
    entry["logName"] = entry["logName"].replace("projects/spector-prod/", f"projects/{project}/")
    entry["resource"]["labels"]["project_id"] = project
    entry["insertId"] += f"-{project}"
    return entry


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_central_bucket_holds_other_projects_services_and_only_ours_count(store, transport):
    """An aggregated sink routes staging's `spector` into production's bucket: reading
    projects/spector-prod returns both, and only production's entries are production's."""
    from monitor.emulator import EntryStore

    staging = [in_project(error_entry(i, 60 + i), "spector-staging") for i in range(5)]
    with Emulator(EntryStore(central=PROJECT), rest=True) as emu:
        emu.store.append([*staging, error_entry(99, 200)], received_at=T0)
        src = source(emu, transport)
        # the emulator does hand the staging entries to a read without the project clause
        assert len(emu.store.query([f"projects/{PROJECT}"])[0]) == 6
        cycle(config(), store, src, T0 + timedelta(minutes=5))
        assert f'resource.labels.project_id="{PROJECT}"' in emu.request_log[-1].filter
    state = store.load_state()
    assert [(i.count, i.first_seen) for i in state.incidents.values()] == [
        (1, T0 + timedelta(seconds=200))]


def test_the_classifier_drops_other_projects_entries_that_reach_it(tmp_path):
    """The file source has no server-side filter: a central bucket's export holds both."""
    path = tmp_path / "export.json"
    path.write_text(json.dumps([in_project(error_entry(i, 60 + i), "spector-staging")
                                for i in range(5)]))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"project: {PROJECT}\nservices: [spector]\n"
                   f"source: {{type: file, path: {path}}}\n"
                   "signals: [{name: missing-session-table, match: MissingSessionTableError}]\n"
                   f"state: {{url: 'sqlite:///{tmp_path}/state.db'}}\n")
    result = CliRunner().invoke(main, ["once", "--config", str(cfg), "--format", "json",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["incidents"] == []


@pytest.mark.parametrize("select", [True, False])
def test_a_budget_spent_on_empty_pages_never_takes_the_window_as_read(store, select):
    """Cloud Logging answers a long search with empty pages and a token to go on (see
    monitor/emulator/store.py, `max_scan`). Two such pages spend a budget of two: the
    checkpoint must stay before the errors they did not reach, not move past them."""
    from monitor.emulator import EntryStore
    from monitor.queries import Selection

    # another service's lines: scanned by the search, selected by neither read
    noise = [export_entry(n, n / 10, "GET /app 200 served", service="other") for n in range(600)]
    errors = [error_entry(1000 + n, 61 + n) for n in range(3)]
    chosen = Selection(signals=(("missing-session-table", "MissingSessionTableError"),))
    with Emulator(EntryStore(max_scan=100), rest=False) as emu:
        emu.store.append([*noise, *errors], received_at=T0)
        now = T0 + timedelta(minutes=5)
        small = source(emu, max_pages=2, selection=chosen if select else None)
        result = cycle(config(), store, small, now)
        assert result.stats.entries_read <= 200 and incident_count(store) == 0
        checkpoint = store.checkpoint(PROJECT)
        assert checkpoint is not None and checkpoint.cursor is not None  # not read: kept
        assert checkpoint.cursor <= T0 + timedelta(seconds=61)
        # a budget that reaches them reads them, from where the checkpoint stayed
        cycle(config(), store, source(emu, max_pages=10, selection=chosen if select else None),
              now + timedelta(minutes=1))
    assert incident_count(store) == 3
