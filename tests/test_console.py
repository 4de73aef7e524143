"""ConsoleNotifier: readable, deterministic, and safe for a terminal."""

from __future__ import annotations

import io

import pytest

from monitor.correlate.model import TransitionKind
from monitor.messages import Action, Message, Thread
from monitor.notify.console import ConsoleNotifier, for_terminal
from monitor.notify.message import DeliveryError
from tests.test_render import HOSTILE, SECRETS, incident, rendered, transition


def send_all(messages: list[Message]) -> tuple[str, list[Thread]]:
    out = io.StringIO()
    console = ConsoleNotifier(out)
    root: Thread | None = None
    threads = []
    for m in messages:
        thread = console.send(m, root)
        root = thread if m.action is Action.POST_ROOT else root
        threads.append(thread)
    return out.getvalue(), threads


def test_lifecycle_is_readable_and_threads_are_deterministic() -> None:
    msgs = rendered(transition(TransitionKind.OPENED))
    msgs += rendered(transition(TransitionKind.UPDATED, seq=2, changes=("count grew to 3",)))
    output, threads = send_all(msgs)
    assert [t.ts for t in threads] == ["console.000001"] * 3
    assert output == send_all(msgs)[0]  # the same run prints the same thing
    lines = output.splitlines()
    assert lines[0] == ("--- post_root #spector-alerts [spector.missing-session-table.1#1.0]")
    assert "== :rotating_light: OPEN: spector · missing-session-table ==" in lines
    assert any(line.startswith("  Count: 3 errors (") for line in lines)  # with its rate
    assert "    | PrismaClientKnownRequestError: MissingSessionTableError: table Session missing" \
        in lines
    assert any(line.startswith("  Logs Explorer (https://console.cloud.google.com/logs/query;")
               for line in lines)
    assert "--- reply #spector-alerts thread console.000001 " \
           "[spector.missing-session-table.1#2.0]" in lines
    assert "--- update_root #spector-alerts thread console.000001 " \
           "[spector.missing-session-table.1#2.1]" in lines


def test_each_root_gets_a_new_ts() -> None:
    console = ConsoleNotifier(io.StringIO())
    [m] = rendered(transition(TransitionKind.OPENED))
    assert [console.send(m, None).ts for _ in range(3)] == \
        ["console.000001", "console.000002", "console.000003"]


def test_broadcast_and_link_are_shown() -> None:
    inc = incident(id="inc-2", regression_of="inc-1")
    [root] = rendered(transition(TransitionKind.REGRESSED, inc))
    out = io.StringIO()
    ConsoleNotifier(out).send(root, None, linked=Thread("C1", "console.000001"))
    assert "links inc-1 console.000001" in out.getvalue().splitlines()[0]


def test_hostile_text_is_unescaped_but_has_no_control_characters() -> None:
    [m] = rendered(transition(TransitionKind.OPENED, incident(sample=HOSTILE)))
    output, _ = send_all([m])
    assert "<!channel> <!here> <@U123> <https://evil.example|click> a&b" in output
    assert "&lt;" not in output and "&amp;" not in output
    for bad in ("\x1b", "\x07", "\x00", "\ud800", *SECRETS):
        assert bad not in output


def test_for_terminal_strips_what_slipped_through() -> None:
    assert for_terminal("a &lt;b&gt; &amp;lt; \x1b[2J\x9bc") == "a <b> &lt; c"
    assert for_terminal("<https://x.example/q|Logs>") == "Logs (https://x.example/q)"


def test_print_message_shows_without_a_thread() -> None:
    out = io.StringIO()
    [reply, _] = rendered(transition(TransitionKind.UPDATED, changes=("count grew to 3",)))
    ConsoleNotifier(out).print_message(reply)
    first, *rest = out.getvalue().splitlines()
    assert first == "--- reply #spector-alerts [spector.missing-session-table.1#1.0]"
    assert "• count grew to 3" in rest


def test_a_closed_stream_is_a_delivery_error() -> None:
    out = io.StringIO()
    out.close()
    [m] = rendered(transition(TransitionKind.OPENED))
    with pytest.raises(DeliveryError) as caught:
        ConsoleNotifier(out).send(m, None)
    assert not caught.value.retryable
