"""FileSource: gcloud JSON array exports and JSON lines, streamed, with per-entry error handling."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.entries import EntryKind, LogEntry
from monitor.sources.base import Source, SourceError
from monitor.sources.file import FileSource
from monitor.window import ReadStats, Window

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
LOG = "projects/spector-prod/logs/run.googleapis.com%2Fstdout"


def entry(i: int, *, text: str | None = None, seconds: int | None = None) -> dict[str, Any]:
    t = T0 + timedelta(seconds=i if seconds is None else seconds)
    return {
        "insertId": f"id{i:06d}",
        "logName": LOG,
        "resource": {
            "type": "cloud_run_revision",
            "labels": {
                "project_id": "spector-prod",
                "service_name": "spector",
                "revision_name": "spector-00042-wex",
                "location": "us-central1",
                "configuration_name": "spector",
            },
        },
        "labels": {"instanceId": "00f46b9285"},
        "severity": "DEFAULT",
        "textPayload": f"line {i}" if text is None else text,
        "timestamp": t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        "receiveTimestamp": (t + timedelta(milliseconds=40)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def write_array(path: Path, items: list[Any], *, indent: int | None = 2, **kw: Any) -> Path:
    path.write_text(json.dumps(items, indent=indent, **kw) + "\n", encoding="utf-8")
    return path


def write_lines(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in items), encoding="utf-8")
    return path


def read_all(
    source: FileSource, start: datetime | None = None, end: datetime | None = None
) -> tuple[list[LogEntry], ReadStats]:
    stats = ReadStats()
    return list(source.read(Window(start, end), stats)), stats


def test_file_source_satisfies_the_source_protocol(tmp_path: Path) -> None:
    source: Source = FileSource(write_array(tmp_path / "a.json", []))
    assert list(source.read(Window(), ReadStats())) == []


def test_reads_a_pretty_printed_gcloud_array_in_file_order(tmp_path: Path) -> None:
    items = [entry(i) for i in (3, 2, 1)]  # newest first, as gcloud writes it
    entries, stats = read_all(FileSource(write_array(tmp_path / "export.json", items)))
    assert [e.insert_id for e in entries] == ["id000003", "id000002", "id000001"]
    assert stats == ReadStats(entries_read=3, entries_skipped=0, api_requests=0)
    first = entries[0]
    assert first.kind is EntryKind.APP
    assert first.service == "spector"
    assert first.revision == "spector-00042-wex"
    assert first.instance_id == "00f46b9285"
    assert first.text == "line 3"
    assert first.timestamp == T0 + timedelta(seconds=3)


def test_reads_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text(
        "\n" + json.dumps(entry(1)) + "\n\n" + json.dumps(entry(2)) + "\r\n" + json.dumps(entry(3))
    )  # leading and blank lines, CRLF, no newline at the end
    entries, stats = read_all(FileSource(path))
    assert [e.text for e in entries] == ["line 1", "line 2", "line 3"]
    assert stats.entries_read == 3 and stats.entries_skipped == 0


@pytest.mark.parametrize("name", ["export.json.gz", "export-without-suffix"])
@pytest.mark.parametrize("fmt", ["array", "lines"])
def test_reads_gzip_transparently(tmp_path: Path, name: str, fmt: str) -> None:
    items = [entry(i) for i in range(5)]
    if fmt == "array":
        text = json.dumps(items, indent=2)
    else:
        text = "".join(json.dumps(o) + "\n" for o in items)
    path = tmp_path / name
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    entries, stats = read_all(FileSource(path, chunk_size=100))
    assert [e.insert_id for e in entries] == [f"id{i:06d}" for i in range(5)]
    assert stats.entries_skipped == 0


def test_truncated_gzip_raises_source_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json.gz"
    path.write_bytes(gzip.compress(json.dumps([entry(i) for i in range(200)]).encode())[:400])
    with pytest.raises(SourceError, match=r"export\.json\.gz"):
        read_all(FileSource(path))


def test_malformed_array_entries_are_counted_skipped_and_located(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items: list[Any] = [entry(i) for i in range(1, 21)]
    no_ts = entry(5)
    del no_ts["timestamp"], no_ts["receiveTimestamp"]
    no_log = entry(9)
    del no_log["logName"]
    no_id = entry(12)
    no_id["insertId"] = ""
    bad_ts = entry(17)
    bad_ts["timestamp"] = "yesterday at noon"
    items[4], items[8], items[11], items[16] = no_ts, no_log, no_id, bad_ts
    items[1] = 42
    items[2] = ["not", "an", "object"]
    path = write_array(tmp_path / "export.json", items)
    with caplog.at_level(logging.WARNING, logger="monitor.sources.file"):
        entries, stats = read_all(FileSource(path, chunk_size=64))
    assert stats.entries_read == 14
    assert stats.entries_skipped == 6
    assert len(entries) == 14
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6
    assert all(str(path) in m for m in messages)
    expected = {
        "entry 2 skipped: entry is a int, not an object",
        "entry 3 skipped: entry is a list, not an object",
        "entry 5 skipped: entry has no timestamp",
        "entry 9 skipped: entry has no logName",
        "entry 12 skipped: entry has no insertId",
        "entry 17 skipped: bad timestamp 'yesterday at noon'",
    }
    assert {m.split(": ", 1)[1] for m in messages} == expected


def test_malformed_json_lines_are_counted_skipped_and_located(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [json.dumps(entry(i)) for i in range(1, 21)]
    lines[16] = lines[16][:-10]  # line 17: cut off mid-object
    lines[6] = '{"insertId": "x", "logName": "l"}'  # line 7: valid JSON, no timestamp
    lines[2] = '"just a string"'  # line 3
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="monitor.sources.file"):
        entries, stats = read_all(FileSource(path, chunk_size=50))
    assert (stats.entries_read, stats.entries_skipped) == (17, 3)
    assert len(entries) == 17
    messages = [r.getMessage().split(": ", 1)[1] for r in caplog.records]
    assert messages[0] == "line 3 skipped: entry is a str, not an object"
    assert messages[1] == "line 7 skipped: entry has no timestamp"
    assert messages[2].startswith("line 17 skipped: JSON syntax error at column ")


def test_warnings_are_capped_but_every_skip_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_array(tmp_path / "export.json", [1] * 250 + [entry(1)])
    with caplog.at_level(logging.WARNING, logger="monitor.sources.file"):
        entries, stats = read_all(FileSource(path))
    assert (len(entries), stats.entries_skipped) == (1, 250)
    assert len(caplog.records) == 101
    assert "250 malformed entries skipped in all" in caplog.records[-1].getMessage()


def test_truncated_array_yields_what_came_before_then_raises(tmp_path: Path) -> None:
    text = json.dumps([entry(i) for i in range(1, 11)], indent=2)
    cut = text.index('"id000007"')  # entry 7 is cut off in its middle
    path = tmp_path / "export.json"
    path.write_text(text[:cut])
    got: list[str] = []
    stats = ReadStats()
    with pytest.raises(SourceError) as info:
        for e in FileSource(path, chunk_size=256).read(Window(), stats):
            got.append(e.insert_id)
    assert got == [f"id{i:06d}" for i in range(1, 7)]
    assert stats.entries_read == 6
    message = str(info.value)
    assert str(path) in message
    assert "entry 7" in message
    assert "line " in message


def test_array_without_closing_bracket_raises_after_the_last_entry(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps([entry(1), entry(2)], indent=2)[:-1])
    got: list[LogEntry] = []
    with pytest.raises(SourceError, match=r"cut off after entry 2"):
        got.extend(FileSource(path).read(Window(), ReadStats()))
    assert len(got) == 2


def test_syntax_error_between_entries_names_its_line(tmp_path: Path) -> None:
    text = json.dumps([entry(1), entry(2), entry(3)], indent=2)
    second = text.index("  {", text.index("id000001"))
    broken = text[: second - 2] + "\n" + text[second:]  # drop the ',' after entry 1
    path = tmp_path / "export.json"
    path.write_text(broken)
    got: list[LogEntry] = []
    with pytest.raises(SourceError) as info:
        got.extend(FileSource(path).read(Window(), ReadStats()))
    assert len(got) == 1
    line = broken[:second].count("\n") + 1
    assert f"after entry 1 at line {line}, column 3: expected ',' or ']'" in str(info.value)


def test_broken_entry_in_a_big_file_does_not_buffer_the_rest(tmp_path: Path) -> None:
    items = [entry(i) for i in range(2000)]
    text = json.dumps(items, indent=2)
    at = text.index('"id000010"')
    path = tmp_path / "export.json"
    path.write_text(text[:at] + '"id000010",, ' + text[at + len('"id000010",') :])
    source = FileSource(path, chunk_size=1024, max_entry_chars=16 * 1024)
    got: list[LogEntry] = []
    with pytest.raises(SourceError, match=r"entry 11 .*line \d+, column \d+"):
        got.extend(source.read(Window(), ReadStats()))
    assert len(got) == 10
    assert source.peak_buffer_chars < 40 * 1024 < len(text)


def test_trailing_comma_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps([entry(1), entry(2)], indent=2)[:-2] + ",\n]\n")
    got: list[LogEntry] = []
    with pytest.raises(SourceError, match=r"a ',' after the last entry; all 2 entries"):
        got.extend(FileSource(path).read(Window(), ReadStats()))
    assert len(got) == 2


def test_trailing_garbage_after_the_array_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps([entry(1)]) + "\n[]\n")
    got: list[LogEntry] = []
    with pytest.raises(SourceError, match=r"after the end of the JSON array"):
        got.extend(FileSource(path).read(Window(), ReadStats()))
    assert len(got) == 1


def test_time_window_is_inclusive_and_counts_everything_read(tmp_path: Path) -> None:
    path = write_array(tmp_path / "export.json", [entry(i, seconds=i * 60) for i in range(10)])
    source = FileSource(path)
    start = T0 + timedelta(minutes=3)  # exactly entry 3's timestamp (its nanoseconds are cut)
    end = T0 + timedelta(minutes=6)
    entries, stats = read_all(source, start, end)
    assert [e.insert_id for e in entries] == [f"id{i:06d}" for i in (3, 4, 5, 6)]
    assert stats.entries_read == 10
    # open-ended windows, and naive datetimes taken as UTC
    assert len(read_all(source, start=start)[0]) == 7
    assert len(read_all(source, end=end.replace(tzinfo=None))[0]) == 7
    assert read_all(source, T0 + timedelta(days=1))[0] == []


def test_large_file_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    n = 50_000
    path = write_array(tmp_path / "big.json", [entry(i) for i in range(n)])
    assert path.stat().st_size > 50 * 1024 * 1024 // 2  # tens of MB, far more than any buffer
    chunk = 2048
    source = FileSource(path, chunk_size=chunk)
    count = 0
    stats = ReadStats()
    for e in source.read(Window(), stats):
        count += 1
        assert e.insert_id == f"id{count - 1:06d}"
    assert count == stats.entries_read == n
    # The decoder held at most the unconsumed rest of one entry plus a couple of chunks.
    assert source.peak_buffer_chars <= 3 * chunk
    assert source.latest_timestamp() == T0 + timedelta(seconds=n - 1)
    assert source.peak_buffer_chars <= 3 * chunk


def test_an_entry_larger_than_a_chunk_is_read_whole(tmp_path: Path) -> None:
    big = "x" * 200_000
    path = write_array(tmp_path / "export.json", [entry(1), entry(2, text=big), entry(3)])
    source = FileSource(path, chunk_size=1000)
    entries, _ = read_all(source)
    assert [len(e.text) for e in entries] == [6, 200_000, 6]
    assert source.peak_buffer_chars <= 2 * 200_000 + 3 * 1000  # geometric growth, bounded


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 4096])
def test_any_chunk_size_gives_the_same_entries(tmp_path: Path, chunk_size: int) -> None:
    items: list[Any] = [entry(i) for i in range(6)]
    items.insert(2, 1234567890)  # a bare number split across chunks must not be cut short
    items.insert(4, True)
    path = write_array(tmp_path / "export.json", items, indent=None)
    entries, stats = read_all(FileSource(path, chunk_size=chunk_size))
    assert [e.insert_id for e in entries] == [f"id{i:06d}" for i in range(6)]
    assert stats.entries_skipped == 2


@pytest.mark.parametrize("content", ["[]", "[]\n", "  [\n  ]\n", "", " \n\t\n"])
def test_empty_exports_have_no_entries(tmp_path: Path, content: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(content)
    source = FileSource(path)
    entries, stats = read_all(source)
    assert entries == [] and stats == ReadStats()
    assert source.latest_timestamp() is None


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_unicode_survives_chunking_and_gzip(tmp_path: Path, ensure_ascii: bool) -> None:
    text = "Rapport « Café Lumière \u2013 hiver \u201925 » 🚀 Größe ✓"
    items = [entry(1, text=text), entry(2)]
    raw = json.dumps(items, indent=2, ensure_ascii=ensure_ascii).encode("utf-8")
    plain = tmp_path / "export.json"
    plain.write_bytes(b"\xef\xbb\xbf" + raw)  # with a UTF-8 byte order mark
    zipped = tmp_path / "export.json.gz"
    zipped.write_bytes(gzip.compress(raw))
    for path in (plain, zipped):
        entries, _ = read_all(FileSource(path, chunk_size=5))
        assert entries[0].text == text


def test_latest_timestamp_is_the_newest_entry_not_the_first_or_last(tmp_path: Path) -> None:
    items = [entry(5), entry(9), entry(1), "junk"]
    source = FileSource(write_array(tmp_path / "export.json", items))
    assert source.latest_timestamp() == T0 + timedelta(seconds=9)


def test_missing_file_is_a_clear_source_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(SourceError, match=r"nope\.json: no such file"):
        read_all(FileSource(path))
    with pytest.raises(SourceError, match=r"no such file"):
        FileSource(path).latest_timestamp()


def test_directory_is_a_clear_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"directory"):
        read_all(FileSource(tmp_path))


def test_not_json_is_a_clear_source_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text("\n\nERROR: (gcloud.logging.read) PERMISSION_DENIED\n")
    with pytest.raises(
        SourceError, match=r"expected a JSON array .* found 'E' at line 3, column 1"
    ):
        read_all(FileSource(path))


def test_invalid_utf8_is_a_clear_source_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(b'[{"textPayload": "\xff\xfe"}]')
    with pytest.raises(SourceError) as exc:
        read_all(FileSource(path))
    assert str(exc.value) == f"{path}: not UTF-8: byte 0xff at line 1, column 19"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
def test_a_bad_utf8_byte_is_located_at_its_true_line_and_column(
        tmp_path: Path, gz: bool, chunk_size: int) -> None:
    """Far past the first chunk, after multi-byte characters and a byte order mark: the line
    and column an editor shows (columns count characters), gzip or not, whatever the chunk."""
    good = [entry(i, text=f"caf\u00e9 \u2603 {i}") for i in range(3000)]
    body = b"\xef\xbb\xbf" + json.dumps(good, indent=2, ensure_ascii=False).encode()
    lines = body.split(b"\n")
    target = next(i for i, line in enumerate(lines) if b"line" not in line and b"2999" in line)
    at = lines[target].index(b"2999")
    lines[target] = lines[target][:at] + b"\xc3(" + lines[target][at:]
    raw = b"\n".join(lines)
    path = tmp_path / "export.json"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    column = len(lines[target][:at].decode()) + 1
    with pytest.raises(SourceError) as exc:
        read_all(FileSource(path, chunk_size=chunk_size))
    assert str(exc.value) == f"{path}: not UTF-8: byte 0xc3 at line {target + 1}, column {column}"
    assert target > 10_000 and column > 10


def test_a_utf8_sequence_cut_at_the_end_is_located(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(b'[\n  {"a": "\xe2\x98\x83"}]\n\xe2\x98')
    with pytest.raises(SourceError) as exc:
        read_all(FileSource(path))
    assert str(exc.value) == f"{path}: not UTF-8: byte 0xe2 at line 3, column 1"


# The REST API's entries:list answers `{"entries": [...], "nextPageToken": "..."}`
# (ListLogEntriesResponse: https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list);
# saved from curl or an API explorer it is neither an array nor JSON lines.
@pytest.mark.parametrize("indent", [None, 2])
def test_an_api_response_object_says_what_it_is(tmp_path: Path, indent: int | None) -> None:
    path = tmp_path / "response.json"
    path.write_text(json.dumps({"entries": [entry(0), entry(1)], "nextPageToken": "EAE4yP"},
                               indent=indent) + "\n")
    with pytest.raises(SourceError) as exc:
        read_all(FileSource(path))
    assert str(exc.value) == (
        f'{path}: line 1 is a JSON object holding the entries under "entries", not a log '
        "export: give the array itself (jq '.entries'), or the output of `gcloud logging read "
        "--format=json`")


def test_an_entry_whose_first_field_is_an_array_is_still_an_entry(tmp_path: Path) -> None:
    """LogEntry's one array field (errorGroups) first, as a key-sorting writer puts it."""
    first = {"errorGroups": [{"id": "COzPkc6ZgJm0Mg"}], **entry(0)}
    got, _ = read_all(FileSource(write_lines(tmp_path / "e.json", [first, entry(1)])))
    assert [e.insert_id for e in got] == ["id000000", "id000001"]


def test_text_after_a_json_line_is_a_skipped_record(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps(entry(0)) + " trailing\n" + json.dumps(entry(1)) + "\n")
    got, stats = read_all(FileSource(path))
    assert [e.insert_id for e in got] == ["id000001"] and stats.entries_skipped == 1


def test_a_number_past_python_int_limit_is_read_as_its_digits(tmp_path: Path) -> None:
    """Python refuses to convert more than 4,300 digits to an int; the entry is still read."""
    big = "9" * 5000
    raw = json.dumps(entry(0)).replace('"severity"', f'"jsonPayload": {{"n": {big}}}, "severity"')
    path = tmp_path / "e.json"
    path.write_text(f"[{raw}, {json.dumps(entry(1))}]")
    lines = tmp_path / "l.json"
    lines.write_text(f"{raw}\n{json.dumps(entry(1))}\n")
    for p in (path, lines):
        got, stats = read_all(FileSource(p))
        assert [e.insert_id for e in got] == ["id000000", "id000001"], p
        assert stats.entries_skipped == 0


def test_pretty_printed_objects_are_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text("\n".join(json.dumps(entry(i), indent=2) for i in range(3)))
    with pytest.raises(SourceError, match=r"jq -c"):
        read_all(FileSource(path))


def test_overlong_json_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_lines(tmp_path / "export.jsonl", [entry(1), entry(2, text="y" * 5000), entry(3)])
    with caplog.at_level(logging.WARNING, logger="monitor.sources.file"):
        entries, stats = read_all(FileSource(path, chunk_size=100, max_entry_chars=1000))
    assert [e.insert_id for e in entries] == ["id000001", "id000003"]
    assert stats.entries_skipped == 1
    assert "line 2 skipped: longer than 1000 characters" in caplog.records[0].getMessage()


def test_the_clock_pass_refuses_exactly_what_the_read_refuses(tmp_path: Path) -> None:
    """`latest_timestamp` checks records without normalising them; it must agree with `read`
    on which records are entries, or a malformed newest record would set the clock."""
    good = entry(1)
    late = T0 + timedelta(days=1)
    stamp = late.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    refused = [
        {**entry(2), "timestamp": stamp, "logName": ""},
        {**entry(3), "timestamp": stamp, "insertId": 7},
        {**entry(4), "timestamp": "yesterday"},
        {**entry(5), "timestamp": stamp, "receiveTimestamp": "soon"},
        {k: v for k, v in entry(6).items() if k not in ("timestamp", "receiveTimestamp")},
        ["not", "an", "entry"],
    ]
    only_received = {k: v for k, v in entry(8, seconds=30).items() if k != "timestamp"}
    path = write_array(tmp_path / "export.json", [*refused, good, only_received])
    entries, stats = read_all(FileSource(path))
    assert stats.entries_skipped == len(refused)
    assert FileSource(path).latest_timestamp() == max(e.timestamp for e in entries)
