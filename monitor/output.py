"""What one check gives: `CycleResult`, its JSON contract, and the same facts as text.

Rules: JSON times are RFC3339 UTC and a missing value is `null`, never omitted; text is for a
terminal and may change, JSON may not without a DESIGN.md change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.correlate.model import (
    Incident,
    IncidentKind,
    IncidentStatus,
    RevisionFacts,
    Transition,
)
from monitor.correlate.state import State
from monitor.messages import Message
from monitor.notify.outbox import Delivery
from monitor.times import format_time, second
from monitor.window import ReadStats, Window


@dataclass
class CycleResult:
    checked_at: datetime
    window: Window
    state: State
    transitions: list[Transition]
    messages: list[Message]
    stats: ReadStats
    delivery: Delivery = field(default_factory=Delivery)
    dry_run: bool = False
    error: str | None = None  # the read failed: nothing was concluded from this cycle
    read_only: bool = False  # another instance leads the unit: nothing was saved or sent

    @property
    def open_incidents(self) -> list[Incident]:
        return [i for i in self.state.incidents.values() if i.status is IncidentStatus.OPEN]

    def incidents_in_window(self) -> list[Incident]:
        """Open incidents, and those that saw activity or resolved within the window."""
        start = self.window.start
        return sorted(
            (
                i for i in self.state.incidents.values()
                if i.status is IncidentStatus.OPEN or start is None or i.last_seen >= start
                or (i.resolved_at is not None and i.resolved_at >= start)
            ),
            key=lambda i: (i.first_seen, i.id),
        )

    def revisions_in_window(self) -> list[RevisionFacts]:
        start = self.window.start
        return sorted(
            (f for f in self.state.revisions.values()
             if start is None or (f.last_seen is not None and f.last_seen >= start)),
            key=lambda f: (f.service, f.deployed_at or f.first_seen or self.checked_at, f.name),
        )

INCIDENT_KEYS = (
    "id", "service", "signal", "kind", "severity", "status", "first_seen", "last_seen", "count",
    "count_estimated", "count_bound",
    "revisions", "introduced_by", "suspect_migrations", "resolved_at", "resolved_by",
    "regression_of", "resolution_reason", "migration",
)
REVISION_KEYS = ("service", "name", "deployed_at", "first_seen", "last_seen", "migrations",
                 "errors")


def incident_json(incident: Incident) -> dict[str, Any]:
    full = incident.to_json()
    return {k: full[k] for k in INCIDENT_KEYS}


def revision_json(facts: RevisionFacts) -> dict[str, Any]:
    full = facts.to_json()
    return {k: full[k] for k in REVISION_KEYS}


def result_json(result: CycleResult) -> dict[str, Any]:
    return {
        "checked_at": format_time(result.checked_at),
        "window": {"start": format_time(result.window.start),
                   "end": format_time(result.window.end)},
        "incidents": [incident_json(i) for i in result.incidents_in_window()],
        "revisions": [revision_json(f) for f in result.revisions_in_window()],
        "stats": {
            "entries_read": result.stats.entries_read,
            "entries_skipped": result.stats.entries_skipped,
            "api_requests": result.stats.api_requests,
            # of them: reads of the lines around tool output, and evidence probes
            "follow_up_requests": result.stats.follow_up_requests,
            "probe_requests": result.stats.probe_requests,
            # a flood read as a sample: the weight w of each class read one in w (none: whole)
            "sampled": dict(result.stats.sampled),
            "notifications_sent": result.delivery.sent,
            "notifications_waiting": result.delivery.owed,
        },
        "read_only": result.read_only,
    }


def _incident_text(i: Incident) -> list[str]:
    state = i.status.value.upper()
    lines = [f"  {state:<8} {i.id}  [{i.severity}]",
             f"           {i.count_text('match')}, {second(i.first_seen)} .. {second(i.last_seen)}"]
    if i.revisions:
        hits = ", ".join(f"{r} ({n})" for r, n in sorted(i.revisions.items()))
        lines.append(f"           revisions hit: {hits}")
    if i.introduced_by:
        lines.append(f"           introduced by: {i.introduced_by}")
    if i.suspect_migrations:
        lines.append(f"           suspect migrations: {', '.join(i.suspect_migrations)}")
    if i.kind is IncidentKind.MIGRATION and i.migration is not None:
        m = i.migration
        lines.append(f"           migration: {m.name or '-'} {m.outcome} ({m.code or 'no code'})")
    if i.regression_of:
        lines.append(f"           regression of: {i.regression_of}")
    if i.status is IncidentStatus.RESOLVED:
        lines.append(f"           resolved {second(i.resolved_at)} by "
                     f"{i.resolved_by or 'no deploy'}")
        if i.resolution_note:
            lines.append(f"           evidence: {i.resolution_note}")
    lines.append(f"           reason: {i.reason}")
    return lines


def result_text(result: CycleResult) -> str:
    w = result.window
    s = result.stats
    out = [
        f"checked {second(w.start) if w.start else 'the whole source'} .. {second(w.end)}"
        + (" (read-only: another instance leads this unit; nothing sent, nothing saved)"
           if result.read_only else
           " (dry run: nothing sent, nothing saved)" if result.dry_run else ""),
        f"entries: {s.entries_read} read, {s.entries_skipped} skipped; "
        f"{s.api_requests} API request(s)"
        + (f" ({s.follow_up_requests} follow-up(s), {s.probe_requests} evidence probe(s))"
           if s.follow_up_requests or s.probe_requests else "")
        + f"; {result.delivery.sent} notification(s) sent"
        + (f", {result.delivery.failed} failed" if result.delivery.failed else "")
        + (f", {result.delivery.waiting} waiting to be retried" if result.delivery.waiting
           else ""),
        "",
        "incidents:",
    ]
    incidents = result.incidents_in_window()
    out.extend(line for i in incidents for line in _incident_text(i))
    if not incidents:
        out.append("  none")
    out += ["", "revisions:"]
    for f in result.revisions_in_window():
        migrations = ", ".join(m.label for m in f.migrations)
        errors = ", ".join(f"{k}={v}" for k, v in sorted(f.errors.items()))
        ready = {True: "ready", False: "never ready", None: "readiness unknown"}[f.ready]
        verb, when = f.arrival
        out.append(f"  {f.service}/{f.name}: {verb} {second(when)}, "
                   f"{ready}, {f.requests_ok} ok / {f.requests_failed} failed request(s)")
        if migrations:
            out.append(f"      migrations: {migrations}")
        if errors:
            out.append(f"      errors: {errors}")
    open_count = len(result.open_incidents)
    out += ["", f"{open_count} incident(s) open" if open_count else "nothing open"]
    return "\n".join(out)
