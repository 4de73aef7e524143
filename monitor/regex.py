"""Signal patterns, compiled with RE2: linear time, and the dialect of the Logging query's `=~`.

Why RE2 and not `re`: a signal pattern comes from the config and runs over every line of untrusted
log text. Python's backtracking engine can take exponential time on a pattern such as `(a+)+$`
against a 40-character line, which would hang `once` and freeze `monitor run` (health, metrics
and SIGTERM included). RE2 (the `google-re2` package) matches in time linear in the text, and it
is what Cloud Logging evaluates `=~` with, so a pattern means the same on the server, in a Logs
Explorer link and here. What RE2 refuses (look-arounds, back-references) is a config error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from monitor.entries import replace_surrogates


class Match(Protocol):
    def start(self, group: int = 0, /) -> int: ...
    def end(self, group: int = 0, /) -> int: ...


class Pattern(Protocol):
    """What a matcher needs of a compiled pattern: a `Regex`, or (in tests) an `re.Pattern`."""

    @property
    def pattern(self) -> str: ...
    def search(self, text: str, pos: int = 0, /) -> Match | None: ...


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print its parse errors to stderr; we raise them instead


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message says why, in RE2's words."""


@dataclass(frozen=True, slots=True)
class Regex:
    """A compiled RE2 pattern; `pattern` is the text it was compiled from."""

    pattern: str
    _compiled: Any = field(repr=False, compare=False)
    # The same pattern as a one-member RE2 set: "is there a match?" without building a match
    # object, about half the cost of `search` per line (most lines match no signal).
    _set: Any = field(default=None, repr=False, compare=False)

    def found(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text` (`search(text) is not None`)."""
        if self._set is None:
            return self.search(text) is not None
        try:
            return self._set.Match(text) is not None
        except UnicodeEncodeError:  # a lone surrogate, as in `search`
            return self._set.Match(replace_surrogates(text)) is not None

    def search(self, text: str, pos: int = 0, /) -> Match | None:
        try:
            found: Match | None = self._compiled.search(text, pos)
        except UnicodeEncodeError:  # a lone surrogate (a JSON export may escape one): RE2
            # reads UTF-8, which cannot hold it; U+FFFD in its place keeps every position
            found = self._compiled.search(replace_surrogates(text), pos)
        return found


def compile_regex(pattern: str) -> Regex:
    """The pattern compiled with RE2; raises RegexError (a ValueError) naming what is wrong."""
    try:
        compiled = re2.compile(pattern, options=_OPTIONS)
        one = re2.Set.SearchSet(_OPTIONS)
        one.Add(pattern)
        one.Compile()
        return Regex(pattern, compiled, one)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"RE2 cannot compile it: {reason}") from None
