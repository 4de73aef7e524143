"""The emulator driven by the real Google clients: the generated gRPC client, and the REST one.

What must hold for the monitor's tests to mean anything: counts and order agree with a Python-side
reading of the same export, pages chain through tokens, payloads survive the protobuf round trip
(text, JSON, and the audit log inside protoPayload), injected faults surface as the same
`google.api_core.exceptions` types Cloud Logging produces, and late entries are found by
`receiveTimestamp`. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.auth.credentials
import grpc
import pytest
from google.api_core import exceptions
from google.api_core import retry as retries
from google.cloud import logging as cloud_logging
from google.cloud.audit import audit_log_pb2
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import (
    LoggingServiceV2GrpcTransport,
)

from monitor.emulator import Emulator, EntryStore, InvalidArgument
from monitor.emulator.query import SEVERITY_RANKS

EXPORT = Path(__file__).resolve().parents[2] / "examples" / "spector-incident.json"
PROJECT = "projects/spector-prod"
SCRATCH = "projects/emulator-e2e"  # tests that add entries add them here
WINDOW = 'timestamp>="2025-12-01T00:00:00Z" AND timestamp<"2025-12-20T00:00:00Z"'


@pytest.fixture(scope="module")
def export() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(EXPORT.read_text())
    return data


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    store = EntryStore()
    store.load(EXPORT)
    with Emulator(store) as emulator:
        yield emulator


@pytest.fixture
def emulator(server: Emulator) -> Iterator[Emulator]:
    server.clear_faults()
    server.reset_counters()
    yield server
    server.clear_faults()


@pytest.fixture(scope="module")
def client(server: Emulator) -> Iterator[LoggingServiceV2Client]:
    channel = grpc.insecure_channel(server.grpc_endpoint)
    yield LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(channel=channel))
    channel.close()


@pytest.fixture(scope="module")
def rest_client(server: Emulator) -> cloud_logging.Client:
    return cloud_logging.Client(
        project="spector-prod", _use_grpc=False,
        credentials=google.auth.credentials.AnonymousCredentials(),
        client_options={"api_endpoint": server.rest_endpoint})


def read(client: LoggingServiceV2Client, filter: str, *, page_size: int = 1000,
         order_by: str = "timestamp asc", names: tuple[str, ...] = (PROJECT,),
         retry: Any = None, timeout: float = 5.0) -> list[list[Any]]:
    """Every page of a read, as lists of proto-plus LogEntry."""
    pager = client.list_log_entries(
        request={"resource_names": list(names), "filter": filter, "order_by": order_by,
                 "page_size": page_size}, retry=retry, timeout=timeout)
    return [list(page.entries) for page in pager.pages]


def spector(entry: dict[str, Any]) -> bool:
    return bool(entry["logName"].startswith(PROJECT + "/")
                and entry.get("resource", {}).get("labels", {}).get("service_name") == "spector")


def test_counts_match_a_python_side_filter(client: LoggingServiceV2Client,
                                           export: list[dict[str, Any]]) -> None:
    errors = [e for e in export if spector(e)
              and SEVERITY_RANKS[e.get("severity", "DEFAULT")] >= SEVERITY_RANKS["ERROR"]]
    pages = read(client, f'resource.labels.service_name="spector" AND severity>=ERROR {WINDOW}')
    assert sum(map(len, pages)) == len(errors) > 0
    missing = [e for e in export if spector(e)
               and re.search("MissingSessionTable", e.get("textPayload", ""))]
    pages = read(client, 'resource.type="cloud_run_revision" resource.labels.service_name='
                         '"spector" textPayload=~"MissingSessionTable"')
    assert {e.insert_id for p in pages for e in p} == {e["insertId"] for e in missing}
    requests = [e for e in export if spector(e) and e.get("httpRequest", {}).get("status")]
    pages = read(client, 'resource.labels.service_name="spector" httpRequest.status>=200')
    assert sum(map(len, pages)) == len(requests)


def test_pages_chain_through_tokens_in_order(client: LoggingServiceV2Client,
                                             emulator: Emulator,
                                             export: list[dict[str, Any]]) -> None:
    ours = [e for e in export if e["logName"].startswith(PROJECT + "/")]
    pages = read(client, WINDOW, page_size=100)
    assert [len(p) for p in pages] == [100] * (len(ours) // 100) + [len(ours) % 100]
    got = [(e.timestamp, e.insert_id) for p in pages for e in p]
    assert got == sorted(got) and len(set(got)) == len(ours)
    log = emulator.request_log
    assert [r.page for r in log] == list(range(len(pages)))
    assert log[0].page_token == "" and all(r.page_token for r in log[1:])
    assert {r.filter for r in log} == {WINDOW} and log[0].resource_names == (PROJECT,)
    newest_first = [(e.timestamp, e.insert_id) for p in
                    read(client, WINDOW, page_size=300, order_by="timestamp desc") for e in p]
    assert newest_first == got[::-1]


def test_page_size_default_and_limits(client: LoggingServiceV2Client) -> None:
    pager = client.list_log_entries(request={"resource_names": [PROJECT]}, retry=None)
    assert len(pager._response.entries) == 50 and pager.next_page_token
    with pytest.raises(exceptions.InvalidArgument, match="page_size"):
        read(client, "", page_size=1001)


def test_payloads_survive_the_protobuf_round_trip(client: LoggingServiceV2Client,
                                                  emulator: Emulator,
                                                  export: list[dict[str, Any]]) -> None:
    audit = next(e for e in export if "protoPayload" in e)
    [[entry]] = read(client, f'insertId="{audit["insertId"]}"')
    log = audit_log_pb2.AuditLog()
    assert entry.proto_payload.Unpack(log)
    assert log.method_name == audit["protoPayload"]["methodName"]
    assert log.status.message == audit["protoPayload"]["status"]["message"]
    assert log.response["kind"] == "Service"  # a Struct inside the AuditLog
    text = next(e for e in export if "textPayload" in e)
    [[entry]] = read(client, f'insertId="{text["insertId"]}"')
    assert entry.text_payload == text["textPayload"]
    assert entry.resource.labels["revision_name"] == text["resource"]["labels"]["revision_name"]
    assert entry.receive_timestamp.isoformat().startswith(text["receiveTimestamp"][:26])
    emulator.store.add([{
        "insertId": "json-1", "logName": f"{SCRATCH}/logs/app", "severity": "ERROR",
        "timestamp": "2025-12-04T21:03:08.123456789Z",
        "jsonPayload": {"message": "boom", "count": 3, "tags": ["a"]},
        "httpRequest": {"status": 502, "latency": "0.25s", "responseSize": "77"}}])
    [[entry]] = read(client, 'jsonPayload.message="boom"', names=(SCRATCH,))
    assert entry.json_payload["message"] == "boom" and entry.json_payload["count"] == 3
    assert entry.http_request.status == 502 and entry.http_request.response_size == 77
    assert entry.timestamp.nanosecond == 123456789  # nanoseconds travel
    assert read(client, 'jsonPayload.message="boom"') == [[]]  # other project, not ours


@pytest.mark.parametrize(("code", "error"), [
    (grpc.StatusCode.UNAVAILABLE, exceptions.ServiceUnavailable),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, exceptions.ResourceExhausted),
    (grpc.StatusCode.PERMISSION_DENIED, exceptions.PermissionDenied),
    (grpc.StatusCode.INTERNAL, exceptions.InternalServerError),
])
def test_injected_faults_surface_as_api_core_exceptions(
        client: LoggingServiceV2Client, emulator: Emulator, code: grpc.StatusCode,
        error: type[Exception]) -> None:
    emulator.fail_next(code, message="try later")
    with pytest.raises(error, match="try later"):
        read(client, "severity>=ERROR")
    assert emulator.requests == 1 and emulator.request_log[0].status == code.name
    assert read(client, 'insertId="693ccc01db49644426d7158e"')[0]  # the next one succeeds


def test_errors_can_arrive_mid_iteration(client: LoggingServiceV2Client,
                                         emulator: Emulator) -> None:
    emulator.fail_next(grpc.StatusCode.UNAVAILABLE, after_pages=2)
    pager = client.list_log_entries(
        request={"resource_names": [PROJECT], "filter": WINDOW, "page_size": 100}, retry=None)
    pages = []
    with pytest.raises(exceptions.ServiceUnavailable):
        for page in pager.pages:
            pages.append(page)
    assert len(pages) == 2
    assert [(r.page, r.status) for r in emulator.request_log] == [
        (0, "OK"), (1, "OK"), (2, "UNAVAILABLE")]


def test_the_client_retries_unavailable_by_default(client: LoggingServiceV2Client,
                                                   emulator: Emulator) -> None:
    emulator.fail_next(grpc.StatusCode.UNAVAILABLE, times=2)
    quick = retries.Retry(initial=0.01, maximum=0.02, multiplier=1.0, timeout=5.0,
                          predicate=retries.if_exception_type(exceptions.ServiceUnavailable))
    assert read(client, "severity>=ERROR", retry=quick)
    assert [r.status for r in emulator.request_log] == ["UNAVAILABLE", "UNAVAILABLE", "OK"]


def test_a_delay_past_the_deadline_is_deadline_exceeded(client: LoggingServiceV2Client,
                                                        emulator: Emulator) -> None:
    emulator.delay_next(1.0)
    with pytest.raises(exceptions.DeadlineExceeded):
        read(client, "severity>=ERROR", timeout=0.2)


def test_invalid_requests_are_invalid_argument(client: LoggingServiceV2Client) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="lowercase 'and'"):
        read(client, 'severity>=ERROR and textPayload:"x"')
    with pytest.raises(exceptions.InvalidArgument, match="order_by"):
        read(client, "", order_by="insertId")
    with pytest.raises(exceptions.InvalidArgument, match="resource"):
        read(client, "", names=("organizations/1",))
    first = client.list_log_entries(
        request={"resource_names": [PROJECT], "filter": WINDOW, "page_size": 10}, retry=None)
    with pytest.raises(exceptions.InvalidArgument, match="page_token"):
        client.list_log_entries(request={"resource_names": [PROJECT], "filter": "",
                                         "page_token": first.next_page_token}, retry=None)


def test_late_entries_are_found_by_receive_timestamp(client: LoggingServiceV2Client,
                                                     emulator: Emulator) -> None:
    entry = {"insertId": "late-1", "logName": f"{SCRATCH}/logs/run.googleapis.com%2Fstderr",
             "timestamp": "2025-12-04T21:03:08Z", "textPayload": "MissingSessionTableError"}
    emulator.store.add([{**entry, "insertId": "on-time",
                         "receiveTimestamp": "2025-12-04T21:03:09Z"}])
    before = datetime.now(UTC)
    emulator.store.append([entry])
    since = before.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pages = read(client, f'receiveTimestamp>="{since}"', names=(SCRATCH,))
    assert [e.insert_id for p in pages for e in p] == ["late-1"]
    [late] = pages[0]
    assert late.timestamp.isoformat() == "2025-12-04T21:03:08+00:00"
    assert late.receive_timestamp >= before
    old = read(client, 'timestamp<"2025-12-04T21:04:00Z" textPayload:*', names=(SCRATCH,))
    assert sorted(e.insert_id for p in old for e in p) == ["late-1", "on-time"]


def test_rest_through_the_real_client(rest_client: cloud_logging.Client, emulator: Emulator,
                                      export: list[dict[str, Any]]) -> None:
    errors = [e for e in export if spector(e) and e.get("severity") == "ERROR"]
    got = list(rest_client.list_entries(
        resource_names=[PROJECT], page_size=100,
        filter_=f'resource.labels.service_name="spector" severity=ERROR {WINDOW}'))
    assert [e.insert_id for e in got] == [e["insertId"] for e in
                                          sorted(errors, key=lambda e: e["timestamp"])]
    assert emulator.requests == -(-len(errors) // 100)
    assert all(r.transport == "rest" for r in emulator.request_log)
    audit = next(e for e in export if "protoPayload" in e)
    [entry] = rest_client.list_entries(resource_names=[PROJECT],
                                       filter_=f'insertId="{audit["insertId"]}" {WINDOW}')
    assert entry.payload["methodName"] == audit["protoPayload"]["methodName"]
    text = next(e for e in export if "textPayload" in e)
    [entry] = rest_client.list_entries(resource_names=[PROJECT],
                                       filter_=f'insertId="{text["insertId"]}" {WINDOW}')
    assert entry.payload == text["textPayload"]


@pytest.mark.parametrize(("code", "error"), [
    (grpc.StatusCode.UNAVAILABLE, exceptions.ServiceUnavailable),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, exceptions.TooManyRequests),  # 429, not ResourceExhausted
    (grpc.StatusCode.PERMISSION_DENIED, exceptions.Forbidden),
])
def test_rest_faults(rest_client: cloud_logging.Client, emulator: Emulator,
                     code: grpc.StatusCode, error: type[Exception]) -> None:
    emulator.fail_next(code, message="injected")
    with pytest.raises(error, match="injected"):
        list(rest_client.list_entries(resource_names=[PROJECT], filter_=WINDOW))
    with pytest.raises(exceptions.BadRequest, match="lowercase 'or'"):
        list(rest_client.list_entries(resource_names=[PROJECT], filter_=f"{WINDOW} or x"))


def post(emulator: Emulator, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{emulator.rest_endpoint}/v2/entries:list",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_wire_format(emulator: Emulator) -> None:
    status, first = post(emulator, {"resourceNames": [PROJECT], "filter": "severity>=ERROR",
                                    "pageSize": 5, "orderBy": "timestamp desc"})
    assert status == 200 and len(first["entries"]) == 5 and first["nextPageToken"]
    assert first["entries"][0]["timestamp"] >= first["entries"][-1]["timestamp"]
    status, last = post(emulator, {"resourceNames": [PROJECT],
                                   "filter": 'insertId="693ccc01db49644426d7158e"'})
    assert status == 200 and len(last["entries"]) == 1 and "nextPageToken" not in last
    status, error = post(emulator, {"resourceNames": [PROJECT], "filter": "(severity>=ERROR"})
    assert status == 400 and error["error"]["status"] == "INVALID_ARGUMENT"
    assert "position 0" in error["error"]["message"]
    emulator.fail_next(grpc.StatusCode.DEADLINE_EXCEEDED)
    status, error = post(emulator, {"resourceNames": [PROJECT]})
    assert (status, error["error"]["code"]) == (504, 504)


# --- the store on its own: what the transports rely on ------------------------------------------


def entry(n: int, seconds: int, **extra: Any) -> dict[str, Any]:
    return {"insertId": f"e{n:03d}", "logName": "projects/p/logs/app",
            "timestamp": f"2025-12-04T21:{seconds // 60:02d}:{seconds % 60:02d}Z",
            "textPayload": f"line {n}", **extra}


def test_entries_appended_mid_read_are_neither_repeated_nor_shifting() -> None:
    store = EntryStore(entry(n, n) for n in range(10))
    first, token = store.query(["projects/p"], page_size=4)
    store.append([entry(100, 0), entry(101, 59)])  # one behind the cursor, one ahead
    rest, token2 = store.query(["projects/p"], page_size=100, page_token=token)
    assert [e.json["insertId"] for e in first + rest] == [
        *(f"e{n:03d}" for n in range(10)), "e101"]
    assert token2 == ""


def test_pages_stop_before_the_byte_limit() -> None:
    store = EntryStore((entry(n, n, textPayload="x" * 1000) for n in range(10)),
                       max_page_bytes=3500)
    sizes = []
    token = ""
    while True:
        page, token = store.query(["projects/p"], page_size=1000, page_token=token)
        sizes.append(len(page))
        if not token:
            break
    assert sizes == [3, 3, 3, 1]


def test_shift_to_moves_every_time_by_one_delta() -> None:
    store = EntryStore([entry(1, 0, receiveTimestamp="2025-12-04T21:00:00.5Z"),
                        entry(2, 90, receiveTimestamp="2025-12-04T21:01:31.250000001Z")])
    _, token = store.query(["projects/p"], page_size=1)
    store.shift_to(datetime(2026, 1, 1, tzinfo=UTC))
    assert [(e["timestamp"], e["receiveTimestamp"]) for e in store.entries()] == [
        ("2025-12-31T23:58:30Z", "2025-12-31T23:58:30.500Z"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01.250000001Z")]
    with pytest.raises(InvalidArgument, match="expired"):
        store.query(["projects/p"], page_size=1, page_token=token)


def test_load_reads_arrays_json_lines_and_gzip(tmp_path: Path) -> None:
    entries = [entry(n, n) for n in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(entries, indent=2))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(json.dumps(entries).encode()))
    for name in ("a.json", "b.jsonl", "c.json.gz"):
        store = EntryStore()
        assert store.load(tmp_path / name) == 3
        assert [e["insertId"] for e in store.entries()] == ["e000", "e001", "e002"]
    with pytest.raises(ValueError, match="entry 2: an entry needs a logName"):
        EntryStore().add([entry(1, 1), {"textPayload": "no log name"}])
