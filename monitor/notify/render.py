"""Render a Transition into Slack messages, as data.

Rules:
- Pure: no clock, no network, no store. The same transition always renders the same messages, so
  what the outbox stores before a crash is exactly what is sent after it.
- Everything that came from the logs (samples, migration names and messages, revision names, the
  change sentences that quote them) is untrusted. It goes through `safe_text` before it reaches a
  message: control characters and ANSI sequences stripped, secrets scrubbed, `& < >` escaped so that
  `<!channel>` or `<https://evil|click>` is displayed and never acted on, backticks neutralised in
  code, and the length cut to Slack's limits. Only links this module builds itself appear as
  `<url|label>` markup.
- Slack's limits (FACTS.md) hold for every message: text <= 3,000 characters, each section text
  <= 3,000, header <= 150, at most 50 blocks (one is left free for the notifier's thread link).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from monitor.config import mask_url
from monitor.correlate.model import (
    Incident,
    IncidentKind,
    IncidentStatus,
    RevisionFacts,
    Transition,
    TransitionKind,
)
from monitor.notify.message import Action, Message

MAX_TEXT = 3000  # chat.postMessage `text`
MAX_SECTION = 3000  # a section's text
MAX_FIELD = 2000  # a section field
MAX_HEADER = 150  # a header block's plain text
MAX_BLOCKS = 50
MAX_SAMPLE = 500  # the one sample line shown
MAX_LIST = 20  # revisions, migrations or changes listed before "and N more"
LOGS_MARGIN = timedelta(minutes=5)  # around the incident, for the Logs Explorer time range

# --- making untrusted text safe ---------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 except \t and \n, DEL, C1, lone surrogates, and bidi overrides (text that reads differently
# from how it is stored).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_SLACK_TOKEN = re.compile(r"\b(xox[abposr]|xapp)-[A-Za-z0-9-]+")
_WEBHOOK = re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+")
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]+", re.I)
_KEY_VALUE = re.compile(
    r"""\b(\w*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token))(["']?\s*[=:]\s*)"""
    r"""("[^"]*"|'[^']*'|[^\s"',;&]+)""",
    re.I,
)
# Scrubbing regexes may be slow on huge lines; cut well past any limit first. The cut lies far
# beyond where the final truncation ends, so a secret split by it is never shown.
_PRECUT = 2 * MAX_SECTION
_GRAVE = "\u02cb"  # modifier letter grave accent: looks like a backtick, is not markup


def clean(text: str) -> str:
    """Strip ANSI sequences, control characters and invalid code points; tabs become spaces."""
    return _CONTROL.sub("", _ANSI.sub("", text)).replace("\t", "    ")


def scrub(text: str) -> str:
    """Mask secrets a log line may carry: URL passwords, Slack tokens, bearer tokens, passwords."""
    text = mask_url(text)
    text = _SLACK_TOKEN.sub(lambda m: f"{m[1]}-***", text)
    text = _WEBHOOK.sub(r"\1***", text)
    text = _BEARER.sub(r"\1 ***", text)
    return _KEY_VALUE.sub(_mask_value, text)


def _mask_value(m: re.Match[str]) -> str:
    quote_ = m[3][0] if m[3][:1] in ("'", '"') else ""
    return f"{m[1]}{m[2]}{quote_}***{quote_}"


def escape(text: str) -> str:
    """Slack's three control characters; after this, log text cannot form markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """Cut to `limit` characters with an ellipsis, never through an `&amp;`-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    amp = cut.rfind("&", max(len(cut) - 5, 0))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def safe_text(text: str, limit: int = MAX_SECTION, *, code: bool = False,
              one_line: bool = False) -> str:
    """Untrusted text, ready for mrkdwn: cleaned, scrubbed, escaped, truncated.

    `code` neutralises backticks so the text cannot close the code span around it; `one_line`
    folds newlines for summaries and fields.
    """
    text = scrub(clean(text[:_PRECUT]))
    if one_line:
        text = " ".join(text.split())
    text = escape(text)
    if code:
        text = text.replace("`", _GRAVE)
    return truncate(text, limit)


def code(text: str, limit: int = 200) -> str:
    """Inline code for a short untrusted value (a revision or migration name)."""
    return f"`{safe_text(text, limit, code=True, one_line=True)}`"


# --- times, queries, links --------------------------------------------------------------------


def fmt_time(t: datetime | None) -> str:
    return "unknown" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_duration(d: timedelta) -> str:
    """1h 12m, 3m, 45s: precise enough for people, short enough for a phone."""
    seconds = max(int(d.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    return " ".join(f"{value}{unit}" for value, unit in parts if value)


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


def link(url: str, label: str) -> str:
    """Markup for a link the monitor built; the label is escaped like any text."""
    return f"<{url}|{safe_text(label, 200, one_line=True).replace('|', '¦')}>"


# --- blocks -----------------------------------------------------------------------------------


def _mrkdwn(text: str, limit: int = MAX_SECTION) -> dict[str, Any]:
    # verbatim: Slack does not auto-link bare URLs, #channels or names in it; explicit markup
    # built here (`<url|label>`) still works.
    return {"type": "mrkdwn", "text": truncate(text, limit), "verbatim": True}


def section(text: str, fields: Iterable[str] = ()) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": _mrkdwn(text)}
    field_list = [_mrkdwn(f, MAX_FIELD) for f in fields][:10]
    if field_list:
        block["fields"] = field_list
    return block


def context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(t) for t in texts][:10]}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": truncate(text, MAX_HEADER),
                                       "emoji": True}}


def _listing(items: list[str], limit: int = MAX_LIST) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


# --- what the messages say --------------------------------------------------------------------

_EMOJI = {"critical": ":rotating_light:", "high": ":rotating_light:", "warning": ":warning:",
          "info": ":information_source:"}
_PRISMA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")  # safe to put in a shell command


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _title(incident: Incident, pattern: str | None) -> str:
    """What went wrong, in a few words (escaped)."""
    signal = safe_text(incident.signal, 100, one_line=True)
    mig = incident.migration
    if incident.kind is IncidentKind.MIGRATION and mig is not None:
        what = f"migration {mig.name}" if mig.name else "prisma migrate deploy"
        code_ = f" ({mig.code})" if mig.code else ""
        return safe_text(f"{what} {mig.outcome.replace('_', ' ')}{code_}", 300, one_line=True)
    if pattern and re.fullmatch(r"[\w .:-]{1,80}", pattern):
        return f"{safe_text(pattern, 80, one_line=True)} ({signal})"
    return signal


def _count(incident: Incident) -> str:
    word = "failed run" if incident.kind is IncidentKind.MIGRATION else "error"
    return _plural(incident.count, word)


def _emoji(incident: Incident) -> str:
    if incident.status is IncidentStatus.RESOLVED:
        return ":white_check_mark:"
    return _EMOJI.get(incident.severity, ":rotating_light:")


def summary(incident: Incident, pattern: str | None, at: datetime) -> str:
    """The phone-notification line: who, what, how much, since when, which revision."""
    since = incident.first_seen.astimezone(UTC)
    when = since.strftime("%H:%M UTC") if since.date() == at.astimezone(UTC).date() \
        else fmt_time(since)
    service = safe_text(incident.service, 100, one_line=True)
    if incident.status is IncidentStatus.RESOLVED:
        line = (f":white_check_mark: RESOLVED {service}: {_title(incident, pattern)} — "
                f"{_count(incident)} in total")
    else:
        line = (f"{_emoji(incident)} {service}: {_title(incident, pattern)} — "
                f"{_count(incident)} since {when}")
    if incident.introduced_by:
        line += f", introduced by {safe_text(incident.introduced_by, 100, one_line=True)}"
    if incident.regression_of:
        line += f" (regression of {safe_text(incident.regression_of, 100, one_line=True)})"
    return truncate(line, MAX_TEXT)


def remediation(incident: Incident) -> str | None:
    """The known fix, as mrkdwn; None where the monitor does not know one."""
    mig = incident.migration
    if incident.kind is not IncidentKind.MIGRATION or mig is None:
        return None
    if mig.code in ("P3009", "P3018") and mig.name:
        if not _PRISMA_NAME.match(mig.name):
            return ("Mark the failed migration as rolled back with `npx prisma migrate resolve "
                    "--rolled-back &lt;name&gt;` (its name has unusual characters: copy it from "
                    "`_prisma_migrations`, not from here), then redeploy with a fixed migration.")
        return (f"Mark the failed migration as rolled back:\n```npx prisma migrate resolve "
                f"--rolled-back \"{mig.name}\"```\nthen fix the migration and redeploy.")
    if mig.code == "P1001":
        return ("The database is unreachable: check that it is up and reachable from Cloud Run "
                "(Cloud SQL connection / VPC connector) and that `DATABASE_URL` is right.")
    return None


def _time_range(incident: Incident, at: datetime) -> tuple[datetime, datetime]:
    end = incident.resolved_at or max(incident.last_seen, at)
    return incident.first_seen - LOGS_MARGIN, end + LOGS_MARGIN


def _pattern_for(incident: Incident, pattern: str | None) -> str | None:
    mig = incident.migration
    if incident.kind is IncidentKind.MIGRATION and mig is not None:
        return re.escape(mig.name) if mig.name else mig.code
    return pattern


def root_blocks(incident: Incident, *, project: str | None, pattern: str | None,
                at: datetime) -> list[dict[str, Any]]:
    """The thread root: the incident's current state, re-rendered whole on every update."""
    resolved = incident.status is IncidentStatus.RESOLVED
    status = "RESOLVED" if resolved else ("REGRESSION" if incident.regression_of else "OPEN")
    head = f"{_emoji(incident)} {status}: {incident.service} · {incident.signal}"
    blocks: list[dict[str, Any]] = [header(safe_text(head, MAX_HEADER, one_line=True))]
    revisions = sorted(incident.revisions.items(), key=lambda kv: (-kv[1], kv[0]))
    fields = [
        f"*Status*\n{_emoji(incident)} {status}",
        f"*Severity*\n{safe_text(incident.severity, 50, one_line=True)}",
        f"*Service*\n{safe_text(incident.service, 200, one_line=True)}",
        f"*Signal*\n{safe_text(incident.signal, 200, one_line=True)}",
        f"*Count*\n{_count(incident)}",
        f"*First seen*\n{fmt_time(incident.first_seen)}",
        f"*Last seen*\n{fmt_time(incident.last_seen)}",
        f"*Introduced by*\n{code(incident.introduced_by) if incident.introduced_by else 'unknown'}",
    ]
    if resolved:
        fields.append(f"*Resolved*\n{fmt_time(incident.resolved_at)}")
        by = code(incident.resolved_by) if incident.resolved_by else "no deploy explains it"
        fields.append(f"*Resolved by*\n{by}")
    blocks.append(section(f"*{_title(incident, pattern)}*", fields))
    lines = []
    if revisions:
        hit = [f"{code(name)} ({n})" for name, n in revisions]
        lines.append(f"*Revisions hit:* {_listing(hit)}")
    if incident.suspect_migrations:
        suspects = [code(m) for m in incident.suspect_migrations]
        lines.append(f"*Suspect migrations:* {_listing(suspects)}")
    mig = incident.migration
    if mig is not None:
        name = code(mig.name) if mig.name else "(no name)"
        lines.append(f"*Migration:* {name} {safe_text(mig.outcome.replace('_', ' '), 50)}"
                     + (f" ({safe_text(mig.code, 20, one_line=True)})" if mig.code else ""))
    if lines:
        blocks.append(section("\n".join(lines)))
    sample = incident.sample or (mig.message if mig else "")
    if sample:
        blocks.append(section(f"*Sample:*\n```{safe_text(sample, MAX_SAMPLE, code=True)}```"))
    fix = remediation(incident)
    if fix and not resolved:
        blocks.append(section(f"*Fix:* {fix}"))
    start, end = _time_range(incident, at)
    query = logs_query(incident.service, _pattern_for(incident, pattern))
    notes = [link(logs_url(query, start, end, project), "Logs Explorer"),
             f"incident {code(incident.id)}"]
    if incident.regression_of:
        notes.append(f"regression of incident {code(incident.regression_of)}")
    blocks.append(context(*notes))
    return blocks[: MAX_BLOCKS - 1]


def _migration_line(facts: RevisionFacts) -> str:
    items = [f"{code(m.name or 'migrate deploy')} {safe_text(m.outcome.replace('_', ' '), 50)}"
             for m in facts.migrations]
    return _listing(items) if items else "no migrations"


def resolution_text(t: Transition, pattern: str | None = None) -> str:
    """The evidence for a resolution, in sentences people can check."""
    inc = t.incident
    lines = [f":white_check_mark: *Resolved:* {safe_text(inc.service, 100, one_line=True)} "
             f"{_title(inc, pattern)}"]
    if inc.resolved_by:
        facts = next((f for f in t.revision_facts if f.name == inc.resolved_by), None)
        fixed = f"Fixed by revision {code(inc.resolved_by)}"
        if facts is not None:
            when = facts.live_since
            fixed += f" (live since {fmt_time(when)})" if when else ""
            fixed += f", which ran: {_migration_line(facts)}"
        lines.append(fixed + ".")
    else:
        lines.append("No deploy explains it: the errors stopped without a new revision.")
    lines.append(f"Last error at {fmt_time(inc.last_seen)}.")
    if inc.resolution_note:
        lines.append(safe_text(inc.resolution_note, 1000))
    lines.append(f"Total: {_count(inc)} over {fmt_duration(inc.last_seen - inc.first_seen)} "
                 f"({fmt_time(inc.first_seen)} → {fmt_time(inc.last_seen)}).")
    return "\n".join(lines)


def _reply_text(t: Transition, pattern: str | None) -> str:
    inc = t.incident
    if t.kind is TransitionKind.UPDATED:
        changes = [f"• {safe_text(c, 300, one_line=True)}" for c in t.changes[:MAX_LIST]]
        if len(t.changes) > MAX_LIST:
            changes.append(f"• and {len(t.changes) - MAX_LIST} more changes")
        head = f":arrow_up: *Update:* now {_count(inc)}, last at {fmt_time(inc.last_seen)}."
        return "\n".join([head, *changes])
    if t.kind is TransitionKind.QUIET_NO_TRAFFIC:
        quiet = fmt_duration(t.at - inc.last_seen)
        return (f":hourglass: Quiet since {fmt_time(inc.last_seen)} ({quiet}), but no successful "
                "requests seen yet: keeping it open.")
    return resolution_text(t, pattern)


def render(transition: Transition, *, channel: str, project: str | None,
           pattern: str | None = None) -> list[Message]:
    """The messages that tell people about one transition, in the order they must be sent.

    `pattern` is the signal's regular expression (config), for the Logs Explorer query and the
    title; the incident itself only knows the signal's name.
    """
    inc = transition.incident
    n = 0

    def msg(action: Action, text: str, blocks: list[dict[str, Any]], *,
            broadcast: bool = False, link_to: str | None = None) -> Message:
        nonlocal n
        m = Message(key=f"{transition.key}.{n}", incident_id=inc.id, action=action,
                    channel=channel, text=truncate(text, MAX_TEXT), blocks=blocks,
                    broadcast=broadcast, link_thread_of=link_to)
        n += 1
        return m

    def root(action: Action) -> Message:
        blocks = root_blocks(inc, project=project, pattern=pattern, at=transition.at)
        return msg(action, summary(inc, pattern, transition.at), blocks,
                   link_to=inc.regression_of)

    if transition.kind in (TransitionKind.OPENED, TransitionKind.REGRESSED):
        return [root(Action.POST_ROOT)]
    text = _reply_text(transition, pattern)
    reply = msg(Action.REPLY, text, [section(text)],
                broadcast=transition.kind is TransitionKind.RESOLVED)
    if transition.kind is TransitionKind.QUIET_NO_TRAFFIC:
        return [reply]
    return [reply, root(Action.UPDATE_ROOT)]
