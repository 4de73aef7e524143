"""The Logging query language, as the monitor writes it: filters and Logs Explorer links.

Rules: uppercase AND/OR/NOT only (lowercase `and` is a search term, FACTS.md); every value is a
quoted string literal; links are percent-encoded whole, so no log text can end the Slack link.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
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


def read_filter(
    services: Sequence[str],
    *,
    project: str | None = None,
    start: datetime | None,
    end: datetime | None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    request_sample: float = 1.0,
) -> str:
    """The one filter a check cycle reads a project with: every watched service, everything.

    It selects by service and time only, never by signal: app lines (signatures, migration output
    and the lines around them), request logs (the evidence of health, sampled when they are too
    many) and Cloud Run's audit entries (deploys, readiness) all come back from one query, so the
    requests per cycle are the pages read, whatever the number of signals.
    """
    if not services:
        raise ValueError("read_filter needs at least one service")
    names = " OR ".join(f"resource.labels.service_name={_q(s)}" for s in services)
    parts = ['resource.type="cloud_run_revision"', f"({names})"]
    if project is not None:
        parts.append(project_clause(project))
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
    text = " AND ".join(parts)
    if len(text) > MAX_FILTER:
        raise ValueError(f"the read filter is {len(text)} characters, over Cloud Logging's "
                         f"{MAX_FILTER}: watch fewer services per project")
    return text


def _rfc3339_exact(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
