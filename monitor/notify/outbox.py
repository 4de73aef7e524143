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
  second): `pacing.Pacer`.
- Under leases (several instances, store/base.py), an instance sends only the messages of the
  units it leads, and every step is fenced by the unit's lease: an attempt is counted only
  while the lease has at least the notifier's timeout (plus a second) left, so a send never
  starts that the lease would not cover (LeaseEnding: it waits for the next renewal); a lost
  lease stops that unit's delivery at once, and the new leader treats the message as in doubt
  (looks before posting).

How it reads: `drain` walks the queue in order. For each message the pure `hold_reason` says
whether it waits, and why (a `HoldReason`, counted in `Delivery.held`); one that does not wait
goes through `_Sender.deliver`: look (only if an earlier attempt's fate is unknown), claim
(`mark_attempt`), send (`notifier.send`), mark (`mark_sent`, or `mark_failed` with when to try
again). Time is read from `now` (wall clock: what is due, how long an attempt stays in doubt) and
`monotonic` (pacing, the deadline), and every wait goes through `sleep` (or `stop.wait`): a test
drives all three and never sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from monitor.config import SEND_MARGIN
from monitor.messages import Action, Message, Queued, Thread
from monitor.notify.message import DeliveryError, Notifier
from monitor.notify.pacing import Pacer
from monitor.store.base import Lease, LeaseEnding, LeaseLost, Store

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=5)

Clock = Callable[[], datetime]


class HoldReason(Enum):
    """Why a queued message is not sent now. It stays queued, in its place, for a later drain."""

    LEASE_LOST = "lease lost"  # the unit's lease was lost: its new leader sends it
    LEASE_ENDING = "lease ending"  # the lease ends before a send could finish: after a renewal
    OUT_OF_TIME = "out of time"  # past the drain's deadline, or stopping
    BLOCKED = "behind an earlier message"  # an earlier message of its incident waits or failed
    NOT_DUE = "not due yet"  # a failed attempt's backoff (or Slack's Retry-After) runs
    NO_LINK = "waiting for the linked thread"  # a regression alert, before the thread it links
    NO_ROOT = "waiting for its root"  # a reply or an edit, before its incident's root is posted
    IN_DOUBT = "in doubt"  # an earlier attempt may still land, later than the deadline allows


@dataclass
class Delivery:
    sent: int = 0
    failed: int = 0
    found: int = 0  # in doubt, and found already delivered: marked sent without a second post
    waiting: int = 0  # held back, for one of the reasons counted in `held`
    errors: list[str] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)  # units whose lease was lost while sending
    held: Counter[HoldReason] = field(default_factory=Counter)  # `waiting`, by reason

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def owed(self) -> int:
        """Messages not delivered yet: failed now, or waiting out a retry's backoff."""
        return self.failed + self.waiting

    def hold(self, reason: HoldReason) -> None:
        self.waiting += 1
        self.held[reason] += 1


@dataclass
class Progress:
    """What a drain knows so far: the facts that hold later messages back."""

    threads: dict[str, Thread]  # incident -> its root's thread: in the store, or posted now
    unsent: frozenset[str]  # incidents with a message queued when the drain began
    blocked: set[str] = field(default_factory=set)  # incidents with a message held or failed
    ending: set[str] = field(default_factory=set)  # units whose lease ends too soon to send
    lost: set[str] = field(default_factory=set)  # units whose lease was lost

    @classmethod
    def of(cls, store: Store, queue: Sequence[Queued]) -> Progress:
        """The threads the queue needs (its incidents' and those it links), read once."""
        incidents = {q.message.incident_id for q in queue}
        links = {q.message.link_thread_of for q in queue if q.message.link_thread_of}
        threads = {i: t for i in sorted(incidents | links) if (t := store.thread(i)) is not None}
        return cls(threads, frozenset(incidents))

    def root_of(self, message: Message) -> Thread | None:
        return None if message.action is Action.POST_ROOT else self.threads.get(message.incident_id)

    def linked_of(self, message: Message) -> Thread | None:
        link = message.link_thread_of
        return self.threads.get(link) if link is not None else None

    def delivered(self, message: Message, thread: Thread) -> None:
        if message.action is Action.POST_ROOT:  # as the store keeps it (mark_sent)
            self.threads[message.incident_id] = thread


def hold_reason(queued: Queued, now: datetime, progress: Progress, *,
                time_left: float | None = None, doubt: float = 0.0) -> HoldReason | None:
    """Why `queued` waits, or None: send it now. Pure. `now` is the drain's time (what is due);
    `time_left` the seconds before the drain must end (None: no deadline; 0 or less: past it, or
    stopping); `doubt` the seconds an earlier attempt may still land (`in_doubt_for`)."""
    message = queued.message
    if queued.unit in progress.lost:
        return HoldReason.LEASE_LOST
    if queued.unit in progress.ending:
        return HoldReason.LEASE_ENDING
    if time_left is not None and time_left <= 0:
        return HoldReason.OUT_OF_TIME
    if message.incident_id in progress.blocked:
        return HoldReason.BLOCKED
    if queued.next_attempt_at is not None and queued.next_attempt_at > now:
        return HoldReason.NOT_DUE
    link = message.link_thread_of
    if link is not None and link in progress.unsent and link not in progress.threads:
        return HoldReason.NO_LINK
    if message.action is not Action.POST_ROOT and message.incident_id not in progress.threads:
        return HoldReason.NO_ROOT
    if doubt > 0 and time_left is not None and doubt > time_left:
        return HoldReason.IN_DOUBT
    return None


def in_doubt_for(queued: Queued, now: datetime, timeout: float) -> float:
    """Seconds an earlier, interrupted attempt may still land (0: it cannot): until its timeout,
    plus a margin, has passed since it started. Looking for it before then could miss a post
    that lands afterwards (a crash mid-request), and it would show twice."""
    if queued.attempts == 0 or queued.attempted_at is None:
        return 0.0
    left = (queued.attempted_at - now).total_seconds() + timeout + min(1.0, timeout / 2)
    return max(left, 0.0)


def retry_at(error: DeliveryError, attempts: int, now: datetime) -> datetime:
    """When to try again: Slack's Retry-After when it gave one, else 2^attempts s, capped."""
    if error.retry_after is not None:
        return now + timedelta(seconds=error.retry_after)
    return now + min(timedelta(seconds=2 ** max(attempts, 0)), MAX_BACKOFF)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def drain(
    store: Store,
    notifier: Notifier,
    *,
    now: datetime | Clock | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], object] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    leases: Mapping[str, Lease] | None = None,
    keep_alive: Callable[[], None] | None = None,
) -> Delivery:
    """Send what is due. Stops early (the rest stays queued) at `deadline` (`monotonic` seconds)
    or when `stop` is set: a shutdown sends what it can within its grace period. With `leases`,
    only the messages of those units, each step fenced by its unit's lease; `keep_alive`, called
    right before each send starts, renews them when due (a long delivery by `monitor once`).

    `now` is the drain's time, read once: what is due, and when a failure is tried next. A clock
    function is read again for how long an attempt stays in doubt; with a value (or None), that
    is the real clock, the one the store stamps attempts with. Waits go through `stop.wait`
    when there is a `stop`, else `sleep`."""
    clock = now if callable(now) else _utcnow
    started = now if isinstance(now, datetime) else clock()
    wait = stop.wait if stop is not None else sleep
    queue = store.queued(units=leases.keys() if leases is not None else None)
    progress = Progress.of(store, queue)
    result = Delivery(lost=progress.lost)
    sender = _Sender(store, notifier, Pacer(notifier.min_interval, wait, monotonic), started,
                     progress, result, keep_alive)

    def time_left() -> float | None:
        if stop is not None and stop.is_set():
            return 0.0
        return deadline - monotonic() if deadline is not None else None

    for queued in queue:
        doubt = in_doubt_for(queued, clock(), notifier.timeout)
        reason = hold_reason(queued, started, progress, time_left=time_left(), doubt=doubt)
        if reason is None and doubt > 0:
            wait(doubt)  # until an earlier attempt can no longer land: then look for it
            if stop is not None and stop.is_set():
                reason = HoldReason.OUT_OF_TIME
        if reason is None:
            reason = sender.deliver(queued, leases.get(queued.unit) if leases is not None
                                     else None)
        if reason is not None:
            result.hold(reason)
            progress.blocked.add(queued.message.incident_id)
    return result


@dataclass
class _Sender:
    """The steps that take one message to Slack, and what they share within a drain."""

    store: Store
    notifier: Notifier
    pacer: Pacer
    now: datetime  # the drain's time: a failure's next try is counted from it
    progress: Progress
    result: Delivery
    keep_alive: Callable[[], None] | None

    def deliver(self, queued: Queued, lease: Lease | None) -> HoldReason | None:
        """Look, claim, send, mark. None when it was delivered, or failed (recorded: it is tried
        again later); a HoldReason when its unit's lease stopped it (it stays queued as it was)."""
        message, root = queued.message, self.progress.root_of(queued.message)
        try:
            try:
                thread = self._find(queued, root)  # in doubt only: did an earlier attempt land?
                if thread is None:
                    self._claim(queued, lease)  # 1. claim: the attempt is counted, fenced
                    thread = self._send(message, root)  # 2. send
            except DeliveryError as exc:
                self._mark_failed(queued, exc, lease)  # 3. mark failed: when to try again
                return None
            self.store.mark_sent(queued, thread, lease=lease)  # 3. mark sent, with Slack's ts
            self.progress.delivered(message, thread)
        except LeaseEnding as exc:  # held, but too near its end: after the next renewal
            log.info("delivery for %s waits: %s", queued.unit, exc)
            self.progress.ending.add(queued.unit)
            return HoldReason.LEASE_ENDING
        except LeaseLost as exc:
            log.warning("delivery for %s stopped: %s", queued.unit, exc)
            self.progress.lost.add(queued.unit)
            return HoldReason.LEASE_LOST
        return None

    def _find(self, queued: Queued, root: Thread | None) -> Thread | None:
        """The thread an earlier attempt delivered `queued` to, if one did."""
        if queued.attempts == 0:
            return None
        message = queued.message
        try:
            found = self.notifier.find(message, root)
        except DeliveryError as exc:
            if exc.retryable:
                raise
            # Cannot look (a missing history scope): posting again is the lesser evil.
            log.warning("cannot check whether notification %s already arrived (%s); sending it "
                        "again may show it twice", message.key, exc)
            return None
        if found is not None:
            log.info("notification %s was delivered by an earlier attempt; not posting it "
                     "again", message.key)
            self.result.found += 1
        return found

    def _claim(self, queued: Queued, lease: Lease | None) -> None:
        """After the channel's pacing; only while the lease covers the whole send."""
        self.pacer.wait(queued.message.channel)
        if self.keep_alive is not None:  # after the wait: the send starts now
            self.keep_alive()
        self.store.mark_attempt(queued, lease,
                                min_left=timedelta(seconds=self.notifier.timeout) + SEND_MARGIN)

    def _send(self, message: Message, root: Thread | None) -> Thread:
        try:
            thread = self.notifier.send(message, root, self.progress.linked_of(message))
        finally:
            self.pacer.sent(message.channel)
        self.result.sent += 1
        return thread

    def _mark_failed(self, queued: Queued, exc: DeliveryError, lease: Lease | None) -> None:
        """Queued still, with its error and when to try again; its incident's later messages
        wait behind it."""
        self.store.mark_failed(queued, str(exc), retry_at(exc, queued.attempts + 1, self.now),
                               lease=lease)
        self.progress.blocked.add(queued.message.incident_id)
        self.result.failed += 1
        self.result.errors.append(str(exc))
        _report(queued, exc)


def _report(queued: Queued, exc: DeliveryError) -> None:
    """Said once: the same error again on the next attempt is only a debug line."""
    if queued.last_error == str(exc):
        log.debug("notification %s still not delivered: %s", queued.message.key, exc)
    elif exc.retryable:
        log.warning("notification %s not delivered, will retry: %s", queued.message.key, exc)
    else:
        log.error("notification %s not delivered: %s. It stays queued and is sent once this is "
                  "fixed.", queued.message.key, exc)
