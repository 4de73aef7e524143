"""The Logging query language, as the emulator understands it: parse once, evaluate per entry.

Rules (the subset the monitor and its tests write, over entries in the JSON form that
`gcloud logging read --format=json` prints):
- Uppercase `AND`, `OR`, `NOT`; a leading `-` is `NOT`; juxtaposed restrictions (space, newline)
  are ANDed; `-- text` is a comment. As in Cloud Logging, `NOT` binds tightest, then `OR`, then
  `AND`: `a AND b OR c` is `a AND (b OR c)`.
- A restriction is `path OP value`, OP one of `= != =~ !~ : < <= > >=`; paths are dotted, a
  segment with special characters quoted (`labels."k8s-pod/app"`); values are quoted strings
  (`\\"`, `\\\\` escapes) or bare words and numbers; `path = ("a" OR "b")` tests each value.
- `=` is exact (numeric when both sides are numbers; int64 JSON strings count); `:` is a
  case-insensitive substring test, recursive over objects and arrays, and `path:*` tests
  presence; `=~`/`!~` search with RE2 (`monitor.regex`), refusing what it refuses (look-arounds,
  back-references); orderings compare numbers as numbers. Arrays match if any element does.
- `severity` compares by rank (DEFAULT < DEBUG < INFO < NOTICE < WARNING < ERROR < CRITICAL <
  ALERT < EMERGENCY, any case, or 0..800); an absent severity is DEFAULT. `timestamp` and
  `receiveTimestamp` compare as instants at nanosecond precision (RFC 3339, any fraction or
  offset), never as strings. A missing field makes `=`, `:`, `=~` and orderings false, and
  `!=`, `!~` true. Functions: `sample(insertId, 0.25)` (a hash of the value decides, so an
  entry is always in or always out) and `log_id("run.googleapis.com/requests")`.

Why it rejects so much: an emulator that matches a query it does not understand gives a test a
wrong answer that looks right. Bare search terms (global restrictions, which is what a lowercase
`and` is), `SEARCH()` and other functions, malformed syntax, unbalanced parentheses, filters over
20,000 characters and bad regular expressions raise `QueryError` naming the position; the servers
answer INVALID_ARGUMENT, as Cloud Logging does.

Why closures: a filter is compiled once (and cached by its text) into a tree of small functions,
so each page of a read evaluates entries without re-parsing: simple filters run at millions of
entries per second, a timestamp window at a few hundred thousand.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from monitor.regex import RegexError, compile_regex

MAX_FILTER_CHARS = 20_000
SEVERITY_RANKS = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400,
                  "ERROR": 500, "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}
Entry = Mapping[str, Any]
Predicate = Callable[[Entry], bool]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OPS = ("!=", "=~", "!~", "<=", ">=", "=", ":", "<", ">")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_NON_RE2 = re.compile(r"\\(.)|\(\?(<=|<!|=|!|>|P=)", re.S)
_FRACTION = re.compile(r"\.(\d+)")
_MISSING: Any = object()
_TIME_PATHS = (("timestamp",), ("receiveTimestamp",))


class InvalidArgument(ValueError):
    """A request the Logging API would answer with INVALID_ARGUMENT."""


class QueryError(InvalidArgument):
    """A filter outside the supported language; `position` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int, text: str) -> None:
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        super().__init__(f"invalid filter: {message} at position {position} "
                         f"(line {line}, column {column})")
        self.position = position


def parse_rfc3339_ns(value: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time (any fraction, any offset); None if bad."""
    s, frac = value.strip(), 0
    if m := _FRACTION.search(s):
        frac, s = int(m[1][:9].ljust(9, "0")), s[: m.start()] + s[m.end() :]
    try:
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s)
    except ValueError:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(seconds=1) * 1_000_000_000 + frac


def format_rfc3339_ns(ns: int) -> str:
    """RFC 3339 UTC with 0, 3, 6 or 9 fractional digits, as Cloud Logging writes times."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = (_EPOCH + timedelta(seconds=secs)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac == 0:
        return base + "Z"
    digits = f"{frac:09d}"
    for width in (3, 6):
        if digits[width:].strip("0") == "":
            return f"{base}.{digits[:width]}Z"
    return f"{base}.{digits}Z"


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled filter: `matches(entry)`, plus the timestamp range its top level implies."""

    text: str
    matches: Predicate
    min_ns: int | None = None  # every match has timestamp >= min_ns (inclusive)
    max_ns: int | None = None  # every match has timestamp <= max_ns (inclusive)

    def __call__(self, entry: Entry) -> bool:
        return self.matches(entry)


@functools.lru_cache(maxsize=256)
def compile_filter(text: str) -> Query:
    """Parse and compile a filter; raises QueryError. The empty filter matches everything."""
    if len(text) > MAX_FILTER_CHARS:
        raise QueryError(f"the filter is {len(text)} characters long, more than the "
                         f"{MAX_FILTER_CHARS} allowed", MAX_FILTER_CHARS, text)
    return _Parser(text).parse()


# --- tokens ---------------------------------------------------------------------------------

_STR = r'"(?:[^"\\]|\\.)*"'
_BARE = r"[\w\-/@*]+"
_TOKEN = re.compile(rf"""(?P<space>\s+|--[^\n]*) | (?P<punct>[(),]) | (?P<op>{"|".join(_OPS)})
    | (?P<minus>-(?!\d)) | (?P<word>(?:{_STR}|{_BARE})(?:\.(?:{_STR}|{_BARE}))*) | (?P<open>")""",
                    re.X | re.S)
_SEGMENT = re.compile(rf"({_STR})|({_BARE})", re.S)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # ( ) , op str word AND OR NOT - end
    text: str  # the operator, the decoded string, or the word as written
    pos: int
    parts: tuple[str, ...] = ()  # a word's dotted segments, decoded
    quoted: bool = False  # a word with a quoted segment (a path, never a value)


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), literal[1:-1], flags=re.S)


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None or m.lastgroup == "open":
            what = "unterminated string" if m else f"unexpected character {src[pos]!r}"
            raise QueryError(what, pos, src)
        text, kind = m.group(), m.lastgroup or ""
        if kind == "word":
            segs = _SEGMENT.findall(text)
            parts = tuple(_unquote(q) if q else bare for q, bare in segs)
            quoted = any(q for q, _ in segs)
            if quoted and len(parts) == 1:
                toks.append(_Tok("str", parts[0], pos))
            else:
                kind = text if text in ("AND", "OR", "NOT") else "word"
                toks.append(_Tok(kind, text, pos, parts, quoted))
        elif kind != "space":
            toks.append(_Tok({"punct": text, "minus": "-"}.get(kind, kind), text, pos))
        pos = m.end()
    toks.append(_Tok("end", "", len(src)))
    return toks


def _describe(tok: _Tok) -> str:
    return "the end of the filter" if tok.kind == "end" else f"{tok.text!r}"


# --- parser ---------------------------------------------------------------------------------


class _Parser:
    """Recursive descent: and := or {[AND] or}; or := unary {OR unary}; unary := (NOT|-) unary
    | primary; primary := ( and ) | function | path OP value."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0
        self.bounds: list[tuple[str, int]] = []  # top-level timestamp restrictions

    def fail(self, message: str, tok: _Tok) -> QueryError:
        return QueryError(message, tok.pos, self.src)

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += tok.kind != "end"  # the end token is never consumed
        return tok

    def parse(self) -> Query:
        if self.peek().kind == "end":
            return Query(self.src, _always)
        preds = self.conjuncts(self.primary, top=True)
        if (tok := self.peek()).kind == ")":
            raise self.fail("unbalanced parentheses: this ')' closes nothing", tok)
        lo = max((ns for op, ns in self.bounds if op == ">="), default=None)
        hi = min((ns for op, ns in self.bounds if op == "<="), default=None)
        return Query(self.src, _join(preds, True), lo, hi)

    # The same boolean grammar serves restrictions and `path OP (value OR value ...)`: `leaf`
    # parses one operand (a restriction, or a value of the list).

    def conjuncts(self, leaf: Callable[[], Predicate], top: bool = False) -> list[Predicate]:
        preds = [self.disjunction(leaf, top)]
        while (tok := self.peek()).kind not in ("end", ")"):
            if tok.kind == "AND":
                self.take()
            preds.append(self.disjunction(leaf, top))
        return preds

    def disjunction(self, leaf: Callable[[], Predicate], top: bool) -> Predicate:
        start = self.i
        preds = [self.unary(leaf)]
        while self.peek().kind == "OR":
            self.take()
            preds.append(self.unary(leaf))
        if top and len(preds) == 1 and self.i - start == 3:  # a lone `timestamp OP value`
            self.note_bound(*self.toks[start : start + 3])
        return _join(preds, False)

    def note_bound(self, path: _Tok, op: _Tok, value: _Tok) -> None:
        if path.parts != ("timestamp",) or op.text not in ("=", "<", "<=", ">", ">="):
            return
        ns = parse_rfc3339_ns(value.text)
        assert ns is not None  # the restriction itself compiled
        if op.text in ("=", ">=", ">"):
            self.bounds.append((">=", ns + (op.text == ">")))
        if op.text in ("=", "<=", "<"):
            self.bounds.append(("<=", ns - (op.text == "<")))

    def unary(self, leaf: Callable[[], Predicate]) -> Predicate:
        if self.peek().kind in ("NOT", "-"):
            self.take()
            inner = self.unary(leaf)
            return lambda e: not inner(e)
        if self.peek().kind == "(":
            opening = self.take()
            if (tok := self.peek()).kind == ")":
                raise self.fail("empty parentheses", tok)
            preds = self.conjuncts(leaf)
            if self.take().kind != ")":
                raise self.fail("unbalanced parentheses: this '(' is never closed", opening)
            return _join(preds, True)
        return leaf()

    def primary(self) -> Predicate:
        tok = self.take()
        nxt = self.peek()
        if tok.kind in ("word", "str") and nxt.kind == "op":
            return self.restriction(tok)
        if tok.kind == "word" and nxt.kind == "(" and not tok.quoted and len(tok.parts) == 1:
            return self.function(tok)
        if tok.kind == "word" and tok.text in ("and", "or", "not"):
            raise self.fail(f"lowercase {tok.text!r} is a search term, not an operator (write "
                            f"{tok.text.upper()}); bare search terms are not supported", tok)
        if tok.kind in ("word", "str"):
            raise self.fail(f"bare search term {tok.text!r} (a global restriction) is not "
                            "supported; restrict a field, e.g. textPayload:\"...\"", tok)
        raise self.fail(f"expected a restriction, found {_describe(tok)}", tok)

    def restriction(self, path_tok: _Tok) -> Predicate:
        path = path_tok.parts or (path_tok.text,)
        op = self.take()

        def value() -> Predicate:
            tok = self.take()
            if tok.kind == "str" or (tok.kind == "word" and not tok.quoted):
                return _comparison(path, op.text, tok, self.src)
            raise self.fail(f"expected a value after {op.text!r}, found {_describe(tok)}", tok)

        if self.peek().kind == "(" and op.text not in ("=", ":", "=~"):
            raise self.fail(f"a parenthesised list of values needs '=', ':' or '=~', "
                            f"not {op.text!r}", op)
        return self.unary(value) if self.peek().kind == "(" else value()

    def function(self, name: _Tok) -> Predicate:
        self.take()
        args: list[_Tok] = []
        while (tok := self.take()).kind != ")" or args:
            if tok.kind not in ("word", "str"):
                raise self.fail(f"expected an argument, found {_describe(tok)}", tok)
            args.append(tok)
            if (sep := self.take()).kind == ")":
                break
            if sep.kind != ",":
                raise self.fail(f"expected ',' or ')', found {_describe(sep)}", sep)
        if name.text == "sample" and len(args) == 2 and args[0].kind == "word":
            fraction = float(args[1].text) if _NUMBER.match(args[1].text) else -1.0
            if not 0.0 <= fraction <= 1.0:
                raise self.fail("sample() needs a fraction between 0 and 1", args[1])
            return _sample(_getter(args[0].parts), fraction)
        if name.text == "log_id" and len(args) == 1 and args[0].kind == "str":
            return _log_id(args[0].text)
        if name.text in ("sample", "log_id"):
            raise self.fail(f"wrong arguments to {name.text}(); write sample(insertId, 0.25) "
                            'or log_id("run.googleapis.com/requests")', name)
        raise self.fail(f"unsupported function {name.text}() (the emulator knows sample() and "
                        "log_id() only)", name)


# --- evaluation -----------------------------------------------------------------------------


def _always(entry: Entry) -> bool:
    return True


def _join(preds: list[Predicate], every: bool) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return (lambda e: a(e) and b(e)) if every else (lambda e: a(e) or b(e))
    return (lambda e: all(p(e) for p in preds)) if every else (lambda e: any(p(e) for p in preds))


def _getter(path: tuple[str, ...]) -> Callable[[Entry], Any]:
    if len(path) == 1:
        (key,) = path
        return lambda e: e.get(key, _MISSING)

    def get(entry: Entry) -> Any:
        value: Any = entry
        for key in path:
            value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
        return value

    return get


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _comparison(path: tuple[str, ...], op: str, lit: _Tok, src: str) -> Predicate:
    get = _getter(path)
    if op == ":" and lit.kind == "word" and lit.text == "*":
        return lambda e: get(e) is not _MISSING
    if path == ("severity",):
        get = lambda e: e.get("severity") or "DEFAULT"  # noqa: E731
    if op in ("=~", "!~"):
        test = _regex(lit, src)
    elif path == ("severity",):
        test = _severity(op, lit, src)
    elif path in _TIME_PATHS and op != ":":
        test = _time(op, lit, src)
    else:
        test = _value_test(op, lit)
    if op in ("!=", "!~"):
        return lambda e: (v := get(e)) is _MISSING or not test(v)
    return lambda e: (v := get(e)) is not _MISSING and test(v)


def _each(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Arrays match when any element does."""
    return lambda v: any(test(x) for x in v) if isinstance(v, list) else test(v)


def _number(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return float(v) if isinstance(v, str) and _NUMBER.match(v) else None


def _value_test(op: str, lit: _Tok) -> Callable[[Any], bool]:
    text, num = lit.text, _number(lit.text)
    is_null = lit.kind == "word" and text == "NULL_VALUE"
    needle = text.lower()

    def equal(v: Any) -> bool:
        if v is None or isinstance(v, bool):
            return is_null if v is None else text.lower() == ("true" if v else "false")
        if isinstance(v, str) and v == text:
            return True
        n = _number(v)
        return n is not None and n == num

    def has(v: Any) -> bool:
        if isinstance(v, str):
            return needle in v.lower()
        if isinstance(v, Mapping | list):
            return any(has(x) for x in (v.values() if isinstance(v, Mapping) else v))
        return equal(v)

    if op == ":":
        return has
    if op in ("=", "!="):
        return _each(equal)
    compare = _ORDER[op]

    def ordered(v: Any) -> bool:
        n = _number(v)
        if n is not None and num is not None:
            return compare(n, num)
        return isinstance(v, str) and compare(v, text)

    return _each(ordered)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a == b, ":": lambda a, b: a == b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _severity(op: str, lit: _Tok, src: str) -> Callable[[Any], bool]:
    rank = SEVERITY_RANKS.get(lit.text.upper())
    if rank is None and _NUMBER.match(lit.text):
        rank = int(float(lit.text))
    if rank is None:
        raise QueryError(f"unknown severity {lit.text!r}", lit.pos, src)
    compare, ranks = _ORDER[op], SEVERITY_RANKS
    return lambda v: (r := ranks.get(str(v).upper())) is not None and compare(r, rank)


def _time(op: str, lit: _Tok, src: str) -> Callable[[Any], bool]:
    ns, compare, parse = parse_rfc3339_ns(lit.text), _ORDER[op], parse_rfc3339_ns
    if ns is None:
        raise QueryError(f"{lit.text!r} is not an RFC 3339 time", lit.pos, src)
    return lambda v: isinstance(v, str) and (t := parse(v)) is not None and compare(t, ns)


def _regex(lit: _Tok, src: str) -> Callable[[Any], bool]:
    """RE2, as Cloud Logging evaluates `=~` and as the monitor matches signals (monitor.regex):
    a pattern means the same in a query to the emulator, to Cloud Logging and in the monitor."""
    pattern = lit.text
    for m in _NON_RE2.finditer(pattern):
        if m.group(2) or (m.group(1) and m.group(1) in "123456789"):
            raise QueryError(f"the regular expression {pattern!r} uses {m.group(0)!r}, which "
                             "RE2 does not support", lit.pos, src)
    try:
        regex = compile_regex(pattern)
    except RegexError as exc:
        raise QueryError(f"bad regular expression {pattern!r}: {exc}", lit.pos, src) from None

    def test(v: Any) -> bool:
        text = _scalar_text(v)
        return text is not None and regex.found(text)

    return _each(test)


def _sample(get: Callable[[Entry], Any], fraction: float) -> Predicate:
    """In or out by a hash of the value: the same entry is always in, or always out."""
    limit = int(fraction * 2**64)

    def test(entry: Entry) -> bool:
        text = _scalar_text(get(entry))
        digest = hashlib.blake2b((text or "").encode(), digest_size=8).digest()
        return text is not None and int.from_bytes(digest, "big") < limit

    return test


def _log_id(log_id: str) -> Predicate:
    def test(entry: Entry) -> bool:
        name = entry.get("logName")
        return isinstance(name, str) and unquote(name.partition("/logs/")[2]) == log_id

    return test
