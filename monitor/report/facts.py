"""The facts of an incident write-up, gathered from the store: one value per incident.

Rules:
- Read-only and offline: the facts come from `store.load_state()`, the checkpoints and the sent
  rows of the outbox (`sent_notifications`); nothing is written, no API is called. The chart's
  per-bucket counts are the one exception to "store only": the store keeps totals, not a time
  series, so they are read from a local `file` source when the config has one (`chart.py`).
- The clock is the last check (`last_cycle.checked_at`), not the wall clock: the store knows
  nothing after it, and a replayed incident's write-up says the same thing whenever it is made.
- Values stay raw (untrusted log text included); each renderer escapes for its own format.
- Every claim a reader may doubt gets a `Verification` (`evidence/verify.py`) that reproduces
  it with `gcloud logging read`; the checklist quotes those claims and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.classify.requests import AssetRule
from monitor.config import Config, unit_name
from monitor.correlate.model import Incident, IncidentKind, IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.evidence.claims import Event, IncidentReport, SentNotification, summary_sentence
from monitor.evidence.verify import checklist, verifications
from monitor.output import incident_json, revision_json
from monitor.store.base import Store
from monitor.times import format_time, parse_time

DEFAULT_SINCE = timedelta(days=7)


def sent_notifications(store: Store, incident_id: str) -> list[SentNotification]:
    """The delivered messages of one incident, oldest first (any store)."""
    return [SentNotification(s.message.key, s.message.action.value, s.message.channel,
                             s.message.text, s.sent_at, s.ts) for s in store.sent(incident_id)]


@dataclass(slots=True)
class Report:
    generated_at: datetime  # the report's clock: the last check
    since: datetime
    reports: list[IncidentReport]


def report_clock(store: Store) -> datetime:
    """The last check's time, else now: the store knows nothing later than its last check."""
    cycle = store.last_cycle() or {}
    value = cycle.get("checked_at")
    return parse_time(value) if isinstance(value, str) else datetime.now(UTC)


def project_of(config: Config, service: str) -> str | None:
    for unit in config.units:
        if service in unit.services:
            return unit.project
    return config.units[0].project if config.units else None


def checked_until(config: Config, store: Store, service: str) -> datetime | None:
    unit = next((u for u in config.units if service in u.services), None)
    if unit is None:
        return None
    checkpoint = store.checkpoint(unit_name(unit))
    return checkpoint.until if checkpoint is not None else None


def _pattern(config: Config, incident: Incident, state: State) -> str | None:
    if incident.kind is IncidentKind.MIGRATION:
        codes = sorted({m.code for f in state.service_revisions(incident.service)
                        for m in f.migrations if m.code and m.outcome in ("failed", "blocked",
                                                                          "error")
                        and incident.first_seen <= m.at <= incident.last_seen})
        return "|".join(codes) or (incident.migration.code if incident.migration else None)
    signal = next((s for s in config.signals if s.name == incident.signal), None)
    return signal.match.pattern if signal is not None else None


def select(state: State, incident_id: str | None, since: datetime) -> list[Incident]:
    """One incident by id, or those open or active since `since`, oldest first."""
    if incident_id is not None:
        found = state.incidents.get(incident_id)
        return [found] if found is not None else []
    chosen = [i for i in state.incidents.values()
              if i.status is IncidentStatus.OPEN or (i.resolved_at or i.last_seen) >= since]
    return sorted(chosen, key=lambda i: (i.first_seen, i.id))


def build(config: Config, store: Store, incident_id: str | None = None,
          since: timedelta = DEFAULT_SINCE) -> Report:
    """The write-up of one incident, or of every incident in the period ending at the last check.

    Raises KeyError when `incident_id` names no incident.
    """
    state = store.load_state()
    now = report_clock(store)
    incidents = select(state, incident_id, now - since)
    if incident_id is not None and not incidents:
        raise KeyError(incident_id)
    out = []
    for inc in incidents:
        facts = {f.name: f for f in state.service_revisions(inc.service)}
        hit = [facts[r] for r in sorted(inc.revisions) if r in facts]
        has_requests = inc.service in state.request_services
        rep = IncidentReport(
            incident=inc, project=project_of(config, inc.service),
            pattern=_pattern(config, inc, state), summary="",
            introduced=facts.get(inc.introduced_by or ""),
            fixed=facts.get(inc.resolved_by or ""), revisions_hit=hit,
            requests_failed=sum(f.requests_failed for f in hit) if has_requests else None,
            checked_until=checked_until(config, store, inc.service),
            next_incident=next((i for i in state.incidents.values()
                                if i.regression_of == inc.id), None),
            notifications=sent_notifications(store, inc.id),
            asset_pattern=AssetRule(config.evidence.ignore_paths).pattern(),
        )
        rep.summary = summary_sentence(rep)
        rep.timeline = timeline(rep, list(facts.values()))
        rep.verifications = verifications(rep, has_requests)
        rep.checklist = checklist(rep)
        out.append(rep)
    return Report(generated_at=now, since=now - since, reports=out)


# --- words --------------------------------------------------------------------------------------


def timeline(rep: IncidentReport, service_facts: list[RevisionFacts]) -> list[Event]:
    """Deploys, readiness and migrations of the revisions involved, errors and resolution."""
    inc = rep.incident
    start = rep.introduced.live_since if rep.introduced and rep.introduced.live_since \
        else inc.first_seen
    end = inc.resolved_at or rep.checked_until or inc.last_seen
    involved = {r.name for r in rep.revisions_hit} | {inc.introduced_by, inc.resolved_by}
    events: list[Event] = []
    for f in service_facts:
        deployed = f.deployed_at or f.first_seen
        if f.name not in involved and not (deployed and start <= deployed <= end):
            continue
        if deployed is not None:
            verb, _ = f.arrival
            events.append(Event(deployed, "deploy", f"revision {f.name} {verb}", f.name))
        if f.ready_at is not None:
            events.append(Event(f.ready_at, "ready", f"revision {f.name} ready", f.name))
        elif f.ready is False:
            events.append(Event(deployed or start, "ready",
                                f"revision {f.name} never became ready", f.name))
        for m in f.migrations:
            events.append(Event(m.at, "migration", f"{m.label} on {f.name}", f.name))
    first_rev = inc.introduced_by
    events.append(Event(inc.first_seen, "first_error",
                        f"first {'failure' if inc.kind is IncidentKind.MIGRATION else 'error'}"
                        + (f" (on {first_rev})" if first_rev else ""), first_rev))
    events.append(Event(inc.last_seen, "last_error",
                        f"last {'failure' if inc.kind is IncidentKind.MIGRATION else 'error'}"
                        f" ({inc.count_text()} in total)"))
    if inc.resolved_at is not None:
        events.append(Event(inc.resolved_at, "resolved",
                            f"resolved: {inc.resolution_note or 'the monitor saw it end'}",
                            inc.resolved_by))
    return sorted(events, key=lambda e: (e.at, e.kind))


def to_json(report: Report) -> dict[str, Any]:
    """The write-up for tools: the incident objects of the CLI contract plus the evidence."""
    def rev(f: RevisionFacts | None) -> dict[str, Any] | None:
        if f is None:
            return None
        return {**revision_json(f), "ready": f.ready, "ready_at": format_time(f.ready_at),
                "requests_ok": f.requests_ok, "requests_failed": f.requests_failed}

    return {
        "generated_at": format_time(report.generated_at),
        "since": format_time(report.since),
        "incidents": [{
            "incident": incident_json(r.incident),
            "summary": r.summary,
            "sample": r.incident.sample,
            "impact": {"duration_seconds": r.duration.total_seconds(),
                       "errors": r.incident.count, "requests_failed": r.requests_failed,
                       "revisions_hit": dict(r.incident.revisions)},
            "root_cause": rev(r.introduced),
            "fix": rev(r.fixed),
            "timeline": [{"at": format_time(e.at), "kind": e.kind, "text": e.text,
                          "revision": e.revision} for e in r.timeline],
            "notifications": [{"key": n.key, "action": n.action, "channel": n.channel,
                               "sent_at": format_time(n.sent_at), "ts": n.ts}
                              for n in r.notifications],
            "verification": [{"id": v.id, "claim": v.claim, "filter": v.filter,
                              "project": v.project, "start": format_time(v.start),
                              "end": format_time(v.end), "expect_count": v.expect_count,
                              "expect_within": v.expect_within,
                              "expect_texts": list(v.expect_texts), "command": v.command,
                              "logs_explorer": v.url} for v in r.verifications],
            "checklist": [{"ok": c.ok, "text": c.text, "evidence": list(c.evidence)}
                          for c in r.checklist],
        } for r in report.reports],
    }
