"""`monitor status`: what the store says now, for a person (text) or a program (JSON).

Rules:
- It reads the store only: no source is built, no API is called, nothing goes over the network,
  and nothing is written. It is safe to run while `monitor run` is running: SQLite's WAL journal
  lets a reader see the last committed cycle while the writer goes on.
- `now` is handed in by the caller; ages, lags and "recent" (resolved within the last 7 days)
  are relative to it, so a report of a replayed incident says the same thing whenever it runs.
- JSON times are RFC3339 UTC and a missing value is `null`, never omitted; incidents and
  revisions use the same objects as `monitor once --format json` (`monitor.output`).
- Text is for a terminal: every string that may have come from logs (revision and migration
  names, error messages, queued keys) is cleaned of control characters and ANSI sequences and
  folded to one line before it is printed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.classify.prisma import run_label
from monitor.config import Config, unit_name
from monitor.correlate.model import IncidentStatus, RevisionFacts, count_text
from monitor.output import incident_json, revision_json
from monitor.safe import clean
from monitor.store.base import LeaseInfo, Store
from monitor.times import BadTime, for_people, format_time, parse_time, second

RECENT = timedelta(days=7)  # resolved incidents shown beside the open ones
TEXT_REVISIONS = 5  # per service, in text; JSON lists them all
MAX_ERROR_TEXT = 300
LAST_CYCLE_KEYS = ("checked_at", "ok", "error", "entries_read", "entries_skipped",
                   "api_requests", "cut_at", "transitions")
_EPOCH = datetime.min.replace(tzinfo=UTC)


def status_report(config: Config, store: Store, now: datetime) -> dict[str, Any]:
    """The store's view of the world at `now`, as one JSON-able object."""
    state = store.load_state()
    leases = {info.unit: info for info in store.leases()}
    units = []
    for unit in config.units:
        name = unit_name(unit)
        checkpoint = store.checkpoint(name)
        units.append({
            "unit": name,
            "project": unit.project,
            "services": list(unit.services),
            "checkpoint": checkpoint.to_json() if checkpoint is not None else None,
            "lag_seconds": (now - checkpoint.until).total_seconds()
            if checkpoint is not None else None,
            "lease": lease_json(leases.get(name)),
        })
    incidents = list(state.incidents.values())
    open_ = sorted((i for i in incidents if i.status is IncidentStatus.OPEN),
                   key=lambda i: (i.first_seen, i.id))
    resolved = [(i.resolved_at or i.last_seen, i) for i in incidents
                if i.status is IncidentStatus.RESOLVED]
    recent = sorted(((at, i) for at, i in resolved if at >= now - RECENT),
                    key=lambda p: (p[0], p[1].id), reverse=True)
    queued = store.queued()
    return {
        "checked_at": format_time(now),
        "units": units,
        "last_cycle": _last_cycle(store.last_cycle()),
        "incidents": {"open": [incident_json(i) for i in open_],
                      "recent": [incident_json(i) for _, i in recent]},
        "revisions": [_revision(f) for f in _newest_first(list(state.revisions.values()))],
        "outbox": {
            "queued": len(queued),
            "messages": [{"key": q.message.key, "incident_id": q.message.incident_id,
                          "action": q.message.action.value, "attempts": q.attempts,
                          "last_error": q.last_error} for q in queued],
        },
    }


def lease_json(info: LeaseInfo | None) -> dict[str, Any]:
    """Who leads a unit: "held" (a live holder), "stuck" (its holder stopped heartbeating: the
    lease expires by itself at expires_at), "expired" or "free" (the next instance takes it)."""
    if info is None or info.holder is None:
        state = "free"
    elif not info.held:
        state = "expired"
    else:
        state = "held" if info.holder_alive else "stuck"
    return {
        "state": state,
        "holder": info.holder if info is not None else None,
        "token": info.token if info is not None else 0,
        "since": format_time(info.acquired_at) if info is not None and info.holder else None,
        "expires_at": format_time(info.expires_at) if info is not None and info.holder else None,
        "polled_at": format_time(info.polled_at) if info is not None else None,
        "expires_in": (info.expires_at - info.now).total_seconds()
        if info is not None and info.holder and info.expires_at else None,
    }


def lease_text(lease: dict[str, Any]) -> str:
    state = lease["state"]
    if state == "free":
        return "no leader yet"
    holder = _s(lease["holder"])
    if state == "held":
        return f"led by {holder} since {time_text(lease['since'])} (token {lease['token']})"
    if state == "stuck":
        return (f"STUCK: led by {holder}, which stopped (no heartbeat); its lease expires in "
                f"{for_people(max(lease['expires_in'], 0), 2)}, then another instance takes over")
    return (f"lease of {holder} expired at {time_text(lease['expires_at'])}: the next "
            "instance takes it")


def _last_cycle(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Every key of check.py's summary, null where an older record lacks it."""
    if record is None:
        return None
    return {**dict.fromkeys(LAST_CYCLE_KEYS), **record}


def _newest_first(facts: list[RevisionFacts]) -> list[RevisionFacts]:
    by_time = sorted(facts, key=lambda f: (f.deployed_at or f.first_seen or _EPOCH, f.name),
                     reverse=True)
    return sorted(by_time, key=lambda f: f.service)  # stable: newest first within a service


def _revision(facts: RevisionFacts) -> dict[str, Any]:
    return {**revision_json(facts), "ready": facts.ready, "ready_at": format_time(facts.ready_at),
            "requests_ok": facts.requests_ok, "requests_failed": facts.requests_failed}


# --- text ------------------------------------------------------------------------------------


def _s(value: Any, limit: int = 200) -> str:
    """Untrusted text for a terminal: cleaned, on one line, cut; None is '-'."""
    if value is None:
        return "-"
    text = " ".join(clean(str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except BadTime:
        return None


def time_text(value: Any) -> str:
    """A stored time for people; text that is not one is shown (cleaned) as it is."""
    t = _time(value)
    return second(t) if t is not None else _s(value)


def _ago(seconds: float) -> str:
    return f"{for_people(seconds, 2)} {'ago' if seconds >= 0 else 'ahead of the clock'}"


def _header(report: dict[str, Any]) -> str:
    n = len(report["incidents"]["open"])
    parts = [f"{n} incident{'s' if n != 1 else ''} open" if n else "nothing open"]
    cycle = report["last_cycle"]
    now, at = _time(report["checked_at"]), _time(cycle["checked_at"]) if cycle else None
    if cycle is None:
        parts.append("no check has run yet")
    else:
        when = (_ago((now - at).total_seconds()) if now and at
                else f"at {time_text(cycle['checked_at'])}")
        outcome = "ok" if cycle["ok"] else f"FAILED: {_s(cycle['error'], MAX_ERROR_TEXT)}"
        parts.append(f"last check {when}: {outcome}")
    queued = report["outbox"]["queued"]
    if queued:
        parts.append(f"{queued} notification(s) not yet delivered")
    return "; ".join(parts)


def _units_text(report: dict[str, Any]) -> list[str]:
    out = ["units of work:"]
    for u in report["units"]:
        name = f"  {_s(u['unit'])} ({', '.join(_s(s) for s in u['services'])})"
        cp = u["checkpoint"]
        lead = f"      {lease_text(u['lease'])}"
        if cp is None:
            out += [f"{name}: never read", lead]
            continue
        lag = u["lag_seconds"]
        behind = f"{for_people(lag, 2)} {'behind' if lag >= 0 else 'ahead of the clock'}"
        out.append(f"{name}: read up to {time_text(cp['until'])}, {behind} ({lag:.0f}s)")
        if cp["cursor"] is not None:
            out.append(f"      catching up: read to {time_text(cp['cursor'])} of a window ending "
                       f"{time_text(cp['window_end'])}")
        out.append(lead)
    return out


def _cycle_text(cycle: dict[str, Any] | None) -> list[str]:
    if cycle is None:
        return ["last check: no check has run yet"]
    outcome = "ok" if cycle["ok"] else f"FAILED: {_s(cycle['error'], MAX_ERROR_TEXT)}"
    out = [f"last check: {time_text(cycle['checked_at'])}, {outcome}",
           f"  {cycle['entries_read']} entries read, {cycle['entries_skipped']} skipped, "
           f"{cycle['api_requests']} API request(s), {cycle['transitions']} transition(s)"]
    if cycle["cut_at"] is not None:
        out.append(f"  request budget spent: read up to {time_text(cycle['cut_at'])}")
    return out


def _incident_text(i: dict[str, Any]) -> list[str]:
    pad = " " * 11
    lines = [f"  {_s(i['status']).upper():<8} {_s(i['id'])}  [{_s(i['severity'])}]",
             f"{pad}{count_text(i['count'], i.get('count_bound'), 'match')}, "
             f"{time_text(i['first_seen'])} .. "
             f"{time_text(i['last_seen'])}"]
    if i["revisions"]:
        hits = ", ".join(f"{_s(r)} ({n})" for r, n in sorted(i["revisions"].items()))
        lines.append(f"{pad}revisions hit: {hits}")
    if i["introduced_by"]:
        lines.append(f"{pad}introduced by: {_s(i['introduced_by'])}")
    if i["suspect_migrations"]:
        lines.append(f"{pad}suspect migrations: "
                     + ", ".join(_s(m) for m in i["suspect_migrations"]))
    if i["migration"] is not None:
        m = i["migration"]
        lines.append(f"{pad}migration: {_s(m['name'])} {_s(m['outcome'])} "
                     f"({_s(m['code']) if m['code'] else 'no code'})")
    if i["regression_of"]:
        lines.append(f"{pad}regression of: {_s(i['regression_of'])}")
    if i["status"] == IncidentStatus.RESOLVED.value:
        lines.append(f"{pad}resolved {time_text(i['resolved_at'])} by "
                     f"{_s(i['resolved_by']) if i['resolved_by'] else 'no deploy'}")
    return lines


def _revisions_text(revisions: list[dict[str, Any]]) -> list[str]:
    out = ["revisions (newest first):"]
    shown: dict[str, int] = {}
    for r in revisions:
        shown[r["service"]] = shown.get(r["service"], 0) + 1
        if shown[r["service"]] > TEXT_REVISIONS:
            continue
        ready = {True: "ready", False: "NEVER READY", None: "readiness unknown"}[r["ready"]]
        arrival = (f"deployed {time_text(r['deployed_at'])}" if r["deployed_at"]
                   else f"first seen {time_text(r['first_seen'])}")
        out.append(f"  {_s(r['service'])}/{_s(r['name'])}: {arrival}, "
                   f"{ready}, {r['requests_ok']} ok / {r['requests_failed']} failed request(s)")
        if r["migrations"]:
            out.append("      migrations: " + ", ".join(
                _s(run_label(m["name"], m["outcome"], m["code"])) for m in r["migrations"]))
        if r["errors"]:
            out.append("      errors: " + ", ".join(
                f"{_s(k)}={v}" for k, v in sorted(r["errors"].items())))
    for service, n in shown.items():
        if n > TEXT_REVISIONS:
            out.append(f"  {_s(service)}: {n - TEXT_REVISIONS} older revision(s) not shown "
                       "(--format json lists all)")
    if not revisions:
        out.append("  none seen yet")
    return out


def _outbox_text(outbox: dict[str, Any]) -> list[str]:
    if not outbox["queued"]:
        return ["outbox: empty (every notification delivered)"]
    out = [f"outbox: {outbox['queued']} message(s) queued"]
    for m in outbox["messages"]:
        error = f", last error: {_s(m['last_error'], MAX_ERROR_TEXT)}" if m["last_error"] else ""
        out.append(f"  {_s(m['key'])} {_s(m['action'])}: {m['attempts']} attempt(s){error}")
    return out


def status_text(report: dict[str, Any]) -> str:
    """The report for a terminal: the state at a glance on the first line, then the details."""
    incidents = report["incidents"]
    out = [_header(report), "", *_cycle_text(report["last_cycle"]), "",
           *_units_text(report), "", "open incidents:"]
    out.extend(line for i in incidents["open"] for line in _incident_text(i))
    if not incidents["open"]:
        out.append("  none")
    out += ["", f"recent incidents (resolved in the last {RECENT.days} days, newest first):"]
    out.extend(line for i in incidents["recent"] for line in _incident_text(i))
    if not incidents["recent"]:
        out.append("  none")
    out += ["", *_revisions_text(report["revisions"]), "", *_outbox_text(report["outbox"])]
    return "\n".join(out)
