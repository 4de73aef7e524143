"""Cloud Logging: one filter per project per cycle, read page by page within a request budget.

Rules:
- One `entries.list` filter (queries.read_filter) covers every watched service of the project;
  requests per cycle = pages read, whatever the number of signals.
- Reads at the generated-client level (FACTS.md: ~5x the high-level Client's speed over gRPC),
  converting raw protobuf entries straight to LogEntry field by field (`_from_pb`): conversion
  is the cycle's largest own cost, so it reads only the fields LogEntry needs, and what depends
  on the log name and monitored resource alone (`entries.origin`) once per distinct pair. A test
  (tests/test_cloud_logging_pb.py) holds it equal to the general `entries.normalise`.
- Pages are fetched one request at a time, so retries, the rate limit and the per-cycle page
  budget apply to every request, including a failure on a later page. The client's own retry is
  off: ours has a deadline inside the cycle and counts against the budget.
- The next page is requested (on one helper thread) while the current one is converted and
  consumed: most of a request's time is spent waiting for the server, and the cycle's own work
  fills that wait instead of following it. Still one request in flight at a time, never past the
  page budget, and a failure on a later page is raised only after the earlier pages are yielded.
- Failures are typed: transient ones (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
  INTERNAL, transport errors) are retried with backoff; the rest raise SourceError at once, with
  what to do (the missing role, how to set credentials).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.json_format import MessageToDict

from monitor.correlate.probe import PROBE_PAGE, Probe, Round
from monitor.entries import (
    JSON_TEXT_KEYS,
    EntryKind,
    LogEntry,
    MalformedEntry,
    Origin,
    audit_text,
    from_json,
    json_message,
    json_text,
    new_entry,
    origin,
)
from monitor.queries import (
    FOLLOW_AFTER,
    FOLLOW_BEFORE,
    Selection,
    Stream,
    follow_up_filter,
    probe_filter,
    read_filter,
)
from monitor.sampling import FILL, Tally, Weigher, Weights, plan, seconds
from monitor.sources.base import SourceError
from monitor.sources.budget import RateLimiter, backoff
from monitor.times import checked_time
from monitor.window import ReadStats, Window

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # the API's maximum
ROLE = "roles/logging.viewer"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CredentialsError(SourceError):
    """No usable credentials: a setup problem (exit 2), not an outage."""


class ApiError(SourceError):
    def __init__(self, message: str, *, retryable: bool, code: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


_RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED",
              "UNKNOWN"}
_HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
               502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def api_error(code: str, detail: str, project: str) -> ApiError:
    """What a status code means for the monitor, in words an operator can act on."""
    detail = detail.strip().splitlines()[0][:300] if detail.strip() else ""
    if code == "PERMISSION_DENIED":
        message = (f"PERMISSION_DENIED reading logs of project {project}: the monitor's account "
                   f"needs the role {ROLE} on it")
    elif code == "UNAUTHENTICATED":
        message = ("UNAUTHENTICATED: the credentials were refused; run `gcloud auth "
                   "application-default login`, or give the service a service account")
    elif code == "RESOURCE_EXHAUSTED":
        message = (f"RESOURCE_EXHAUSTED: Cloud Logging read quota of project {project} is used "
                   "up (about 60 requests a minute, shared with Logs Explorer)")
    elif code == "INVALID_ARGUMENT":
        message = "INVALID_ARGUMENT: Cloud Logging rejected the read filter"
    else:
        message = f"{code} from Cloud Logging"
    if detail:
        message += f" ({detail})"
    return ApiError(message, retryable=code in _RETRYABLE, code=code)


def _grpc_error(exc: Exception, project: str) -> ApiError:
    import grpc
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.GoogleAPICallError) and exc.grpc_status_code is not None:
        return api_error(exc.grpc_status_code.name, str(exc.message), project)
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "UNAVAILABLE"
        return api_error(name, exc.details() if hasattr(exc, "details") else "", project)
    if isinstance(exc, gexc.RetryError | gexc.ServiceUnavailable):
        return api_error("UNAVAILABLE", str(exc), project)
    return api_error("UNAVAILABLE", f"{type(exc).__name__}: {exc}", project)


@dataclass
class Page:
    """One response as fetched: its entries still in wire form, converted by `entries`."""

    items: Sequence[Any]
    next_token: str | None


class _Grpc:
    """Pages over gRPC with the generated client; raw protobuf entries, no dict round trip."""

    def __init__(self, project: str, endpoint: str | None, timeout: float) -> None:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud.audit import audit_log_pb2  # noqa: F401  registers AuditLog for Any
        from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
        from google.cloud.logging_v2.services.logging_service_v2.transports import (
            LoggingServiceV2GrpcTransport,
        )

        self.project = project
        self.timeout = timeout
        try:
            if endpoint:
                import grpc
                from google.auth.credentials import AnonymousCredentials

                channel = grpc.insecure_channel(endpoint)  # FACTS.md: the only way to plaintext
                self.client = LoggingServiceV2Client(
                    transport=LoggingServiceV2GrpcTransport(
                        channel=channel,
                        credentials=AnonymousCredentials()))  # type: ignore[no-untyped-call]
            else:
                self.client = LoggingServiceV2Client()
        except DefaultCredentialsError as exc:
            raise CredentialsError(_NO_CREDENTIALS) from exc

    def page(self, filter_: str, token: str | None, page_size: int = PAGE_SIZE) -> Page:
        from google.cloud.logging_v2.types import ListLogEntriesResponse

        request = {"resource_names": [f"projects/{self.project}"], "filter": filter_,
                   "order_by": "timestamp asc", "page_size": page_size}
        if token:
            request["page_token"] = token
        try:
            pager = self.client.list_log_entries(request=request, retry=None,
                                                 timeout=self.timeout)
            response = next(iter(pager.pages))  # the page the call fetched: no extra request
        except Exception as exc:  # every failure of the call is classified, none escapes raw
            raise _grpc_error(exc, self.project) from exc
        raw = ListLogEntriesResponse.pb(response)
        return Page(raw.entries, raw.next_page_token or None)

    def entries(self, page: Page) -> tuple[list[LogEntry], int]:
        """The page's well-formed entries, and how many were skipped."""
        _hand_over()
        entries, skipped = [], 0
        for pb in page.items:
            try:
                entries.append(_from_pb(pb))
            except (MalformedEntry, ValueError, TypeError, OverflowError) as exc:
                skipped += 1
                log.warning("projects/%s: entry %s skipped: %s", self.project, pb.insert_id, exc)
        return entries, skipped


_NO_CREDENTIALS = (
    "no Google Cloud credentials found: run `gcloud auth application-default login`, or run the "
    "monitor with a service account (on Cloud Run: --service-account) that has "
    f"{ROLE}; or set source.api_endpoint to read from a local emulator"
)


def _hand_over() -> None:
    """Let the helper thread send the next page's request now, before a page is converted.

    `entries` runs right after that request is handed to the helper (`_read`), and converting
    and consuming a page hold the GIL for milliseconds: the helper would wait for the
    interpreter's switch interval (5 ms) before it could send the request, and the server's
    time would then follow the cycle's work instead of overlapping it (a third of a 100,000
    entry cycle's time, bench/throughput.py). A zero sleep releases the GIL once: the helper
    takes it, sends the request and releases it while it waits for the answer.
    """
    time.sleep(0)


@functools.lru_cache(maxsize=4096)  # entries come in time order: a page spans few seconds
def _second(seconds: int) -> tuple[int, int, int, int, int, int]:
    """A whole second since the epoch as (year, month, day, hour, minute, second), checked
    (`times.checked_time`): EARLIEST and LATEST are whole seconds, so any instant within the
    second is in range exactly when the second is."""
    t = checked_time(EPOCH + timedelta(seconds=seconds))
    return t.year, t.month, t.day, t.hour, t.minute, t.second


def _pb_time(ts: Any) -> datetime:
    """A protobuf Timestamp to aware UTC, cut (not rounded) to microseconds, checked
    (`times.checked_time`: TimeOutOfRange outside EARLIEST .. LATEST).

    One per entry, so the whole second's calendar fields are cached and the datetime is made
    from them at once (a third of `replace`'s cost); a `nanos` out of protobuf's range takes
    the general arithmetic, which carries it into the seconds.
    """
    nanos = ts.nanos
    if 0 <= nanos < 1_000_000_000:
        return datetime(*_second(ts.seconds), nanos // 1000, UTC)
    return checked_time(EPOCH + timedelta(seconds=ts.seconds, microseconds=nanos // 1000))


def _severity_names() -> dict[int, str]:
    from google.logging.type import log_severity_pb2

    return {v.number: v.name for v in log_severity_pb2.LogSeverity.DESCRIPTOR.values}


_severity: dict[int, str] = {}


@functools.lru_cache(maxsize=4096)  # one per (log, revision): a page has a handful
def _origin(log_name: str, resource: bytes) -> Origin:
    """`entries.origin` of a serialised MonitoredResource: its labels are parsed once per
    distinct resource, not read label by label for every entry."""
    from google.api.monitored_resource_pb2 import MonitoredResource

    return origin(log_name, MonitoredResource.FromString(resource).labels)


def _text_value(value: Any) -> Any:
    """A Struct `Value` as `entries.json_message` reads it: strings and objects only."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return MessageToDict(value.struct_value)
    return None  # numbers, booleans, lists and nulls are never message text


def _struct_text(struct: Any) -> str:
    """`entries.json_text` of a JSON payload, reading only its message fields from the Struct.

    Converting the whole Struct (`MessageToDict`) is needed only when it has no message, for the
    k=v fallback. One difference from converting it whole: a NaN or infinite number in a field
    that is not read no longer makes `MessageToDict` reject the entry.
    """
    fields = struct.fields
    message = json_message({k: _text_value(fields[k]) for k in JSON_TEXT_KEYS if k in fields})
    return message if message is not None else json_text(MessageToDict(struct))


def _from_pb(pb: Any) -> LogEntry:
    """A raw `google.logging.v2.LogEntry` to LogEntry, equal to what `entries.normalise` makes.

    Filled directly from the protobuf fields rather than through `normalise`'s keyword
    arguments, each field read once, into `entries.new_entry` (no frozen dataclass `__init__`):
    this runs for every entry read and was a third of a cycle's time. Only an audit payload is
    converted whole (`raw["protoPayload"]`, which `classify.deploys` reads).
    """
    if not _severity:
        _severity.update(_severity_names())
    insert_id, log_name = pb.insert_id, pb.log_name
    if not insert_id or not log_name:
        raise MalformedEntry("entry has no insertId or logName")
    payload = pb.WhichOneof("payload")
    raw: dict[str, Any] = {}
    if payload == "text_payload":
        text = pb.text_payload
    elif payload is None:
        text = ""
    elif payload == "json_payload":
        text = _struct_text(pb.json_payload)
    elif payload == "proto_payload":
        try:
            proto = MessageToDict(pb.proto_payload)
        except (TypeError, KeyError):  # a payload type this client does not know
            proto = {"@type": pb.proto_payload.type_url}
        text = audit_text(proto)
        raw = {"protoPayload": proto}
        if pb.HasField("operation"):  # a long-running call's first or last entry
            raw["operation"] = MessageToDict(pb.operation)
    else:
        text = ""
    http_status: int | None = None
    http_url: str | None = None
    if pb.HasField("http_request"):
        http = pb.http_request
        http_status = http.status
        http_url = http.request_url or None
        if not text:  # as `entries.normalise` words it
            text = f"{http.request_method} {http_url or ''} {http_status}".strip()
    where = _origin(log_name, pb.resource.SerializeToString())
    return new_entry(
        insert_id, log_name, _pb_time(pb.timestamp), _severity.get(pb.severity, "DEFAULT"),
        where.kind, where.project, where.service, where.revision,
        pb.labels.get("instanceId") or None, text, http_status, raw, where.location, http_url,
    )


class _Rest:
    """Pages over REST (`POST /v2/entries:list`): JSON entries, normalised by `from_json`."""

    def __init__(self, project: str, endpoint: str | None, timeout: float) -> None:
        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession

        self.project = project
        self.timeout = timeout
        self.url = (endpoint or "https://logging.googleapis.com").rstrip("/") + "/v2/entries:list"
        try:
            credentials = AnonymousCredentials() if endpoint else google.auth.default(  # type: ignore[no-untyped-call]
                scopes=["https://www.googleapis.com/auth/logging.read"])[0]
        except DefaultCredentialsError as exc:
            raise CredentialsError(_NO_CREDENTIALS) from exc
        self.session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]

    def page(self, filter_: str, token: str | None, page_size: int = PAGE_SIZE) -> Page:
        import requests

        body: dict[str, Any] = {"resourceNames": [f"projects/{self.project}"],
                                "filter": filter_, "orderBy": "timestamp asc",
                                "pageSize": page_size}
        if token:
            body["pageToken"] = token
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise api_error("UNAVAILABLE", f"{type(exc).__name__}: {exc}", self.project) from exc
        if response.status_code != 200:
            code = _HTTP_CODES.get(response.status_code, "UNKNOWN")
            detail = ""
            try:
                error = response.json().get("error", {})
                code = error.get("status") or code
                detail = error.get("message", "")
            except ValueError:
                detail = response.text[:200]
            raise api_error(code, detail, self.project)
        data = response.json()
        return Page(data.get("entries", []), data.get("nextPageToken") or None)

    def entries(self, page: Page) -> tuple[list[LogEntry], int]:
        """The page's well-formed entries, and how many were skipped."""
        _hand_over()
        entries, skipped = [], 0
        for n, obj in enumerate(page.items):
            try:
                entries.append(from_json(obj))
            except MalformedEntry as exc:
                skipped += 1
                log.warning("projects/%s: entry %d of a page skipped: %s", self.project, n, exc)
        return entries, skipped


class CloudLoggingSource:
    live = True

    def __init__(
        self,
        *,
        project: str,
        services: Sequence[str],
        transport: str = "grpc",
        api_endpoint: str | None = None,
        request_sample: float = 1.0,
        max_pages: int = 20,
        limiter: RateLimiter | None = None,
        timeout: timedelta = timedelta(seconds=30),
        retry_for: timedelta = timedelta(seconds=30),
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        selection: Selection | None = None,
        follow_hints: re.Pattern[str] | None = None,
        asset_pattern: str | None = None,
    ) -> None:
        self.project = project
        self.services = list(services)
        self.request_sample = request_sample
        self.max_pages = max_pages
        self.limiter = limiter or RateLimiter(30, clock=clock, sleep=sleep)
        self.retry_for = retry_for.total_seconds()
        self.sleep = sleep
        self.clock = clock
        # Reading the needles (queries.Selection): evidence comes from probes, and tool output
        # split over lines is completed by a follow-up read around the lines that name the tool.
        self.selection = selection
        self.selective = selection is not None
        self.follow_hints = follow_hints  # tool output's block headers (classify.TOOL_HEADERS)
        self.asset_pattern = asset_pattern
        pages: type[_Grpc] | type[_Rest] = _Grpc if transport == "grpc" else _Rest
        if transport == "rest" and api_endpoint and not api_endpoint.startswith("http"):
            api_endpoint = f"http://{api_endpoint}"
        self._pages = pages(project, api_endpoint, timeout.total_seconds())

    def filter_for(self, window: Window, weights: Weights | None = None) -> str:
        return read_filter(
            self.services, project=self.project, start=window.start, end=window.end,
            received_after=window.received_after, received_before=window.received_before,
            request_sample=self.request_sample if self.selection is None else 1.0,
            selection=self.selection, weights=weights,
        )

    def read(self, window: Window, stats: ReadStats) -> Iterator[LogEntry]:
        """The window's entries in timestamp order: everything, or (with a selection) the
        needles, sampled in a flood, and the follow-up lines around tool output, merged in
        timestamp order."""
        if self.selection is None:
            yield from self._read(self.filter_for(window), stats, self.max_pages,
                                  floor=window.start)
            self._note_cut(stats)
            return
        main = self._needles(window, stats, self.selection)
        self._note_cut(stats)
        streams = self._streams(main, until=stats.cut_at or window.end)
        if not streams:
            yield from main
            return
        more = ReadStats()
        around: list[LogEntry] = []
        try:
            for chunk in range(0, len(streams), FOLLOW_STREAMS):
                if more.api_requests >= FOLLOW_PAGES:
                    break
                around.extend(self._read(
                    follow_up_filter(streams[chunk:chunk + FOLLOW_STREAMS],
                                     project=self.project),
                    more, FOLLOW_PAGES - more.api_requests))
        finally:
            stats.api_requests += more.api_requests
            stats.entries_read += more.entries_read
            stats.entries_skipped += more.entries_skipped
            stats.follow_up_requests += more.api_requests
        # Around tool output every line is read whole: an entry the sample read too stands for
        # itself alone there, as the follow-up read it.
        again = {e.key for e in around}
        entries = [e for e in main if e.key not in again] if again else main
        entries.extend(around)
        entries.sort(key=_event_order)
        yield from entries

    def _needles(self, window: Window, stats: ReadStats,
                 selection: Selection) -> list[LogEntry]:
        """The main query's entries, each with the weight it was read at (monitor/sampling.py).

        The read is planned from the rates the last one measured (`window.rates`) and may use
        half of the pages left; if that half runs out, what it read says how much is left, and
        the rest of the window is read from where it stopped, planned again, with half of what
        is left again. So a flood that starts within a window is sampled within that window,
        and the checkpoint does not fall behind it. Each part's rates are measured from what it
        read; the last part's are what the next read plans from (`stats.rates`)."""
        entries: list[LogEntry] = []
        rates: dict[str, float] = dict(window.rates)
        part, pages = window, self.max_pages
        resume, previous = _Resume(), ""
        while True:
            weights = plan(rates, seconds(part), pages * PAGE_SIZE)
            filter_ = self.filter_for(part, weights)
            if filter_ != previous:  # else a part that read nothing: go on with its token
                resume.token = None
            previous = filter_
            weigher = Weigher(selection, weights, not selection.by_pattern(filter_, weights))
            tally, spent, before = Tally(), stats.api_requests, len(entries)
            stats.cut_at = None
            allowed = pages if pages <= 1 else math.ceil(pages * FILL)
            entries.extend(weigher.weigh(e, tally)
                           for e in self._read(filter_, stats, allowed, floor=part.start,
                                               resume=resume))
            for name, w in weights.items():
                stats.sampled[name] = max(w, stats.sampled.get(name, 1))
            pages -= stats.api_requests - spent
            got = len(entries) > before  # a part cut before it read anything says nothing
            measured = tally.rates(seconds(part, until=stats.cut_at))
            if measured is not None and (stats.cut_at is None or got):
                rates = measured
            if stats.cut_at is None or pages <= 0 or stats.api_requests == spent:
                break
            if got:  # else the same query again, from its token
                part = replace(part, start=stats.cut_at)
        stats.rates = rates
        return entries

    def _note_cut(self, stats: ReadStats) -> None:
        if stats.cut_at is not None:
            log.info("projects/%s: read budget of %d pages spent at %s; continuing next cycle",
                     self.project, self.max_pages, stats.cut_at)

    def _streams(self, entries: Sequence[LogEntry], until: datetime | None) -> list[Stream]:
        """Where the read met tool output: each (service, revision, instance) stream's spans of
        lines that head a block of it, widened by `FOLLOW_BEFORE`/`FOLLOW_AFTER`, never past
        what this read covers (`until`: its end, or where its budget cut it)."""
        hints = self.follow_hints
        if hints is None:
            return []
        times: dict[tuple[str, str | None, str | None], list[datetime]] = {}
        for e in entries:
            if e.kind is EntryKind.APP and e.service is not None and hints.search(e.text):
                times.setdefault((e.service, e.revision, e.instance_id), []).append(e.timestamp)
        spans: list[Stream] = []
        for (service, revision, instance), stamps in times.items():
            start = end = stamps[0]
            for t in [*stamps[1:], None]:
                if t is not None and t - end <= 2 * FOLLOW_AFTER:
                    end = t
                    continue
                last = end + FOLLOW_AFTER if until is None else min(end + FOLLOW_AFTER, until)
                spans.append(Stream(service, revision, instance, start - FOLLOW_BEFORE, last))
                if t is not None:
                    start = end = t
        return sorted(spans, key=lambda s: s.start)

    def probe(self, probe: Probe, stats: ReadStats) -> tuple[list[LogEntry], bool]:
        """One page (`PROBE_PAGE`) of the request logs a probe asks for, and whether it was
        full: the evidence of health, asked for when a decision needs it (correlate.probe)."""
        evidence = probe.round is Round.EVIDENCE
        filter_ = probe_filter(
            probe.service, project=self.project, since=probe.reads_from, until=probe.until,
            successes_only=probe.round is not Round.CONTEXT, asset_pattern=self.asset_pattern,
            revisions=probe.revisions,
            routes=probe.routes if evidence else (),
            not_revisions=probe.not_revisions if evidence and not probe.any_instance else (),
            instances=probe.instances if evidence and not probe.any_instance else ())
        more = ReadStats()
        try:
            entries = list(self._read(filter_, more, 1, page_size=PROBE_PAGE))
        finally:
            stats.api_requests += more.api_requests
            stats.probe_requests += more.api_requests
            stats.entries_skipped += more.entries_skipped
        return entries, more.cut_at is not None

    def _read(self, filter_: str, stats: ReadStats, max_pages: int,
              page_size: int = PAGE_SIZE, floor: datetime | None = None,
              resume: _Resume | None = None) -> Iterator[LogEntry]:
        """The filter's entries, page by page, at most `max_pages`; when they run out before
        the last page, `stats.cut_at` says how far it read: the last entry's time, or `floor`
        (the read's start) when the pages held none (a long search answers empty pages with a
        token to go on), so the window is never taken as read when it was not. `resume`: where
        a read of the same filter stopped, to go on from (and where this one stops)."""
        last: datetime | None = None
        start, resume = (resume.token if resume else None), resume or _Resume()
        resume.token = None
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logging-read")
        try:
            # `pending`: the request for the page after the one being consumed (see the rules)
            pending = ahead.submit(self._fetch, filter_, start, stats, page_size) \
                if max_pages else None
            for pages in range(1, max_pages + 1):
                assert pending is not None
                page = pending.result()  # raises the request's failure, after earlier pages
                more = page.next_token is not None and pages < max_pages
                pending = ahead.submit(self._fetch, filter_, page.next_token, stats,
                                       page_size) if more else None
                entries, skipped = self._pages.entries(page)
                stats.entries_read += len(entries)
                stats.entries_skipped += skipped
                for entry in entries:
                    last = entry.timestamp
                    yield entry
                if page.next_token is None:
                    return
            # The budget is spent: everything up to `last` is read (timestamp order), the rest
            # of the window waits for the next cycle.
            stats.cut_at = last if last is not None else (floor or EPOCH)
            resume.token = page.next_token
        finally:
            # A reader that stops early (shutdown) does not wait for a request still in flight.
            ahead.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, filter_: str, token: str | None, stats: ReadStats,
               page_size: int = PAGE_SIZE) -> Page:
        deadline = self.clock() + self.retry_for
        delays = backoff(1.0, 16.0)
        while True:
            self.limiter.acquire()
            stats.api_requests += 1
            try:
                return self._pages.page(filter_, token, page_size)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                delay = next(delays)
                if exc.code == "RESOURCE_EXHAUSTED":
                    delay = max(delay, 5.0)  # quota: a fraction of a second changes nothing
                if self.clock() + delay > deadline:
                    raise ApiError(f"{exc} (gave up after retrying for "
                                   f"{self.retry_for:.0f}s)", retryable=True,
                                   code=exc.code) from exc
                log.warning("projects/%s: %s; retrying in %.1fs", self.project, exc, delay)
                self.sleep(delay)


@dataclass
class _Resume:
    """The page token a read stopped at, for a read of the same filter to go on from."""

    token: str | None = None


def _event_order(entry: LogEntry) -> tuple[datetime, str]:
    return (entry.timestamp, entry.insert_id)


# Follow-up reads of a cycle: pages in all, and streams per query (a span is ~250 characters of
# filter; Cloud Logging's limit is 20,000).
FOLLOW_PAGES = 3
FOLLOW_STREAMS = 40
