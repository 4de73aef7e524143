"""Bytes from outside that are not UTF-8: where, as an editor would show it.

Why one module: the config file and a log export are both files a person opens in an editor to
fix, so a decode error names the byte, its line and its column (characters, not bytes) the same
way for both; an export is streamed, so its locator reads bytes a chunk at a time.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


def not_utf8(data: bytes, exc: UnicodeDecodeError, start: tuple[int, int] = (1, 1)) -> str:
    """Where a decode of `data` failed: `byte 0xff at line 3, column 7`. `start` is the (line,
    column) of `data[0]` in its file, for data that is one chunk of a longer stream."""
    line, column = start
    newlines = data.count(b"\n", 0, exc.start)
    before = data[data.rfind(b"\n", 0, exc.start) + 1:exc.start].decode("utf-8", "replace")
    if newlines:
        line, column = line + newlines, 1
    return f"byte 0x{data[exc.start]:02x} at line {line}, column {column + len(before)}"


def first_bad_utf8(chunks: Iterable[bytes]) -> str | None:
    """Where the first byte that is not UTF-8 sits in a stream of chunks (`not_utf8`'s words),
    or None if the whole stream decodes. A byte order mark is not counted as a column."""
    line, column = 1, 1
    pending = b""
    first = True
    for chunk in chunks:
        data = pending + chunk
        if first:
            if len(data) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(data):
                pending = data  # maybe the start of a byte order mark
                continue
            first = False
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
        try:
            text, used = codecs.utf_8_decode(data, "strict", False)
        except UnicodeDecodeError as exc:
            return not_utf8(data, exc, (line, column))
        pending = data[used:]
        newline = text.rfind("\n")
        if newline == -1:
            column += len(text)
        else:
            line, column = line + text.count("\n"), len(text) - newline
    if pending:
        try:
            codecs.utf_8_decode(pending, "strict", True)
        except UnicodeDecodeError as exc:
            return not_utf8(pending, exc, (line, column))
    return None
