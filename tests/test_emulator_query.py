"""The emulator's Logging query language: the grammar, table-driven, over JSON-form entries."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from monitor.emulator.query import (
    MAX_FILTER_CHARS,
    QueryError,
    compile_filter,
    format_rfc3339_ns,
    parse_rfc3339_ns,
)

_RUN = {"type": "cloud_run_revision",
        "labels": {"service_name": "spector", "revision_name": "spector-00042-wex",
                   "project_id": "spector-prod", "location": "us-central1"}}

ENTRIES: list[dict[str, Any]] = [
    {"insertId": "t1", "logName": "projects/spector-prod/logs/run.googleapis.com%2Fstderr",
     "timestamp": "2025-12-04T21:03:08.123456789Z",
     "receiveTimestamp": "2025-12-04T21:03:08.500000000Z", "severity": "ERROR",
     "resource": _RUN, "labels": {"instanceId": "i-1"},
     "textPayload": "MissingSessionTableError: The table `main.Session` does not exist"},
    {"insertId": "j1", "logName": "projects/spector-prod/logs/run.googleapis.com%2Fstdout",
     "timestamp": "2025-12-04T21:03:09.5Z", "receiveTimestamp": "2025-12-04T21:03:10Z",
     "severity": "WARNING", "resource": _RUN,
     "jsonPayload": {"message": "Hello World", "count": 3, "tags": ["blue", "green"],
                     "nested": {"k": "deep Value"}, "nothing": None, "flag": True}},
    {"insertId": "r1", "logName": "projects/spector-prod/logs/run.googleapis.com%2Frequests",
     "timestamp": "2025-12-04T21:03:10.000001Z", "receiveTimestamp": "2025-12-04T21:03:11Z",
     "resource": _RUN, "trace": "projects/spector-prod/traces/abc",
     "httpRequest": {"status": 503, "requestMethod": "GET", "responseSize": "1234",
                     "requestUrl": "https://spector.example/app"}},
    {"insertId": "a1",
     "logName": "projects/spector-prod/logs/cloudaudit.googleapis.com%2Factivity",
     "timestamp": "2025-12-04T20:50:00Z", "receiveTimestamp": "2025-12-04T20:50:01Z",
     "severity": "NOTICE", "resource": {"type": "cloud_run_revision",
                                        "labels": {"service_name": "spector"}},
     "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                      "methodName": "google.cloud.run.v1.Services.ReplaceService",
                      "status": {"message": "Ready condition status changed to True"}}},
    {"insertId": "o1", "logName": "projects/other-prod/logs/run.googleapis.com%2Fstderr",
     "timestamp": "2025-12-04T21:10:00Z", "receiveTimestamp": "2025-12-04T21:10:00Z",
     "severity": "CRITICAL", "resource": {"type": "gce_instance", "labels": {}},
     "textPayload": "robot uprising; AND and or"},
]
ALL = {e["insertId"] for e in ENTRIES}


def ids(text: str) -> set[str]:
    query = compile_filter(text)
    return {e["insertId"] for e in ENTRIES if query(e)}


@pytest.mark.parametrize(("text", "expected"), [
    # boolean structure; OR binds tighter than AND, NOT tightest, juxtaposition is AND
    ("", ALL),
    ('insertId="j1" AND severity=ERROR OR insertId="r1"', set()),  # j1 AND (ERROR OR r1)
    ('(insertId="j1" AND severity=ERROR) OR insertId="r1"', {"r1"}),
    ('insertId="r1" OR insertId="t1" AND severity=ERROR', {"t1"}),
    ('insertId="r1" insertId="t1" OR severity=ERROR', set()),
    ('insertId="t1"\nseverity=ERROR', {"t1"}),
    ('NOT severity=ERROR', ALL - {"t1"}),
    ('-severity=ERROR', ALL - {"t1"}),
    ('NOT severity=ERROR OR insertId="t1"', ALL),  # (NOT a) OR b
    ('NOT (severity=ERROR OR insertId="j1")', ALL - {"t1", "j1"}),
    ('- - insertId="t1"', {"t1"}),
    ('severity=ERROR -- a comment\nOR insertId="j1"', {"t1", "j1"}),
    # comparison operators on strings, numbers, booleans, null
    ('resource.labels.service_name="spector"', ALL - {"o1"}),
    ('resource.labels.service_name!="spector"', {"o1"}),
    ("resource.type=cloud_run_revision", ALL - {"o1"}),
    ('resource.labels.service_name="Spector"', set()),  # = is exact
    ('textPayload:"missingsessiontable"', {"t1"}),  # : is case-insensitive
    ("textPayload:robot", {"o1"}),
    ('jsonPayload.message:"hello"', {"j1"}),
    ('jsonPayload:"DEEP value"', {"j1"}),  # has recurses into objects
    ('jsonPayload.tags="green"', {"j1"}),  # arrays: any element
    ('jsonPayload.tags:"blu"', {"j1"}),
    ("jsonPayload.count=3", {"j1"}),
    ("jsonPayload.count>=3 jsonPayload.count<4 jsonPayload.count>2.5", {"j1"}),
    ("jsonPayload.flag=true", {"j1"}),
    ("jsonPayload.nothing=NULL_VALUE", {"j1"}),
    ("jsonPayload.count:*", {"j1"}),
    ("httpRequest:*", {"r1"}),
    ("httpRequest.status=503", {"r1"}),
    ("httpRequest.status>=500 httpRequest.status<600", {"r1"}),
    ('httpRequest.status="503"', {"r1"}),
    ("httpRequest.responseSize>1000", {"r1"}),  # int64 travels as a JSON string
    ("httpRequest.responseSize>20000", set()),
    ('httpRequest.requestMethod=("POST" OR "GET")', {"r1"}),
    ('resource.type=("gae_app" OR "gce_instance")', {"o1"}),
    ('textPayload=~"Missing\\w+Error"', {"t1"}),
    ('textPayload=~"^robot"', {"o1"}),
    ('textPayload=~"(?i)^ROBOT"', {"o1"}),
    ('textPayload!~"Missing"', ALL - {"t1"}),
    ('protoPayload.methodName="google.cloud.run.v1.Services.ReplaceService"', {"a1"}),
    ('protoPayload.status.message:"ready condition"', {"a1"}),
    ('protoPayload."@type"="type.googleapis.com/google.cloud.audit.AuditLog"', {"a1"}),
    ('labels.instanceId="i-1"', {"t1"}),
    ('logName="projects/spector-prod/logs/run.googleapis.com%2Frequests"', {"r1"}),
    ('logName:"cloudaudit.googleapis.com"', {"a1"}),
    ('log_id("run.googleapis.com/requests")', {"r1"}),
    ('insertId>"r1"', {"t1"}),
    ('trace="projects/spector-prod/traces/abc"', {"r1"}),
    # missing fields: false for = : =~ and orderings, true for != and !~
    ('jsonPayload.absent="x"', set()),
    ('jsonPayload.absent:"x"', set()),
    ('jsonPayload.absent=~"x"', set()),
    ("jsonPayload.absent>1", set()),
    ('jsonPayload.absent!="x"', ALL),
    ('jsonPayload.absent!~"x"', ALL),
    ('NOT jsonPayload.absent="x"', ALL),
    ("textPayload:*", {"t1", "o1"}),
    ("-textPayload:*", {"j1", "r1", "a1"}),
    # severity by rank; absent severity is DEFAULT
    ("severity>=ERROR", {"t1", "o1"}),
    ("severity>=error", {"t1", "o1"}),
    ('severity >= "WARNING"', {"t1", "j1", "o1"}),
    ("severity<NOTICE", {"r1"}),
    ("severity=DEFAULT", {"r1"}),
    ("severity>NOTICE severity<=CRITICAL", {"t1", "j1", "o1"}),
    ("severity>=500", {"t1", "o1"}),
    ('severity=~"^CRIT"', {"o1"}),
    # times: compared as instants, at nanosecond precision, with any offset
    ('timestamp>="2025-12-04T21:03:08.123456789Z"', {"t1", "j1", "r1", "o1"}),
    ('timestamp>"2025-12-04T21:03:08.123456789Z"', {"j1", "r1", "o1"}),
    ('timestamp>"2025-12-04T21:03:08.123456Z"', {"t1", "j1", "r1", "o1"}),  # 789 ns later
    ('timestamp<="2025-12-04T21:03:08.123457Z"', {"t1", "a1"}),
    ('timestamp="2025-12-04T21:03:10.000001000Z"', {"r1"}),
    ('timestamp>="2025-12-04T22:03:09+01:00" timestamp<"2025-12-04T21:03:09.6Z"', {"j1"}),
    ('timestamp<"2025-12-04T21:00:00Z"', {"a1"}),
    ('timestamp>="2025-12-05"', set()),
    ('receiveTimestamp>="2025-12-04T21:03:10Z" receiveTimestamp<"2025-12-04T21:03:11Z"',
     {"j1"}),
    ('timestamp:"2025-12-04T20:50"', {"a1"}),
])
def test_filters(text: str, expected: set[str]) -> None:
    assert ids(text) == expected


def test_documented_precedence_example() -> None:
    # The docs: `"a" OR NOT "b" AND NOT "c" OR "d"` is `("a" OR (NOT "b")) AND ((NOT "c") OR "d")`;
    # with restrictions for the terms, over every combination of entries and terms.
    terms = ['insertId="t1"', "severity>=ERROR", 'textPayload:"robot"', "httpRequest:*",
             'resource.type="gce_instance"', "jsonPayload:*"]
    for a, b, c, d in itertools.permutations(terms, 4):
        written = f"{a} OR NOT {b} AND NOT {c} OR {d}"
        explicit = f"({a} OR (NOT {b})) AND ((NOT {c}) OR {d})"
        assert ids(written) == ids(explicit), written


def test_documented_example_query() -> None:
    text = 'resource.type = "gce_instance" AND\nseverity >= "ERROR" AND\nNOT textPayload:robot'
    assert ids(text) == set()
    assert ids(text.replace("NOT ", "")) == {"o1"}


def test_sample_is_deterministic_and_roughly_the_fraction() -> None:
    entries = [{"insertId": f"id-{n:05d}"} for n in range(4000)]
    quarter = compile_filter("sample(insertId, 0.25)")
    tenth = compile_filter("sample(insertId, 0.1)")
    picked = {e["insertId"] for e in entries if quarter(e)}
    assert picked == {e["insertId"] for e in entries if quarter(dict(e))}
    assert 0.21 * 4000 < len(picked) < 0.29 * 4000
    small = {e["insertId"] for e in entries if tenth(e)}
    assert small < picked and 0.07 * 4000 < len(small) < 0.13 * 4000
    assert all(compile_filter("sample(insertId, 1)")(e) for e in entries)
    assert not any(compile_filter("sample(insertId, 0)")(e) for e in entries)
    assert not quarter({"textPayload": "no insertId"})


def test_time_bounds_are_derived_from_top_level_restrictions() -> None:
    q = compile_filter('timestamp>="2025-12-04T21:00:00Z" AND timestamp<"2025-12-04T22:00:00Z" '
                       'severity>=ERROR')
    assert q.min_ns == parse_rfc3339_ns("2025-12-04T21:00:00Z")
    assert q.max_ns == parse_rfc3339_ns("2025-12-04T22:00:00Z") - 1  # type: ignore[operator]
    loose = compile_filter('timestamp>="2025-12-04T21:00:00Z" OR severity>=ERROR')
    assert loose.min_ns is None and loose.max_ns is None
    assert compile_filter('NOT timestamp>="2025-12-04T21:00:00Z"').min_ns is None


def test_compiled_once() -> None:
    assert compile_filter("severity>=ERROR") is compile_filter("severity>=ERROR")


def test_rfc3339_nanoseconds_round_trip() -> None:
    for text in ("2025-12-04T21:03:08.123456789Z", "2025-12-04T21:03:08.123456Z",
                 "2025-12-04T21:03:08.120Z", "2025-12-04T21:03:08Z"):
        assert format_rfc3339_ns(parse_rfc3339_ns(text)) == text  # type: ignore[arg-type]
    assert parse_rfc3339_ns("2025-12-04T22:03:08.5+01:00") == parse_rfc3339_ns(
        "2025-12-04T21:03:08.500Z")
    assert parse_rfc3339_ns("yesterday") is None


@pytest.mark.parametrize(("text", "message"), [
    ('severity=ERROR and textPayload:"x"', "lowercase 'and'"),
    ('severity=ERROR or textPayload:"x"', "lowercase 'or'"),
    ('not severity=ERROR', "lowercase 'not'"),
    ("robot", "bare search term"),
    ('"robot"', "bare search term"),
    ('insertId = "ABC-1" OR "ABC-2"', "bare search term"),  # the docs' "ERROR!?" example
    ("insertId = abc:def", "expected a restriction"),  # the docs' "ILLEGAL!" example
    ('SEARCH("robot")', "unsupported function SEARCH()"),
    ('ip_in_net(jsonPayload.ip, "10.0.0.0/8")', "unsupported function ip_in_net()"),
    ("sample(insertId)", "wrong arguments to sample()"),
    ("sample(insertId, 1.5)", "between 0 and 1"),
    ("(severity=ERROR", "never closed"),
    ("severity=ERROR)", "closes nothing"),
    ('resource.type=("a" OR "b"', "never closed"),
    ("()", "empty parentheses"),
    ("severity=ERROR AND", "expected a restriction"),
    ("OR severity=ERROR", "expected a restriction"),
    ("severity=ERROR OR OR insertId=x", "expected a restriction"),
    ("severity=", "expected a value"),
    ("severity=bogus", "unknown severity"),
    ('timestamp>="yesterday"', "not an RFC 3339 time"),
    ('textPayload=~"("', "bad regular expression"),
    ('textPayload=~"(?<=a)b"', "RE2 does not support"),
    ('textPayload=~"(a)\\1"', "RE2 does not support"),
    ('textPayload!=("a" OR "b")', "parenthesised list of values"),
    ('textPayload="unterminated', "unterminated string"),
    ("severity=ERROR # comment", "unexpected character '#'"),
])
def test_rejections(text: str, message: str) -> None:
    with pytest.raises(QueryError, match="invalid filter") as info:
        compile_filter(text)
    assert message in str(info.value)


def test_errors_name_the_position() -> None:
    with pytest.raises(QueryError) as info:
        compile_filter('severity>=ERROR\nAND textPayload:"x" and')
    assert info.value.position == 36
    assert "line 2, column 21" in str(info.value)


def test_filter_length_limit() -> None:
    body = 'textPayload:"{}"'
    longest = body.format("x" * (MAX_FILTER_CHARS - len(body) + 2))
    assert len(longest) == MAX_FILTER_CHARS
    compile_filter(longest)
    with pytest.raises(QueryError, match="20001 characters"):
        compile_filter(longest[:-1] + 'x"')


def test_regex_is_re2_as_cloud_logging_evaluates_it() -> None:
    """`=~` is RE2, the dialect of Cloud Logging's query language and of the monitor's signals:
    RE2's `$` is the end of the text (Python's `re` also matches before a final newline), and a
    lone surrogate in the text is matched like any character."""
    entry = {"insertId": "a", "logName": "projects/p/logs/x", "textPayload": "boom\n"}
    assert not compile_filter('textPayload=~"boom$"')(entry)
    assert compile_filter('textPayload=~"boom\\\\n$"')(entry)
    assert compile_filter('textPayload=~"(?i)BOOM"')(entry)
    assert compile_filter('textPayload=~"x.y"')({**entry, "textPayload": "x\ud800y"})
