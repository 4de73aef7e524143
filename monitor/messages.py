"""The outbox's values: messages as data, the thread they go to, and their rows in the store.

Rules: a Message is fully rendered before it is stored in the outbox, so what is sent after a
restart is exactly what was decided before it. The only things resolved at send time are Slack's
own ids (the root message's `ts`), which do not exist until the root is posted.

Why here, below both `notify` and `store`: the renderer makes these, the store keeps them and
the notifiers send them; none of those may import another for its values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    POST_ROOT = "post_root"  # a new top-level message: the incident's thread root
    REPLY = "reply"  # a reply in the incident's thread
    UPDATE_ROOT = "update_root"  # edit the root to show the current state (chat.update)


@dataclass(frozen=True, slots=True)
class Message:
    key: str  # idempotency key: "<incident id>#<transition seq>.<n>"
    incident_id: str
    action: Action
    channel: str
    text: str  # plain fallback, already escaped for Slack mrkdwn
    blocks: list[dict[str, Any]] = field(default_factory=list)
    broadcast: bool = False  # reply_broadcast: also show the reply in the channel
    link_thread_of: str | None = None  # a regression links the earlier incident's thread

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "incident_id": self.incident_id,
            "action": self.action.value,
            "channel": self.channel,
            "text": self.text,
            "blocks": self.blocks,
            "broadcast": self.broadcast,
            "link_thread_of": self.link_thread_of,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        return cls(
            key=d["key"],
            incident_id=d["incident_id"],
            action=Action(d["action"]),
            channel=d["channel"],
            text=d["text"],
            blocks=list(d.get("blocks", [])),
            broadcast=bool(d.get("broadcast", False)),
            link_thread_of=d.get("link_thread_of"),
        )


@dataclass(frozen=True, slots=True)
class Thread:
    """Where a message goes: the root's channel and ts, once the root has been posted."""

    channel: str
    ts: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A message waiting in the outbox, with the attempts made so far."""

    id: int
    message: Message
    attempts: int  # counted before each try: > 0 and unsent means an earlier try's fate is unknown
    last_error: str | None
    next_attempt_at: datetime | None = None
    attempted_at: datetime | None = None  # real time the last attempt started
    unit: str = ""  # the unit of work whose cycle queued it: its lease fences the delivery


@dataclass(frozen=True, slots=True)
class Sent:
    """A delivered message: what was said, when it was sent (wall clock) and Slack's ts."""

    message: Message
    sent_at: datetime
    ts: str | None
