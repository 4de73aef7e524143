"""Which units of work this instance leads: leases claimed, renewed, shared and handed over.

Rules:
- The store owns the leases and their clock (store/base.py); this module only decides, once per
  tick, what to renew, what to give up and how many to claim, and remembers what it holds.
- Sharing is a fair share: with U units and N live instances (those whose heartbeat has not
  expired), each instance leads at most ceil(U / N). An instance above its share releases the
  surplus (an instance joined); one below claims free or expired leases (one left, or died and
  its leases ran out). Claims use SKIP LOCKED, so instances claiming together split the units.
- A unit is read at most once per interval, by whichever instance, hand-overs included. A read
  goes through `guard`, which, right before it: waits until one interval after this instance's
  previous read of the unit (ticks can come closer than an interval); then makes sure the lease
  runs for at least one more interval, by the local monotonic clock measured from the store's
  answer (`until`), renewing it if not and refusing (LeaseLost) if it is lost: a leader that was
  paused (SIGSTOP, a frozen container) or whose tick outran the lease does not read once more
  on waking. So no other instance can claim the unit within an interval after a read.
- A lease is never given up (rebalancing, `leave` at shutdown) within an interval of this
  instance's last read of its unit, committed or not (a cycle abandoned at SIGTERM has read):
  it is renewed to run out one interval after that read instead, and the next leader claims it
  then.
- A unit taken over from another instance is not polled until one interval after its last
  committed cycle (`polled_at`, the store's clock), in case its previous leader gave it up
  early (an older version).
- Burst mode is `monitor once` (as arq's worker has one): the same leases, reads and renewals,
  but the instance does not count itself alive (a check of a few seconds must not make the
  `monitor run` instances give units up to it), claims every free unit, renews while its check
  runs (`keep`), and releases what it holds at once when it leaves, so the next `once` (a
  post-deploy gate runs it twice in a row) can check again.
- `keep` is what a long check calls between entries, pages and sends (check.Watch): a clock read
  until a lease has used a third of its time, or has less left than a send needs (`min_left`),
  then every held lease is renewed (later units' too: they wait their turn).
- `plan` is pure; `Leadership.refresh` does the I/O and records each change for metrics and logs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.check import Cancelled
from monitor.correlate.probe import Probe
from monitor.entries import LogEntry
from monitor.sources.base import Probing, Source
from monitor.store.base import Lease, LeaseEnding, LeaseLost, Store
from monitor.window import ReadStats, Window

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    release: list[str]  # units held above the fair share
    claim: int  # how many more units to try to take


def plan(units: Sequence[str], held: Collection[str], alive: int) -> Plan:
    """Keep the first `share` held units (by name, so the choice is stable), claim up to it."""
    share = math.ceil(len(units) / max(alive, 1))
    kept = sorted(u for u in held if u in units)
    release = kept[share:] + sorted(u for u in held if u not in units)
    return Plan(release=release, claim=max(0, share - len(kept[:share])))


@dataclass(frozen=True, slots=True)
class Change:
    unit: str
    kind: str  # "acquired", "lost" or "released"
    token: int


@dataclass
class Leadership:
    store: Store
    holder: str
    units: list[str]
    ttl: timedelta
    interval: timedelta
    held: dict[str, Lease] = field(default_factory=dict)
    alive: int = 0
    fresh: set[str] = field(default_factory=set)  # taken over this tick: maybe not due yet
    # `sleep` waits before a read (an Event's `wait`: True when stopped); `clock` is monotonic.
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.monotonic
    until: dict[str, float] = field(default_factory=dict)  # unit -> lease surely held until
    read_at: dict[str, float] = field(default_factory=dict)  # unit -> this instance's last read
    burst: bool = False  # `monitor once` (see the module docstring)
    min_left: timedelta = timedelta(0)  # lease a send needs: the notifier's timeout and a margin
    renewals: int = 0  # by `keep`

    def refresh(self) -> list[Change]:
        """Heartbeat, renew, rebalance: one store round-trip each. Raises on a store error
        (the caller skips this tick; what it holds is still fenced)."""
        changes: list[Change] = []
        self.alive = 1 if self.burst else self.store.heartbeat(self.holder, self.ttl)
        self.fresh = set()
        for unit, lease in sorted(self.held.items()):
            if self._renew(lease, self.ttl) is None:
                changes.append(Change(unit, "lost", lease.token))
        step = plan(self.units, self.held, self.alive)
        for unit in step.release:
            lease = self.held.pop(unit)
            self.until.pop(unit, None)
            if self._left(unit) > 0:
                self._expire(lease)
            else:
                self.store.release(lease)
            changes.append(Change(unit, "released", lease.token))
        if step.claim:
            free = [u for u in self.units if u not in self.held]
            sent = self.clock()
            for lease in self.store.claim(self.holder, free, self.ttl, step.claim):
                self.held[lease.unit] = lease
                self.until[lease.unit] = _until(sent, lease)
                self.fresh.add(lease.unit)
                changes.append(Change(lease.unit, "acquired", lease.token))
        for change in changes:
            log.info("lease of %s %s (token %d); this instance leads %s", change.unit,
                     change.kind, change.token, ", ".join(sorted(self.held)) or "nothing")
        return changes

    def due(self, unit: str) -> bool:
        """A unit just taken over waits until one interval after its last poll by anyone."""
        lease = self.held.get(unit)
        if lease is None:
            return False
        if unit not in self.fresh or lease.polled_at is None or lease.now is None:
            return True
        return lease.now - lease.polled_at >= self.interval

    def guard(self, unit: str, source: Source) -> Source:
        """`source`, read only as `reading` allows."""
        return _Guarded(self, unit, source)

    def reading(self, unit: str) -> None:
        """Right before this instance reads `unit` (see the module docstring). Raises Cancelled
        when `sleep` says it stopped while waiting, LeaseLost when the lease is not this
        instance's any more; nothing was read then."""
        last = self.read_at.get(unit)
        if last is not None:
            wait = last + self.interval.total_seconds() - self.clock()
            if wait > 0 and self.sleep(wait):
                raise Cancelled("shutting down while waiting to read")
        lease = self.held.get(unit)
        if lease is None:
            raise LeaseLost(f"unit {unit}: this instance does not lead it")
        if not self._lasts(unit):
            if self._renew(lease, self.ttl) is None:
                raise LeaseLost(f"unit {unit}: the lease (token {lease.token}) was taken over "
                                "before this read (paused past it, or the tick outran it)")
            if not self._lasts(unit):
                raise LeaseEnding(f"unit {unit}: the lease does not last one more interval")
        self.read_at[unit] = self.clock()

    def keep(self, unit: str) -> None:
        """During a long check: renew what is due (see the module docstring). Raises LeaseLost
        when `unit`'s lease was taken over, now or at an earlier renewal."""
        need = max(self.ttl.total_seconds() * 2 / 3, self.min_left.total_seconds())
        now = self.clock()
        if any(self.until.get(u, now) - now < need for u in self.held):
            for held, lease in sorted(self.held.items()):
                if self._renew(lease, self.ttl) is None:
                    log.warning("lease of %s lost (token %d): another instance took it over",
                                held, lease.token)
                else:
                    self.renewals += 1
        if unit not in self.held:
            raise LeaseLost(f"unit {unit}: the lease was taken over during this check")

    def lost(self, unit: str) -> None:
        """A fenced write was refused, or the renewal failed: another instance leads it now."""
        self.held.pop(unit, None)
        self.until.pop(unit, None)
        self.fresh.discard(unit)

    def leave(self) -> None:
        """At shutdown: hand every unit over now instead of when the leases expire, except one
        read less than an interval ago, whose lease runs out one interval after that read (in
        burst mode every unit at once: see the module docstring)."""
        if self.burst:
            for lease in self.held.values():
                self.store.release(lease)
            self.held.clear()
            self.until.clear()
            self.fresh.clear()
            return
        late = {unit for unit in self.held if self._left(unit) > 0}
        if not late:
            self.store.leave(self.holder)
        else:
            for unit, lease in sorted(self.held.items()):
                if unit in late:
                    self._expire(lease)
                else:
                    self.store.release(lease)
            self.store.heartbeat(self.holder, timedelta(0))  # no longer counted alive
        self.held.clear()
        self.until.clear()
        self.fresh.clear()

    def _renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        sent = self.clock()
        renewed = self.store.renew(lease, ttl)
        if renewed is None:
            self.lost(lease.unit)
        else:
            self.held[lease.unit] = renewed
            self.until[lease.unit] = _until(sent, renewed)
        return renewed

    def _lasts(self, unit: str) -> bool:
        """The lease is held for at least one more interval (local monotonic clock)."""
        until = self.until.get(unit)
        return until is not None and self.clock() + self.interval.total_seconds() <= until

    def _left(self, unit: str) -> float:
        """Seconds until one interval after this instance's last read of `unit`."""
        last = self.read_at.get(unit)
        return 0.0 if last is None else last + self.interval.total_seconds() - self.clock()

    def _expire(self, lease: Lease) -> None:
        """Give `lease` up one interval after the unit's last read: it runs out then."""
        self.store.renew(lease, timedelta(seconds=max(self._left(lease.unit), 0.0)))

    @property
    def role(self) -> str:
        return "leader" if self.held else "standby"

    def describe(self) -> str:
        if not self.held:
            return f"standby ({self.alive} instance(s) alive, no unit left for this one)"
        parts = [f"{u} (token {lease.token})" for u, lease in sorted(self.held.items())]
        return f"leader of {', '.join(parts)}; {self.alive} instance(s) alive"


def _until(sent: float, lease: Lease) -> float:
    """When `lease` surely still holds, by the monotonic clock: its time left as the store
    answered, counted from before the request (so never later than the store's expiry)."""
    now = lease.now or datetime.now(UTC)
    return sent + (lease.expires_at - now).total_seconds()


class _Guarded:
    def __init__(self, leadership: Leadership, unit: str, source: Source) -> None:
        self.leadership = leadership
        self.unit = unit
        self.source = source
        self.live = source.live
        # a read of the needles asks for evidence too: through the guard, as the cycle's own
        # (the lease was checked before the cycle's read, and is renewed while it probes)
        self.selective = isinstance(source, Probing) and source.selective

    def probe(self, probe: Probe, stats: ReadStats) -> tuple[list[LogEntry], bool]:
        if not isinstance(self.source, Probing):
            raise TypeError("the guarded source answers no probes")
        return self.source.probe(probe, stats)

    def read(self, window: Window, stats: ReadStats) -> Iterator[LogEntry]:
        self.leadership.reading(self.unit)
        yield from self.source.read(window, stats)
