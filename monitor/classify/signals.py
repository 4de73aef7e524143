"""Error signatures: which entries match which configured signal.

Rules: pure; one entry counts at most once per signal, on the entry that carries the signature
(a Node stack trace is one entry per line, and only its first line names the error).
A line of source code is never a match: Node's crash print for an uncaught error quotes the line
that threw (`    throw new MissingSessionTableError(...)`, then a `^` under it) above the error
itself, so one crash would otherwise count twice (tests/data/real/node/crash_unhandled_rejection).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.classify.observations import ErrorHit
from monitor.entries import EntryKind, LogEntry
from monitor.regex import Match, Pattern, Regex, RegexError, compile_regex

SAMPLE_LIMIT = 2000  # characters kept of a matching line; the renderer cuts further for Slack
_SOURCE_LINE = re.compile(r"[ \t]*throw\s")  # a quoted `throw` statement, not a logged error


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    pattern: Pattern  # a config signal's: RE2 (monitor.regex)


class SignalMatcher:
    """Matches every configured signature against an entry's text.

    With several signals, one combined alternation rejects the (vast) majority of entries that
    match none in a single regex pass; only a hit is then attributed to its signals.
    """

    def __init__(self, signatures: Sequence[Signature]) -> None:
        self._signatures = tuple(signatures)
        try:
            self._any: Regex | None = compile_regex(
                "|".join(f"(?:{s.pattern.pattern})" for s in self._signatures)
            ) if self._signatures else None
        except RegexError:  # a test's `re` pattern that RE2 cannot read: no pre-check
            self._any = None

    def hits(self, entry: LogEntry) -> list[ErrorHit]:
        if entry.service is None or entry.kind is EntryKind.REQUEST:
            return []
        text = entry.text
        if self._any is not None and not self._any.found(text):
            return []
        out = []
        for sig in self._signatures:
            m = sig.pattern.search(text)
            if m is not None and _on_source_line(text, m.start()):
                m = _first_match(sig.pattern, text)
            if m is None:
                continue
            out.append(
                ErrorHit(
                    at=entry.timestamp,
                    service=entry.service,
                    revision=entry.revision,
                    signal=sig.name,
                    insert_id=entry.insert_id,
                    sample=_line_of(text, m.start())[:SAMPLE_LIMIT],
                    instance_id=entry.instance_id,
                    weight=entry.weight,
                )
            )
        return out


def _on_source_line(text: str, pos: int) -> bool:
    return _SOURCE_LINE.match(text, text.rfind("\n", 0, pos) + 1) is not None


def _first_match(pattern: Pattern, text: str) -> Match | None:
    """The first match that is not on a quoted line of source code."""
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        if not _on_source_line(text, m.start()):
            return m
        end = text.find("\n", m.start())
        if end == -1:
            return None
        pos = end + 1
    return None


def _line_of(text: str, pos: int) -> str:
    """The line of a multi-line text that holds the match: the most telling single line."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end != -1 else len(text)].strip()
