"""SyntheticStore: traffic made on the fly, read exactly as an EntryStore holding it is read.

What must hold for the sweep (bench/sweep.py) to mean anything: page by page, for the filters
the monitor and people write, the synthetic store returns what an EntryStore loaded with the
very same entries returns (order, pages, tokens, byte limits, the clock); a selective filter at
10,000 requests a second over 10 minutes is answered without building the traffic; the real
generated client reads it through the Emulator; and the monitor classifies its shapes (deploys,
readiness, Prisma output, the signal, shutdowns) as it classifies bench/traffic.py's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import (
    LoggingServiceV2GrpcTransport,
)

from monitor.emulator import (
    Deploy,
    Emulator,
    EntryStore,
    Failures,
    InvalidArgument,
    SyntheticStore,
    TrafficSpec,
)
from monitor.emulator.query import parse_rfc3339_ns
from monitor.emulator.synthetic import ERROR_LINE

T0 = datetime(2025, 12, 1, 9, 0, tzinfo=UTC)
PROJECT = "projects/bench-prod"
BAD = "storefront-00002-bad"
FIX = "storefront-00003-fix"
BAD_MIGRATION = "20251204205052_map_session_table_to_lowercase"
FIX_MIGRATION = "20251213003742_fix_session_table_uppercase"


def spec(rps: float = 20, seconds: float = 60, failures: int = 30, **kw: Any) -> TrafficSpec:
    """A deploy that breaks the session table, failures, a fix deploy, recovery."""
    d = seconds / 60
    episodes = (
        Deploy(at=5 * d, revision=BAD, migrations=(BAD_MIGRATION,), startup_after=3),
        Failures(start=12 * d, end=40 * d, total=failures),
        Failures(start=20 * d, end=30 * d, total=failures // 3, structured=True),
        Deploy(at=40 * d - 3.8, revision=FIX, migrations=(FIX_MIGRATION,), startup_after=3,
               shutdown_after=8 * d),
    )
    return TrafficSpec(start=T0, duration=seconds, requests_per_second=rps,
                       app_lines_per_request=1.4, other_error_share=0.01, late_share=0.02,
                       episodes=episodes, **kw)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pages(store: Any, filter: str, order_by: str = "", page_size: int = 1000,
          names: tuple[str, ...] = (PROJECT,)) -> list[list[bytes]]:
    """Every page of a read, each as its entries' serialized protobufs, following the tokens."""
    out: list[list[bytes]] = []
    token = ""
    while True:
        page, token = store.query(list(names), filter, order_by, page_size, token)
        out.append([e.pb for e in page])
        if not token:
            return out
        assert len(out) < 10_000


@pytest.fixture(scope="module")
def small() -> tuple[SyntheticStore, EntryStore]:
    synthetic = SyntheticStore(spec())
    return synthetic, EntryStore(synthetic.entries())


NEEDLES = ("MissingSessionTableError|Applying migration|migrate deploy|migrations found|"
           "P3009|P3018")
SCOPE = ('resource.type="cloud_run_revision" AND (resource.labels.service_name="storefront") '
         'AND (resource.labels.project_id="bench-prod" OR logName:"projects/bench-prod/logs/")')
FILTERS = [
    "",
    f'timestamp>="{at(10)}" AND timestamp<"{at(25.5)}"',
    "httpRequest.status>=500",
    'textPayload=~"MissingSessionTableError" OR jsonPayload.message=~"MissingSessionTableError"',
    "sample(insertId, 0.1)",
    'logName:"cloudaudit.googleapis.com"',
    f"{SCOPE} AND (textPayload=~\"{NEEDLES}\" OR jsonPayload.message=~\"{NEEDLES}\" OR "
    'jsonPayload.err.type=~"MissingSession" OR logName:"cloudaudit.googleapis.com" OR '
    'logName:"run.googleapis.com%2Fvarlog%2Fsystem" OR httpRequest.status>=500) AND '
    f'timestamp>="{at(15)}" AND timestamp<="{at(50)}" AND receiveTimestamp>="{at(16)}" AND '
    f'receiveTimestamp<"{at(50)}" AND sample(insertId, 0.5)',
    # an evidence probe: successful app requests on the failing route, from the fix
    f'{SCOPE} AND logName:"run.googleapis.com%2Frequests" AND timestamp>"{at(30)}" AND '
    f'timestamp<="{at(60)}" AND httpRequest.status>=200 AND httpRequest.status<400 AND '
    'NOT httpRequest.requestUrl=~"^(?:[a-zA-Z]+://[^/?#]*)?/assets/" AND '
    'httpRequest.requestUrl=~"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?(?:/app)(?:[?#]|$)" AND '
    f'(NOT resource.labels.revision_name=("{BAD}") OR labels.instanceId=("x" OR "y"))',
    'NOT logName:"run.googleapis.com%2Frequests" AND severity>=ERROR',
    'jsonPayload:"shop-1" OR httpRequest:"Shopify-Captain"',  # objects holding varying fields
    f'resource.labels.revision_name="{FIX}" AND log_id("run.googleapis.com/stdout")',
    'httpRequest.userAgent:"GoogleHC" AND -httpRequest.status=200',
    f'timestamp="{at(0)}" OR insertId:"ffff"',
]


@pytest.mark.parametrize("order_by", ["", "timestamp desc"])
@pytest.mark.parametrize("n", range(len(FILTERS)))
def test_pages_equal_an_entry_store_of_the_same_entries(
        small: tuple[SyntheticStore, EntryStore], n: int, order_by: str) -> None:
    synthetic, held = small
    got = pages(synthetic, FILTERS[n], order_by, page_size=300)
    want = pages(held, FILTERS[n], order_by, page_size=300)
    assert [len(p) for p in got] == [len(p) for p in want]
    assert got == want


def test_the_follow_up_reads_of_one_instance_around_its_output(
        small: tuple[SyntheticStore, EntryStore]) -> None:
    synthetic, held = small
    lines = [e for e in held.entries() if "Applying migration" in e.get("textPayload", "")]
    assert len(lines) == 2  # each deploy's first instance
    spans = " OR ".join(
        f'(resource.labels.revision_name="{e["resource"]["labels"]["revision_name"]}" AND '
        f'labels.instanceId="{e["labels"]["instanceId"]}" AND timestamp>="{e["timestamp"]}" '
        f'AND timestamp<="{at(59)}")' for e in lines)
    text = (f'{SCOPE} AND NOT logName:"run.googleapis.com%2Frequests" AND ({spans}) AND '
            f'timestamp>="{min(e["timestamp"] for e in lines)}" AND timestamp<="{at(59)}"')
    got = pages(synthetic, text, page_size=50)
    assert got == pages(held, text, page_size=50) and sum(map(len, got)) > 20


def test_small_pages_and_the_byte_limit_cut_where_an_entry_store_cuts(
        small: tuple[SyntheticStore, EntryStore]) -> None:
    synthetic = SyntheticStore(spec(), max_page_bytes=2_000)
    held = EntryStore(synthetic.entries(), max_page_bytes=2_000)
    for text in (f'timestamp>="{at(20)}" AND timestamp<"{at(26)}"', "httpRequest.status>=500"):
        for order in ("", "timestamp desc"):
            got, want = pages(synthetic, text, order, 7), pages(held, text, order, 7)
            assert got == want and len(got) > 3
            assert any(len(p) < 7 for p in got[:-1])  # bytes cut some pages short
    first, token = small[0].query([PROJECT], "", "", 0)
    assert len(first) == 50 and token  # the API's default page size
    assert [e.pb for e in first] == [e.pb for e in small[1].query([PROJECT], "", "", 0)[0]]


def test_the_clock_hides_what_has_not_been_received_yet() -> None:
    now = T0 + timedelta(seconds=33.3)
    synthetic = SyntheticStore(spec(), clock=lambda: now)
    everything = SyntheticStore(spec()).entries()
    held = EntryStore([e for e in everything
                       if parse_rfc3339_ns(e["receiveTimestamp"]) <= parse_rfc3339_ns(at(33.3))])
    assert 0 < len(held) < len(everything)
    late = [e for e in held.entries()
            if parse_rfc3339_ns(e["receiveTimestamp"]) - parse_rfc3339_ns(e["timestamp"]) > 5e9]
    assert late  # some entries arrive seconds late, as Cloud Logging shows them
    for text in FILTERS[:4]:
        assert pages(synthetic, text, page_size=500) == pages(held, text, page_size=500)
    assert pages(synthetic, f'timestamp>="{at(40)}"') == [[]]


def test_requests_are_validated_as_the_entry_store_validates_them(
        small: tuple[SyntheticStore, EntryStore]) -> None:
    synthetic, _ = small
    with pytest.raises(InvalidArgument, match="page_size"):
        synthetic.query([PROJECT], "", "", 1001)
    with pytest.raises(InvalidArgument, match="order_by"):
        synthetic.query([PROJECT], "", "severity")
    with pytest.raises(InvalidArgument, match="resource_names"):
        synthetic.query([], "")
    with pytest.raises(InvalidArgument, match="bare search term"):
        synthetic.query([PROJECT], "MissingSessionTableError")
    _, token = synthetic.query([PROJECT], "", "", 10)
    with pytest.raises(InvalidArgument, match="does not belong"):
        synthetic.query([PROJECT], "severity>=INFO", "", 10, token)
    with pytest.raises(InvalidArgument, match="expired"):
        SyntheticStore(spec()).query([PROJECT], "", "", 10, token)
    assert synthetic.query(["projects/other"], "") == ([], "")


def test_the_same_spec_makes_the_same_entries(small: tuple[SyntheticStore, EntryStore]) -> None:
    synthetic, held = small
    again = SyntheticStore(TrafficSpec.from_json(json.loads(json.dumps(spec().to_json()))))
    assert again.entries() == held.entries()
    assert synthetic.total() == len(held)
    assert synthetic.spec.failures == 40
    other = SyntheticStore(spec(seed=8)).entries()
    assert other != held.entries()


def test_a_selective_read_at_10000_rps_builds_only_what_it_selects() -> None:
    big = SyntheticStore(spec(rps=10_000, seconds=600, failures=300))
    assert big.total() > 12_000_000
    errors = ('textPayload=~"MissingSessionTableError" OR '
              'jsonPayload.message=~"MissingSessionTableError"')
    got = [e for p in pages(big, errors) for e in p]
    assert len(got) == 400  # 300 as text, 100 structured
    # every entry it built was a candidate: the signal's classes and the episodes' few entries
    assert big.counters["built"] < 500
    before = dict(big.counters)
    window = (f'{SCOPE} AND (textPayload=~"{NEEDLES}" OR httpRequest.status>=500 OR '
              f'logName:"cloudaudit.googleapis.com") AND timestamp>="{at(100)}" AND '
              f'timestamp<="{at(300)}" AND receiveTimestamp>="{at(100)}" AND '
              f'receiveTimestamp<"{at(300)}"')
    read = sum(map(len, pages(big, window)))
    assert 300 < read < 800
    assert big.counters["built"] - before["built"] < read + 100
    # a read of everything is paged and only built as far as it goes
    before = dict(big.counters)
    page, token = big.query([PROJECT], f'timestamp>="{at(300)}"', "", 1000)
    assert len(page) == 1000 and token
    assert big.counters["built"] - before["built"] < 1100


def test_a_sample_of_a_flood_builds_only_the_entries_in_the_sample(
        small: tuple[SyntheticStore, EntryStore]) -> None:
    """`sample(insertId, p)` is judged on the insert id before an entry is built: a flood's
    sample costs a hash per entry it passes over, and the answer is the entry store's."""
    synthetic, held = small
    sampled = (f'{SCOPE} AND ((textPayload=~"MissingSessionTableError" AND '
               f'sample(insertId, 0.125)) OR (httpRequest.status>=500 AND '
               f'sample(insertId, 0.25)) OR logName:"cloudaudit.googleapis.com")')
    before = dict(synthetic.counters)
    got = [e for p in pages(synthetic, sampled) for e in p]
    assert got == [e for p in pages(held, sampled) for e in p] and got
    # of the classes, only what the sample keeps; the episodes' few fixed entries are built
    built = synthetic.counters["built"] - before["built"]
    assert built <= len(got) + len(synthetic._fixed)
    whole = sampled.replace("sample(insertId, 0.125)", "sample(insertId, 1)").replace(
        "sample(insertId, 0.25)", "sample(insertId, 1)")
    assert len([e for p in pages(synthetic, whole) for e in p]) > 4 * len(got)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator[SyntheticStore], LoggingServiceV2Client]]:
    now = T0 + timedelta(seconds=45)
    with Emulator(SyntheticStore(spec(), clock=lambda: now), rest=True) as emulator:
        channel = grpc.insecure_channel(emulator.grpc_endpoint)
        yield emulator, LoggingServiceV2Client(
            transport=LoggingServiceV2GrpcTransport(channel=channel))
        channel.close()


def test_the_generated_client_reads_it_through_the_emulator(
        served: tuple[Emulator[SyntheticStore], LoggingServiceV2Client]) -> None:
    emulator, client = served
    text = f'{SCOPE} AND (httpRequest.status>=500 OR logName:"cloudaudit.googleapis.com")'
    pager = client.list_log_entries(request={"resource_names": [PROJECT], "filter": text,
                                             "page_size": 7}, retry=None, timeout=10)
    got = [(e.insert_id, e.timestamp) for page in pager.pages for e in page.entries]
    direct = [e for p in pages(emulator.store, text, page_size=7) for e in p]
    assert len(got) == len(direct) > 7 and got == sorted(got, key=lambda x: (x[1], x[0]))
    assert emulator.requests == len(direct) // 7 + 1
    audit = [e for p in client.list_log_entries(
        request={"resource_names": [PROJECT], "filter": 'logName:"cloudaudit"'},
        retry=None).pages for e in p.entries]
    assert {e.proto_payload.type_url for e in audit} == {
        "type.googleapis.com/google.cloud.audit.AuditLog"}
    with pytest.raises(exceptions.InvalidArgument, match="page_size"):
        list(client.list_log_entries(request={"resource_names": [PROJECT], "page_size": 5000},
                                     retry=None))


def test_rest_serves_the_json_form(
        served: tuple[Emulator[SyntheticStore], LoggingServiceV2Client]) -> None:
    import urllib.request

    emulator, _ = served
    body = json.dumps({"resourceNames": [PROJECT], "pageSize": 3,
                       "filter": 'textPayload:"MissingSessionTableError"'}).encode()
    request = urllib.request.Request(f"{emulator.rest_endpoint}/v2/entries:list", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert [e["textPayload"] for e in answer["entries"]] == [ERROR_LINE] * 3
    assert answer["nextPageToken"]


def test_the_monitor_reads_the_story_in_it(tmp_path: Path) -> None:
    """A replay of the synthetic export: the incident, its cause, its fix, its resolution."""
    from monitor.check import run_cycle
    from monitor.config import parse_config
    from monitor.correlate.model import IncidentKind, IncidentStatus
    from monitor.notify.console import ConsoleNotifier
    from monitor.sources.file import FileSource
    from monitor.store import open_store

    synthetic = SyntheticStore(spec(rps=5, seconds=600, failures=60))
    export = tmp_path / "export.json"
    export.write_text(json.dumps(synthetic.entries()))
    config = parse_config({
        "project": "bench-prod", "services": ["storefront"],
        "source": {"type": "file", "path": str(export)},
        "poll": {"max_lateness": "1m"},
        "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError",
                     "resolve_after": "2m"}],
        "migrations": {"tool": "prisma"}, "slack": {"channel": "#t", "token": ""},
        "state": {"url": f"sqlite:///{tmp_path}/state.db"}}, env={})
    store = open_store(config.state.url)
    import io

    result = run_cycle(config, store, FileSource(export), ConsoleNotifier(io.StringIO()),
                       unit="bench-prod", services=["storefront"], project="bench-prod",
                       now=T0 + timedelta(minutes=30))
    store.close()
    [incident] = [i for i in result.state.incidents.values() if i.kind is IncidentKind.ERROR]
    assert incident.count == 80  # every failure's signal line, text or structured, once
    assert incident.introduced_by == BAD and BAD_MIGRATION in incident.suspect_migrations
    assert incident.status is IncidentStatus.RESOLVED and incident.resolved_by == FIX
    revisions = result.state.revisions
    assert FIX_MIGRATION in json.dumps([r.to_state() for r in revisions.values()])


ATOMS = [
    "httpRequest.status>=500", "httpRequest.status=200", "httpRequest.status<400",
    'httpRequest.requestUrl=~"/app$"', 'httpRequest.requestUrl:"products"',
    'textPayload=~"Missing|ECONNREFUSED"', 'textPayload:"migration"', "textPayload:*",
    'jsonPayload.message:"session"', "jsonPayload.durationMs>200", 'jsonPayload.err.type:*',
    'logName:"requests"', 'log_id("run.googleapis.com/stderr")', 'logName:"cloudaudit"',
    f'resource.labels.revision_name="{BAD}"', f'resource.labels.revision_name="{FIX}"',
    "severity>=WARNING", "severity=DEFAULT", "sample(insertId, 0.3)",
    'httpRequest.latency>"0.1s"', 'labels.instanceId:"00"', f'timestamp>="{at(30)}"',
    f'receiveTimestamp<"{at(20)}"', 'protoPayload.methodName:"ReplaceService"',
    'httpRequest.userAgent="GoogleHC/1.0"', 'trace:"traces/a"',
]


def test_random_filters_agree_with_an_entry_store(
        small: tuple[SyntheticStore, EntryStore]) -> None:
    """Whatever the combination of restrictions on constant and varying fields, skipping a
    class never loses a match (three-valued logic is sound) and every match is exact."""
    import random

    synthetic, held = small
    rng = random.Random(16)

    def term(depth: int) -> str:
        if depth == 0 or rng.random() < 0.35:
            return ("NOT " if rng.random() < 0.25 else "") + rng.choice(ATOMS)
        op = rng.choice([" AND ", " OR ", " "])
        inner = op.join(term(depth - 1) for _ in range(rng.randint(2, 3)))
        return ("-" if rng.random() < 0.2 else "") + f"({inner})"

    for _ in range(40):  # in windows of a few seconds (every class of the story has members)
        lo = rng.uniform(5, 40)
        text = f'{term(3)} AND timestamp>="{at(lo)}" AND timestamp<="{at(lo + 6)}"'
        got, want = pages(synthetic, text), pages(held, text)
        assert got == want, text
