"""The write-up as one self-contained HTML page, with a timeline chart per incident.

Rules:
- Self-contained: inline CSS, inline SVG, no script, no font, image or stylesheet to fetch; the
  only links are to Logs Explorer, for a reader to follow. It opens offline.
- Every value goes through `h()`: cleaned of control characters, scrubbed of secrets, then
  `html.escape`d (quotes included), so a log line can never become markup or leak a password.
  The SVG comes from `chart.py`, which draws log text as glyphs.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from monitor.config import Config
from monitor.correlate.model import MigrationRecord
from monitor.evidence.claims import IncidentReport
from monitor.redact import scrub
from monitor.report.chart import Series, error_series_all, timeline_svg
from monitor.report.facts import Report
from monitor.report.markdown import notification_line
from monitor.safe import clean
from monitor.times import for_people, minute

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
section.incident{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 20px;
margin:16px 0}
h1{font-size:22px}h2{font-size:18px;margin:8px 0}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #e3e6ea;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f0f2f5}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6}
pre{padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.status-open{color:#b42318;font-weight:600}.status-resolved{color:#067647;font-weight:600}
.chart svg{max-width:100%;height:auto}.ok{color:#067647}.ko{color:#b42318}
ul.checklist{list-style:none;padding-left:4px}.muted{color:#667085}
nav a{margin-right:12px}
"""


def h(text: object, limit: int = 4000) -> str:
    """Any value as HTML text: cleaned, scrubbed, escaped (quotes too)."""
    value = scrub(clean(str(text)[: 2 * limit]))[:limit]
    return html.escape(value, quote=True)


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>{h(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def _migrations(migrations: Sequence[MigrationRecord]) -> str:
    items = []
    for m in migrations:
        items.append(f"<li>{h(m.label)}, {h(minute(m.at))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>No migrations.</p>"


def incident_html(rep: IncidentReport, series: Series | None) -> str:
    """One incident's section; `series` is its chart's data (`chart.error_series_all`)."""
    inc = rep.incident
    status = inc.status.value
    parts = [f'<section class="incident" id="{h(inc.id)}">',
             f"<h2>{h(inc.service)} · {h(inc.signal)} — "
             f'<span class="status-{h(status)}">{h(status)}</span></h2>',
             f'<p class="muted"><code>{h(inc.id)}</code> · severity {h(inc.severity)}'
             + (f" · regression of <code>{h(inc.regression_of)}</code>" if inc.regression_of
                else "") + "</p>",
             f"<p><strong>Summary.</strong> {h(rep.summary)}</p>",
             '<div class="chart">', timeline_svg(rep, series), "</div>",
             "<h3>Impact</h3><table>",
             f"<tr><th>Duration</th><td>{h(for_people(rep.duration))} "
             f"({h(minute(inc.first_seen))} → "
             f"{h(minute(inc.resolved_at or inc.last_seen))})</td></tr>",
             f"<tr><th>Count</th><td>{h(inc.count_text())}</td></tr>"]
    if rep.requests_failed is not None:
        parts.append(f"<tr><th>Requests failed</th><td>{rep.requests_failed:,} (HTTP 5xx on the "
                     "revisions hit)</td></tr>")
    hits = ", ".join(f"<code>{h(r)}</code> ({n:,})" for r, n in sorted(inc.revisions.items()))
    parts.append(f"<tr><th>Revisions hit</th><td>{hits or 'none recorded'}</td></tr></table>")
    parts.append("<h3>Root cause</h3>")
    if rep.introduced is not None:
        f = rep.introduced
        verb, at = f.arrival
        parts.append(f"<p>Introduced by revision <code>{h(f.name)}</code>, {verb} "
                     f"{h(minute(at))}.</p>" + _migrations(f.migrations))
    else:
        parts.append("<p>No revision is named as the cause.</p>")
    sample = inc.sample or (inc.migration.message if inc.migration else "")
    if sample:
        parts.append(f"<p>First error line ({h(minute(inc.first_seen))}):</p>"
                     f"<pre>{h(sample)}</pre>")
    parts.append("<h3>Fix</h3>")
    if rep.fixed is not None:
        f = rep.fixed
        ready = f", ready {h(minute(f.ready_at))}" if f.ready_at else ""
        verb, at = f.arrival
        parts.append(f"<p>Fixed by revision <code>{h(f.name)}</code>, {verb} "
                     f"{h(minute(at))}{ready}.</p>"
                     + _migrations(f.migrations))
    else:
        parts.append("<p>No fixing revision.</p>")
    if inc.resolved_at is not None:
        parts.append(f"<p>Resolved {h(minute(inc.resolved_at))}: {h(inc.resolution_note)}.</p>")
    rows = "".join(f"<tr><td>{h(e.at.strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{h(e.text)}</td>"
                   "</tr>" for e in rep.timeline)
    parts.append(f"<h3>Timeline</h3><table><tr><th>UTC</th><th>Event</th></tr>{rows}</table>")
    if rep.notifications:
        rows = "".join(f"<tr><td>{h(n.sent_at.strftime('%Y-%m-%d %H:%M:%S'))}</td>"
                       f"<td>{h(notification_line(n), 300)}</td></tr>" for n in rep.notifications)
        parts.append("<p class=\"muted\">Slack notifications, by the time they were sent:</p>"
                     f"<table><tr><th>Sent (UTC)</th><th>Message</th></tr>{rows}</table>")
    parts.append("<h3>Verification</h3><ol>")
    for v in rep.verifications:
        counted = v.expected_count()
        expect = (h(counted) if counted is not None
                  else "shows " + ", ".join(f"<code>{h(t)}</code>" for t in v.expect_texts))
        parts.append(f"<li>{h(v.claim)}: {expect}.<pre>{h(v.command, 25000)}</pre>"
                     f'<a href="{h(v.url, 30000)}" rel="noreferrer noopener">Logs Explorer</a>'
                     "</li>")
    parts.append("</ol><h3>Checklist</h3><ul class=\"checklist\">")
    ids = {v.id: n for n, v in enumerate(rep.verifications, 1)}
    for c in rep.checklist:
        refs = ", ".join(f"#{ids[e]}" for e in c.evidence if e in ids)
        mark = '<span class="ok">✔</span>' if c.ok else '<span class="ko">✘</span>'
        parts.append(f"<li>{mark} {h(c.text)}"
                     + (f' <span class="muted">(verification {refs})</span>' if refs else "")
                     + "</li>")
    parts.append("</ul></section>")
    return "\n".join(parts)


def report_html(report: Report, config: Config) -> str:
    """The whole write-up as a page."""
    body = [f"<h1>Incident write-up — {len(report.reports)} incident(s)</h1>",
            f'<p class="muted">From the monitor\'s store, up to its last check '
            f"({h(minute(report.generated_at))}); incidents open or active since "
            f"{h(minute(report.since))}.</p>"]
    if not report.reports:
        body.append("<p>No incident in this period.</p>")
    charts = error_series_all(config, report.reports)  # one read of an export for them all
    body += [incident_html(r, series) for r, series in zip(report.reports, charts, strict=True)]
    title = report.reports[0].incident.id if len(report.reports) == 1 else "Incident write-up"
    return page(title, "\n".join(body))
