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
- The one other markup is the configured mention (`<!subteam^...>`, `<@U...>`, `<!here>`), which
  pings people: it comes from the config (validated there, checked again here), never from log text,
  and leads the text and the first section of the message that opens an incident (POST_ROOT) only,
  so the phone notification names who should look. Replies and edits of the root never ping.
- Slack's limits (FACTS.md) hold for every message: text <= 3,000 characters, each section text
  <= 3,000, header <= 150, at most 50 blocks (one is left free for the notifier's thread link).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.classify.prisma import run_label
from monitor.config import parse_mention
from monitor.correlate.model import (
    HOLD_WORDS,
    Incident,
    IncidentKind,
    IncidentStatus,
    Reason,
    RevisionFacts,
    Transition,
    TransitionKind,
)
from monitor.evidence.summary import summary_and_checklist
from monitor.messages import Action, Message
from monitor.queries import TEXT_FIELDS, logs_query, logs_url, url_quote
from monitor.safe import (
    MAX_BLOCKS,
    MAX_FIELD,
    MAX_HEADER,
    MAX_SAMPLE,
    MAX_SECTION,
    MAX_TEXT,
    code,
    safe_text,
    truncate,
)
from monitor.times import for_people, minute

MAX_LIST = 20  # revisions, migrations or changes listed before "and N more"
LOGS_MARGIN = timedelta(minutes=5)  # around the incident, for the Logs Explorer time range

# --- times and links --------------------------------------------------------------------


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


def _title(incident: Incident, pattern: str | None) -> str:
    """What went wrong, in a few words (escaped)."""
    signal = safe_text(incident.signal, 100, one_line=True)
    mig = incident.migration
    if incident.kind is IncidentKind.MIGRATION and mig is not None:
        what = f"migration {mig.name}" if mig.name else "prisma migrate deploy"
        code_ = f" ({mig.code})" if mig.code else ""
        return safe_text(f"{what} {mig.outcome.replace('_', ' ')}{code_}", 300, one_line=True)
    if incident.kind is IncidentKind.SOURCE:
        return safe_text(f"cannot read logs for {incident.service}", 300, one_line=True)
    if pattern and re.fullmatch(r"[\w .:-]{1,80}", pattern):
        return f"{safe_text(pattern, 80, one_line=True)} ({signal})"
    return signal


def _count(incident: Incident) -> str:
    word = {IncidentKind.MIGRATION: "failed run",
            IncidentKind.SOURCE: "failed check"}.get(incident.kind, "error")
    return incident.count_text(word)


def _emoji(incident: Incident) -> str:
    if incident.status is IncidentStatus.RESOLVED:
        return ":white_check_mark:"
    return _EMOJI.get(incident.severity, ":rotating_light:")


def summary(incident: Incident, pattern: str | None, at: datetime) -> str:
    """The phone-notification line: who, what, how much, since when, which revision."""
    since = incident.first_seen.astimezone(UTC)
    when = since.strftime("%H:%M UTC") if since.date() == at.astimezone(UTC).date() \
        else minute(since)
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
    if incident.kind is IncidentKind.SOURCE:
        if "PERMISSION_DENIED" in incident.sample:
            return ("Grant the monitor's service account `roles/logging.viewer` on the project "
                    f"(`gcloud projects add-iam-policy-binding "
                    f"{safe_text(incident.service, 100, one_line=True)} --member "
                    "serviceAccount:... --role roles/logging.viewer`).")
        return ("The monitor keeps retrying every interval; until it reads again, nothing it "
                "watches can alert. Check Cloud Logging's status and the monitor's own logs.")
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


# A link longer than this (a long pattern over every text field) could be cut by a section's
# limit, which would break its markup: it then searches fewer fields, the most common first, and
# at worst shows all the service's lines of the period (a logged error is often of severity
# DEFAULT, so a severity filter would hide it).
MAX_LINK_URL = 2000


def _logs_link(incident: Incident, at: datetime, pattern: str | None,
               project: str | None) -> str:
    start, end = _time_range(incident, at)
    pattern = _pattern_for(incident, pattern)
    fields = len(TEXT_FIELDS)
    while True:
        url = logs_url(logs_query(incident.service, pattern, fields=fields), start, end, project)
        if len(url) <= MAX_LINK_URL or fields == 0:
            return url
        fields -= 1


def _pattern_for(incident: Incident, pattern: str | None) -> str | None:
    mig = incident.migration
    if incident.kind is IncidentKind.MIGRATION and mig is not None:
        return re.escape(mig.name) if mig.name else mig.code
    return pattern


def _rate(incident: Incident) -> str:
    """How fast it fails: per minute when busy, per hour when sparse."""
    minutes = (incident.last_seen - incident.first_seen).total_seconds() / 60
    if incident.count < 2 or minutes <= 0:
        return ""
    per_minute = incident.count / minutes
    return f" ({per_minute:.1f}/min)" if per_minute >= 1 else f" ({per_minute * 60:.1f}/h)"


def revision_url(service: str, revision: str, facts: Iterable[RevisionFacts],
                 project: str | None) -> str | None:
    """The revision's page in the Cloud Run console, when the logs said its region."""
    location = next((f.location for f in facts if f.name == revision and f.location), None)
    # A region is a short name (us-central1); anything else from the logs makes no link, which
    # a section's limit could cut open.
    if not (project and location and _REGION.fullmatch(location)):
        return None
    return (f"https://console.cloud.google.com/run/detail/{url_quote(location)}/"
            f"{url_quote(service[:100])}/revisions?project={url_quote(project)}")


_REGION = re.compile(r"[a-z0-9-]{1,40}")


def root_blocks(incident: Incident, *, project: str | None, pattern: str | None,
                at: datetime, facts: Iterable[RevisionFacts] = ()) -> list[dict[str, Any]]:
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
        f"*Count*\n{_count(incident)}{_rate(incident)}",
        f"*First seen*\n{minute(incident.first_seen)}",
        f"*Last seen*\n{minute(incident.last_seen)}",
        f"*Introduced by*\n{code(incident.introduced_by) if incident.introduced_by else 'unknown'}",
    ]
    if resolved:
        fields.append(f"*Resolved*\n{minute(incident.resolved_at)}")
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
    notes = [link(_logs_link(incident, at, pattern, project), "Logs Explorer")]
    culprit = incident.resolved_by or incident.introduced_by
    url = revision_url(incident.service, culprit, facts, project) if culprit else None
    if url is not None and culprit is not None:
        notes.append(link(url, f"Cloud Run revision {culprit}"))
    notes.append(f"incident {code(incident.id)}")
    if incident.regression_of:
        notes.append(f"regression of incident {code(incident.regression_of)}")
    blocks.append(context(*notes))
    return blocks[: MAX_BLOCKS - 1]


def _migration_line(facts: RevisionFacts) -> str:
    items = [run_label(m.name, m.outcome, m.code, quote=code) for m in facts.migrations]
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
            fixed += f" (live since {minute(when)})" if when else ""
            fixed += f", which ran: {_migration_line(facts)}"
        lines.append(fixed + ".")
    else:
        lines.append("No deploy explains it: the errors stopped without a new revision.")
    lines.append(f"Last error at {minute(inc.last_seen)}.")
    if inc.resolution_note:
        lines.append(safe_text(inc.resolution_note, 1000))
    lines.append(_reason(inc))
    lines.append(f"Total: {_count(inc)} over {for_people(inc.last_seen - inc.first_seen)} "
                 f"({minute(inc.first_seen)} → {minute(inc.last_seen)}).")
    return "\n".join(lines)


def _reason(inc: Incident) -> str:
    """The decision's name, as `once --format json` gives it in `resolution_reason`."""
    return f"_reason: {code(inc.reason)}_"


def _reply_text(t: Transition, pattern: str | None) -> str:
    inc = t.incident
    if t.kind is TransitionKind.UPDATED:
        changes = [f"• {safe_text(c, 300, one_line=True)}" for c in t.changes[:MAX_LIST]]
        if len(t.changes) > MAX_LIST:
            changes.append(f"• and {len(t.changes) - MAX_LIST} more changes")
        head = f":arrow_up: *Update:* now {_count(inc)}, last at {minute(inc.last_seen)}."
        return "\n".join([head, *changes])
    if t.kind is TransitionKind.QUIET_NO_TRAFFIC:
        quiet = for_people(t.at - inc.last_seen)
        words = HOLD_WORDS.get(inc.reason, HOLD_WORDS[Reason.NO_TRAFFIC])
        return (f":hourglass: Quiet since {minute(inc.last_seen)} ({quiet}), but {words}: "
                f"keeping it open. {_reason(inc)}")
    return resolution_text(t, pattern)


def _mentioned(mention: str, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`blocks` with the mention leading the first section's text (a header cannot carry it)."""
    out = list(blocks)
    for i, block in enumerate(out):
        if block.get("type") == "section":
            text = block["text"]
            out[i] = {**block, "text": {**text,
                                        "text": truncate(f"{mention} {text['text']}", MAX_SECTION)}}
            break
    return out


def render(transition: Transition, *, channel: str, project: str | None,
           pattern: str | None = None, mention: str | None = None) -> list[Message]:
    """The messages that tell people about one transition, in the order they must be sent.

    `pattern` is the signal's regular expression (config), for the Logs Explorer query and the
    title; the incident itself only knows the signal's name. `mention` (config: the signal's or
    slack.mention) pings people from the alert that opens the incident, and from no other message.
    """
    inc = transition.incident
    mention = parse_mention(mention)  # raises ValueError: only Slack's mention forms are emitted
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
        blocks = root_blocks(inc, project=project, pattern=pattern, at=transition.at,
                             facts=transition.revision_facts)
        text = summary(inc, pattern, transition.at)
        if mention and action is Action.POST_ROOT:
            text, blocks = f"{mention} {text}", _mentioned(mention, blocks)
        return msg(action, text, blocks, link_to=inc.regression_of)

    if transition.kind in (TransitionKind.OPENED, TransitionKind.REGRESSED):
        return [root(Action.POST_ROOT)]
    text = _reply_text(transition, pattern)
    blocks = [section(text)]
    if transition.kind is TransitionKind.RESOLVED and inc.kind is not IncidentKind.SOURCE:
        # The write-up's summary and checklist, ready to paste into the post-mortem, as a second
        # section of the confirmation.
        blocks.append(section(summary_and_checklist(transition, pattern, project)))
    reply = msg(Action.REPLY, text, blocks, broadcast=transition.kind is TransitionKind.RESOLVED)
    if transition.kind is TransitionKind.QUIET_NO_TRAFFIC:
        return [reply]
    return [reply, root(Action.UPDATE_ROOT)]
