"""Routing and mentions, from the config only: validation, rendering, and `_render`'s choice."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from monitor.check import _render
from monitor.config import ConfigError, masked, parse_config
from monitor.correlate.model import IncidentKind, IncidentStatus, MigrationFailure, TransitionKind
from monitor.messages import Action, Message
from monitor.notify.render import render
from monitor.safe import MAX_SECTION, MAX_TEXT
from tests.test_render import HOSTILE, incident, texts, transition

GROUP = "<!subteam^S0123ABC>"
HOOK = "https://hooks.slack.com/services/T0123/B0123/hookSECRETpath"


def config(signals: list[dict[str, Any]] | None = None, **slack: Any) -> dict[str, Any]:
    return {"project": "spector-prod", "services": ["spector"],
            "signals": signals or [{"name": "missing-session-table", "match": "Missing"}],
            "slack": {"channel": "#spector-alerts", **slack}}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={})
    return str(caught.value)


# --- mentions in the config -------------------------------------------------------------------

@pytest.mark.parametrize(("mention", "stored"), [
    (GROUP, GROUP),
    ("<!subteam^S0123ABC|@spector-oncall>", "<!subteam^S0123ABC|@spector-oncall>"),
    ("<@U0123ABC>", "<@U0123ABC>"),
    ("<@W0123ABC>", "<@W0123ABC>"),
    ("<!here>", "<!here>"),
    ("<!channel>", "<!channel>"),
    (f"  {GROUP}   <@U0123ABC>\t<!here> ", f"{GROUP} <@U0123ABC> <!here>"),
    ("", None),
    ("   ", None),
    (None, None),
])
def test_valid_mentions(mention: str | None, stored: str | None) -> None:
    data = config([{"name": "a", "match": "x", "mention": mention}], mention=mention)
    loaded = parse_config(data, env={})
    assert loaded.signals[0].mention == stored and loaded.slack.mention == stored


@pytest.mark.parametrize(("mention", "says"), [
    ("@oncall", "'@oncall' is not a Slack mention"),
    ("oncall-team", "not a Slack mention"),
    ("<!everyone>", "'<!everyone>' is not a Slack mention"),
    ("<!subteam^S0123ABC", "not a Slack mention"),
    ("<!subteam^s0123abc>", "not a Slack mention"),  # ids are upper case
    ("<!subteam^S0123ABC|oncall>", "not a Slack mention"),  # a handle starts with @
    ("<!subteam^S0123ABC|@on call>", "not a Slack mention"),
    ("<@U0123ABC|name>", "not a Slack mention"),
    ("<#C0123ABC>", "not a Slack mention"),  # a channel link pings nobody
    ("<https://evil.example|click>", "not a Slack mention"),
    ("<!here><!channel>", "not a Slack mention"),  # they must be separated by spaces
    ("<!here> &lt;!channel&gt;", "'&lt;!channel&gt;' is not a Slack mention"),
    (f"{GROUP} and <!here>", "'and' is not a Slack mention"),
    (" ".join(["<@U0123ABC>"] * 60), "too long"),
    (42, "must be a string of Slack mentions"),
])
def test_invalid_mentions_name_the_key(mention: Any, says: str) -> None:
    signal = error_of(config([{"name": "a", "match": "x"}, {"name": "b", "match": "y",
                                                             "mention": mention}]))
    assert signal.startswith("signals[1].mention: ") and says in signal
    slack = error_of(config(mention=mention))
    assert slack.startswith("slack.mention: ") and says in slack


def test_a_mention_can_come_from_the_environment() -> None:
    data = config(mention="${ONCALL:-}")
    assert parse_config(data, env={"ONCALL": GROUP}).slack.mention == GROUP
    assert parse_config(data, env={}).slack.mention is None


# --- channels and the webhook in the config ---------------------------------------------------

def test_a_signal_channel_overrides_nothing_else() -> None:
    loaded = parse_config(config([{"name": "a", "match": "x", "channel": "#oncall"},
                                  {"name": "b", "match": "y"}]), env={})
    assert [s.channel for s in loaded.signals] == ["#oncall", None]
    assert loaded.slack.channel == "#spector-alerts"


@pytest.mark.parametrize(("data", "says"), [
    (config([{"name": "a", "match": "x", "channel": ""}]),
     "signals[0].channel: String should have at least 1 character"),
    (config([{"name": "a", "match": "x", "chanel": "#x"}]), "signals[0].chanel: unknown key"),
    (config(channel=""), "slack.channel: String should have at least 1 character"),
    (config(webhook_url="https://evil.example/services/T0/B0/hookSECRETpath"),
     "slack.webhook_url: must be a Slack Incoming Webhook URL"),
    (config(webhook_url="http://hooks.slack.com/services/T0/B0/hookSECRETpath"),
     "slack.webhook_url: must be"),
    (config(webhook_url="https://hooks.slack.com.evil.example/hookSECRETpath"),
     "slack.webhook_url: must be"),
    (config(webhook_url="https://hooks.slack.com@evil.example/hookSECRETpath"),
     "slack.webhook_url: must be"),
    (config(webhook_url="http://127.0.0.1.evil.example/hookSECRETpath"),
     "slack.webhook_url: must be"),
    (config(webhook_url="https://[hooks.slack.com/hookSECRETpath"), "slack.webhook_url: must be"),
    (config(webhook_url="hooks.slack.com/services/hookSECRETpath"), "slack.webhook_url: must be"),
    (config(webhook_url=HOOK, token="xoxb-1-2-tokenSECRET"),
     "slack.webhook_url: set either slack.token or slack.webhook_url, not both"),
    (config([{"name": "a", "match": "x"}, {"name": "b", "match": "y", "channel": "#b"}],
            webhook_url=HOOK),
     "signals[1].channel: an Incoming Webhook posts only to its own channel"),
])
def test_channel_and_webhook_errors(data: dict[str, Any], says: str) -> None:
    said = error_of(data)
    assert said.startswith(says), said
    assert "hookSECRETpath" not in said and "tokenSECRET" not in said  # secrets never quoted


@pytest.mark.parametrize("url", [HOOK, f"{HOOK}\n", "http://127.0.0.1:8123/services/x",
                                 "http://localhost/hook"])
def test_webhook_urls_accepted(url: str) -> None:
    loaded = parse_config(config(webhook_url="${SLACK_WEBHOOK_URL:-}"),
                          env={"SLACK_WEBHOOK_URL": url})
    assert loaded.slack.webhook_url == url.strip() and loaded.slack.token == ""


def test_check_config_masks_the_webhook() -> None:
    loaded = parse_config(config(webhook_url=HOOK, mention=GROUP), env={})
    shown = masked(loaded)
    assert shown["slack"]["webhook_url"] == "https://hooks.slack.com/***"
    assert shown["slack"]["mention"] == GROUP
    assert "hookSECRETpath" not in json.dumps(shown)
    assert masked(parse_config(config(), env={}))["slack"]["webhook_url"] == ""


# --- the mention in rendered messages ---------------------------------------------------------

def rendered(kind: TransitionKind, mention: str | None = GROUP, **changes: Any) -> list[Message]:
    inc = incident(**{"sample": HOSTILE, **changes})
    if kind is TransitionKind.RESOLVED:
        inc = replace(inc, status=IncidentStatus.RESOLVED, resolved_at=inc.last_seen +
                      timedelta(minutes=15), resolved_by="spector-00044-mop")
    t = transition(kind, inc, changes=(f"{HOSTILE} {GROUP}",))
    return render(t, channel="#spector-alerts", project="spector-prod",
                  pattern="MissingSessionTableError", mention=mention)


def first_section(m: Message) -> str:
    return str(next(b for b in m.blocks if b["type"] == "section")["text"]["text"])


@pytest.mark.parametrize("kind", [TransitionKind.OPENED, TransitionKind.REGRESSED])
def test_the_alert_pings_first(kind: TransitionKind) -> None:
    [m] = rendered(kind, mention=f"{GROUP} <@U0123ABC>",
                   regression_of="spector:missing-session-table:1"
                   if kind is TransitionKind.REGRESSED else None)
    assert m.action is Action.POST_ROOT
    assert m.text.startswith(f"{GROUP} <@U0123ABC> :rotating_light: spector: ")
    assert first_section(m).startswith(f"{GROUP} <@U0123ABC> *MissingSessionTableError")
    assert m.blocks[0]["type"] == "header" and "subteam" not in m.blocks[0]["text"]["text"]
    # the configured markup appears raw exactly there; the same markup from the log is escaped
    body = json.dumps([m.text, *texts(m.blocks)])
    assert body.count("<!subteam^S0123ABC>") == 2 and body.count("<@U0123ABC>") == 2
    assert "&lt;!channel&gt; &lt;!here&gt; &lt;@U123&gt;" in "\n".join(texts(m.blocks))
    for needle in ("<!channel>", "<!here>", "<@U123>", "<https://evil"):
        assert needle not in body


def test_a_hostile_sample_stays_escaped_next_to_the_mention() -> None:
    [m] = rendered(TransitionKind.OPENED, sample=f"boom {GROUP} <!channel>")
    [sample] = [t for t in texts(m.blocks) if t.startswith("*Sample:*")]
    assert "&lt;!subteam^S0123ABC&gt; &lt;!channel&gt;" in sample
    assert m.text.startswith(GROUP)  # the configured one, raw, at the front


@pytest.mark.parametrize("kind", [TransitionKind.UPDATED, TransitionKind.QUIET_NO_TRAFFIC,
                                  TransitionKind.RESOLVED])
def test_replies_and_edits_never_ping(kind: TransitionKind) -> None:
    messages = rendered(kind)
    assert messages and all(m.action is not Action.POST_ROOT for m in messages)
    for m in messages:
        for text in [m.text, *texts(m.blocks)]:
            assert "<!subteam" not in text and "<@U" not in text, (m.action, text)
    if kind is TransitionKind.UPDATED:  # the mention quoted in a change is log text: escaped
        assert "&lt;!subteam^S0123ABC&gt;" in messages[0].text


def test_without_a_mention_nothing_changes() -> None:
    [plain] = rendered(TransitionKind.OPENED, mention=None)
    [empty] = rendered(TransitionKind.OPENED, mention="")
    assert plain == empty and plain.text.startswith(":rotating_light: spector:")
    assert first_section(plain).startswith("*MissingSessionTableError")


def test_a_long_alert_keeps_its_mention_within_the_limits() -> None:
    [m] = rendered(TransitionKind.OPENED, signal="x" * 5000, service="s" * 5000)
    assert m.text.startswith(GROUP) and len(m.text) <= MAX_TEXT
    assert first_section(m).startswith(GROUP) and len(first_section(m)) <= MAX_SECTION


@pytest.mark.parametrize("bad", ["<!everyone>", "@here", HOSTILE, "<https://evil.example|x>"])
def test_render_refuses_anything_but_a_mention(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Slack mention"):
        rendered(TransitionKind.OPENED, mention=bad)


# --- check._render: which channel and mention an incident gets --------------------------------

ROUTED = config(
    [{"name": "missing-session-table", "match": "MissingSessionTableError",
      "channel": "#spector-oncall", "mention": GROUP},
     {"name": "mention-only", "match": "A", "mention": "<@U0123ABC>"},
     {"name": "channel-only", "match": "B", "channel": "#b-team"},
     {"name": "plain", "match": "C"}],
    mention="<!here>")


@pytest.mark.parametrize(("signal", "kind", "channel", "mention"), [
    ("missing-session-table", IncidentKind.ERROR, "#spector-oncall", GROUP),
    ("mention-only", IncidentKind.ERROR, "#spector-alerts", "<@U0123ABC>"),
    ("channel-only", IncidentKind.ERROR, "#b-team", "<!here>"),
    ("plain", IncidentKind.ERROR, "#spector-alerts", "<!here>"),
    ("migration-failed", IncidentKind.MIGRATION, "#spector-alerts", "<!here>"),
    ("source", IncidentKind.SOURCE, "#spector-alerts", "<!here>"),
    # a migration incident never takes a signal's routing, even one of the same name
    ("missing-session-table", IncidentKind.MIGRATION, "#spector-alerts", "<!here>"),
])
def test_render_routes_by_signal(signal: str, kind: IncidentKind, channel: str,
                                 mention: str) -> None:
    loaded = parse_config(copy.deepcopy(ROUTED), env={})
    migration = MigrationFailure("20251204205052_x", "failed", "P3018") \
        if kind is IncidentKind.MIGRATION else None
    inc = incident(signal=signal, kind=kind, migration=migration)
    opened = _render(loaded, transition(TransitionKind.OPENED, inc), "spector-prod")
    updated = _render(loaded, transition(TransitionKind.UPDATED, inc, changes=("more",)),
                      "spector-prod")
    assert {m.channel for m in [*opened, *updated]} == {channel}
    assert opened[0].text.startswith(f"{mention} ")
    assert all(mention not in m.text for m in updated)


def test_render_without_any_mention() -> None:
    loaded = parse_config(config(), env={})
    [m] = _render(loaded, transition(TransitionKind.OPENED), "spector-prod")
    assert m.channel == "#spector-alerts" and m.text.startswith(":rotating_light:")
