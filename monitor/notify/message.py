"""Messages as data, and the Notifier protocol every delivery channel implements.

Rules: a Message is fully rendered before it is stored in the outbox, so what is sent after a
restart is exactly what was decided before it. The only things resolved at send time are Slack's
own ids (the root message's `ts`), which do not exist until the root is posted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


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


class DeliveryError(Exception):
    """A failed send. `retryable` says whether the same message may be tried again later."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Notifier(Protocol):
    """Delivers one message; returns the thread it now lives in (the root's for replies).

    `send` raises only DeliveryError (and ValueError for a reply without its root: a bug).
    `find` answers whether an earlier attempt whose outcome is unknown did arrive.
    `min_interval`: seconds between two messages to one channel (the channel's rate limit).
    `timeout`: seconds after which a send is given up; until then it may still land.
    """

    min_interval: float
    timeout: float

    def send(
        self, message: Message, root: Thread | None, linked: Thread | None = None
    ) -> Thread: ...

    def find(self, message: Message, root: Thread | None) -> Thread | None: ...
