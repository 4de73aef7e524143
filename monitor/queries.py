"""The Logging query language, as the monitor writes it: filters and Logs Explorer links.

Rules: uppercase AND/OR/NOT only (lowercase `and` is a search term, FACTS.md); every value is a
quoted string literal; links are percent-encoded whole, so no log text can end the Slack link.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote


def _q(value: str) -> str:
    """A string literal of the Logging query language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def logs_query(service: str, pattern: str | None, revision: str | None = None) -> str:
    """The Cloud Logging filter for a service's lines matching a signal (and one revision).

    Uppercase AND/OR only: lowercase `and` is a search term (FACTS.md). The pattern is matched
    against textPayload and jsonPayload.message, the two places the classifier reads text from.
    """
    parts = ['resource.type="cloud_run_revision"', f"resource.labels.service_name={_q(service)}"]
    if revision:
        parts.append(f"resource.labels.revision_name={_q(revision)}")
    if pattern:
        parts.append(f"(textPayload=~{_q(pattern)} OR jsonPayload.message=~{_q(pattern)})")
    return " AND ".join(parts)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def logs_url(query: str, start: datetime, end: datetime, project: str | None) -> str:
    """A Logs Explorer link; everything is percent-encoded so `|` or `>` cannot end the link."""
    url = (
        "https://console.cloud.google.com/logs/query;query="
        f"{quote(query, safe='')};timeRange={quote(_rfc3339(start), safe='')}%2F"
        f"{quote(_rfc3339(end), safe='')}"
    )
    return f"{url}?project={quote(project, safe='')}" if project else url
