"""`monitor report`: the incident write-up a post-mortem needs, from the store only.

Rules: gathering (`facts`, `verify`) is separate from rendering (`markdown`, `html`, `chart`);
gathering reads the store and never the network, rendering is pure and escapes for its format.
"""

from __future__ import annotations

from monitor.evidence.claims import IncidentReport, SentNotification, Verification
from monitor.evidence.summary import summary_and_checklist
from monitor.report.facts import DEFAULT_SINCE, Report, build, sent_notifications, to_json
from monitor.report.markdown import report_markdown

__all__ = ["DEFAULT_SINCE", "IncidentReport", "Report", "SentNotification", "Verification",
           "build", "report_markdown", "sent_notifications", "summary_and_checklist", "to_json"]
