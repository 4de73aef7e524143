"""SyntheticStore: Cloud Run traffic made on the fly from a spec, read as EntryStore is read.

Why: ten minutes at 10,000 requests a second is tens of millions of entries, far more than an
EntryStore can hold (a few KB each). Traffic here is a deterministic function of a
`TrafficSpec` (seed, service, start, duration, requests a second, app lines per request, and
episodes: deploys with their Prisma start-up output, incidents whose requests fail with a
signal's error line), and only what a query selects is ever built.

Rules:
- The same `query(resource_names, filter, order_by, page_size, page_token)` contract as
  `EntryStore.query`: the same validation, page size and `max_page_bytes` rules, the same
  `compile_filter` (a filter means the same on both), opaque tokens holding the position as a
  sort key and bound to the request and to this store, pages of serialized protobuf entries
  built by store.py's own `_stored`. Entries sort by (timestamp, insertId); insertIds are unique.
- The shapes are bench/traffic.py's: request logs (`run.googleapis.com/requests`, httpRequest),
  app lines on stdout (text or jsonPayload) and stderr (errors and their stack trace, a line an
  entry), audit entries (`Services.ReplaceService` in cloudaudit.googleapis.com/activity),
  readiness (system_event), and Cloud Run's own `varlog/system` lines (an instance started, an
  instance shut down), so the monitor classifies them as it classifies the generated traffic.
- Indexed by what queries select: traffic is a few hundred *classes*, each a template plus an
  arithmetic schedule (request i of a segment of time, with i mod 1000 in a residue set). Every
  field a filter could tell apart within a class either is the same for all its entries
  (revision, instance, URL, status, text) or is declared varying (time, insertId, latency,
  sizes, trace). A query evaluates the filter once per class on a representative entry, in
  three-valued logic (a restriction on a varying field is "unknown"), and skips every class for
  which it is false, which is sound: no entry of a skipped class can match. Only the entries of
  the remaining classes within the filter's timestamp bounds are built, merged in (timestamp,
  insertId) order, and judged by the full filter one by one, so `sample()`, `=~`, status and
  instance clauses are exact. Memory does not grow with the rate or the duration.
- `clock` (optional): the simulated now. An entry whose receiveTimestamp is after it is not
  served yet, so a run in simulated time sees traffic arrive as time passes.
- `counters` says how much work the answers took: `keys` (positions the merge visited),
  `built` (entries made as JSON and judged by the filter), `served`.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import heapq
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.emulator import query as _query
from monitor.emulator.query import InvalidArgument, compile_filter, parse_rfc3339_ns
from monitor.emulator.store import (
    DEFAULT_MAX_PAGE_BYTES,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    StoredEntry,
    _decode_token,
    _descending,
    _projects,
    _stored,
)

NS = 1_000_000_000
_MASK = (1 << 64) - 1
RESIDUES = 1000  # a request's attributes are a function of its index modulo this

SIGNATURE = "MissingSessionTableError"
ERROR_LINE = (f"{SIGNATURE}: Prisma session table does not exist. This could happen if the "
              "session table doesn't exist in the database.")
STACK = (
    "    at PrismaSessionStorage.ensureReady (/app/node_modules/@shopify/shopify-app-session-"
    "storage-prisma/dist/cjs/prisma.js:60:13)",
    "    at async PrismaSessionStorage.loadSession (/app/node_modules/@shopify/shopify-app-"
    "session-storage-prisma/dist/cjs/prisma.js:41:9)",
    "    at async authenticateAdmin (/app/node_modules/@shopify/shopify-app-remix/dist/cjs/"
    "server/authenticate/admin/authenticate.js:88:25)",
    "    at async loader$3 (file:///app/build/server/index.js:1042:20)",
    "    at async Object.callRouteLoader (/app/node_modules/@remix-run/server-runtime/dist/"
    "data.js:59:16)",
)
OTHER_ERRORS = (
    ("TypeError: Cannot read properties of undefined (reading 'id')",
     ("    at ProductCard (file:///app/build/server/index.js:811:31)",
      "    at renderWithHooks (/app/node_modules/react-dom/cjs/react-dom-server.node.js:5662:16)",
      "    at renderElement (/app/node_modules/react-dom/cjs/react-dom-server.node.js:5774:12)")),
    ("Error: connect ECONNREFUSED 10.8.0.3:5432",
     ("    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16)",)),
    ("GraphqlQueryError: Throttled",
     ("    at throwFailedRequest (/app/node_modules/@shopify/admin-api-client/dist/graphql/"
      "client.js:102:11)",
      "    at async AdminApiClient.request (/app/node_modules/@shopify/admin-api-client/dist/"
      "graphql/client.js:62:24)")),
)
PATHS = ("/app", "/app/products", "/app/orders", "/app/settings", "/webhooks/orders/create",
         "/auth/callback", "/healthz", "/app/billing", "/api/graphql", "/assets/entry.client.js")
AGENTS = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36", "Shopify-Captain-Hook", "GoogleHC/1.0",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0")
APP_LINES = ("[shopify-app/INFO] Authenticating admin request", "GET {path} {status} - {ms} ms",
             "[shopify-api/INFO] Loaded session from storage", "webhook processed topic=ORDERS_"
             "CREATE shop=shop-{n}.myshopify.com", "[remix] loader {path} {ms}ms")
BASE_MIGRATIONS = ("20250301120000_init", "20250612093000_add_billing")
STARTING = ("Starting new instance. Reason: DEPLOYMENT_ROLLOUT - Instance started due to traffic "
            "shifting between revisions due to deployment, traffic split adjustment, or "
            "deployment health check.")
SHUTDOWN = "Shutting down user disabled instance"

_Path = tuple[str, ...]
_TIMES: frozenset[_Path] = frozenset({("timestamp",), ("receiveTimestamp",), ("insertId",)})
_REQUEST_VARYING = _TIMES | {("httpRequest", k) for k in (
    "latency", "remoteIp", "requestSize", "responseSize", "userAgent")} | {("trace",), ("spanId",)}
_JSON_VARYING = _TIMES | {("jsonPayload", "shop"), ("jsonPayload", "durationMs")}


# --- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deploy:
    """A deploy `at` seconds after the start: the audit entry, then each new instance starts
    (`varlog/system`) and prints Prisma's `migrate deploy` output (the first instance applies
    `migrations`), then the revision becomes ready and takes all traffic; the previous
    revision's instances shut down `shutdown_after` seconds after that (None: never)."""

    at: float
    revision: str
    migrations: tuple[str, ...] = ()
    instances: int = 2
    startup_after: float = 20.0  # seconds from the audit entry to the first start-up line
    shutdown_after: float | None = 60.0

    def ready_offset(self) -> float:
        """Seconds from the audit entry to the Ready event (as bench/traffic.py spaces them)."""
        return self.startup_after + 0.4 * self.instances + 2.0


@dataclass(frozen=True)
class Failures:
    """An incident: between `start` and `end` (seconds after the spec's start), `total`
    requests (or `per_second` a second) fail with HTTP 500 on `route`, each writing `text` on
    stderr (as jsonPayload.message when `structured`) and then its `stack`, a line an entry.
    They come on top of the spec's requests, served by whichever revision serves then."""

    start: float
    end: float
    total: int | None = None
    per_second: float | None = None
    route: str = "/app"
    text: str = ERROR_LINE
    stack: tuple[str, ...] = STACK
    structured: bool = False

    @property
    def count(self) -> int:
        if self.total is not None:
            return self.total
        return round((self.per_second or 0.0) * (self.end - self.start))


@dataclass(frozen=True)
class TrafficSpec:
    """What to synthesise; the same spec always gives the same entries, byte for byte."""

    start: datetime
    duration: float  # seconds
    requests_per_second: float
    seed: int = 7
    project: str = "bench-prod"
    service: str = "storefront"
    revision: str = ""  # serving at the start ("" -> SERVICE-00001-xyz)
    instances: int = 2
    app_lines_per_request: float = 1.0
    other_error_share: float = 0.002  # unrelated errors (with their stack) per request
    late_share: float = 0.005  # entries received up to 30 s late
    location: str = "us-central1"
    episodes: tuple[Deploy | Failures, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrafficSpec:
        """From a JSON object: `start` in RFC 3339, `episodes` as [{"kind": "deploy" |
        "failures", ...fields}], tuples as lists."""
        fields = dict(d)
        start = fields.pop("start")
        fields["start"] = (start if isinstance(start, datetime)
                           else datetime.fromisoformat(str(start).replace("Z", "+00:00")))
        episodes: list[Deploy | Failures] = []
        for ep in fields.pop("episodes", ()):
            ep = dict(ep)
            kind = ep.pop("kind")
            for key in ("migrations", "stack"):
                if key in ep:
                    ep[key] = tuple(ep[key])
            episodes.append(Deploy(**ep) if kind == "deploy" else Failures(**ep))
        fields["episodes"] = tuple(episodes)
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "duration", "requests_per_second", "seed", "project", "service", "revision",
            "instances", "app_lines_per_request", "other_error_share", "late_share",
            "location")}
        out["start"] = self.start.astimezone(UTC).isoformat()
        out["episodes"] = [{"kind": "deploy" if isinstance(ep, Deploy) else "failures",
                            **{k: list(v) if isinstance(v, tuple) else v
                               for k, v in ep.__dict__.items()}} for ep in self.episodes]
        return out

    @property
    def failures(self) -> int:
        """How many requests the spec's incidents fail (one signal line each)."""
        return sum(ep.count for ep in self.episodes if isinstance(ep, Failures))


# --- deterministic variety ------------------------------------------------------------------


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _ns_of(t: datetime) -> int:
    return (t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) \
        * 1000


_SECONDS: dict[int, str] = {}


def _rfc3339(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as Cloud Logging writes `timestamp`."""
    sec, frac = divmod(ns, NS)
    base = _SECONDS.get(sec)
    if base is None:
        if len(_SECONDS) > 50_000:
            _SECONDS.clear()
        base = _SECONDS[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def _hex(seed: int, *parts: object, chars: int) -> str:
    text = json.dumps([seed, *parts])
    return hashlib.blake2b(text.encode(), digest_size=(chars + 1) // 2).hexdigest()[:chars]


def _delay(h: int, late_share: float, slow: bool = False) -> int:
    """Receive lag in ns: mostly well under a second, now and then up to 30 s."""
    if (h >> 40) % 100_000 < late_share * 100_000:
        return 5 * NS + (h >> 8) % (25 * NS)
    return 4_000_000 + (h >> 12) % ((2400 if slow else 700) * 1_000_000)


class _Schedule:
    """Index i -> time `start + i * step + jitter(i)` with jitter < step: strictly increasing,
    and inverted in O(1)."""

    def __init__(self, start: int, step: int, count: int, salt: int) -> None:
        self.start, self.step, self.count, self.salt = start, max(1, step), max(0, count), salt

    def ts(self, i: int) -> int:
        return self.start + i * self.step + _mix(self.salt ^ i) % self.step

    def first_at_or_after(self, t: int) -> int:
        """The smallest index whose time is >= t (`count` if none)."""
        if t <= self.start:
            return 0
        i = (t - self.start) // self.step
        if i >= self.count:
            return self.count
        return i if self.ts(i) >= t else min(i + 1, self.count)


# --- classes --------------------------------------------------------------------------------

Builder = Callable[[int, int, str, int], dict[str, Any]]  # (index, ts, insertId, hash) -> entry


@dataclass(eq=False)
class _Class:
    """Entries `i` of `schedule` with lo <= i < hi and i % modulus in `residues`, stamped
    `schedule.ts(i) + offset`, made by `build`; `varying` names the fields that differ between
    them (every other field is the same for all, as in `rep`)."""

    no: int
    log_name: str
    schedule: _Schedule
    lo: int
    hi: int
    modulus: int
    residues: tuple[int, ...]
    offset: int
    build: Builder
    varying: frozenset[_Path]
    late_share: float
    latency: bool = False  # request logs: received after their latency, too
    slow: bool = False
    rep: dict[str, Any] = field(default_factory=dict)
    first_ns: int = 0
    last_ns: int = -1

    def __post_init__(self) -> None:
        first, last = self._index(self.lo, up=True), self._index(self.hi - 1, up=False)
        if first is not None and last is not None and first <= last:
            self.first_ns = self.schedule.ts(first) + self.offset
            self.last_ns = self.schedule.ts(last) + self.offset
            self.rep = self.make(first)

    def _index(self, i: int, *, up: bool) -> int | None:
        """The member nearest to i (at or after it when `up`, else at or before it)."""
        m, res = self.modulus, self.residues
        k, r = divmod(i, m)
        if up:
            p = bisect.bisect_left(res, r)
            j = k * m + res[p] if p < len(res) else (k + 1) * m + res[0]
            return j if j < self.hi else None
        p = bisect.bisect_right(res, r) - 1
        j = k * m + res[p] if p >= 0 else (k - 1) * m + res[-1]
        return j if j >= self.lo else None

    def count(self) -> int:
        def upto(x: int) -> int:  # members below x
            k, r = divmod(x, self.modulus)
            return k * len(self.residues) + bisect.bisect_left(self.residues, r)
        return max(0, upto(self.hi) - upto(self.lo))

    def insert_id(self, i: int, ts: int) -> str:
        return f"{ts // NS:08x}{self.no:04x}{i:010x}"

    def make(self, i: int) -> dict[str, Any]:
        ts = self.schedule.ts(i) + self.offset
        h = _mix((self.no << 44) ^ i ^ (self.schedule.salt << 8))
        entry = self.build(i, ts, self.insert_id(i, ts), h)
        entry.setdefault("receiveTimestamp", _rfc3339(ts + _delay(h, self.late_share,
                                                                   self.slow)))
        return entry

    def received(self, i: int, ts: int) -> int:
        """When entry i is received (what `make` writes; request logs add their latency)."""
        h = _mix((self.no << 44) ^ i ^ (self.schedule.salt << 8))
        extra = _latency_ns(h) if self.latency else 0
        return ts + extra + _delay(h, self.late_share, self.slow)

    def keys(self, lo_ns: int, hi_ns: int, desc: bool) -> Iterator[tuple[int, str, str, int, int]]:
        """(timestamp, insertId, logName, class, index) of the members stamped in
        [lo_ns, hi_ns], in order."""
        sched, off = self.schedule, self.offset
        a = max(self.lo, sched.first_at_or_after(lo_ns - off))
        b = min(self.hi, sched.first_at_or_after(hi_ns - off + 1))
        if a >= b:
            return
        m, res, n = self.modulus, self.residues, len(self.residues)
        no, log_name = self.no, self.log_name
        if not desc:
            k, r = divmod(a, m)
            p = bisect.bisect_left(res, r)
            while True:
                if p == n:
                    k, p = k + 1, 0
                i = k * m + res[p]
                if i >= b:
                    return
                ts = sched.ts(i) + off
                yield ts, f"{ts // NS:08x}{no:04x}{i:010x}", log_name, no, i
                p += 1
        else:
            k, r = divmod(b - 1, m)
            p = bisect.bisect_right(res, r) - 1
            while True:
                if p < 0:
                    k, p = k - 1, n - 1
                i = k * m + res[p]
                if i < a:
                    return
                ts = sched.ts(i) + off
                yield ts, f"{ts // NS:08x}{no:04x}{i:010x}", log_name, no, i
                p -= 1


def _latency_ns(h: int) -> int:
    return 2_000_000 + (h >> 20) % 300_000_000


# --- three-valued evaluation: may any entry of a class match? -------------------------------

# A filter in three-valued form, as a tree that can be specialised to one class: ("pred", p) a
# test of an entry, ("on", path, node) a restriction on `path` (unknown where it varies),
# ("all" | "any", nodes), ("not", node), ("const", bool).
Node = tuple[Any, ...]
TRUE: Node = ("const", True)
FALSE: Node = ("const", False)


def _judge(node: Node, e: Mapping[str, Any], v: frozenset[_Path]) -> bool | None:
    """The node's value for `e`, None (unknown) where it reads a field in `v` (Kleene)."""
    tag = node[0]
    if tag == "on":
        return None if _varies(node[1], v) else _judge(node[2], e, v)
    if tag == "pred":
        return bool(node[1](e))
    if tag == "const":
        return bool(node[1])
    if tag == "not":
        r = _judge(node[1], e, v)
        return None if r is None else not r
    want = tag == "any"  # the value that decides: True for any, False for all
    unknown = False
    for child in node[1]:
        r = _judge(child, e, v)
        if r is None:
            unknown = True
        elif r is want:
            return want
    return None if unknown else not want


def _special(node: Node, rep: Mapping[str, Any], v: frozenset[_Path]) -> Node:
    """The node for the entries of one class (`rep`, varying in `v`): what reads only fields
    they share is decided once, and what is left reads the fields that vary."""
    tag = node[0]
    if tag == "on":
        return node if _varies(node[1], v) else _special(node[2], rep, v)
    if tag == "pred":
        return TRUE if node[1](rep) else FALSE
    if tag == "const":
        return node
    if tag == "not":
        inner = _special(node[1], rep, v)
        return (FALSE if inner[1] else TRUE) if inner[0] == "const" else ("not", inner)
    want = tag == "any"
    kept = []
    for child in node[1]:
        c = _special(child, rep, v)
        if c[0] == "const":
            if bool(c[1]) is want:
                return c
            continue
        kept.append(c)
    if not kept:
        return ("const", not want)
    return kept[0] if len(kept) == 1 else (tag, tuple(kept))


def _reads(node: Node, path: _Path) -> bool:
    tag = node[0]
    if tag == "on":
        return node[1] == path or _reads(node[2], path)
    if tag in ("all", "any"):
        return any(_reads(c, path) for c in node[1])
    return tag == "not" and _reads(node[1], path)


def _k(tag: str, nodes: list[Node]) -> Node:
    return nodes[0] if len(nodes) == 1 else (tag, tuple(nodes))


@functools.lru_cache(maxsize=4096)
def _varies(path: _Path, varying: frozenset[_Path]) -> bool:
    """Whether a restriction on `path` can tell apart entries differing in `varying`: it reads
    one of them, or an object holding one (`httpRequest:"x"` searches all of httpRequest)."""
    n = len(path)
    return any(v[:n] == path or path[:len(v)] == v for v in varying)


class _MaybeParser(_query._Parser):
    """The filter grammar of query.py, built into a three-valued tree (`Node`): a restriction
    on a field that varies within a class is unknown. Leaves are query.py's own, so each
    restriction means exactly what it means there."""

    def maybe(self) -> Node:
        if self.peek().kind == "end":
            return TRUE
        return _k("all", self.conjuncts(self.primary))  # type: ignore[arg-type]

    def disjunction(self, leaf: Any, top: bool) -> Any:
        nodes = [self.unary(leaf)]
        while self.peek().kind == "OR":
            self.take()
            nodes.append(self.unary(leaf))
        return _k("any", nodes)

    def unary(self, leaf: Any) -> Any:
        if self.peek().kind in ("NOT", "-"):
            self.take()
            return ("not", self.unary(leaf))
        if self.peek().kind == "(":
            self.take()
            nodes = self.conjuncts(leaf)
            self.take()
            return _k("all", nodes)  # type: ignore[arg-type]
        return leaf()

    def restriction(self, path_tok: Any) -> Any:
        path: _Path = path_tok.parts or (path_tok.text,)
        op = self.take()

        def value() -> Any:
            tok = self.take()
            return ("pred", _query._comparison(path, op.text, tok, self.src))

        node = self.unary(value) if self.peek().kind == "(" else value()
        return ("on", path, node)

    def function(self, name: Any) -> Any:
        first = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else None
        pred = _query._Parser.function(self, name)
        path: _Path = ("logName",) if name.text == "log_id" else (
            tuple(first.parts) if first is not None and first.parts else ("insertId",))
        return ("on", path, ("pred", pred))


@functools.lru_cache(maxsize=256)
def _maybe(text: str) -> Node | None:
    """The three-valued form of a filter compile_filter accepted; None if it cannot be built
    (then every class is read and judged entry by entry: slower, never wrong)."""
    try:
        return _MaybeParser(text).maybe()
    except Exception:
        return None


INSERT_ID: _Path = ("insertId",)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A class a filter may match, and what of the filter is left to judge per entry: when that
    reads the insert id (`sample(insertId, p)`), an entry is judged by it before it is built,
    so a sample of a flood costs a hash per entry, not an entry."""

    cls: _Class
    residual: Node | None  # None: nothing to judge before building
    varying: frozenset[_Path] = frozenset()

    def may_match(self, insert_id: str) -> bool:
        assert self.residual is not None
        return _judge(self.residual, {"insertId": insert_id}, self.varying) is not False


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    start: int  # ns, inclusive
    end: int  # ns, exclusive
    revision: str
    instances: tuple[str, ...]


class SyntheticStore:
    """Traffic of `spec`, queried as ListLogEntries queries it; nothing is held but templates."""

    def __init__(self, spec: TrafficSpec, *, clock: Callable[[], datetime] | None = None,
                 max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> None:
        self.spec = spec
        self.clock = clock
        self.max_page_bytes = max_page_bytes
        self.counters = {"queries": 0, "keys": 0, "built": 0, "served": 0}
        self._epoch = os.urandom(6).hex()
        self._lock = threading.Lock()
        self._decisions: OrderedDict[str, list[_Candidate]] = OrderedDict()
        self.start_ns = _ns_of(spec.start)
        self.end_ns = self.start_ns + int(spec.duration * NS)
        self._resources: dict[str, dict[str, Any]] = {}
        self._classes: list[_Class] = []
        self._fixed: list[tuple[tuple[int, str, str], dict[str, Any]]] = []
        self.segments = self._segments()
        self._build()

    # --- what there is ----------------------------------------------------------------------

    def total(self) -> int:
        """How many entries the spec makes (visible or not yet)."""
        return sum(c.count() for c in self._classes) + len(self._fixed)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry's JSON form in (timestamp, insertId) order, ignoring the clock: for tests
        and small specs only (this does build them all)."""
        out = [c.make(i) for c in self._classes for i in range(c.lo, c.hi)
               if i % c.modulus in set(c.residues)]
        out += [dict(e) for _, e in self._fixed]
        out.sort(key=lambda e: (parse_rfc3339_ns(e["timestamp"]), e["insertId"]))
        return out

    def revision_at(self, t: datetime) -> str:
        ns = _ns_of(t)
        return next((s.revision for s in reversed(self.segments) if s.start <= ns),
                    self.segments[0].revision)

    def _log(self, log: str) -> str:
        return f"projects/{self.spec.project}/logs/{log.replace('/', '%2F')}"

    def _resource(self, revision: str) -> dict[str, Any]:
        res = self._resources.get(revision)
        if res is None:
            s = self.spec
            res = self._resources[revision] = {"type": "cloud_run_revision", "labels": {
                "configuration_name": s.service, "location": s.location,
                "project_id": s.project, "revision_name": revision, "service_name": s.service}}
        return res

    def _instances(self, revision: str, n: int) -> tuple[str, ...]:
        return tuple(f"00{_hex(self.spec.seed, revision, k, chars=60)}" for k in range(n))

    def _segments(self) -> list[_Segment]:
        s = self.spec
        first = s.revision or f"{s.service}-00001-{_hex(s.seed, 'rev', chars=3)}"
        deploys = sorted((ep for ep in s.episodes if isinstance(ep, Deploy)), key=lambda d: d.at)
        out = [_Segment(self.start_ns, self.end_ns, first, self._instances(first, s.instances))]
        for d in deploys:
            ready = self.start_ns + int((d.at + d.ready_offset()) * NS)
            prev = out[-1]
            out[-1] = _Segment(prev.start, max(prev.start, min(ready, self.end_ns)),
                               prev.revision, prev.instances)
            out.append(_Segment(min(ready, self.end_ns), self.end_ns, d.revision,
                                self._instances(d.revision, d.instances)))
        return out

    # --- the classes ------------------------------------------------------------------------

    def _add(self, **kw: Any) -> None:
        cls = _Class(no=len(self._classes), late_share=self.spec.late_share, **kw)
        if cls.last_ns >= cls.first_ns and cls.count():
            self._classes.append(cls)

    def _build(self) -> None:
        s = self.spec
        if s.requests_per_second > 0:
            step = max(1, round(NS / s.requests_per_second))
            sched = _Schedule(self.start_ns, step, (self.end_ns - self.start_ns) // step,
                              _mix(s.seed) & 0xFFFFFFFF)
            table = self._residue_table()
            for seg in self.segments:
                self._requests(sched, seg, table)
        for n, ep in enumerate(s.episodes):
            if isinstance(ep, Failures) and ep.count > 0:
                self._failures(n, ep)
        self._episodes()
        self._fixed.sort(key=lambda item: item[0])

    def _residue_table(self) -> list[dict[str, Any]]:
        """What request i does, by i % RESIDUES: its path, status, user agent, app lines, and
        whether it logs an unrelated error. Seeded, so the same spec gives the same traffic."""
        import random

        s = self.spec
        rng = random.Random(s.seed)
        whole, part = divmod(max(0.0, s.app_lines_per_request), 1.0)
        table = []
        for r in range(RESIDUES):
            roll = rng.random()
            status = 200 if roll < 0.93 else 304 if roll < 0.97 else 404
            path = rng.randrange(len(PATHS))
            lines = int(whole) + (((r * 0.6180339887) % 1.0) < part)
            kinds = [rng.randrange(len(APP_LINES) + 1) for _ in range(lines)]  # last: JSON
            other = (rng.randrange(len(OTHER_ERRORS))
                     if ((r * 0.7548776662 + 0.5) % 1.0) < s.other_error_share else -1)
            table.append({"status": status, "path": path, "kinds": kinds, "other": other})
        return table

    def _requests(self, sched: _Schedule, seg: _Segment, table: list[dict[str, Any]]) -> None:
        lo, hi = sched.first_at_or_after(seg.start), sched.first_at_or_after(seg.end)
        if lo >= hi:
            return
        n = len(seg.instances)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for r, row in enumerate(table):
            slot = r % n
            groups.setdefault(("req", row["path"], row["status"], slot), []).append(r)
            for j, kind in enumerate(row["kinds"]):
                groups.setdefault(("app", j, kind, row["path"], row["status"], slot),
                                  []).append(r)
            if row["other"] >= 0:
                for line in range(1 + len(OTHER_ERRORS[row["other"]][1])):
                    groups.setdefault(("other", row["other"], line, slot), []).append(r)
        for key, residues in groups.items():
            inst = seg.instances[key[-1]]
            common = {"schedule": sched, "lo": lo, "hi": hi, "modulus": RESIDUES,
                      "residues": tuple(residues)}
            if key[0] == "req":
                self._add(log_name=self._log("run.googleapis.com/requests"), offset=0,
                          build=self._request_builder(seg.revision, inst, PATHS[key[1]],
                                                      key[2]),
                          varying=_REQUEST_VARYING, latency=True, **common)
            elif key[0] == "app":
                _, j, kind, path, status, _ = key
                self._add(log_name=self._log("run.googleapis.com/stdout"),
                          offset=500_000 + 300_000 * j, varying=(
                              _JSON_VARYING if kind == len(APP_LINES) else _TIMES),
                          build=self._app_builder(seg.revision, inst, kind, PATHS[path],
                                                  status), **common)
            else:
                _, err, line, _ = key
                head, stack = OTHER_ERRORS[err]
                text = head if line == 0 else stack[line - 1]
                self._add(log_name=self._log("run.googleapis.com/stderr"),
                          offset=700_000 + 41_000 * line, varying=_TIMES,
                          build=self._line_builder(seg.revision, inst, text, "stderr"),
                          **common)

    def _failures(self, n: int, ep: Failures) -> None:
        start = self.start_ns + int(ep.start * NS)
        end = self.start_ns + int(ep.end * NS)
        count = ep.count
        sched = _Schedule(start, (end - start) // count, count, _mix(self.spec.seed ^ (n << 20)))
        for seg in self.segments:
            lo, hi = sched.first_at_or_after(seg.start), sched.first_at_or_after(seg.end)
            if lo >= hi:
                continue
            m = len(seg.instances)
            for slot, inst in enumerate(seg.instances):
                common = {"schedule": sched, "lo": lo, "hi": hi, "modulus": m,
                          "residues": (slot,)}
                self._add(log_name=self._log("run.googleapis.com/requests"), offset=0,
                          build=self._request_builder(seg.revision, inst, ep.route, 500),
                          varying=_REQUEST_VARYING, latency=True, **common)
                if ep.structured:
                    self._add(log_name=self._log("run.googleapis.com/stderr"), offset=1_000_000,
                              build=self._json_error_builder(seg.revision, inst, ep.text,
                                                             ep.stack),
                              varying=_TIMES, **common)
                    continue
                for k, text in enumerate((ep.text, *ep.stack)):
                    self._add(log_name=self._log("run.googleapis.com/stderr"),
                              offset=1_000_000 + 37_000 * k,
                              build=self._line_builder(seg.revision, inst, text, "stderr"),
                              varying=_TIMES, **common)

    # --- builders (one closure per class: its constant parts are shared) --------------------

    def _base(self, revision: str, instance: str, log: str) -> dict[str, Any]:
        return {"labels": {"instanceId": instance}, "logName": self._log(log),
                "resource": self._resource(revision)}

    def _request_builder(self, revision: str, instance: str, path: str, status: int) -> Builder:
        base = self._base(revision, instance, "run.googleapis.com/requests")
        url = f"https://{self.spec.service}-abc123-uc.a.run.app{path}"
        severity = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
        project, late = self.spec.project, self.spec.late_share

        def build(i: int, ts: int, insert_id: str, h: int) -> dict[str, Any]:
            latency = _latency_ns(h)
            h2 = _mix(h)
            return {**base, "insertId": insert_id, "timestamp": _rfc3339(ts),
                    "receiveTimestamp": _rfc3339(ts + latency + _delay(h, late)),
                    "severity": severity, "httpRequest": {
                        "latency": f"{latency / NS:.9f}s", "protocol": "HTTP/1.1",
                        "remoteIp": f"203.0.113.{1 + h2 % 254}", "requestMethod": "GET",
                        "requestSize": str(90 + (h2 >> 8) % 811), "requestUrl": url,
                        "responseSize": str(900 + (h2 >> 20) % 47_101), "status": status,
                        "userAgent": AGENTS[(h2 >> 40) % len(AGENTS)]},
                    "spanId": f"{h2:016x}", "trace": f"projects/{project}/traces/{h:016x}{h2:016x}",
                    "traceSampled": True}

        return build

    def _line_builder(self, revision: str, instance: str, text: str, stream: str) -> Builder:
        base = self._base(revision, instance, f"run.googleapis.com/{stream}")
        base["severity"] = "ERROR" if stream == "stderr" else "DEFAULT"
        base["textPayload"] = text

        def build(i: int, ts: int, insert_id: str, h: int) -> dict[str, Any]:
            return {**base, "insertId": insert_id, "timestamp": _rfc3339(ts)}

        return build

    def _json_error_builder(self, revision: str, instance: str, text: str,
                            stack: tuple[str, ...]) -> Builder:
        base = self._base(revision, instance, "run.googleapis.com/stderr")
        kind, _, message = text.partition(": ")
        base["severity"] = "ERROR"
        base["jsonPayload"] = {"level": "error", "message": text, "err": {
            "type": kind, "message": message, "stack": "\n".join((text, *stack))}}

        def build(i: int, ts: int, insert_id: str, h: int) -> dict[str, Any]:
            return {**base, "insertId": insert_id, "timestamp": _rfc3339(ts)}

        return build

    def _app_builder(self, revision: str, instance: str, kind: int, path: str,
                     status: int) -> Builder:
        if kind < len(APP_LINES):
            n = int(_hex(self.spec.seed, "app", kind, path, chars=12), 16)
            text = APP_LINES[kind].format(path=path, status=status, ms=2 + n % 398,
                                          n=(n >> 16) % 500)
            return self._line_builder(revision, instance, text, "stdout")
        base = self._base(revision, instance, "run.googleapis.com/stdout")
        base["severity"] = "INFO"
        message = f"session loaded for {path}"

        def build(i: int, ts: int, insert_id: str, h: int) -> dict[str, Any]:
            return {**base, "insertId": insert_id, "timestamp": _rfc3339(ts),
                    "jsonPayload": {"level": "info", "message": message,
                                    "shop": f"shop-{h % 500}.myshopify.com",
                                    "durationMs": 2 + (h >> 10) % 398}}

        return build

    # --- episodes: a few fixed entries each --------------------------------------------------

    def _fixed_entry(self, ts: int, entry: dict[str, Any], *, slow: bool = False) -> None:
        n = len(self._fixed)
        h = _mix((self.spec.seed << 32) ^ n ^ 0x5EED)
        entry.setdefault("insertId", f"{ts // NS:08x}ffff{n:010x}")
        entry["timestamp"] = _rfc3339(ts)
        entry["receiveTimestamp"] = _rfc3339(ts + _delay(h, 0.0, slow))
        if ts < self.end_ns:
            self._fixed.append(((ts, entry["insertId"], entry["logName"]), entry))

    def _episodes(self) -> None:
        s = self.spec
        deploys = sorted((ep for ep in s.episodes if isinstance(ep, Deploy)), key=lambda d: d.at)
        applied = list(BASE_MIGRATIONS)
        for n, d in enumerate(deploys):
            at = self.start_ns + int(d.at * NS)
            seg, prev = self.segments[n + 1], self.segments[n]
            self._fixed_entry(at, {
                "insertId": f"-{_hex(s.seed, 'audit', d.revision, chars=12)}",
                "logName": self._log("cloudaudit.googleapis.com/activity"),
                "protoPayload": {
                    "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                    "authenticationInfo": {"principalEmail": f"deployer@{s.project}.iam."
                                                             "gserviceaccount.com"},
                    "methodName": "google.cloud.run.v1.Services.ReplaceService",
                    "resourceName": f"namespaces/{s.project}/services/{s.service}",
                    "serviceName": "run.googleapis.com",
                    "response": {"metadata": {"name": s.service}, "spec": {"template": {
                        "metadata": {"name": d.revision}}}},
                    "status": {}},
                "resource": {"type": "cloud_run_revision", "labels": {
                    "configuration_name": "", "location": s.location, "project_id": s.project,
                    "revision_name": "", "service_name": s.service}},
                "severity": "NOTICE"}, slow=True)
            applied += list(d.migrations)
            t = at + int(d.startup_after * NS)
            for k, instance in enumerate(seg.instances):
                self._fixed_entry(t - 150_000_000, {
                    **self._base(d.revision, instance, "run.googleapis.com/varlog/system"),
                    "severity": "INFO", "textPayload": STARTING})
                lines = ["Prisma schema loaded from prisma/schema.prisma",
                         'Datasource "db": PostgreSQL database "app", schema "public" at '
                         '"10.8.0.3:5432"', f"{len(applied)} migrations found in "
                                            "prisma/migrations"]
                if d.migrations and k == 0:
                    lines += [f"Applying migration `{m}`" for m in d.migrations]
                    lines += ["The following migration(s) have been applied:", "migrations/"]
                    for m in d.migrations:
                        lines += [f"  └─ {m}/", "    └─ migration.sql"]
                    lines += ["All migrations have been successfully applied."]
                else:
                    lines += ["No pending migrations to apply."]
                lines += ["> remix-serve ./build/server/index.js",
                          "[remix-serve] http://localhost:8080 (http://169.254.8.1:8080)"]
                for j, text in enumerate(lines):
                    self._fixed_entry(t + j * 3_000_000, {
                        **self._base(d.revision, instance, "run.googleapis.com/stdout"),
                        "severity": "DEFAULT", "textPayload": text})
                t += 400_000_000
            ready = at + int(d.ready_offset() * NS)
            self._fixed_entry(ready, {
                "insertId": _hex(s.seed, "ready", d.revision, chars=11),
                "logName": self._log("cloudaudit.googleapis.com/system_event"),
                "protoPayload": {
                    "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                    "methodName": "/Services.CreateService",
                    "resourceName": f"namespaces/{s.project}/revisions/{d.revision}",
                    "serviceName": "run.googleapis.com",
                    "status": {"message": f"Ready condition status changed to True for "
                                          f"Revision {d.revision}."}},
                "resource": self._resource(d.revision), "severity": "INFO"}, slow=True)
            if d.shutdown_after is not None:
                gone = ready + int(d.shutdown_after * NS)
                for k, instance in enumerate(prev.instances):
                    self._fixed_entry(gone + k * 250_000_000, {
                        **self._base(prev.revision, instance, "run.googleapis.com/varlog/system"),
                        "severity": "INFO", "textPayload": SHUTDOWN})

    # --- reading ----------------------------------------------------------------------------

    def _candidates(self, text: str) -> list[_Candidate]:
        """The classes the filter may match (cached by its text)."""
        with self._lock:
            hit = self._decisions.get(text)
            if hit is not None:
                self._decisions.move_to_end(text)
                return hit
        maybe = _maybe(text)
        chosen = []
        for c in self._classes:
            if maybe is None:
                chosen.append(_Candidate(c, None))
                continue
            left = _special(maybe, c.rep, c.varying)
            if left == FALSE:
                continue
            by_id = INSERT_ID in c.varying and _reads(left, INSERT_ID)
            chosen.append(_Candidate(c, left, c.varying - {INSERT_ID}) if by_id
                          else _Candidate(c, None))
        with self._lock:
            self._decisions[text] = chosen
            while len(self._decisions) > 64:
                self._decisions.popitem(last=False)
        return chosen

    def query(self, resource_names: Sequence[str], filter: str = "", order_by: str = "",
              page_size: int = 0, page_token: str = "") -> tuple[list[StoredEntry], str]:
        """One page of matching entries and the token of the next page ("" on the last page).

        Raises InvalidArgument (QueryError for the filter) for what the API rejects.
        """
        projects = _projects(resource_names)
        desc = _descending(order_by)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, "
                                  f"not {page_size}")
        size = page_size or DEFAULT_PAGE_SIZE
        query = compile_filter(filter)
        request_id = hashlib.sha256(
            json.dumps([sorted(resource_names), filter, desc]).encode()).hexdigest()[:16]
        page = 0
        cursor: tuple[int, str, str] | None = None
        if page_token:
            key, page = _decode_token(page_token, request_id, self._epoch)
            cursor = (key[0], key[1], key[2])
        self.counters["queries"] += 1
        if self.spec.project not in projects:
            return [], ""
        now = _ns_of(self.clock()) if self.clock is not None else None
        lo = self.start_ns if query.min_ns is None else max(self.start_ns, query.min_ns)
        hi = self.end_ns if query.max_ns is None else min(self.end_ns, query.max_ns)
        if now is not None:
            hi = min(hi, now)
        if cursor is not None:
            if desc:
                hi = min(hi, cursor[0])
            else:
                lo = max(lo, cursor[0])
        if lo > hi:
            return [], ""
        candidates = {k.cls.no: k for k in self._candidates(filter)
                      if k.cls.first_ns <= hi and k.cls.last_ns >= lo}
        streams: list[Iterator[tuple[int, str, str, int, int]]] = [
            k.cls.keys(lo, hi, desc) for k in candidates.values()]
        streams.append(self._fixed_keys(lo, hi, desc))
        found: list[StoredEntry] = []
        size_bytes = 0
        matches = query.matches
        counters = self.counters
        for ts, insert_id, log_name, no, i in heapq.merge(*streams, reverse=desc):
            counters["keys"] += 1
            if cursor is not None and ((ts, insert_id, log_name) > cursor if desc
                                       else (ts, insert_id, log_name) < cursor):
                continue
            if no < 0:
                entry = self._fixed[i][1]
                if now is not None and parse_rfc3339_ns(entry["receiveTimestamp"]) > now:  # type: ignore[operator]
                    continue
            else:
                candidate = candidates[no]
                cls = candidate.cls
                if candidate.residual is not None and not candidate.may_match(insert_id):
                    continue
                if now is not None and cls.received(i, ts) > now:
                    continue
                entry = cls.make(i)
            counters["built"] += 1
            if not matches(entry):
                continue
            if len(found) == size:
                return self._page(found, request_id, (ts, insert_id, log_name), page)
            item = _stored(entry, 0)
            if found and size_bytes + len(item.framed) > self.max_page_bytes:
                return self._page(found, request_id, (ts, insert_id, log_name), page)
            found.append(item)
            size_bytes += len(item.framed)
        return self._page(found, request_id, None, page)

    def _page(self, found: list[StoredEntry], request_id: str, key: tuple[int, str, str] | None,
              page: int) -> tuple[list[StoredEntry], str]:
        """The page, and the token that resumes at `key` (the first entry not on it)."""
        self.counters["served"] += len(found)
        if key is None:
            return found, ""
        token = {"v": 1, "r": request_id, "e": self._epoch, "k": [*key, 0], "n": page + 1}
        return found, base64.urlsafe_b64encode(json.dumps(token).encode()).decode()

    def _fixed_keys(self, lo: int, hi: int,
                    desc: bool) -> Iterator[tuple[int, str, str, int, int]]:
        keys = self._fixed
        a = bisect.bisect_left(keys, (lo,), key=lambda item: item[0][:1])
        b = bisect.bisect_left(keys, (hi + 1,), key=lambda item: item[0][:1])
        indices = range(b - 1, a - 1, -1) if desc else range(a, b)
        for n in indices:
            ts, insert_id, log_name = keys[n][0]
            yield ts, insert_id, log_name, -1, n
