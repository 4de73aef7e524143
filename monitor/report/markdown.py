"""The write-up as Markdown, for a document or a pull request.

Rules:
- Log text is untrusted: every value is cleaned of control characters and secrets
  (`safe.clean`, `redact.scrub`), then put where it cannot form markup: in a code span or fenced
  block whose fence is longer than any backtick run inside it, or with Markdown's punctuation and
  `& < >` escaped. A pasted write-up never renders a link, an image or HTML from a log line.
- The Slack summary of the same write-up, posted with a resolution, is `evidence/summary.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from monitor.correlate.model import IncidentKind, IncidentStatus, MigrationRecord
from monitor.evidence.claims import IncidentReport, SentNotification
from monitor.redact import scrub
from monitor.report.facts import Report
from monitor.safe import clean
from monitor.times import for_people, minute

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_EMOJI = re.compile(r"^(?::[a-z0-9_+-]+:\s*)+")


def _safe(text: str, limit: int = 500) -> str:
    text = " ".join(scrub(clean(text[: 4 * limit])).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md(text: str, limit: int = 500) -> str:
    """Untrusted text as inert Markdown on one line."""
    text = _safe(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(text: str, limit: int = 200) -> str:
    """An inline code span that no backtick in `text` can close."""
    text = _safe(text, limit)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def block(text: str, lang: str = "", limit: int = 2000) -> str:
    """A fenced block; the fence is longer than any backtick run in the text."""
    text = scrub(clean(text[: 2 * limit]))[:limit]
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _names(text: str) -> str:
    """A sentence built by facts.py: quoted names stay readable, punctuation stays inert."""
    return md(text, 1000)


def notification_line(n: SentNotification) -> str:
    """What a sent message said, in a few words: its first line without emoji or bold."""
    first = n.text.split("\n", 1)[0]
    first = _EMOJI.sub("", first).replace("*", "")
    first = first.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    label = {"post_root": "alert posted", "reply": "thread reply",
             "update_root": "alert edited"}.get(n.action, n.action)
    return f"{label} in {n.channel}: {first}"


def incident_markdown(rep: IncidentReport) -> str:
    inc = rep.incident
    out = [f"## {md(inc.service)} · {md(inc.signal)} — {inc.status.value}", "",
           f"{code(inc.id)} · severity {md(inc.severity)}"
           + (f" · regression of {code(inc.regression_of)}" if inc.regression_of else ""), "",
           f"**Summary.** {_names(rep.summary)}", "", "### Impact", "",
           "| | |", "|---|---|",
           f"| Duration | {for_people(rep.duration)} ({minute(inc.first_seen)} → "
           f"{minute(inc.resolved_at or inc.last_seen)}) |",
           f"| {'Failed runs' if inc.kind is IncidentKind.MIGRATION else 'Errors'} | "
           f"{inc.count_text()} |"]
    if rep.requests_failed is not None and inc.kind is IncidentKind.ERROR:
        out.append(f"| Requests failed | {rep.requests_failed:,} (HTTP 5xx in the request logs "
                   "of the revisions hit) |")
    hits = ", ".join(f"{code(r)} ({n:,})" for r, n in
                     sorted(inc.revisions.items(), key=lambda kv: (-kv[1], kv[0])))
    out += [f"| Revisions hit | {hits or 'none recorded'} |", "", "### Root cause", ""]
    if rep.introduced is not None:
        f = rep.introduced
        verb, at = f.arrival
        out.append(f"Introduced by revision {code(f.name)}, {verb} {minute(at)}"
                   + (f", ready {minute(f.ready_at)}" if f.ready_at else "") + ".")
        out += _migration_list(f.migrations)
    else:
        out.append("No revision is named as the cause.")
    if inc.suspect_migrations:
        out.append("Suspect migration(s): " + ", ".join(code(m) for m in inc.suspect_migrations)
                   + ".")
    sample = inc.sample or (inc.migration.message if inc.migration else "")
    if sample:
        out += ["", f"First error line ({minute(inc.first_seen)}):", "", block(sample)]
    out += ["", "### Fix", ""]
    if rep.fixed is not None:
        f = rep.fixed
        verb, at = f.arrival
        out.append(f"Fixed by revision {code(f.name)}, {verb} {minute(at)}"
                   + (f", ready {minute(f.ready_at)}" if f.ready_at else
                      (", never became ready" if f.ready is False else "")) + ".")
        out += _migration_list(f.migrations)
    elif inc.status is IncidentStatus.RESOLVED:
        out.append("No deploy explains the recovery.")
    else:
        out.append("Not fixed yet: the incident is open.")
    if inc.resolved_at is not None:
        out += ["", f"Resolved {minute(inc.resolved_at)}: {md(inc.resolution_note, 1000)}."]
    out += ["", "### Timeline", "", "| Time (UTC) | Event |", "|---|---|"]
    out += [f"| {e.at.strftime('%Y-%m-%d %H:%M:%S')} | {_names(e.text)} |" for e in rep.timeline]
    if rep.notifications:
        out += ["", "Slack notifications, by the time they were sent (a replay sends them all "
                "when it runs):", "", "| Sent (UTC) | Message |", "|---|---|"]
        out += [f"| {n.sent_at.strftime('%Y-%m-%d %H:%M:%S')} | {md(notification_line(n), 200)} |"
                for n in rep.notifications]
    out += ["", "### Verification", ""]
    if not rep.verifications:
        out.append("Nothing to verify in the logs for this incident.")
    for n, v in enumerate(rep.verifications, 1):
        expect = v.expected_count() or "shows " + ", ".join(code(t) for t in v.expect_texts)
        out += [f"{n}. {_names(v.claim)}: {expect}.", "", _indent(block(v.command, "sh", 25000)),
                "", f"   [Logs Explorer]({v.url})", ""]
    out += ["### Checklist", ""]
    ids = {v.id: n for n, v in enumerate(rep.verifications, 1)}
    for c in rep.checklist:
        refs = ", ".join(f"#{ids[e]}" for e in c.evidence if e in ids)
        out.append(f"- [{'x' if c.ok else ' '}] {_names(c.text)}"
                   + (f" (verification {refs})" if refs else ""))
    return "\n".join(out) + "\n"


def _indent(text: str) -> str:
    return "\n".join("   " + line if line else line for line in text.split("\n"))


def _migration_list(migrations: Sequence[MigrationRecord]) -> list[str]:
    out = []
    for m in migrations:
        out.append(f"- {md(m.label)}, {minute(m.at)}")
    return out


def report_markdown(report: Report) -> str:
    head = [f"# Incident write-up — {len(report.reports)} incident(s)", "",
            f"From the monitor's store, up to its last check ({minute(report.generated_at)}); "
            f"incidents open or active since {minute(report.since)}.", ""]
    if not report.reports:
        head.append("No incident in this period.")
    return "\n".join(head) + "\n" + "\n".join(incident_markdown(r) for r in report.reports)


# --- Slack -----------------------------------------------------------------------------------
