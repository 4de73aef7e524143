"""The evidence of a write-up: `gcloud logging read` commands that reproduce each claim.

Rules:
- Every claim the checklist makes names the command that shows it, and the command is exact:
  `--project`, `--format=json`, and explicit `timestamp>=` / `timestamp<` bounds in the filter
  (so gcloud adds no `--freshness` of its own and the answer does not depend on when it runs).
- Bounds are half-open, [start, end). The store keeps times to the microsecond while Cloud
  Logging keeps nanoseconds, so an entry stamped 01:07:05.218128803 is stored as .218128: an
  upper bound on a stored time is that time plus 1 µs, and "after the last error" starts there.
- Filters use only what `monitor.queries` writes (uppercase AND/OR, quoted literals) plus
  `log_id(...)` and `httpRequest.status`, all valid in Cloud Logging and in the local emulator,
  which rejects what it does not understand: a test runs every command against it.
- Commands are few (one per claim, and the same filter is never printed twice): gcloud costs
  about a second per call.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime, timedelta

from monitor.correlate.model import IncidentKind, IncidentStatus, RevisionFacts
from monitor.evidence.claims import Check, IncidentReport, Verification
from monitor.queries import logs_query, logs_url
from monitor.times import minute, sortable

TICK = timedelta(microseconds=1)
# A migration event is stamped with the last line of its reassembled output; the line naming the
# error code comes before it, within the same run.
RUN_SPAN = timedelta(minutes=1)
REQUESTS = 'log_id("run.googleapis.com/requests")'


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bounded(query: str, start: datetime | None, end: datetime | None) -> str:
    """The filter with its time bounds: start inclusive, end exclusive."""
    parts = [query]
    if start is not None:
        parts.append(f"timestamp>={_q(sortable(start))}")
    if end is not None:
        parts.append(f"timestamp<{_q(sortable(end))}")
    return " AND ".join(parts)


def gcloud_command(filter: str, project: str | None) -> str:
    """The shell command; the filter is one single-quoted argument."""
    project_flag = f" --project={shlex.quote(project)}" if project else ""
    return f"gcloud logging read {shlex.quote(filter)}{project_flag} --format=json --order=asc"


def _make(id: str, claim: str, query: str, project: str | None, start: datetime | None,
          end: datetime | None, *, count: int | None = None, within: int | None = None,
          texts: tuple[str, ...] = ()) -> Verification:
    filter = bounded(query, start, end)
    url_start = start or (end - timedelta(days=1) if end else datetime.now(UTC))
    url_end = (end or datetime.now(UTC)) + timedelta(seconds=1)  # the range is in seconds
    return Verification(id=id, claim=claim, filter=filter, project=project, start=start,
                        end=end, expect_count=count, expect_within=within,
                        expect_texts=texts,
                        command=gcloud_command(filter, project),
                        url=logs_url(filter, url_start, url_end, project))


def _names_pattern(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def _migrations(id: str, role: str, facts: RevisionFacts, project: str | None,
                service: str) -> Verification | None:
    names = list(dict.fromkeys(m.name for m in facts.migrations if m.name))
    if not names:
        return None
    start = facts.deployed_at or facts.first_seen or min(m.at for m in facts.migrations)
    end = max(m.at for m in facts.migrations) + TICK
    runs = ", ".join(m.label for m in facts.migrations)
    return _make(id, f"the {role} revision {facts.name} ran: {runs}",
                 logs_query(service, _names_pattern(names), facts.name), project, start, end,
                 texts=tuple(names))


def verifications(rep: IncidentReport, has_requests: bool) -> list[Verification]:
    """One command per claim of the write-up, in the order the checklist quotes them."""
    inc, project, service = rep.incident, rep.project, rep.incident.service
    out: list[Verification] = []
    if inc.kind is IncidentKind.SOURCE or not rep.pattern:
        return out
    query = logs_query(service, rep.pattern)
    noun = "failed migration run" if inc.kind is IncidentKind.MIGRATION else "match"
    start = inc.first_seen - (RUN_SPAN if inc.kind is IncidentKind.MIGRATION else timedelta())
    out.append(_make("errors", f"{inc.count_text(noun)} of {rep.what} on {service} from "
                     f"{minute(inc.first_seen)} to {minute(inc.last_seen)}", query, project,
                     start, inc.last_seen + TICK, count=inc.count, within=inc.count_bound))
    if inc.kind is IncidentKind.ERROR and rep.requests_failed is not None and rep.revisions_hit:
        names = " OR ".join(_q(f.name) for f in rep.revisions_hit)
        starts = [f.first_seen for f in rep.revisions_hit if f.first_seen]
        ends = [f.last_seen for f in rep.revisions_hit if f.last_seen]
        if starts and ends:
            q = (f'resource.type="cloud_run_revision" AND resource.labels.service_name='
                 f"{_q(service)} AND resource.labels.revision_name=({names}) AND {REQUESTS} "
                 "AND httpRequest.status>=500")
            # In a flood failed requests are sampled as the matches are: as rough an estimate
            about = "~" if inc.count_estimated else ""
            out.append(_make("requests_failed", f"{about}{rep.requests_failed:,} request(s) "
                             "failed (HTTP 5xx) on the revisions hit", q, project, min(starts),
                             max(ends) + TICK, count=rep.requests_failed,
                             within=inc.count_bound))
    if rep.introduced is not None:
        v = _migrations("cause_migrations", "introducing", rep.introduced, project, service)
        if v is not None:
            out.append(v)
    if rep.fixed is not None:
        v = _migrations("fix_migrations", "fixing", rep.fixed, project, service)
        if v is not None:
            out.append(v)
    if inc.status is IncidentStatus.RESOLVED:
        quiet_end = rep.checked_until
        if rep.next_incident is not None:
            quiet_end = rep.next_incident.first_seen
        if quiet_end is not None and quiet_end > inc.last_seen:
            out.append(_make("quiet", f"no {rep.what} on {service} after the last one "
                             f"({minute(inc.last_seen)}) up to {minute(quiet_end)}", query, project,
                             inc.last_seen + TICK, quiet_end + TICK
                             if rep.next_incident is None else quiet_end, count=0))
        if inc.kind is IncidentKind.ERROR and has_requests and inc.resolved_at is not None:
            # what the monitor counts: 2xx and 3xx that are not static assets
            q = (f'resource.type="cloud_run_revision" AND resource.labels.service_name='
                 f"{_q(service)} AND {REQUESTS} AND httpRequest.status>=200 AND "
                 "httpRequest.status<400")
            if rep.asset_pattern is not None:
                q += f" AND NOT httpRequest.requestUrl=~{_q(rep.asset_pattern)}"
            out.append(_make("requests_ok", f"{inc.ok_requests_since_last:,} successful app "
                             f"request(s) served between the last error and the resolution",
                             q, project, inc.last_seen + TICK, inc.resolved_at + TICK,
                             count=inc.ok_requests_since_last))
    return out


def checklist(rep: IncidentReport) -> list[Check]:
    """The outcome, one line each, every line naming the verification that backs it."""
    inc = rep.incident
    have = {v.id for v in rep.verifications}

    def ev(*ids: str) -> tuple[str, ...]:
        return tuple(i for i in ids if i in have)

    out: list[Check] = []
    quiet = next((v for v in rep.verifications if v.id == "quiet"), None)
    if inc.status is IncidentStatus.OPEN:
        out.append(Check(False, f"still open: last {rep.what} at "
                         f"{minute(inc.last_seen)} ({inc.reason.replace('_', ' ')})", ev("errors")))
    elif inc.kind is IncidentKind.MIGRATION:
        # Resolved by a run that succeeded, not by a quiet period: the checks are that run, and
        # no failed run after it where the logs were read that far.
        out.append(Check(True, f"migrate deploy succeeded on {inc.resolved_by} at "
                         f"{minute(inc.resolved_at)}", ev("fix_migrations")))
        if quiet is not None and quiet.end is not None:
            out.append(Check(True, f"no failed migrate deploy after it (read up to "
                             f"{minute(quiet.end)})", ev("quiet")))
    else:
        line = f"no {rep.what} since {minute(inc.last_seen)}"
        if quiet is not None and quiet.end is not None:
            line += f" (read up to {minute(quiet.end)})"
        if "requests_ok" in have:
            line += (f", {inc.ok_requests_since_last:,} successful app request(s) in the "
                     "quiet period before the resolution")
        out.append(Check(quiet is not None, line, ev("quiet", "requests_ok")))
        out.append(Check(True, f"resolved because: {inc.reason.replace('_', ' ')}"))
    if rep.next_incident is not None:
        out.append(Check(False, f"it came back: incident {rep.next_incident.id} opened "
                         f"{minute(rep.next_incident.first_seen)}"))
    if rep.fixed is not None:
        runs = ", ".join(m.label for m in rep.fixed.migrations) or "no migrations"
        ready = f"ready {minute(rep.fixed.ready_at)}" if rep.fixed.ready_at else "readiness unknown"
        out.append(Check(rep.fixed.ready is not False,
                         f"fixed by revision {rep.fixed.name} ({ready}), which ran: {runs}",
                         ev("fix_migrations")))
    elif inc.status is IncidentStatus.RESOLVED:
        out.append(Check(False, "no deploy explains the recovery: find out what changed"))
    if rep.introduced is not None:
        runs = ", ".join(m.label for m in rep.introduced.migrations) or "no migrations"
        out.append(Check(True, f"cause: revision {rep.introduced.name}, which ran: {runs}",
                         ev("cause_migrations")))
    unit = "failed run(s)" if inc.kind is IncidentKind.MIGRATION else "error(s)"
    impact = f"impact: {inc.count_text()} {unit}"
    impact += f" on {len(inc.revisions)} revision(s)"
    if rep.requests_failed is not None and inc.kind is IncidentKind.ERROR:
        impact += f", {rep.requests_failed:,} failed request(s)"
    out.append(Check(True, impact, ev("errors", "requests_failed")))
    return out
