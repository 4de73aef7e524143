"""FileSource: replay a `gcloud logging read --format=json` export (or JSON lines) as a source.

Why it exists: an incident is easiest to study, test and demonstrate from the logs it left. The
replay goes through the same `from_json` and everything after it as production, so a file gives
the same conclusions as Cloud Logging (see DESIGN.md).

Why it streams: exports of a multi-day incident are easily hundreds of megabytes of pretty-printed
JSON. `json.load` would hold the whole document (several times its size as Python objects); here
the text is read in chunks and the array is decoded one element at a time with
`json.JSONDecoder.raw_decode`, so memory stays bounded by the largest entry plus a chunk or two.
`read` yields the file's order; the cycle replays an export in event order a page at a time
(`sources/replay.py`, `check.fresh_pages`), so no step after this one holds the file either.

Formats, told apart by the first non-whitespace character:
- `[`: a JSON array of entry objects (what gcloud writes, newest first by default);
- `{`: JSON lines, one entry object per line (`jq -c '.[]'`, the emulator, our own dumps).
A file starting with the gzip magic number is decompressed on the fly, whatever its name.

Errors: one bad entry is counted, logged with its position ("entry 17", "line 17") and skipped. A
JSON syntax error inside an array makes everything after it unreadable: that raises `SourceError`
naming the file and the position, after all the entries before it have been yielded.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from monitor.entries import LogEntry, MalformedEntry, from_json
from monitor.sources.base import SourceError
from monitor.text import first_bad_utf8
from monitor.times import BadTime, parse_time
from monitor.window import ReadStats, Window

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
# Cloud Logging caps an entry at 256 KiB; pretty-printing can roughly double that. Anything far
# beyond it is not an entry but a broken document, and must not make us buffer the whole file.
DEFAULT_MAX_ENTRY_CHARS = 8 * 1024 * 1024
MAX_WARNINGS = 100  # per pass; the rest are counted and summarised in one line

_GZIP_MAGIC = b"\x1f\x8b"
_NON_WS = re.compile(r"[^ \t\n\r]")
_READ_ERRORS = (OSError, EOFError, zlib.error)
# What may still follow a bare number that a chunk cut: `0.`, `1e`, `1e+` decode as a shorter one.
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
# The first member of an object that wraps entries rather than being one: `{"entries": [` (what
# the REST API's entries:list answers) or any other `"key": [` but LogEntry's one array field.
_WRAPPER = re.compile(r'\s*\{?\s*"([^"\\]{1,64})"\s*:\s*\[')
_ENTRY_ARRAYS = frozenset({"errorGroups"})


@dataclass(frozen=True, slots=True)
class _Bad:
    """A record that is not JSON at all (JSON lines only): skipped, with the reason."""

    reason: str


class _Buffer:
    """A sliding window over a text stream: `text[pos:]` is read but not yet consumed.

    Consumed text is dropped whenever more is read, so the window holds the unconsumed part of
    the current element plus what was just read. `line`/`col` track where `text[0]` sits in the
    file, so errors can name a line and column without keeping the file.
    """

    def __init__(self, stream: TextIO, path: Path, chunk_size: int) -> None:
        self.stream = stream
        self.path = path
        self.chunk_size = chunk_size
        self.text = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number of text[0]
        self.col = 0  # 0-based column of text[0]
        self.peak = 0  # most characters ever held: the memory bound the tests check

    def more(self, at_least: int) -> bool:
        """Read at least `at_least` more characters (fewer at the end); False if none were left."""
        if self.eof:
            return False
        self._compact()
        parts: list[str] = []
        got = 0
        while got < at_least:
            try:
                chunk = self.stream.read(self.chunk_size)
            except _READ_ERRORS as exc:
                raise SourceError(
                    f"{self.path}: cannot read past line {self.where(len(self.text))[0]}: {exc}"
                ) from None
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            got += len(chunk)
        if parts:
            self.text += "".join(parts)
            self.peak = max(self.peak, len(self.text))
        return got > 0

    def _compact(self) -> None:
        if self.pos == 0:
            return
        newlines = self.text.count("\n", 0, self.pos)
        if newlines:
            self.line += newlines
            self.col = self.pos - self.text.rfind("\n", 0, self.pos) - 1
        else:
            self.col += self.pos
        self.text = self.text[self.pos :]
        self.pos = 0

    def peek(self) -> str | None:
        """Skip whitespace and return the next character without consuming it; None at the end."""
        while True:
            m = _NON_WS.search(self.text, self.pos)
            if m:
                self.pos = m.start()
                return self.text[self.pos]
            self.pos = len(self.text)
            if not self.more(self.chunk_size):
                return None

    def where(self, index: int) -> tuple[int, int]:
        """1-based (line, column) in the file of `text[index]`."""
        newlines = self.text.count("\n", 0, index)
        if newlines:
            return self.line + newlines, index - self.text.rfind("\n", 0, index)
        return self.line, self.col + index + 1


class _Skips:
    """Counts malformed records and logs each one, up to MAX_WARNINGS per pass."""

    def __init__(self, path: Path, stats: ReadStats, warn: bool) -> None:
        self.path = path
        self.stats = stats
        self.warn = warn
        self.count = 0

    def skip(self, position: str, reason: str) -> None:
        self.count += 1
        self.stats.entries_skipped += 1
        if self.warn and self.count <= MAX_WARNINGS:
            log.warning("%s: %s skipped: %s", self.path, position, reason)

    def finish(self) -> None:
        if self.warn and self.count > MAX_WARNINGS:
            log.warning(
                "%s: %d malformed entries skipped in all (only the first %d are listed above)",
                self.path,
                self.count,
                MAX_WARNINGS,
            )


def _utc(t: datetime | None) -> datetime | None:
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return t


def _stamp(obj: Any) -> datetime | None:
    """The timestamp `from_json(obj)` would have, or None where it raises MalformedEntry."""
    if not isinstance(obj, Mapping):
        return None
    ts = obj.get("timestamp") or obj.get("receiveTimestamp")
    log_name, insert_id = obj.get("logName"), obj.get("insertId")
    if not (isinstance(ts, str) and isinstance(log_name, str) and log_name
            and isinstance(insert_id, str) and insert_id):
        return None
    receive = obj.get("receiveTimestamp")
    try:
        if isinstance(receive, str):
            parse_time(receive)  # from_json refuses an entry whose receive time is not one
        return parse_time(ts)
    except BadTime:
        return None


class FileSource:
    """Entries from a `gcloud logging read --format=json` export or a JSON-lines file."""

    def __init__(
        self,
        path: Path | str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_entry_chars: int = DEFAULT_MAX_ENTRY_CHARS,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.max_entry_chars = max(max_entry_chars, chunk_size)
        # The most characters the decoder held at once in the last pass (diagnostics, tests).
        self.peak_buffer_chars = 0

    live = False  # an export is complete: nothing more will arrive

    def read(self, window: Window, stats: ReadStats) -> Iterator[LogEntry]:
        """Entries with `start <= timestamp <= end` (None: unbounded), in file order.

        Receive bounds are ignored: an export is read whole, and deduplication by key makes a
        re-read harmless.
        """
        lo, hi = _utc(window.start), _utc(window.end)
        for entry in self._entries(stats, warn=True):
            if (lo is None or entry.timestamp >= lo) and (hi is None or entry.timestamp <= hi):
                yield entry

    def latest_timestamp(self) -> datetime | None:
        """The newest entry's timestamp, in one streaming pass: the clock of a replay.

        Not the first or the last entry: gcloud writes newest first, other tools oldest first.
        Malformed entries are ignored silently here; `read` reports them. Each record is
        checked as `from_json` checks it (`_stamp`), not normalised: normalising is most of a
        read's cost, and a replay pays this pass before it reads.
        """
        latest: datetime | None = None
        for _, obj in self._records():
            t = _stamp(obj)
            if t is not None and (latest is None or t > latest):
                latest = t
        return latest

    # --- internals ---------------------------------------------------------------------------

    def _entries(self, stats: ReadStats, warn: bool) -> Iterator[LogEntry]:
        skips = _Skips(self.path, stats, warn)
        try:
            for position, obj in self._records():
                if isinstance(obj, _Bad):
                    skips.skip(position, obj.reason)
                    continue
                try:
                    entry = from_json(obj)
                except MalformedEntry as exc:
                    skips.skip(position, str(exc))
                    continue
                stats.entries_read += 1
                yield entry
        finally:
            skips.finish()

    def _open(self, binary: bool = False) -> Any:
        try:
            with self.path.open("rb") as f:
                magic = f.read(2)
            if magic == _GZIP_MAGIC:
                return gzip.open(self.path, "rb") if binary else gzip.open(
                    self.path, "rt", encoding="utf-8-sig")
            return self.path.open("rb") if binary else self.path.open("r", encoding="utf-8-sig")
        except FileNotFoundError:
            raise SourceError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{self.path}: is a directory, not a log export") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    def _not_utf8(self) -> str:
        """Where the export stops being UTF-8 (a second pass over its bytes: only on error)."""
        try:
            with self._open(binary=True) as raw:
                where = first_bad_utf8(iter(lambda: raw.read(DEFAULT_CHUNK_SIZE), b""))
        except _READ_ERRORS:
            where = None
        return f"{self.path}: not UTF-8: {where or 'a byte that is not UTF-8'}"

    def _records(self) -> Iterator[tuple[str, Any]]:
        """(position, decoded value or _Bad) for every record in the file, in file order."""
        try:
            yield from self._decoded()
        except UnicodeDecodeError:
            raise SourceError(self._not_utf8()) from None

    def _decoded(self) -> Iterator[tuple[str, Any]]:
        stream: TextIO
        with self._open() as stream:
            buf = _Buffer(stream, self.path, self.chunk_size)
            try:
                first = buf.peek()
                if first is None:
                    return  # an empty file: no entries, nothing wrong
                if first == "[":
                    yield from self._array(buf)
                elif first == "{":
                    yield from self._lines(buf)
                else:
                    line, col = buf.where(buf.pos)
                    raise SourceError(
                        f"{self.path}: not a log export: expected a JSON array ('[') or JSON "
                        f"lines ('{{'), found {first!r} at line {line}, column {col}"
                    )
            finally:
                self.peak_buffer_chars = buf.peak

    def _array(self, buf: _Buffer) -> Iterator[tuple[str, Any]]:
        decoder = json.JSONDecoder()
        buf.pos += 1  # the '['
        c = buf.peek()
        n = 0
        if c == "]":
            buf.pos += 1
        else:
            while True:
                n += 1
                if c is None:
                    raise SourceError(
                        f"{self.path}: the JSON array is cut off before entry {n} "
                        f"(no closing ']'); the {n - 1} entries before it were read"
                    )
                yield f"entry {n}", self._element(buf, decoder, n)
                c = buf.peek()
                if c == ",":
                    buf.pos += 1
                    c = buf.peek()
                    if c == "]":
                        line, col = buf.where(buf.pos)
                        raise SourceError(
                            f"{self.path}: JSON syntax error at line {line}, column {col}: a ',' "
                            f"after the last entry; all {n} entries before it were read"
                        )
                    continue
                if c == "]":
                    buf.pos += 1
                    break
                if c is None:
                    raise SourceError(
                        f"{self.path}: the JSON array is cut off after entry {n} "
                        f"(no closing ']'); all {n} entries before it were read"
                    )
                line, col = buf.where(buf.pos)
                raise SourceError(
                    f"{self.path}: JSON syntax error after entry {n} at line {line}, column "
                    f"{col}: expected ',' or ']', found {c!r}; the {n} entries before it were read"
                )
        c = buf.peek()
        if c is not None:
            line, col = buf.where(buf.pos)
            raise SourceError(
                f"{self.path}: unexpected {c!r} after the end of the JSON array at line {line}, "
                f"column {col}; all {n} entries were read"
            )

    def _element(self, buf: _Buffer, decoder: json.JSONDecoder, n: int) -> Any:
        """Decode the array element starting at `buf.pos`, reading more text until it is whole."""
        while True:
            try:
                value, end = _raw_decode(decoder, buf.text, buf.pos)
            except json.JSONDecodeError as exc:
                pending = len(buf.text) - buf.pos
                if not buf.eof and pending < self.max_entry_chars:
                    # Most likely the element continues in the next chunk. Grow geometrically so
                    # a big element costs O(size) decoding work, not O(size^2 / chunk).
                    buf.more(max(self.chunk_size, pending))
                    continue
                line, col = buf.where(exc.pos)
                if buf.eof:
                    why = "is cut off or broken"
                else:
                    why = f"is broken or larger than {self.max_entry_chars} characters"
                raise SourceError(
                    f"{self.path}: the JSON array {why} at entry {n} (line {line}, column "
                    f"{col}: {exc.msg}); the {n - 1} entries before it were read"
                ) from None
            except RecursionError:
                line, _ = buf.where(buf.pos)
                raise SourceError(
                    f"{self.path}: entry {n} (line {line}) is nested too deeply to decode; "
                    f"the {n - 1} entries before it were read"
                ) from None
            # An object, array or string ends with its own delimiter; a bare number or literal
            # that a chunk cut (`0.` of `0.5`, `tr` of `true`) may continue in the next one.
            if (not buf.eof and buf.text[end - 1] not in '}]"'
                    and _NUMBER_TAIL.fullmatch(buf.text, end) is not None):
                buf.more(self.chunk_size)
                continue
            buf.pos = end
            return value

    def _lines(self, buf: _Buffer) -> Iterator[tuple[str, Any]]:
        lineno = buf.where(buf.pos)[0]
        buf.pos = buf.text.rfind("\n", 0, buf.pos) + 1  # back to the start of that line
        first = True
        # A first line like `{"entries": [...]}` is the REST API's answer when it is the only
        # line, and a JSON-lines file's first (broken) entry when more follow: held until then.
        held: tuple[str, Any, int] | None = None
        scanned = 0  # characters after pos already known to hold no newline
        overlong = False
        while True:
            nl = buf.text.find("\n", buf.pos + scanned)
            if nl == -1:
                pending = len(buf.text) - buf.pos
                if pending > self.max_entry_chars:
                    overlong = True  # drop it as it streams past; report it at its end
                    buf.pos = len(buf.text)
                    pending = 0
                scanned = pending
                if buf.more(self.chunk_size):
                    continue
                nl = len(buf.text)  # the last line has no newline
            line = buf.text[buf.pos : nl]
            buf.pos = min(nl + 1, len(buf.text))
            scanned = 0
            if held is not None and (overlong or line.strip()):
                yield f"line {held[2]}", held[1]
                held = None
            if overlong:
                overlong = False
                yield f"line {lineno}", _Bad(f"longer than {self.max_entry_chars} characters")
            elif line.strip():
                if first and line.strip() == "{":
                    self._refuse_wrapper(self._next_line(buf), None, lineno)
                    raise SourceError(
                        f"{self.path}: line {lineno} is a lone '{{': this looks like "
                        "pretty-printed JSON objects, not JSON lines; give the gcloud JSON "
                        "array itself, or one object per line (jq -c '.[]')"
                    )
                record = self._decode_line(line)
                if first and self._wrapper_key(line, record) is not None:
                    held = (line, record, lineno)
                else:
                    yield f"line {lineno}", record
                first = False
            if nl >= len(buf.text) and buf.eof:
                if held is not None:
                    self._refuse_wrapper(held[0], held[1], held[2])
                return
            lineno += 1

    def _refuse_wrapper(self, text: str, record: Any, lineno: int) -> None:
        """An object that holds the entries in an array (`{"entries": [...]}`, the REST API's
        answer) is not a JSON-lines file whose first entry is broken: say what it is."""
        key = self._wrapper_key(text, record)
        if key is None:
            return
        raise SourceError(
            f"{self.path}: line {lineno} is a JSON object holding the entries under "
            f"\"{key}\", not a log export: give the array itself (jq '.{key}'), or the "
            "output of `gcloud logging read --format=json`")

    @staticmethod
    def _wrapper_key(text: str, record: Any) -> str | None:
        """The key of the array an object that looks like a wrapper holds, else None."""
        m = _WRAPPER.match(text)
        if m is None or m[1] in _ENTRY_ARRAYS or (
                isinstance(record, Mapping) and not isinstance(record.get(m[1]), list)):
            return None
        return m[1]

    @staticmethod
    def _next_line(buf: _Buffer) -> str:
        """The line that starts at `buf.pos` (a peek: nothing is consumed), at most 4 KiB."""
        while True:
            end = buf.text.find("\n", buf.pos)
            if end != -1 or buf.eof or len(buf.text) - buf.pos > 4096:
                return buf.text[buf.pos:end if end != -1 else buf.pos + 4096]
            buf.more(buf.chunk_size)

    @staticmethod
    def _decode_line(line: str) -> Any:
        try:
            value, end = _raw_decode(_LINE_DECODER, line, len(line) - len(line.lstrip()))
            if line[end:].strip():
                return _Bad(f"JSON syntax error at column {end + 1}: Extra data")
            return value
        except json.JSONDecodeError as exc:
            return _Bad(f"JSON syntax error at column {exc.colno}: {exc.msg}")
        except RecursionError:
            return _Bad("nested too deeply to decode")


_LINE_DECODER = json.JSONDecoder()
# Python refuses to turn more than 4,300 digits into an int (CVE-2020-10735); an export may hold
# such a number anywhere in a payload. Those integers are kept as their digits.
_LONG_INT_DECODER = json.JSONDecoder(parse_int=lambda digits: _parse_int(digits))


def _parse_int(digits: str) -> int | str:
    try:
        return int(digits)
    except ValueError:
        return digits


def _raw_decode(decoder: json.JSONDecoder, text: str, pos: int) -> tuple[Any, int]:
    """`decoder.raw_decode`, with integers too long for `int` kept as text instead of failing
    (the slower decoder runs only for a value that needs it)."""
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except ValueError:
        return _LONG_INT_DECODER.raw_decode(text, pos)
