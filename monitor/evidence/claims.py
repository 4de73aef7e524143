"""What a write-up claims about an incident, and how each claim is shown: pure values.

Why here, below both `notify` and `report`: the Slack confirmation of a resolution carries the
write-up's summary and checklist (`summary.summary_and_checklist`), and `monitor report` writes
the whole write-up; both build on these values, the claims (`IncidentReport`, `Check`) and the
`gcloud logging read` commands that reproduce them (`verify.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.correlate.model import Incident, IncidentKind, IncidentStatus, RevisionFacts
from monitor.times import for_people, minute


@dataclass(frozen=True, slots=True)
class SentNotification:
    """One outbox row that was delivered: what was said, and when it was sent (wall clock)."""

    key: str
    action: str  # post_root | reply | update_root
    channel: str
    text: str  # as sent: Slack mrkdwn, already escaped for Slack
    sent_at: datetime
    ts: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the timeline, in event time."""

    at: datetime
    kind: str  # deploy | ready | migration | first_error | last_error | resolved | opened
    text: str  # raw; may quote revision and migration names
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """A claim and the `gcloud logging read` that reproduces it."""

    id: str
    claim: str
    filter: str
    project: str | None
    start: datetime | None
    end: datetime | None
    expect_count: int | None = None  # the command returns this many entries: exactly, or
    expect_within: int | None = None  # within this of it (the monitor counted a sample)
    expect_texts: tuple[str, ...] = ()  # each of these appears in the entries returned
    command: str = ""
    url: str = ""

    def expected_count(self) -> str | None:
        """What the command returns, as the write-up says it; None: it is judged by texts."""
        n = self.expect_count
        if n is None:
            return None
        if self.expect_within is not None:
            return f"returns about {n:,} entries (\u00b1{self.expect_within:,})"
        return f"returns {n:,} entr{'y' if n == 1 else 'ies'}"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the outcome checklist, backed by verification ids."""

    ok: bool
    text: str
    evidence: tuple[str, ...] = ()


@dataclass(slots=True)
class IncidentReport:
    incident: Incident
    project: str | None
    pattern: str | None  # the signal's regex (error), the failure codes (migration)
    summary: str
    introduced: RevisionFacts | None
    fixed: RevisionFacts | None
    revisions_hit: list[RevisionFacts]
    requests_failed: int | None  # 5xx on the revisions hit, None without request logs
    checked_until: datetime | None  # how far the monitor had read the service's logs
    next_incident: Incident | None  # a regression of this one, if any
    asset_pattern: str | None = None  # evidence.ignore_paths over a requestUrl (RE2)
    timeline: list[Event] = field(default_factory=list)
    notifications: list[SentNotification] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    checklist: list[Check] = field(default_factory=list)

    @property
    def duration(self) -> timedelta:
        inc = self.incident
        return (inc.resolved_at or inc.last_seen) - inc.first_seen

    @property
    def named(self) -> bool:
        """Whether the pattern reads as a name (`MissingSessionTableError`) in a sentence; an
        alternation of a class and its message is called by the signal's name instead."""
        return self.pattern is not None and _READS_AS_NAME.fullmatch(self.pattern) is not None

    @property
    def what(self) -> str:
        """The signal in the write-up's sentences: its pattern when that reads as a name."""
        return self.pattern if self.named and self.pattern else self.incident.signal


_READS_AS_NAME = re.compile(r"[\w .:-]{1,80}")  # as notify.render titles an alert


def what(rep: IncidentReport) -> str:
    inc = rep.incident
    if inc.kind is IncidentKind.MIGRATION and inc.migration is not None:
        m = inc.migration
        return (f"migration {m.name or '(unnamed)'} {m.outcome.replace('_', ' ')}"
                + (f" ({m.code})" if m.code else ""))
    if inc.kind is IncidentKind.SOURCE:
        return f"the monitor could not read the logs of {inc.service}"
    return f"{rep.pattern} ({inc.signal})" if rep.pattern and rep.named else inc.signal


def summary_sentence(rep: IncidentReport) -> str:
    """The incident in one sentence: what, how much, how long, caused by, fixed by."""
    inc = rep.incident
    unit = "failed migration run" if inc.kind is IncidentKind.MIGRATION else "error"
    count = inc.count_text(unit)
    text = (f"{inc.service}: {what(rep)}, {count} between {minute(inc.first_seen)} and "
            f"{minute(inc.last_seen)} ({for_people(inc.last_seen - inc.first_seen)})")
    if inc.introduced_by:
        text += f", introduced by revision {inc.introduced_by}"
        if inc.suspect_migrations:
            text += f" (migration {', '.join(inc.suspect_migrations)})"
    if inc.status is IncidentStatus.OPEN:
        return text + "; still open."
    by = f"fixed by revision {inc.resolved_by}" if inc.resolved_by else "no deploy explains the end"
    return text + f"; {by}, resolved {minute(inc.resolved_at)}."
