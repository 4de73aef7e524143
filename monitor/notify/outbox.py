"""Drains the outbox: every queued message delivered once, in order per incident.

The guarantee, and how each step keeps it:
- A message is in the outbox (committed with the incident change that caused it) before any
  attempt to send it, keyed by (incident, transition, n): it cannot be lost, and enqueueing the
  same transition twice is a no-op.
- Each attempt is counted in the store *before* the call. A message that is unsent but was
  attempted may have reached Slack (a timeout after Slack accepted it, a crash between the call
  and the bookkeeping): before trying again, the notifier looks for its key in the channel
  (`find`), and a found message is marked sent instead of posted twice.
- A message is marked sent, with Slack's `ts`, only after Slack answered. A failure leaves it
  queued with its error and a time before which it is not retried (Retry-After, else backoff).
- Per incident, order is kept: a failed or waiting message holds back the later messages of its
  incident (a reply never overtakes its root), while other incidents go on.
- At most one message per `notifier.min_interval` per channel (Slack documents about one a
  second).
- Under leases (several instances, store/base.py), an instance sends only the messages of the
  units it leads, and every step is fenced by the unit's lease: an attempt is counted only
  while the lease has at least the notifier's timeout (plus a second) left, so a send never
  starts that the lease would not cover (LeaseEnding: it waits for the next renewal); a lost
  lease stops that unit's delivery at once, and the new leader treats the message as in doubt
  (looks before posting).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.config import SEND_MARGIN
from monitor.messages import Action, Queued, Thread
from monitor.notify.message import DeliveryError, Notifier
from monitor.store.base import Lease, LeaseEnding, LeaseLost, Store

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=5)


@dataclass
class Delivery:
    sent: int = 0
    failed: int = 0
    found: int = 0  # in doubt, and found already delivered: marked sent without a second post
    waiting: int = 0  # held back: behind a failed message of its incident, or not due yet
    errors: list[str] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)  # units whose lease was lost while sending

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def owed(self) -> int:
        """Messages not delivered yet: failed now, or waiting out a retry's backoff."""
        return self.failed + self.waiting


def retry_at(error: DeliveryError, attempts: int, now: datetime) -> datetime:
    """When to try again: Slack's Retry-After when it gave one, else 2^attempts s, capped."""
    if error.retry_after is not None:
        return now + timedelta(seconds=error.retry_after)
    return now + min(timedelta(seconds=2 ** max(attempts, 0)), MAX_BACKOFF)


@dataclass
class _Pacer:
    """Spaces sends to one channel by `interval` seconds."""

    interval: float
    sleep: Callable[[float], object]
    last: dict[str, float] = field(default_factory=dict)

    def wait(self, channel: str) -> None:
        if self.interval <= 0:
            return
        due = self.last.get(channel, float("-inf")) + self.interval - time.monotonic()
        if due > 0:
            self.sleep(due)

    def sent(self, channel: str) -> None:
        self.last[channel] = time.monotonic()


def drain(
    store: Store,
    notifier: Notifier,
    *,
    now: datetime | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], object] = time.sleep,
    leases: Mapping[str, Lease] | None = None,
    keep_alive: Callable[[], None] | None = None,
) -> Delivery:
    """Send what is due. Stops early (the rest stays queued) at `deadline` (monotonic seconds)
    or when `stop` is set: a shutdown sends what it can within its grace period. With `leases`,
    only the messages of those units, each step fenced by its unit's lease; `keep_alive`, called
    right before each send starts, renews them when due (a long delivery by `monitor once`)."""
    now = now or datetime.now(UTC)
    result = Delivery()
    blocked: set[str] = set()
    wait = stop.wait if stop is not None else sleep
    pacer = _Pacer(notifier.min_interval, wait)
    queue = store.queued(units=leases.keys() if leases is not None else None)
    ending: set[str] = set()
    unsent = {q.message.incident_id for q in queue}
    for queued in queue:
        message = queued.message
        lease = leases.get(queued.unit) if leases is not None else None
        if queued.unit in result.lost or queued.unit in ending:
            result.waiting += 1
            continue
        out_of_time = (deadline is not None and time.monotonic() > deadline) or (
            stop is not None and stop.is_set())
        not_due = queued.next_attempt_at is not None and queued.next_attempt_at > now
        # A regression's alert links the earlier thread: it waits until that thread exists.
        link_pending = (message.link_thread_of is not None
                        and message.link_thread_of in unsent
                        and store.thread(message.link_thread_of) is None)
        if out_of_time or not_due or link_pending or message.incident_id in blocked:
            blocked.add(message.incident_id)
            result.waiting += 1
            continue
        if not _out_of_doubt(queued, notifier.timeout, wait, deadline) or (
                stop is not None and stop.is_set()):
            blocked.add(message.incident_id)
            result.waiting += 1
            continue
        root = None
        if message.action is not Action.POST_ROOT:
            root = store.thread(message.incident_id)
            if root is None:  # its root has not been posted yet
                blocked.add(message.incident_id)
                result.waiting += 1
                continue
        try:
            try:
                thread = _deliver(store, notifier, queued, root, pacer, result, lease,
                                  keep_alive)
            except DeliveryError as exc:
                store.mark_failed(queued, str(exc), retry_at(exc, queued.attempts + 1, now),
                                  lease=lease)
                blocked.add(message.incident_id)
                result.failed += 1
                result.errors.append(str(exc))
                _report(queued, exc)
                continue
            store.mark_sent(queued, thread, lease=lease)
        except LeaseEnding as exc:  # held, but too near its end: after the next renewal
            log.info("delivery for %s waits: %s", queued.unit, exc)
            ending.add(queued.unit)
            result.waiting += 1
        except LeaseLost as exc:
            log.warning("delivery for %s stopped: %s", queued.unit, exc)
            result.lost.add(queued.unit)
            result.waiting += 1
    return result


def _out_of_doubt(queued: Queued, timeout: float, wait: Callable[[float], object],
                  deadline: float | None) -> bool:
    """An interrupted send may still land until its timeout has passed: wait that out before
    looking for it, or it could be posted again and then land too (a crash mid-request)."""
    if queued.attempts == 0 or queued.attempted_at is None:
        return True
    remaining = (queued.attempted_at - datetime.now(UTC)).total_seconds() + timeout + min(
        1.0, timeout / 2)
    if remaining <= 0:
        return True
    if deadline is not None and time.monotonic() + remaining > deadline:
        return False
    wait(remaining)
    return True


def _deliver(store: Store, notifier: Notifier, queued: Queued, root: Thread | None,
             pacer: _Pacer, result: Delivery, lease: Lease | None,
             keep_alive: Callable[[], None] | None) -> Thread:
    message = queued.message
    if queued.attempts > 0:  # an earlier try may have arrived: look before posting again
        try:
            found = notifier.find(message, root)
        except DeliveryError as exc:
            if exc.retryable:
                raise
            # Cannot look (a missing history scope): posting again is the lesser evil.
            log.warning("cannot check whether notification %s already arrived (%s); sending it "
                        "again may show it twice", message.key, exc)
            found = None
        if found is not None:
            log.info("notification %s was delivered by an earlier attempt; not posting it "
                     "again", message.key)
            result.found += 1
            return found
    linked = store.thread(message.link_thread_of) if message.link_thread_of else None
    pacer.wait(message.channel)
    if keep_alive is not None:  # after the wait: the send starts now
        keep_alive()
    store.mark_attempt(queued, lease, min_left=timedelta(seconds=notifier.timeout) + SEND_MARGIN)
    try:
        thread = notifier.send(message, root, linked)
    finally:
        pacer.sent(message.channel)
    result.sent += 1
    return thread


def _report(queued: Queued, exc: DeliveryError) -> None:
    """Said once: the same error again on the next attempt is only a debug line."""
    if queued.last_error == str(exc):
        log.debug("notification %s still not delivered: %s", queued.message.key, exc)
    elif exc.retryable:
        log.warning("notification %s not delivered, will retry: %s", queued.message.key, exc)
    else:
        log.error("notification %s not delivered: %s. It stays queued and is sent once this is "
                  "fixed.", queued.message.key, exc)
