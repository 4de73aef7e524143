"""The gRPC source's protobuf fast path (`_from_pb`) against the general `entries.normalise`.

`_from_pb` fills LogEntry field by field for speed; `reference` below is the straightforward
conversion through `normalise` it replaced. Every kind of entry must come out equal (including
`raw`, which LogEntry's equality leaves out but `classify.deploys` reads), or fail the same way.
`_from_pb` builds its LogEntry through `entries.new_entry` (no dataclass `__init__`): what comes
out must be a LogEntry like any other, every field set.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud.audit import audit_log_pb2  # noqa: F401  registers AuditLog for Any
from google.cloud.logging_v2.types import LogEntry as LogEntryProto
from google.logging.type import log_severity_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from monitor.entries import LogEntry, MalformedEntry, normalise
from monitor.sources.cloud_logging import _from_pb
from monitor.times import TimeOutOfRange, checked_time

PbLogEntry = type(LogEntryProto.pb(LogEntryProto()))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AUDIT = "type.googleapis.com/google.cloud.audit.AuditLog"
RESOURCE = {"type": "cloud_run_revision", "labels": {
    "service_name": "spector", "revision_name": "spector-00042-wex", "location": "us-central1",
    "project_id": "spector-prod", "configuration_name": "spector"}}


def reference(pb: Any) -> LogEntry:
    """The conversion through `normalise`, as `_from_pb` did it before its fast path."""
    names = {v.number: v.name for v in log_severity_pb2.LogSeverity.DESCRIPTOR.values}

    def time(ts: Any) -> datetime:
        return checked_time(EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000))

    payload = pb.WhichOneof("payload")
    text = pb.text_payload if payload == "text_payload" else None
    json_payload = MessageToDict(pb.json_payload) if payload == "json_payload" else None
    proto_payload: dict[str, Any] | None = None
    if payload == "proto_payload":
        try:
            proto_payload = MessageToDict(pb.proto_payload)
        except (TypeError, KeyError):
            proto_payload = {"@type": pb.proto_payload.type_url}
    http = ({"status": pb.http_request.status, "requestUrl": pb.http_request.request_url,
             "requestMethod": pb.http_request.request_method}
            if pb.HasField("http_request") else None)
    if not pb.insert_id or not pb.log_name:
        raise MalformedEntry("entry has no insertId or logName")
    return normalise(
        insert_id=pb.insert_id, log_name=pb.log_name, timestamp=time(pb.timestamp),
        severity=names.get(pb.severity, "DEFAULT"), resource_labels=pb.resource.labels,
        labels=pb.labels, text_payload=text, json_payload=json_payload,
        proto_payload=proto_payload, http=http,
        raw=({"protoPayload": proto_payload,
              **({"operation": MessageToDict(pb.operation)} if pb.HasField("operation") else {})}
             if proto_payload is not None else None))


def pb(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "insertId": "abc", "logName": "projects/spector-prod/logs/run.googleapis.com%2Fstderr",
        "timestamp": "2025-12-04T21:03:11.123456789Z",
        "receiveTimestamp": "2025-12-04T21:03:11.400Z", "severity": "ERROR",
        "resource": RESOURCE, "labels": {"instanceId": "00f46b"}}
    base.update(fields)
    return ParseDict({k: v for k, v in base.items() if v is not None}, PbLogEntry())


def with_(message: Any, **attrs: Any) -> Any:
    """Set fields the JSON form cannot express (out-of-range nanos, unknown severities)."""
    for path, value in attrs.items():
        target = message
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return message


REQUESTS = "projects/spector-prod/logs/run.googleapis.com%2Frequests"
CASES = {
    "text": pb(textPayload="MissingSessionTableError: boom"),
    "empty text": pb(textPayload=""),
    "no payload": pb(),
    "no timestamp": pb(timestamp=None, receiveTimestamp=None, textPayload="x"),
    "whole seconds": pb(timestamp="2025-12-04T21:03:11Z", textPayload="x"),
    "last nanosecond": pb(timestamp="2025-12-04T21:03:11.999999999Z", textPayload="x"),
    "before the epoch": pb(timestamp="1969-12-31T23:59:59.5Z", textPayload="x"),
    "nanos out of range": with_(pb(textPayload="x"), timestamp__nanos=1_500_000_000),
    "negative nanos": with_(pb(textPayload="x"), timestamp__nanos=-5_000),
    "first second in range": pb(timestamp="1900-01-01T00:00:00Z", textPayload="x"),
    "last nanosecond in range": pb(timestamp="2999-12-31T23:59:59.999999999Z", textPayload="x"),
    "nanos carried to the last second": with_(pb(timestamp="2999-12-31T23:59:58Z",
                                                 textPayload="x"), timestamp__nanos=1_999_999_999),
    "nanos borrowed from the first second": with_(pb(timestamp="1900-01-01T00:00:01Z",
                                                     textPayload="x"), timestamp__nanos=-1_000),
    "same second, other microseconds": pb(timestamp="2025-12-04T21:03:11.000001Z",
                                          textPayload="x"),
    "json message": pb(jsonPayload={"message": "request failed", "level": "error"}),
    "json nested error": pb(jsonPayload={
        "message": "request failed",
        "error": {"name": "MissingSessionTableError", "message": "no table", "stack": "at x"}}),
    "json error fields only": pb(jsonPayload={"err": "boom", "stack_trace": "at y",
                                              "exception": {"message": "E", "code": 3}}),
    "json repeated message": pb(jsonPayload={"message": "same", "msg": "same", "err": "other"}),
    "json non-string message": pb(jsonPayload={"message": 42, "port": 8080, "ok": True}),
    "json message list": pb(jsonPayload={"message": ["a", "b"], "event": "boot"}),
    "json empty message": pb(jsonPayload={"message": "", "event": "boot", "n": 1.5}),
    "json no message": pb(jsonPayload={"event": "boot", "port": 8080, "nested": {"a": "b"},
                                       "none": None}),
    "json empty": pb(jsonPayload={}),
    "json error object without text": pb(jsonPayload={"error": {"code": 3}, "event": "x"}),
    "json error object with type": pb(jsonPayload={"err": {
        "type": "MissingSessionTableError", "message": "no table", "stack": "at z"}}),
    "json error object, text elsewhere": pb(jsonPayload={"exception": {
        "name": "E", "message": "", "stack": "at q"}, "msg": "failed"}),
    "json message object": pb(jsonPayload={"message": {"message": "inner", "err": "e2"},
                                           "msg": "outer"}),
    "json message object without text": pb(jsonPayload={"message": {"code": 1}, "n": 2}),
    "json error fields not strings": pb(jsonPayload={"err": 1, "error": ["a"], "stack": True,
                                                     "exception": None, "x": "y"}),
    "json nested error in error": pb(jsonPayload={"error": {"message": {"message": "deep"},
                                                            "type": "T"}, "event": "e"}),
    "audit deploy": pb(logName="projects/spector-prod/logs/cloudaudit.googleapis.com%2Factivity",
                       severity="NOTICE", labels=None, protoPayload={
                           "@type": AUDIT,
                           "methodName": "google.cloud.run.v1.Services.ReplaceService",
                           "resourceName": "namespaces/spector-prod/services/spector",
                           "authenticationInfo": {"principalEmail": "dev@example.com"}}),
    "audit ready": pb(logName="projects/spector-prod/logs/cloudaudit.googleapis.com%2Fsystem_event",
                      protoPayload={"@type": AUDIT, "status": {
                          "message": "Ready condition status changed to True for Revision "
                                     "spector-00042-wex."}}),
    "request": pb(logName=REQUESTS, severity="INFO", httpRequest={
        "status": 500, "requestMethod": "GET", "requestUrl": "https://x/app"}),
    "request without status": pb(logName=REQUESTS, httpRequest={"requestMethod": "GET"}),
    "request with text": pb(logName=REQUESTS, httpRequest={"status": 200}, textPayload="hi"),
    "request with json": pb(logName=REQUESTS, httpRequest={"status": 503},
                            jsonPayload={"latency": 3}),
    "request without url": pb(logName=REQUESTS, httpRequest={"status": 204,
                                                             "requestMethod": "POST"}),
    "request, empty": pb(logName=REQUESTS, httpRequest={}),
    "request with empty text": pb(logName=REQUESTS, textPayload="", httpRequest={
        "status": 302, "requestMethod": "GET", "requestUrl": "https://x/"}),
    "labels missing": pb(labels=None, resource={"type": "cloud_run_revision"}),
    "no project label": pb(resource={"type": "cloud_run_revision", "labels": {
        "service_name": "spector", "revision_name": "spector-00042-wex"}}, textPayload="x"),
    "job": pb(resource={"type": "cloud_run_job", "labels": {"job_name": "migrate",
                                                            "location": "europe-west1"}}),
    "log outside a project": pb(logName="organizations/1/logs/x", resource=None, labels=None),
    "severity unset": pb(severity=None, textPayload="x"),
    "severity unknown": with_(pb(textPayload="x"), severity=123),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_normalise(name: str) -> None:
    entry = CASES[name]
    fast, general = _from_pb(entry), reference(entry)
    assert fast == general
    assert dict(fast.raw) == dict(general.raw)
    assert type(fast) is LogEntry and type(fast.timestamp) is datetime
    assert fast.timestamp.tzinfo is general.timestamp.tzinfo
    for f in dataclasses.fields(LogEntry):  # every field set, of the same type
        assert type(getattr(fast, f.name)) is type(getattr(general, f.name)), f.name
    assert hash(fast) == hash(general) and repr(fast) == repr(general)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.text = "changed"  # type: ignore[misc]


OUT_OF_RANGE = {
    "before 1900": pb(timestamp="1899-12-31T23:59:59.999999999Z", textPayload="x"),
    "year 3000": pb(timestamp="3000-01-01T00:00:00Z", textPayload="x"),
    "nanos carried past the last second": with_(
        pb(timestamp="2999-12-31T23:59:59Z", textPayload="x"), timestamp__nanos=1_000_000_000),
    "nanos borrowed before the first second": with_(pb(timestamp="1900-01-01T00:00:00Z",
                                                       textPayload="x"), timestamp__nanos=-1),
}


@pytest.mark.parametrize("name", list(OUT_OF_RANGE))
def test_a_time_out_of_range_fails_the_same_way_on_both_paths(name: str) -> None:
    entry = OUT_OF_RANGE[name]
    with pytest.raises(TimeOutOfRange):
        reference(entry)
    with pytest.raises(TimeOutOfRange):
        _from_pb(entry)


@pytest.mark.parametrize("seconds", [2**62, -(2**62)])
def test_a_time_beyond_datetime_fails_as_the_source_skips_it(seconds: int) -> None:
    entry = with_(pb(textPayload="x"), timestamp__seconds=seconds)
    with pytest.raises(OverflowError):
        reference(entry)
    with pytest.raises(OverflowError):  # `_Grpc.entries` counts and skips it
        _from_pb(entry)


def test_times_within_one_second_are_their_own() -> None:
    """The whole second is cached; the microseconds are each entry's."""
    a = _from_pb(pb(timestamp="2025-12-04T21:03:11.000001Z", textPayload="x"))
    b = _from_pb(pb(timestamp="2025-12-04T21:03:11.999999Z", textPayload="x"))
    c = _from_pb(pb(timestamp="2025-12-04T21:03:12Z", textPayload="x"))
    assert (a.timestamp.microsecond, b.timestamp.microsecond, c.timestamp.second) == (
        1, 999999, 12)


@pytest.mark.parametrize("missing", ["insert_id", "log_name"])
def test_an_entry_without_identity_is_malformed_on_both_paths(missing: str) -> None:
    entry = with_(pb(textPayload="x"), **{missing: ""})
    with pytest.raises(MalformedEntry):
        reference(entry)
    with pytest.raises(MalformedEntry):
        _from_pb(entry)


def test_repeated_resources_are_read_per_entry_not_from_a_stale_cache() -> None:
    a = _from_pb(pb(textPayload="x"))
    b = _from_pb(pb(textPayload="x", resource={"type": "cloud_run_revision", "labels": {
        **RESOURCE["labels"], "revision_name": "spector-00043-abc"}}))
    c = _from_pb(pb(textPayload="x", logName="projects/other/logs/run.googleapis.com%2Frequests",
                    resource={"type": "cloud_run_revision",
                              "labels": {"service_name": "spector"}}))
    assert (a.revision, b.revision, c.project, c.kind.value) == (
        "spector-00042-wex", "spector-00043-abc", "other", "request")
