"""The status page `monitor run` serves: `/` (the store at a glance) and `/incidents/<id>`.

Rules:
- Read-only and from the store only, like `monitor status` (whose `status_report` it renders):
  each request opens its OWN store connection and closes it, because the service's store object
  belongs to the scheduler thread (SQLite connections are not shared across threads here).
- Self-contained pages: inline CSS and SVG, no script, nothing fetched; every value escaped by
  `report.html.h` (cleaned, secrets scrubbed, `html.escape`d). No secret is ever rendered: the
  page shows incidents, revisions, checkpoints and outbox keys, never the config.
- Keep it private: on Cloud Run the service must require IAM-authenticated invocations (no
  `allUsers` invoker); nothing here authenticates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from monitor.classify.prisma import run_label
from monitor.config import Config
from monitor.report.html import h, page
from monitor.status import lease_text, status_report, time_text
from monitor.store import open_store
from monitor.times import for_people

HTML = "text/html; charset=utf-8"


def _t(value: Any) -> str:
    return h(time_text(value)) if value else "—"


def _incident_rows(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return "<p class=\"muted\">None.</p>"
    rows = []
    for i in incidents:
        hits = ", ".join(f"<code>{h(r)}</code> ({n})" for r, n in sorted(i["revisions"].items()))
        rows.append(
            f'<tr><td><a href="/incidents/{h(quote(i["id"], safe=""))}">{h(i["id"])}</a></td>'
            f'<td class="status-{h(i["status"])}">{h(i["status"])}</td><td>{h(i["severity"])}</td>'
            f"<td>{i['count']}</td><td>{_t(i['first_seen'])}</td><td>{_t(i['last_seen'])}</td>"
            f"<td>{hits}</td><td>{h(i['introduced_by'] or '—')}</td>"
            f"<td>{h(i['resolved_by'] or '—')}</td></tr>")
    return ("<table><tr><th>Incident</th><th>Status</th><th>Severity</th><th>Count</th>"
            "<th>First seen</th><th>Last seen</th><th>Revisions hit</th><th>Introduced by</th>"
            f"<th>Resolved by</th></tr>{''.join(rows)}</table>")


def status_html(report: dict[str, Any]) -> str:
    """`monitor status`'s report as a page."""
    inc = report["incidents"]
    cycle = report["last_cycle"]
    if cycle is None:
        cycle_text = "No check has run yet."
    else:
        outcome = "ok" if cycle["ok"] else f"FAILED: {h(cycle['error'])}"
        cycle_text = (f"Last check {_t(cycle['checked_at'])}: {outcome}; "
                      f"{cycle['entries_read']} entries read, {cycle['entries_skipped']} skipped, "
                      f"{cycle['api_requests']} API request(s), {cycle['transitions']} "
                      "transition(s).")
    units = []
    for u in report["units"]:
        cp, lag = u["checkpoint"], u["lag_seconds"]
        read = (f"read up to {_t(cp['until'])}, {h(for_people(lag, 2))} behind" if cp
                else "never read")
        units.append(f"<li><code>{h(u['unit'])}</code> "
                     f"({', '.join(h(s) for s in u['services'])}): {read}; "
                     f"{h(lease_text(u['lease']))}</li>")
    revs = []
    for r in report["revisions"]:
        migs = "<br>".join(
            f"{h(run_label(m['name'], m['outcome'], m['code']))} {_t(m['at'])}"
            for m in r["migrations"]) or "—"
        ready = {True: "ready", False: "NEVER READY", None: "unknown"}[r["ready"]]
        arrival = _t(r["deployed_at"]) if r["deployed_at"] else f"first seen {_t(r['first_seen'])}"
        revs.append(f"<tr><td>{h(r['service'])}</td><td><code>{h(r['name'])}</code></td>"
                    f"<td>{arrival}</td>"
                    f"<td>{ready} {_t(r['ready_at'])}</td>"
                    f"<td>{r['requests_ok']} / {r['requests_failed']}</td><td>{migs}</td></tr>")
    queued = report["outbox"]["queued"]
    n_open = len(inc["open"])
    body = [
        "<h1>monitor status</h1>",
        f'<p><strong class="{"status-open" if n_open else "status-resolved"}">'
        f"{n_open} incident(s) open</strong> · as of {_t(report['checked_at'])}</p>",
        f"<p>{cycle_text}</p><ul>{''.join(units)}</ul>",
        f"<p>{queued} notification(s) waiting in the outbox.</p>" if queued else "",
        "<h2>Open incidents</h2>", _incident_rows(inc["open"]),
        "<h2>Recent incidents (resolved in the last 7 days)</h2>", _incident_rows(inc["recent"]),
        "<h2>Revisions (newest first)</h2><table><tr><th>Service</th><th>Revision</th>"
        "<th>Deployed</th><th>Ready</th><th>Requests ok / failed</th><th>Migrations</th></tr>"
        + "".join(revs) + "</table>",
    ]
    return page("monitor status", "\n".join(body))


def respond(config: Config, path: str, now: datetime) -> tuple[int, str] | None:
    """(status, page) for `/` and `/incidents/<id>`; None for any other path."""
    if path != "/" and not path.startswith("/incidents/"):
        return None
    store = open_store(config.state.url)  # this request's own connection
    try:
        if path == "/":
            return 200, status_html(status_report(config, store, now))
        from monitor.report import build
        from monitor.report.html import report_html

        incident_id = unquote(path.removeprefix("/incidents/"))
        try:
            return 200, report_html(build(config, store, incident_id), config)
        except KeyError:
            return 404, page("not found", f"<p>No incident <code>{h(incident_id)}</code>.</p>"
                                          '<p><a href="/">status</a></p>')
    finally:
        store.close()
