"""The filters the monitor writes are valid Logging query language, and stay within its limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.queries import MAX_FILTER, logs_query, logs_url, read_filter

T = datetime(2025, 12, 4, 21, 3, 11, 123456, tzinfo=UTC)


def test_read_filter_covers_every_service_with_time_bounds():
    f = read_filter(["spector", "spector-worker"], start=T, end=T, received_after=T,
                    received_before=T)
    assert f == (
        'resource.type="cloud_run_revision" AND (resource.labels.service_name="spector" OR '
        'resource.labels.service_name="spector-worker") AND '
        'timestamp>="2025-12-04T21:03:11.123456Z" AND timestamp<="2025-12-04T21:03:11.123456Z" '
        'AND receiveTimestamp>="2025-12-04T21:03:11.123456Z" AND '
        'receiveTimestamp<"2025-12-04T21:03:11.123456Z"')
    assert " and " not in f and " or " not in f  # lowercase words are search terms


def test_request_logs_are_sampled_when_asked():
    f = read_filter(["spector"], start=None, end=None, request_sample=0.25)
    assert f.endswith('(NOT logName:"run.googleapis.com%2Frequests" OR sample(insertId, 0.25))')
    assert "sample(" not in read_filter(["spector"], start=None, end=None)


def test_the_filter_does_not_grow_with_signals_and_has_a_limit():
    assert len(read_filter(["s"] * 10, start=T, end=T)) < MAX_FILTER
    with pytest.raises(ValueError, match="over Cloud Logging's 20000"):
        read_filter(["x" * 100] * 300, start=None, end=None)


def test_quotes_in_values_are_escaped():
    f = logs_query('svc"x', 'Missing"Session\\d')
    assert 'service_name="svc\\"x"' in f
    assert 'textPayload=~"Missing\\"Session\\\\d"' in f


def test_logs_url_is_percent_encoded_whole():
    url = logs_url(logs_query("spector", "a|b>c"), T, T, "spector-prod")
    assert "|" not in url and ">" not in url and " " not in url
    assert url.endswith("?project=spector-prod")


def test_the_read_filter_names_the_project_as_entries_origin_decides_it():
    from monitor.queries import project_clause

    f = read_filter(["spector"], project="spector-prod", start=None, end=None)
    assert project_clause("spector-prod") in f
    assert project_clause("spector-prod") == (
        '(resource.labels.project_id="spector-prod" OR logName:"projects/spector-prod/logs/")')
    assert "project_id" not in read_filter(["spector"], start=None, end=None)


def test_the_link_query_searches_every_field_the_classifier_reads():
    from monitor.entries import JSON_TEXT_FIELDS

    q = logs_query("spector", "MissingSessionTableError")
    for path in JSON_TEXT_FIELDS:
        assert f'jsonPayload.{".".join(path)}=~"MissingSessionTableError"' in q
    assert 'jsonPayload.err.type=~"MissingSessionTableError"' in q  # pino's class name
    assert 'jsonPayload.stack_trace=~"MissingSessionTableError"' in q  # Error Reporting's
