"""The Store protocol: what the monitor remembers, and the one transaction that changes it.

Rules: a cycle's conclusions (correlation state, dedupe keys, checkpoint, outbox messages) are
written by `commit_cycle` in ONE transaction, so a crash leaves either the old cycle or the new
one, never half; and messages are in the outbox before anyone tries to send them. Delivery then
only moves messages from "queued" to "sent" (`mark_sent`), one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.correlate.state import State
from monitor.notify.message import Message, Thread
from monitor.sources.base import Checkpoint

RETENTION = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """What one finished cycle writes besides the state."""

    unit: str
    checkpoint: Checkpoint | None  # None: the read failed, the checkpoint stays where it was
    seen: dict[str, datetime]  # dedupe keys of entries read this cycle -> their timestamp
    forget_before: datetime | None  # dedupe keys older than this can no longer be re-read
    messages: list[Message]
    summary: dict[str, Any] = field(default_factory=dict)  # the last-cycle record for status
    # Retention: resolved incidents and revisions last seen before this (event time), and sent
    # messages older than RETENTION (real time), are deleted, so the state stays bounded.
    retain_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """A message waiting in the outbox, with the attempts made so far."""

    id: int
    message: Message
    attempts: int  # counted before each try: > 0 and unsent means an earlier try's fate is unknown
    last_error: str | None
    next_attempt_at: datetime | None = None
    attempted_at: datetime | None = None  # real time the last attempt started


@dataclass(frozen=True, slots=True)
class Sent:
    """A delivered message: what was said, when it was sent (wall clock) and Slack's ts."""

    message: Message
    sent_at: datetime
    ts: str | None


class Store(Protocol):
    def load_state(self) -> State: ...

    def checkpoint(self, unit: str) -> Checkpoint | None: ...

    def seen_keys(self, keys: list[str]) -> set[str]: ...

    def commit_cycle(self, state: State, record: CycleRecord) -> None: ...

    def queued(self) -> list[Queued]: ...

    def thread(self, incident_id: str) -> Thread | None: ...

    def sent(self, incident_id: str) -> list[Sent]: ...

    def mark_sent(self, queued: Queued, thread: Thread) -> None: ...

    def mark_attempt(self, queued: Queued) -> None: ...

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None) -> None:
        ...

    def last_cycle(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...
