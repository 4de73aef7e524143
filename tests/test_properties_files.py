"""Property tests: both file formats (a JSON array export, JSON lines; plain or gzip) give their
well-formed entries, count and skip the malformed ones, and fail only with SourceError, whatever
the bytes (monitor.sources.file.FileSource)."""

from __future__ import annotations

import contextlib
import gzip
import json
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from monitor.entries import LogEntry, MalformedEntry, from_json
from monitor.sources.base import SourceError
from monitor.sources.file import FileSource
from monitor.window import ReadStats, Window

T0 = datetime(2025, 12, 4, 21, 3, tzinfo=UTC)

# --- strategies -------------------------------------------------------------------------------

_pieces = st.sampled_from(["\ud800", "\x00", "\u2028", "\u0085", "\r", "\n", "\t", "\ufeff",
                           "\\", '"', "{", "}", "[", "]", ",", "\u00e9", "\U0001f600"])
text = st.lists(st.one_of(st.text(max_size=8), _pieces), max_size=5).map("".join)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner,
                                                                         max_size=3)),
    max_leaves=8,
)


@st.composite
def good_entry(draw: st.DrawFn, n: int) -> dict[str, Any]:
    ts = (T0 + timedelta(microseconds=draw(st.integers(-10**12, 10**12)))).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    entry: dict[str, Any] = {"insertId": f"e{n}", "logName": "projects/p/logs/run.googleapis.com"
                             "%2Fstderr", "timestamp": ts,
                             "resource": {"type": "cloud_run_revision",
                                          "labels": {"service_name": "spector"}}}
    payload = draw(st.sampled_from(["text", "json", "none"]))
    if payload == "text":
        entry["textPayload"] = draw(text)
    elif payload == "json":
        entry["jsonPayload"] = draw(st.dictionaries(st.sampled_from(["message", "msg", "x"]),
                                                    json_values, max_size=3))
    return entry


def _bare_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Records that are not entries. A bare number as an array element has its own test.
malformed_entry = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict) and not _bare_number(v)),
    st.fixed_dictionaries({"insertId": st.just("x"), "logName": st.just("l")}),  # no timestamp
    st.fixed_dictionaries({"insertId": st.just("x"), "logName": st.just("l"),
                           "timestamp": st.sampled_from(["", "yesterday", "2025-13-01T00:00:00Z",
                                                         "0001-01-01T00:00:00+01:00"])}),
    st.fixed_dictionaries({"insertId": st.sampled_from(["", None, 7]), "logName": st.just("l"),
                           "timestamp": st.just("2025-12-04T21:03:00Z")}),
    st.dictionaries(text, json_values, max_size=3),
)


@st.composite
def records(draw: st.DrawFn) -> list[Any]:
    """A mix of well-formed entries (insert ids e0, e1, ...) and malformed records."""
    out: list[Any] = []
    for n in range(draw(st.integers(0, 8))):
        out.append(draw(good_entry(n)) if draw(st.booleans()) else draw(malformed_entry))
    return out


def _expected(items: list[Any]) -> tuple[list[str], int]:
    """The insert ids from_json accepts, in order, and how many it refuses."""
    good: list[str] = []
    for item in items:
        with contextlib.suppress(MalformedEntry):
            good.append(from_json(item).insert_id)
    return good, len(items) - len(good)


def _dumps(value: Any, ensure_ascii: bool, indent: int | None) -> str:
    """JSON text; escaped where a lone surrogate could not be written as UTF-8 otherwise."""
    out = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(value, ensure_ascii=True, indent=indent)
    return out


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[Any], str]:
    """(text of the file, the records in it, format)."""
    items = draw(records())
    fmt = draw(st.sampled_from(["array", "lines", "object"]))
    ascii_ = draw(st.booleans())
    if fmt == "array":
        indent = draw(st.sampled_from([None, 0, 2]))
        body = _dumps(items, ascii_, indent)
    elif fmt == "lines":
        # JSON lines start with "{": a first record that is not an object makes another format.
        assume(not items or isinstance(items[0], dict))
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        blank = draw(st.sampled_from(["", "\n", "  \n"]))
        body = "".join(_dumps(i, ascii_, None) + newline + blank for i in items)
    else:  # the REST API's entries:list answer, which is neither format: refused, naming it
        body = _dumps({"entries": items}, ascii_, draw(st.sampled_from([None, 2]))) + "\n"
    if draw(st.booleans()):
        body = draw(st.sampled_from(["", " ", "\n", "\ufeff", "\t\n "])) + body
    return body, items, fmt


def _write(path: Path, body: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def _read(path: Path, chunk_size: int) -> tuple[list[LogEntry], ReadStats, SourceError | None]:
    """Everything the source yields, its stats, and the SourceError it ended with, if any; any
    other exception fails the test."""
    stats = ReadStats()
    got: list[LogEntry] = []
    try:
        for entry in FileSource(path, chunk_size=chunk_size).read(Window(), stats):
            got.append(entry)
    except SourceError as exc:
        assert str(exc).startswith(str(path)), "a SourceError names the file"
        return got, stats, exc
    return got, stats, None


chunk_sizes = st.sampled_from([1, 2, 3, 5, 8, 64, 65536])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


# --- whole documents ----------------------------------------------------------------------------

@given(documents(), st.booleans(), chunk_sizes)
@example(('{"entries": [{"insertId": "a", "logName": "l", "timestamp": "2025-12-04T21:03:00Z"}]}'
          "\n", [{}], "object"), False, 1)
@example(("[]", [], "array"), False, 1)
# a JSON-lines file whose first (broken) entry looks like a wrapper: more lines follow it
@example(('{"0": []}\nnull\nnull\n', [{"0": []}, None, None], "lines"), False, 1)
@example(("", [], "lines"), True, 3)
def test_a_whole_document_gives_every_good_entry_and_counts_every_bad_one(
        folder: Path, doc: tuple[str, list[Any], str], gz: bool, chunk_size: int) -> None:
    """Any chunk size (entries and numbers split across reads), either format, gzip or not."""
    body, items, fmt = doc
    path = _write(folder / "whole.json", body.encode("utf-8"), gz)
    good, bad = _expected(items)
    got, stats, error = _read(path, chunk_size)
    if fmt == "object":
        assert error is not None and 'holding the entries under "entries"' in str(error)
        assert got == []
        return
    assert error is None, f"{fmt}: {error}"
    assert [e.insert_id for e in got] == good
    assert (stats.entries_read, stats.entries_skipped) == (len(good), bad)
    source = FileSource(path, chunk_size=chunk_size)
    assert source.latest_timestamp() == max((e.timestamp for e in got), default=None)


@given(documents(), st.booleans(), chunk_sizes, st.integers(min_value=0))
def test_a_cut_document_gives_a_prefix_of_its_entries_then_at_most_a_source_error(
        folder: Path, doc: tuple[str, list[Any], str], gz: bool, chunk_size: int,
        cut: int) -> None:
    """Cut anywhere (inside a UTF-8 sequence, a string, a number, the gzip stream): what comes out
    is the start of what the whole file gives, and the only error is SourceError."""
    body, items, _ = doc
    raw = body.encode("utf-8")
    blob = gzip.compress(raw) if gz else raw
    path = folder / "cut.json"
    path.write_bytes(blob[: cut % (len(blob) + 1)])
    good, _ = _expected(items)
    got, stats, _ = _read(path, chunk_size)
    ids = [e.insert_id for e in got]
    # A number cut short is still a number (e.g. a timestamp-less record becomes another one),
    # but a well-formed entry is an object: whatever is yielded is a prefix of the good ones.
    assert ids == good[: len(ids)]
    assert stats.entries_read == len(ids)


@given(documents(), chunk_sizes, st.integers(min_value=0), st.binary(min_size=1, max_size=8))
@example(("[]", [], "array"), 1, 1, b"\xff")
@example(('{"a": 1}\n', [{"a": 1}], "lines"), 2, 3, b"\x00")
def test_garbage_anywhere_fails_only_with_a_source_error(
        folder: Path, doc: tuple[str, list[Any], str], chunk_size: int, at: int,
        junk: bytes) -> None:
    body, _, _ = doc
    raw = body.encode("utf-8")
    at %= len(raw) + 1
    path = _write(folder / "junk.json", raw[:at] + junk + raw[at:], False)
    got, stats, _ = _read(path, chunk_size)
    assert stats.entries_read == len(got)


@given(st.binary(max_size=200), chunk_sizes, st.booleans())
@example(b"\x1f\x8b", 1, False)
@example(b"[\xff]", 2, False)
@example(b'{"a":"\xed\xa0\x80"}\n', 64, False)
@example(b"\xef\xbb\xbf\xef\xbb\xbf[]", 1, False)
@example(b"[" * 100_000, 65536, False)
@example(b'{"a":' * 100_000 + b"\n", 65536, False)
def test_any_bytes_fail_only_with_a_source_error(
        folder: Path, blob: bytes, chunk_size: int, gz: bool) -> None:
    path = _write(folder / "bytes.json", blob, gz)
    got, stats, _ = _read(path, chunk_size)
    assert stats.entries_read == len(got)


@given(st.integers(min_value=1, max_value=20_000), st.sampled_from(["[", '{"a":', "[{"]),
       st.sampled_from(["array", "lines"]))
@example(100_000, "[", "array")
def test_deep_nesting_is_skipped_or_a_source_error(folder: Path, depth: int, opener: str,
                                                   fmt: str) -> None:
    entry = json.dumps({"insertId": "e0", "logName": "l", "timestamp": "2025-12-04T21:03:00Z"})
    deep = opener * depth
    body = f"[{entry}, {deep}]" if fmt == "array" else f"{entry}\n{deep}\n{entry}\n"
    got, stats, error = _read(_write(folder / "deep.json", body.encode(), False), 65536)
    assert [e.insert_id for e in got][:1] == ["e0"]
    assert error is not None or stats.entries_skipped >= 1


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)), chunk_sizes,
       st.integers(min_value=0, max_value=8))
@example(0.0, 1, 0)
def test_a_bare_number_element_is_skipped_whatever_the_chunk_size(
        folder: Path, number: float, chunk_size: int, pad: int) -> None:
    entry = json.dumps({"insertId": "e0", "logName": "l", "timestamp": "2025-12-04T21:03:00Z"})
    body = f"[{' ' * pad}{json.dumps(number)},{entry}]"
    got, stats, error = _read(_write(folder / "number.json", body.encode(), False), chunk_size)
    assert error is None and (len(got), stats.entries_skipped) == (1, 1)


# --- numbers JSON cannot turn into Python values ------------------------------------------------

long_numbers = st.builds(
    lambda digits, frac: digits + frac,
    st.integers(min_value=4301, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(["", ".5", "e5"]),
)


@given(long_numbers, st.sampled_from(["array", "lines"]), chunk_sizes)
@example("9" * 4301, "array", 65536)
@example("9" * 4301, "lines", 65536)
def test_a_number_past_4300_digits_is_skipped_or_a_source_error(
        folder: Path, number: str, fmt: str, chunk_size: int) -> None:
    entry = json.dumps({"insertId": "e0", "logName": "l", "timestamp": "2025-12-04T21:03:00Z"})
    bad = f'{{"insertId": "e1", "x": {number}}}'
    body = f"[{entry}, {bad}, {entry}]" if fmt == "array" else f"{entry}\n{bad}\n{entry}\n"
    got, _, error = _read(_write(folder / "long.json", body.encode(), False), chunk_size)
    assert [e.insert_id for e in got][:1] == ["e0"]
    if fmt == "lines":
        assert error is None and len(got) == 2


# --- entry fields the normalisation refuses with something else than MalformedEntry -----------

@given(st.text("\u00b2\u00b3\u00b9\u0663" + string.digits, min_size=1).filter(
    lambda s: not s.isascii()), st.sampled_from(["array", "lines"]))
@example("\u00b2", "lines")
def test_an_entry_normalisation_refuses_is_skipped_and_the_rest_read(
        folder: Path, status: str, fmt: str) -> None:
    entry = {"insertId": "e0", "logName": "l", "timestamp": "2025-12-04T21:03:00Z"}
    items = [entry, {**entry, "insertId": "e1", "httpRequest": {"status": status}}, entry]
    body = json.dumps(items) if fmt == "array" else "".join(json.dumps(i) + "\n" for i in items)
    got, stats, error = _read(_write(folder / "status.json", body.encode(), False), 65536)
    assert error is None
    assert (len(got), stats.entries_skipped) in ((2, 1), (3, 0))
