"""LogEntry normalisation of the JSON form `gcloud logging read --format=json` writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.entries import EntryKind, MalformedEntry, from_json
from monitor.times import format_time, parse_time

RESOURCE = {"type": "cloud_run_revision", "labels": {
    "service_name": "spector", "revision_name": "spector-00042-wex", "location": "us-central1",
    "project_id": "spector-prod", "configuration_name": "spector"}}


def entry(**fields):
    base = {"insertId": "abc", "logName": "projects/spector-prod/logs/run.googleapis.com%2Fstderr",
            "timestamp": "2025-12-04T21:03:11.123456789Z",
            "receiveTimestamp": "2025-12-04T21:03:11.400Z", "severity": "ERROR",
            "resource": RESOURCE, "labels": {"instanceId": "00f46b"}}
    base.update(fields)
    return base


def test_text_payload():
    e = from_json(entry(textPayload="MissingSessionTableError: boom"))
    assert e.text == "MissingSessionTableError: boom"
    assert e.kind is EntryKind.APP
    assert (e.service, e.revision, e.instance_id, e.project) == (
        "spector", "spector-00042-wex", "00f46b", "spector-prod")
    assert e.timestamp == datetime(2025, 12, 4, 21, 3, 11, 123456, tzinfo=UTC)
    assert e.key == "projects/spector-prod/logs/run.googleapis.com%2Fstderr\x1fabc"


def test_json_payload_message_and_error_fields():
    e = from_json(entry(jsonPayload={"message": "request failed",
                                     "error": {"name": "MissingSessionTableError",
                                               "message": "no table"}}))
    assert "request failed" in e.text and "MissingSessionTableError" in e.text


def test_json_payload_without_message_keeps_scalar_fields():
    e = from_json(entry(jsonPayload={"event": "boot", "port": 8080}))
    assert "event=boot" in e.text and "port=8080" in e.text


def test_request_log():
    e = from_json(entry(logName="projects/p/logs/run.googleapis.com%2Frequests",
                        httpRequest={"status": 500, "requestMethod": "GET",
                                     "requestUrl": "https://x/app"}))
    assert e.kind is EntryKind.REQUEST and e.http_status == 500
    assert e.text == "GET https://x/app 500"


@pytest.mark.parametrize(("log", "kind"), [
    ("cloudaudit.googleapis.com%2Factivity", EntryKind.AUDIT),
    ("cloudaudit.googleapis.com%2Fsystem_event", EntryKind.SYSTEM),
    ("run.googleapis.com%2Fstdout", EntryKind.APP),
])
def test_kinds(log, kind):
    e = from_json(entry(logName=f"projects/p/logs/{log}",
                        protoPayload={"methodName": "google.cloud.run.v1.Services.ReplaceService",
                                      "resourceName": "namespaces/p/services/spector"}))
    assert e.kind is kind


def test_audit_text_summarises_the_payload():
    e = from_json(entry(protoPayload={"status": {"message": "Ready condition status changed to "
                                                 "True for Revision spector-00042-wex."},
                                      "methodName": "/Services.CreateService"}))
    assert "Ready condition status changed to True" in e.text


@pytest.mark.parametrize(("bad", "why"), [
    ([], "not an object"),
    ({"insertId": "a", "logName": "l"}, "no timestamp"),
    ({"insertId": "a", "timestamp": "2025-12-04T21:03:11Z"}, "no logName"),
    ({"logName": "l", "timestamp": "2025-12-04T21:03:11Z"}, "no insertId"),
    ({"insertId": "a", "logName": "l", "timestamp": "yesterday"}, "bad timestamp"),
])
def test_malformed(bad, why):
    with pytest.raises(MalformedEntry, match=why):
        from_json(bad)


def test_time_formats():
    assert parse_time("2025-12-04T21:03:11+01:00") == datetime(2025, 12, 4, 20, 3, 11, tzinfo=UTC)
    assert format_time(parse_time("2025-12-04T21:03:11Z")) == "2025-12-04T21:03:11Z"
    assert format_time(parse_time("2025-12-04T21:03:11.5Z")) == "2025-12-04T21:03:11.500000Z"
    assert format_time(None) is None


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                                "0001-01-01T00:30:00+01:00", "1899-12-31T23:59:59Z"])
def test_a_timestamp_no_entry_can_have_is_malformed(ts):
    with pytest.raises(MalformedEntry, match="out of range"):
        from_json(entry(timestamp=ts))


def test_an_integer_timestamp_is_named_for_what_it_is():
    with pytest.raises(MalformedEntry, match="timestamp is not an RFC 3339 string: 1733349791"):
        from_json(entry(timestamp=1733349791))
    with pytest.raises(MalformedEntry, match="entry has no timestamp"):
        from_json({k: v for k, v in entry().items()
                   if k not in ("timestamp", "receiveTimestamp")})


def test_a_lone_surrogate_in_a_name_becomes_a_replacement_character():
    labels = {**RESOURCE["labels"], "revision_name": "spector-\ud800x", "service_name": "s\udfff"}
    e = from_json(entry(resource={"type": "cloud_run_revision", "labels": labels}))
    assert (e.service, e.revision) == ("s\ufffd", "spector-\ufffdx")
    e.revision.encode("utf-8")  # what a store does with it
