"""The write-up's summary and checklist as one Slack section, for a resolution's reply.

Why here: the renderer puts it into the outbox with the resolution itself (pure: everything
comes from the transition), and the write-up says the same things at length.
"""

from __future__ import annotations

from monitor.correlate.model import Transition
from monitor.evidence.claims import IncidentReport, summary_sentence
from monitor.evidence.verify import checklist, verifications
from monitor.safe import MAX_SECTION, safe_text, truncate


def summary_and_checklist(transition: Transition, pattern: str | None = None,
                          project: str | None = None) -> str:
    """The write-up's summary and checklist as one mrkdwn text (<= 3,000 characters).

    For the thread reply of a RESOLVED transition: everything the transition carries (the
    incident snapshot and the revision facts it quotes), so it is pure and can be rendered into
    the outbox with the resolution itself. The evidence window ends at the transition's time.
    """
    inc = transition.incident
    facts = {f.name: f for f in transition.revision_facts}
    hit = [facts[r] for r in sorted(inc.revisions) if r in facts]
    rep = IncidentReport(
        incident=inc, project=project, pattern=pattern, summary="",
        introduced=facts.get(inc.introduced_by or ""), fixed=facts.get(inc.resolved_by or ""),
        revisions_hit=hit, requests_failed=None, checked_until=transition.at,
        next_incident=None)
    rep.summary = summary_sentence(rep)
    rep.verifications = verifications(rep, inc.first_ok_since_last is not None)
    rep.checklist = checklist(rep)
    lines = ["*Write-up*", safe_text(rep.summary, 1200, one_line=True), "", "*Checklist*"]
    for c in rep.checklist:
        lines.append(f"{':white_check_mark:' if c.ok else ':x:'} "
                     f"{safe_text(c.text, 600, one_line=True)}")
    return truncate("\n".join(lines), MAX_SECTION)
