"""Print rendered messages to a terminal: the notifier when no Slack token is set, and `--dry-run`.

Rules:
- Show what Slack would show, readably: a header line (action, channel, key), the text, then the
  blocks flattened to lines (section text and fields, context, code blocks indented).
- The messages were escaped for Slack by render; here they are un-escaped for people, but every
  control character is stripped again, so an ANSI sequence from a log line can never reach the
  terminal. Links the monitor built (`<url|label>`) are shown as `label (url)`; since render escaped
  every `<` in log text, those are the only `<...>` there can be.
- Threads are faked with a deterministic, increasing ts ("console.000001") so replies and updates
  name their root, and a run prints the same output every time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TextIO

from monitor.messages import Action, Message, Thread
from monitor.notify.message import DeliveryError
from monitor.safe import clean

_LINK = re.compile(r"<(https?://[^|>\s]+)\|([^>]*)>")
_CODE_BLOCK = re.compile(r"```(.*?)```", re.S)


def for_terminal(text: str) -> str:
    """Slack mrkdwn as rendered by `render`, made plain and safe for a terminal."""
    text = _LINK.sub(lambda m: f"{m[2]} ({m[1]})", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return clean(text)


def _indent_code(text: str) -> str:
    def block(m: re.Match[str]) -> str:
        lines = m[1].strip("\n").splitlines() or [""]
        return "\n" + "\n".join(f"    | {line}" for line in lines) + "\n"

    return re.sub(r"\n{2,}", "\n", _CODE_BLOCK.sub(block, text)).strip("\n")


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return str(obj["text"])
    return ""


def flatten(blocks: list[dict[str, Any]], skip: str = "") -> Iterator[str]:
    """Block Kit as lines of text; unknown block types are skipped, not guessed at, and so is a
    section that only repeats `skip` (the message text, already printed)."""
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            yield f"== {for_terminal(_text_of(block.get('text')))} =="
        elif kind == "section":
            text = _text_of(block.get("text"))
            if text and text != skip:
                yield _indent_code(for_terminal(text))
            for field in block.get("fields") or []:
                label, _, value = _text_of(field).partition("\n")
                yield f"  {for_terminal(label).strip('*')}: {for_terminal(value)}"
        elif kind == "context":
            parts = [_text_of(e) for e in block.get("elements") or []]
            yield "  " + " · ".join(for_terminal(p) for p in parts if p)
        elif kind == "divider":
            yield "-" * 40


class ConsoleNotifier:
    """The Notifier for a terminal; fails only when the stream does (closed, broken pipe)."""

    min_interval = 0.0
    timeout = 0.0

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._posted = 0

    def send(self, message: Message, root: Thread | None, linked: Thread | None = None) -> Thread:
        if message.action is Action.POST_ROOT or root is None:
            self._posted += 1
            thread = Thread(message.channel, f"console.{self._posted:06d}")
        else:
            thread = root
        where = ""
        if message.action is not Action.POST_ROOT:
            where = f" thread {thread.ts}" if root is not None else " (thread unknown)"
        self._write(message, where, linked)
        return thread

    def find(self, message: Message, root: Thread | None) -> Thread | None:
        """A terminal keeps no history to search: a message in doubt is printed again."""
        return None

    def print_message(self, message: Message) -> None:
        """Show a message without delivering it (`--dry-run`): no thread is made or needed."""
        self._write(message, "", None)

    def _write(self, message: Message, where: str, linked: Thread | None) -> None:
        flags = " broadcast" if message.broadcast else ""
        if message.link_thread_of:
            ts = f" {linked.ts}" if linked is not None else ""
            flags += f" links {for_terminal(message.link_thread_of)}{ts}"
        lines = [f"--- {message.action.value} {for_terminal(message.channel)}{where} "
                 f"[{for_terminal(message.key)}]{flags}",
                 _indent_code(for_terminal(message.text))]
        # An edit of the root repeats the alert with new figures: its summary line says enough.
        if message.action is not Action.UPDATE_ROOT:
            lines.extend(flatten(message.blocks, skip=message.text))
        lines.append("")
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # a closed stream or a broken pipe
            raise DeliveryError(f"cannot write to the console: {type(exc).__name__}",
                                retryable=False) from exc
