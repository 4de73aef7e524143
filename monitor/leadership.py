"""Which units of work this instance leads: leases claimed, renewed, shared and handed over.

Rules:
- The store owns the leases and their clock (store/base.py); this module only decides, once per
  tick, what to renew, what to give up and how many to claim, and remembers what it holds.
- Sharing is a fair share: with U units and N live instances (those whose heartbeat has not
  expired), each instance leads at most ceil(U / N). An instance above its share releases the
  surplus (an instance joined); one below claims free or expired leases (one left, or died and
  its leases ran out). Claims use SKIP LOCKED, so instances claiming together split the units.
- A unit taken over from another instance is not polled until one interval after its last
  committed cycle (`polled_at`, the store's clock): a hand-over never polls a unit twice in one
  interval.
- `plan` is pure; `Leadership.refresh` does the I/O and records each change for metrics and logs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from monitor.store.base import Lease, Store

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

    def refresh(self) -> list[Change]:
        """Heartbeat, renew, rebalance: one store round-trip each. Raises on a store error
        (the caller skips this tick; what it holds is still fenced)."""
        changes: list[Change] = []
        self.alive = self.store.heartbeat(self.holder, self.ttl)
        self.fresh = set()
        for unit, lease in sorted(self.held.items()):
            renewed = self.store.renew(lease, self.ttl)
            if renewed is None:
                self.lost(unit)
                changes.append(Change(unit, "lost", lease.token))
            else:
                self.held[unit] = renewed
        step = plan(self.units, self.held, self.alive)
        for unit in step.release:
            lease = self.held.pop(unit)
            self.store.release(lease)
            changes.append(Change(unit, "released", lease.token))
        if step.claim:
            free = [u for u in self.units if u not in self.held]
            for lease in self.store.claim(self.holder, free, self.ttl, step.claim):
                self.held[lease.unit] = lease
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

    def lost(self, unit: str) -> None:
        """A fenced write was refused, or the renewal failed: another instance leads it now."""
        self.held.pop(unit, None)
        self.fresh.discard(unit)

    def leave(self) -> None:
        """At shutdown: hand every unit over now instead of when the leases expire."""
        self.store.leave(self.holder)
        self.held.clear()

    @property
    def role(self) -> str:
        return "leader" if self.held else "standby"

    def describe(self) -> str:
        if not self.held:
            return f"standby ({self.alive} instance(s) alive, no unit left for this one)"
        parts = [f"{u} (token {lease.token})" for u, lease in sorted(self.held.items())]
        return f"leader of {', '.join(parts)}; {self.alive} instance(s) alive"
