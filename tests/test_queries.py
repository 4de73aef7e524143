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


# --- reading the needles (issue 16): the filters select what the classifier needs ------------
# Evaluated by the emulator's implementation of the query language (monitor/emulator/query.py),
# on entries of the shape `gcloud logging read --format=json` prints (tests/helpers.py).

def _selects(filter_: str, entries: list[dict]) -> list[str]:
    from monitor.emulator import compile_filter

    query = compile_filter(filter_)
    return [e["insertId"] for e in entries if query(e)]


def test_the_selection_reads_matches_tool_output_deploys_and_failures_never_successes():
    from monitor.config import parse_config
    from monitor.queries import Selection
    from monitor.sources import selection
    from tests.helpers import export_entry

    cfg = parse_config({"project": "spector-prod", "services": ["spector"],
                        "signals": [{"name": "m", "match": "MissingSession(Table)?Error"}]},
                       env={})
    chosen = selection(cfg)
    assert isinstance(chosen, Selection)
    entries = [
        export_entry(1, 1, "MissingSessionTableError: Prisma session table does not exist."),
        export_entry(2, 2, "Error: P3018"),  # a block header Prisma prints
        export_entry(3, 3, "Database error code: 42P01"),  # names nothing: the follow-up's
        export_entry(4, 4, "GET /app 200 in 12 ms"),  # the app's own line
        export_entry(5, 5, status=500), export_entry(6, 6, status=200),
        export_entry(7, 7, "TypeError: x is undefined"),  # an unrelated error's line
        {**export_entry(8, 8, "ok"), "logName": "projects/spector-prod/logs/"
         "cloudaudit.googleapis.com%2Factivity"},
    ]
    f = read_filter(["spector"], project="spector-prod", start=None, end=None,
                    selection=chosen)
    assert _selects(f, entries) == ["e000001", "e000002", "e000005", "e000008"]


def test_a_selection_too_long_for_the_limit_reads_every_app_line_instead():
    from monitor.queries import Selection
    from tests.helpers import export_entry

    long = Selection(tuple((f"s{i}", f"NeverSeenError{i:03d}WithALongName") for i in range(60)))
    f = read_filter(["spector"], project="spector-prod", start=None, end=None, selection=long)
    assert len(f) <= MAX_FILTER
    entries = [export_entry(1, 1, "anything"), export_entry(2, 2, status=200),
               export_entry(3, 3, status=503)]
    assert _selects(f, entries) == ["e000001", "e000003"]  # successes are still left to probes


def test_a_follow_up_reads_the_instance_lines_around_the_block_and_nothing_else():
    from monitor.queries import FOLLOW_AFTER, Stream, follow_up_filter
    from tests.helpers import at, export_entry

    entries = [export_entry(1, 10, "Error: P3018"),
               export_entry(2, 10.01, "Database error code: 42P01"),
               export_entry(3, 10.01, "Database error code: 42P01", instance="inst-2"),
               export_entry(4, 10.02, status=500),  # a request log: the main read has those
               export_entry(5, 10 + 2 * FOLLOW_AFTER.total_seconds(), "later")]
    f = follow_up_filter([Stream("spector", "spector-00042-wex", "inst-1", at(10) - FOLLOW_AFTER,
                                 at(10) + FOLLOW_AFTER)], project="spector-prod")
    assert _selects(f, entries) == ["e000001", "e000002"]


def test_an_evidence_probe_asks_for_successes_on_the_failed_routes_of_the_right_revisions():
    from monitor.queries import probe_filter
    from tests.helpers import at, export_entry

    def request(n: int, status: int, url: str, revision: str, instance: str = "inst-1") -> dict:
        e = export_entry(n, n, status=status, revision=revision, instance=instance)
        e["httpRequest"]["requestUrl"] = url
        return e

    entries = [request(1, 200, "https://spector.example/app?shop=x", "r44"),
               request(2, 200, "https://spector.example/app/123", "r44"),  # another route
               request(3, 200, "https://spector.example/assets/app.js", "r44"),  # an asset
               request(4, 500, "https://spector.example/app", "r44"),  # a failure
               request(5, 200, "https://spector.example/app", "r42", "inst-9"),  # failing rev
               request(6, 200, "https://spector.example/app", "r42", "inst-1"),  # failed inst
               request(7, 302, "/app", "r44")]
    f = probe_filter("spector", project="spector-prod", since=at(0), until=at(60),
                     successes_only=True, asset_pattern=r"^[^?#]*\.(?:js|css)(?:[?#]|$)",
                     routes=["/app"], not_revisions=["r42"], instances=["inst-1"])
    assert _selects(f, entries) == ["e000001", "e000006", "e000007"]
    fix = probe_filter("spector", project="spector-prod", since=at(0), until=at(60),
                       successes_only=True, asset_pattern=r"\.js$", revisions=["r44"])
    assert _selects(fix, entries) == ["e000001", "e000002", "e000003", "e000007"]
