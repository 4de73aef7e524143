"""The Logging query language, as the monitor writes it: filters and Logs Explorer links.

Rules: uppercase AND/OR/NOT only (lowercase `and` is a search term, FACTS.md); every value is a
quoted string literal; links are percent-encoded whole, so no log text can end the Slack link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from monitor.entries import JSON_TEXT_FIELDS


def _q(value: str) -> str:
    """A string literal of the Logging query language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


TEXT_FIELDS = ("textPayload", *(".".join(("jsonPayload", *path)) for path in JSON_TEXT_FIELDS))


def logs_query(service: str, pattern: str | None, revision: str | None = None,
               fields: int = len(TEXT_FIELDS)) -> str:
    """The Cloud Logging filter for a service's lines matching a signal (and one revision).

    Uppercase AND/OR only: lowercase `and` is a search term (FACTS.md). The pattern is matched
    against textPayload and every structured field the classifier reads text from
    (`entries.JSON_TEXT_FIELDS`), so the query finds the entries the alert counted; `fields`
    keeps only the first (most common) of them, for a link that must stay short; 0 leaves the
    pattern out.
    """
    parts = ['resource.type="cloud_run_revision"', f"resource.labels.service_name={_q(service)}"]
    if revision:
        parts.append(f"resource.labels.revision_name={_q(revision)}")
    if pattern and fields > 0:
        parts.append("(" + " OR ".join(f"{f}=~{_q(pattern)}" for f in TEXT_FIELDS[:fields])
                     + ")")
    return " AND ".join(parts)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def logs_url(query: str, start: datetime, end: datetime, project: str | None) -> str:
    """A Logs Explorer link; everything is percent-encoded so `|` or `>` cannot end the link."""
    url = (
        "https://console.cloud.google.com/logs/query;query="
        f"{url_quote(query)};timeRange={url_quote(_rfc3339(start))}%2F"
        f"{url_quote(_rfc3339(end))}"
    )
    return f"{url}?project={url_quote(project)}" if project else url


def url_quote(text: str) -> str:
    """Percent-encoded, every reserved character included; a lone surrogate (log text can carry
    one) becomes `?`, which UTF-8 cannot encode."""
    return quote(text, safe="", errors="replace")


MAX_FILTER = 20_000  # characters; Cloud Logging rejects longer filters
REQUEST_LOG = "run.googleapis.com%2Frequests"


def project_clause(project: str) -> str:
    """The entries of `project` only, as `entries.origin` decides it: its resource label, else
    the project in the log name. A central bucket or an aggregated sink read through `project`
    also holds other projects' entries, with the same service names."""
    return (f"(resource.labels.project_id={_q(project)} OR "
            f"logName:{_q(f'projects/{project}/logs/')})")


AUDIT_LOGS = "cloudaudit.googleapis.com"  # activity (deploys) and system_event (readiness)
PLATFORM_LOG = "run.googleapis.com%2Fvarlog%2Fsystem"  # Cloud Run about an instance


FAILED_REQUESTS = "httpRequest.status>=500"  # 5xx request logs; a key of Selection's weights
APP_LINES = "app lines"  # every app line, when the signals do not fit a filter; a weight's key


@dataclass(frozen=True, slots=True)
class Selection:
    """What a cycle's one query asks for, when it reads the needles and not the haystack.

    `signals`: each signal's RE2 pattern, searched in every field the classifier reads text from
    (`TEXT_FIELDS`), so the server selects what the classifier would match; `tool`: the lines
    the migration tool prints. Audit and platform entries and failed requests (5xx) are always
    selected: deploys, readiness, instance shutdowns and the routes that failed. Successful
    requests never are; the evidence of health is asked for by a probe (`probe_filter`).

    A flood (more matches than a cycle may read) is read as a sample (monitor/sampling.py):
    `weights` maps a signal, `FAILED_REQUESTS` or `APP_LINES` to `w`, and only one in `w` of
    its entries is asked for (`sample(insertId, 1/w)`, a hash of the insert id: the same
    entries every time, and those of a smaller sample among them). Everything else is read
    whole: another signal's one match, the tool's output, deploys.
    """

    signals: tuple[tuple[str, str], ...] = ()  # (name, RE2 pattern)
    tool: str | None = None

    def clause(self, room: int = MAX_FILTER, weights: Mapping[str, int] | None = None) -> str:
        """The selection in at most `room` characters. Many long signals repeated over every
        text field may not fit Cloud Logging's filter limit: then every app line is selected
        (the classifier matches them; successful requests are still left to the probes)."""
        weights = weights or {}
        clause = self._by_pattern(weights)
        if len(clause) <= room:
            return clause
        app = _sampled(f"NOT logName:{_q(REQUEST_LOG)}", self.app_weight(weights))
        tool = [f"textPayload=~{_q(self.tool)}"] if self.tool else []
        return "(" + " OR ".join([*tool, app, *self._always(weights)]) + ")"

    def by_pattern(self, filter_: str, weights: Mapping[str, int] | None = None) -> bool:
        """Whether `filter_` selects app lines by the signals' patterns, or (the clause did
        not fit) every app line: what an entry read stands for depends on it."""
        return self._by_pattern(weights or {}) in filter_

    @staticmethod
    def app_weight(weights: Mapping[str, int]) -> int:
        """The one weight of every app line, when the clause selects them all."""
        return max((w for k, w in weights.items() if k != FAILED_REQUESTS), default=1)

    def _by_pattern(self, weights: Mapping[str, int]) -> str:
        groups: dict[int, list[str]] = {}
        for name, pattern in self.signals:
            groups.setdefault(weights.get(name, 1), []).append(f"(?:{pattern})")
        if self.tool:
            groups.setdefault(1, []).append(f"(?:{self.tool})")
        matches = [_sampled("(" + " OR ".join(f"{f}=~{_q('|'.join(alts))}" for f in TEXT_FIELDS)
                            + ")", w) for w, alts in sorted(groups.items())]
        return "(" + " OR ".join([*matches, *self._always(weights)]) + ")"

    @staticmethod
    def _always(weights: Mapping[str, int]) -> list[str]:
        return [f"logName:{_q(AUDIT_LOGS)}", f"logName:{_q(PLATFORM_LOG)}",
                _sampled(FAILED_REQUESTS, weights.get(FAILED_REQUESTS, 1))]


def _sampled(clause: str, weight: int) -> str:
    return clause if weight <= 1 else f"({clause} AND sample(insertId, {1 / weight:.10g}))"


def _scope(services: Sequence[str], project: str | None) -> list[str]:
    if not services:
        raise ValueError("a read filter needs at least one service")
    names = " OR ".join(f"resource.labels.service_name={_q(s)}" for s in services)
    parts = ['resource.type="cloud_run_revision"', f"({names})"]
    if project is not None:
        parts.append(project_clause(project))
    return parts


def _checked(parts: list[str]) -> str:
    text = " AND ".join(parts)
    if len(text) > MAX_FILTER:
        raise ValueError(f"the read filter is {len(text)} characters, over Cloud Logging's "
                         f"{MAX_FILTER}: watch fewer services or shorter signals per project")
    return text


def read_filter(
    services: Sequence[str],
    *,
    project: str | None = None,
    start: datetime | None,
    end: datetime | None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    request_sample: float = 1.0,
    selection: Selection | None = None,
    weights: Mapping[str, int] | None = None,
) -> str:
    """The one filter a check cycle reads a project with: every watched service.

    With a `selection`, only what can change a conclusion (`Selection`); without one,
    everything, by service and time (a file's replay and `source.select: false` read so). Either
    way one query covers every signal: the requests per cycle are the pages read, whatever the
    number of signals. `weights`: a flood's sample (`Selection`).
    """
    parts = _scope(services, project)
    if start is not None:
        parts.append(f"timestamp>={_q(_rfc3339_exact(start))}")
    if end is not None:
        parts.append(f"timestamp<={_q(_rfc3339_exact(end))}")
    if received_after is not None:
        parts.append(f"receiveTimestamp>={_q(_rfc3339_exact(received_after))}")
    if received_before is not None:
        parts.append(f"receiveTimestamp<{_q(_rfc3339_exact(received_before))}")
    if request_sample < 1.0:
        parts.append(f'(NOT logName:{_q(REQUEST_LOG)} OR sample(insertId, {request_sample:g}))')
    if selection is not None:
        parts.append(selection.clause(room=MAX_FILTER - len(" AND ".join(parts)) - 5,
                                      weights=weights))
    return _checked(parts)


# A stream's lines around its tool output: Prisma prints a block at once (a P3018 block, the
# applied tree: milliseconds apart), each line its own entry, and the container serves nothing
# until `migrate deploy` has finished; a second either side holds the whole block, and no more
# than a second of the app's own lines once it serves, however busy it is.
FOLLOW_BEFORE = timedelta(seconds=1)
FOLLOW_AFTER = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Stream:
    """One (service, revision, instance) stream's lines in `[start, end]`: a follow-up read."""

    service: str
    revision: str | None
    instance: str | None
    start: datetime
    end: datetime


def follow_up_filter(streams: Sequence[Stream], *, project: str | None) -> str:
    """The app lines of each stream within its span, in one query: the lines of multi-line
    tool output that carry no text the selection knows (`Database error code: 42P01`)."""
    if not streams:
        raise ValueError("a follow-up read needs at least one stream")
    parts = _scope(sorted({s.service for s in streams}), project)
    parts += [f"NOT logName:{_q(REQUEST_LOG)}", f"NOT logName:{_q(AUDIT_LOGS)}",
              f"NOT logName:{_q(PLATFORM_LOG)}"]
    spans = []
    for s in streams:
        span = [f"resource.labels.service_name={_q(s.service)}"]
        if s.revision is not None:
            span.append(f"resource.labels.revision_name={_q(s.revision)}")
        if s.instance is not None:
            span.append(f"labels.instanceId={_q(s.instance)}")
        span += [f"timestamp>={_q(_rfc3339_exact(s.start))}",
                 f"timestamp<={_q(_rfc3339_exact(s.end))}"]
        spans.append("(" + " AND ".join(span) + ")")
    parts.append("(" + " OR ".join(spans) + ")")
    # the whole read's bounds too: they let the server (and the emulator) skip to the span
    parts += [f"timestamp>={_q(_rfc3339_exact(min(s.start for s in streams)))}",
              f"timestamp<={_q(_rfc3339_exact(max(s.end for s in streams)))}"]
    return _checked(parts)


def probe_filter(service: str, *, project: str | None, since: datetime, until: datetime,
                 successes_only: bool, asset_pattern: str | None = None,
                 routes: Sequence[str] = (), not_revisions: Sequence[str] = (),
                 instances: Sequence[str] = (), revisions: Sequence[str] = ()) -> str:
    """The request logs an evidence probe asks for (`correlate.probe`): of one service, served
    in `(since, until]`; with `successes_only`, 2xx/3xx requests, then either from one of
    `revisions` (did a candidate fix serve at all: a static asset says it runs) or app
    requests only (no `asset_pattern`) on `routes` (route_of's `:id` stands for any segment),
    from a revision not in `not_revisions` or from one of `instances`. The server narrows; the
    core still judges every entry it gets.
    """
    parts = _scope([service], project)
    parts += [f"logName:{_q(REQUEST_LOG)}",
              f"timestamp>{_q(_rfc3339_exact(since))}", f"timestamp<={_q(_rfc3339_exact(until))}"]
    if successes_only:
        parts += ["httpRequest.status>=200", "httpRequest.status<400"]
        if asset_pattern and not revisions:
            parts.append(f"NOT httpRequest.requestUrl=~{_q(asset_pattern)}")
        if routes:
            parts.append(f"httpRequest.requestUrl=~{_q(routes_pattern(routes))}")
        if revisions:
            names = " OR ".join(_q(r) for r in revisions)
            parts.append(f"resource.labels.revision_name=({names})")
        who = []
        if not_revisions:
            names = " OR ".join(_q(r) for r in not_revisions)
            who.append(f"NOT resource.labels.revision_name=({names})")
        if instances:
            who.append("labels.instanceId=(" + " OR ".join(_q(i) for i in instances) + ")")
        if who:
            parts.append("(" + " OR ".join(who) + ")")
    return _checked(parts)


_RE2_SPECIAL = re.compile(r"[\\.^$|?*+()\[\]{}]")


def re2_literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it literally."""
    return _RE2_SPECIAL.sub(r"\\\g<0>", text)


def routes_pattern(routes: Sequence[str]) -> str:
    """RE2 over a `requestUrl` for the paths of `routes`: the scheme and host, then the route
    (`:id` any one segment), then the query string or the end."""
    def one(route: str) -> str:
        return "/".join("[^/?#]+" if part == ":id" else re2_literal(part)
                        for part in route.split("/"))
    alternatives = "|".join(one(r) for r in routes)
    return f"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?(?:{alternatives})(?:[?#]|$)"


def _rfc3339_exact(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
