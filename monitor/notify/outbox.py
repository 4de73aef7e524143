"""Drains the outbox: send each queued message once, in order per incident.

Rules: a message is marked sent only after the notifier returned; a failed message stays queued
with its error and blocks the later messages of the same incident (a reply must never overtake
its root, nor an update the alert), while other incidents go on. What happens when the process
dies between sending and marking is the subject of issue #5 (Slack history check).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from monitor.notify.message import Action, DeliveryError, Notifier
from monitor.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    sent: int = 0
    failed: int = 0
    waiting: int = 0  # queued behind a failed message of the same incident
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def drain(store: Store, notifier: Notifier, *, deadline: float | None = None,
          stop: threading.Event | None = None) -> Delivery:
    """Send what is queued. Stops early (leaving the rest queued) at `deadline` (monotonic
    seconds) or when `stop` is set: a shutdown sends what it can in its grace period."""
    result = Delivery()
    blocked: set[str] = set()
    for queued in store.queued():
        if (deadline is not None and time.monotonic() > deadline) or (
                stop is not None and stop.is_set()):
            result.waiting += 1
            continue
        message = queued.message
        if message.incident_id in blocked:
            result.waiting += 1
            continue
        root = None
        if message.action is not Action.POST_ROOT:
            root = store.thread(message.incident_id)
            if root is None:  # its root message has not been posted yet
                blocked.add(message.incident_id)
                result.waiting += 1
                continue
        linked = store.thread(message.link_thread_of) if message.link_thread_of else None
        try:
            thread = notifier.send(message, root, linked)
        except DeliveryError as exc:
            store.mark_failed(queued, str(exc))
            blocked.add(message.incident_id)
            result.failed += 1
            result.errors.append(str(exc))
            log.warning("notification %s not delivered (%s): %s", message.key,
                        "will retry" if exc.retryable else "needs attention", exc)
            continue
        store.mark_sent(queued, thread)
        result.sent += 1
    return result
