"""Property tests: render turns any transition into messages within Slack's limits, and log text
never becomes Slack markup (monitor.notify.render.render, monitor/safe.py's rules).

Untrusted (from the logs): the sample, service, signal, revision and migration names, migration
codes and messages, locations, the resolution note and the change sentences. The only markup a
message may hold is the renderer's own links (Logs Explorer, the Cloud Run console) and, in the
alert that opens an incident, the configured mention.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from monitor.classify.observations import MigrationOutcome
from monitor.correlate.model import (
    Incident,
    IncidentKind,
    IncidentStatus,
    MigrationFailure,
    MigrationRecord,
    Reason,
    RevisionFacts,
    Transition,
    TransitionKind,
)
from monitor.messages import Action, Message
from monitor.notify.render import render
from monitor.safe import MAX_BLOCKS, MAX_FIELD, MAX_HEADER, MAX_SECTION, MAX_TEXT
from monitor.times import EARLIEST, LATEST
from tests.test_render import texts

# --- strategies -------------------------------------------------------------------------------

SECRETS = ("SECRETTOKEN", "SECRETPW", "SECRETPG", "SECRETBEARER", "SECRETHOOK")
MARKUP = [
    "<!channel>", "<!here>", "<!everyone>", "<@U0123ABC>", "<@W99>", "<#C0123|general>",
    "<!subteam^S0123ABC|@oncall>", "<https://evil.example|click>", "<http://x>", "<mailto:a@b>",
    "<https://console.cloud.google.com/logs/query;query=x|Logs Explorer>", "<", ">", "&", "&amp;",
    "&lt;!channel&gt;", "&#60;", "|", "`", "```", "*b*", "_i_", "~s~", ":rotating_light:",
]
_pieces = st.sampled_from([
    *MARKUP, "\x1b[31m", "\x1b]8;;https://evil\x07", "\x00", "\x07", "\u202e", "\u2066", "\t",
    "\n", "\r\n", "\u00a0", "\ufeff", " xoxb-1234-5678-SECRETTOKEN ", " password=SECRETPW ",
    " postgresql://spector:SECRETPG@db.internal/app ", " Authorization: Bearer SECRETBEARER ",
    " https://hooks.slack.com/services/T0/B0/SECRETHOOK ", "MissingSessionTableError",
    "20251204205052_map_session_table_to_lowercase", "spector-00042-wex", "P3009",
])
untrusted = st.lists(st.one_of(_pieces, st.text(max_size=10)), max_size=8).map("".join)
untrusted_long = st.one_of(
    untrusted, st.builds(lambda a, n, b: a + "x" * n + b, untrusted, st.integers(0, 7000),
                         untrusted))
maybe = st.one_of(st.none(), untrusted)
# Event times as sources give them (entries outside EARLIEST..LATEST are skipped).
times = st.datetimes(min_value=EARLIEST.replace(tzinfo=None),
                     max_value=(LATEST - timedelta(days=1)).replace(tzinfo=None),
                     timezones=st.just(EARLIEST.tzinfo))
spans = st.integers(min_value=0, max_value=10**9).map(lambda s: timedelta(seconds=s))
outcomes = st.sampled_from([o.value for o in MigrationOutcome])
MENTIONS = [None, "<!here>", "<!channel>", "<@U0123ABC>", "<!subteam^S0123ABC|@oncall>",
            "<!subteam^S0123ABC> <@W0123ABC>"]
PATTERNS = [None, "MissingSessionTableError", r"Prisma \w+ table does not exist",
            "(?i)<!channel>|&|`", "x" * 3000]


# A revision's region, from its entries' resource labels: short here; see the xfail for long.
short_locations = st.one_of(st.none(), st.just("us-central1"), untrusted.map(lambda s: s[:200]))
long_locations = st.builds(lambda a, n: a + "x" * n, untrusted, st.integers(2900, 9000))


@st.composite
def migration_records(draw: st.DrawFn, around: Any) -> MigrationRecord:
    return MigrationRecord(draw(maybe), draw(outcomes), draw(maybe),
                           around + draw(spans) / 1000, draw(maybe))


@st.composite
def transitions(draw: st.DrawFn, text: st.SearchStrategy[str] = untrusted,
                locations: st.SearchStrategy[str | None] = short_locations) -> Transition:
    first = draw(times)
    last = min(first + draw(spans), LATEST - timedelta(days=1))
    kind = draw(st.sampled_from(list(TransitionKind)))
    ikind = draw(st.sampled_from(list(IncidentKind)))
    resolved = kind is TransitionKind.RESOLVED or draw(st.booleans())
    long = st.one_of(text, untrusted_long) if text is untrusted else text
    revision_names = st.lists(text, max_size=25)
    revisions = draw(st.dictionaries(text, st.integers(0, 10**9), max_size=25))
    introduced = draw(st.one_of(st.none(), text, st.sampled_from(sorted(revisions) or [""])))
    resolved_by = draw(st.one_of(st.none(), text)) if resolved else None
    mig = (MigrationFailure(draw(st.one_of(st.none(), text)), draw(outcomes),
                            draw(st.one_of(st.none(), text, st.sampled_from(
                                ["P3009", "P3018", "P1001", "P3005"]))), draw(long))
           if ikind is IncidentKind.MIGRATION or draw(st.booleans()) else None)
    incident = Incident(
        id=draw(text), service=draw(text), signal=draw(text), kind=ikind,
        severity=draw(st.one_of(st.sampled_from(["critical", "high", "warning", "info"]), text)),
        status=IncidentStatus.RESOLVED if resolved else IncidentStatus.OPEN,
        first_seen=first, last_seen=last, count=draw(st.integers(0, 10**9)),
        revisions=revisions, introduced_by=introduced,
        suspect_migrations=draw(revision_names),
        resolved_at=min(last + draw(spans), LATEST - timedelta(days=1)) if resolved else None,
        resolved_by=resolved_by, resolution_note=draw(long),
        regression_of=draw(st.one_of(st.none(), text)), migration=mig, sample=draw(long),
        reason=draw(st.sampled_from([r.value for r in Reason])),
        ok_requests_since_last=draw(st.integers(0, 10**6)),
        first_ok_since_last=draw(st.one_of(st.none(), st.just(last))),
    )
    culprits = [n for n in (introduced, resolved_by) if n]
    facts = tuple(
        RevisionFacts(
            service=incident.service,
            name=draw(st.one_of(st.sampled_from(culprits), text)) if culprits else draw(text),
            deployed_at=draw(st.one_of(st.none(), st.just(first))),
            first_seen=draw(st.one_of(st.none(), st.just(first))),
            last_seen=draw(st.one_of(st.none(), st.just(last))),
            ready=draw(st.one_of(st.none(), st.booleans())),
            ready_at=draw(st.one_of(st.none(), st.just(first))),
            migrations=draw(st.lists(migration_records(first), max_size=25)),
            location=draw(locations),
        )
        for _ in range(draw(st.integers(0, 3))))
    return Transition(kind=kind, incident=incident, seq=draw(st.integers(0, 10**6)),
                      at=max(last, draw(times)), reason=draw(text),
                      changes=tuple(draw(st.lists(long, max_size=25))), revision_facts=facts)


def _simple(**changes: Any) -> Transition:
    """One alert about a plain incident, with `changes` to its incident and revision facts."""
    facts = changes.pop("facts", ())
    fields: dict[str, Any] = {
        "id": "spector.missing-session-table.1", "service": "spector",
        "signal": "missing-session-table", "kind": IncidentKind.ERROR, "severity": "critical",
        "status": IncidentStatus.OPEN, "first_seen": EARLIEST, "last_seen": EARLIEST, "count": 1,
        "introduced_by": "spector-00042-wex", **changes}
    inc = Incident(**fields)
    return Transition(kind=TransitionKind.OPENED, incident=inc, seq=1, at=EARLIEST, reason="r",
                      revision_facts=facts)


# --- what a message may contain ---------------------------------------------------------------

# The renderer's own links: a console URL, percent-encoded whole, and an escaped label.
_OWN_LINK = re.compile(
    r"<https://console\.cloud\.google\.com/(?:logs/query;|run/detail/)[A-Za-z0-9%;=/?._~:-]*"
    r"\|(?:Logs Explorer|Cloud Run revision(?: [^<>|]*)?)>")
_ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")




def assert_inert(s: str, mention: str | None, where: str) -> None:
    """No markup in `s` but the renderer's links and (leading) the configured mention."""
    if mention and s.startswith(mention + " "):
        s = s[len(mention) + 1:]
    rest = _OWN_LINK.sub("", s)
    assert "<" not in rest and ">" not in rest, f"markup in {where}: {s!r}"
    assert not _ENTITY.search(rest), f"a bare & in {where}: {s!r}"
    s.encode("utf-8")  # Slack takes UTF-8: no lone surrogate may reach it
    for secret in SECRETS:  # shown text; a link's query must hold the names it searches for
        assert secret not in rest, f"{secret} in {where}"


def assert_within_limits(m: Message) -> None:
    assert len(m.text) <= MAX_TEXT
    assert len(m.blocks) <= MAX_BLOCKS - 1  # one left for the notifier's thread link
    for block in m.blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= MAX_SECTION
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= MAX_FIELD for f in block.get("fields", []))
        elif block["type"] == "header":
            assert len(block["text"]["text"]) <= MAX_HEADER
        elif block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10
            assert all(len(e["text"]) <= MAX_SECTION for e in block["elements"])


def check(t: Transition, pattern: str | None, mention: str | None,
          project: str | None) -> list[Message]:
    messages = render(t, channel="#alerts", project=project, pattern=pattern, mention=mention)
    assert messages
    for m in messages:
        assert_within_limits(m)
        allowed = mention if m.action is Action.POST_ROOT else None
        assert_inert(m.text, allowed, f"{m.action} text")
        sections = [b for b in m.blocks if b["type"] == "section"]
        for s in texts(m.blocks):
            first = bool(sections) and s is sections[0]["text"]["text"]
            assert_inert(s, allowed if first else None, f"{m.action} block")
        if mention and m.action is not Action.POST_ROOT:
            assert mention not in m.text and all(mention not in s for s in texts(m.blocks))
    return messages


projects = st.sampled_from(["spector-prod", None, "p<!here>|x&y"])


# --- properties -------------------------------------------------------------------------------

@given(transitions(), st.sampled_from(PATTERNS), st.sampled_from(MENTIONS), projects)
def test_any_transition_renders_inert_text_within_slacks_limits(
        t: Transition, pattern: str | None, mention: str | None, project: str | None) -> None:
    check(t, pattern, mention, project)


@given(transitions(locations=long_locations), st.sampled_from(PATTERNS),
       st.sampled_from(MENTIONS), st.just("spector-prod"))
@example(_simple(facts=(RevisionFacts("spector", "spector-00042-wex", location="x" * 3000),)),
         None, None, "spector-prod")
def test_a_long_location_never_breaks_the_console_link(
        t: Transition, pattern: str | None, mention: str | None, project: str | None) -> None:
    check(t, pattern, mention, project)


@given(transitions(st.text(st.characters(categories=["Cs"]), min_size=1)),
       st.sampled_from(PATTERNS), st.sampled_from(MENTIONS), projects)
@example(_simple(kind=IncidentKind.MIGRATION,
                 migration=MigrationFailure("20251204205052_x\ud800", "failed", "P3018")),
         None, None, "spector-prod")
def test_lone_surrogates_in_untrusted_text_render_inert_text(
        t: Transition, pattern: str | None, mention: str | None, project: str | None) -> None:
    check(t, pattern, mention, project)


_removed = st.sampled_from(["\x00", "\x1b[0m", "\x07", "\u202e", " ", "\n", "\t"])


SECRET_LINES = ["postgresql://spector:SECRETPGPASSWORD@db/app", "password=SECRETPGPASSWORD",
                "xoxb-1-2-SECRETPGPASSWORD", "Bearer SECRETPGPASSWORD"]


@given(_removed, _removed, st.integers(0, 6000), st.sampled_from(SECRET_LINES),
       st.integers(1, 45), st.sampled_from(list(TransitionKind)))
@example("\x00", "\x00", 0, SECRET_LINES[0], 30, TransitionKind.OPENED)
def test_no_part_of_a_secret_shows_after_a_long_run_of_stripped_characters(
        a: str, b: str, split: int, secret: str, kept: int, kind: TransitionKind) -> None:
    """safe_text cuts untrusted text at 6,000 characters before scrubbing; control characters,
    ANSI codes and folded whitespace can shrink what is left far below Slack's limit, so a
    secret split by that cut must still not show. `kept`: the secret's characters before the
    cut."""
    n = 6000 - min(kept, len(secret))
    pad = a * min(split, n) + b * (n - min(split, n))
    line = pad + secret
    inc = Incident(id="i", service="spector", signal="s", kind=IncidentKind.ERROR,
                   severity="critical", status=IncidentStatus.OPEN, first_seen=EARLIEST,
                   last_seen=EARLIEST, count=1, sample=line, resolution_note=line)
    t = Transition(kind=kind, incident=inc, seq=1, at=EARLIEST, reason="r",
                   changes=(line,))
    out = render(t, channel="#alerts", project="p")
    everything = "\n".join([m.text for m in out] + [s for m in out for s in texts(m.blocks)])
    assert "SECR" not in everything
