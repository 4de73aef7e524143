"""The Store protocol: what the monitor remembers, and the one transaction that changes it.

Rules: a cycle's conclusions (correlation state, dedupe keys, checkpoint, outbox messages) are
written by `commit_cycle` in ONE transaction, so a crash leaves either the old cycle or the new
one, never half; and messages are in the outbox before anyone tries to send them. Delivery then
only moves messages from "queued" to "sent" (`mark_sent`), one at a time. What that transaction
writes and deletes is decided once, for every store, by the commit plan (store/plan.py).

Several instances share one store (#8). The state is partitioned by unit of work (a project and
its services): each unit's incidents, revision facts, dedupe keys and outbox rows carry its name,
and a cycle loads and writes only its own unit's. Exactly one instance at a time may write a
unit: the holder of its lease. A lease is a row (unit, holder, token, expires_at); the token
grows by one each time the lease changes hands. Every write for a unit (`commit_cycle`,
`mark_attempt`, `mark_sent`, `mark_failed`) checks, inside its own transaction and before
anything else, that the lease it was given still has that holder and token (the fence), and
raises LeaseLost otherwise, having written nothing. An instance that paused past its lease (a GC,
a frozen container) therefore cannot write or post anything once another took the unit over.
The store's clock decides expiry (PostgreSQL's `now()`; SQLite is one host, its clock).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.correlate.state import State
from monitor.messages import Message, Queued, Sent, Thread
from monitor.times import format_time, parse_time
from monitor.window import Checkpoint

RETENTION = timedelta(days=30)


class NotAMonitorDatabase(OSError):
    """The state path holds something that is not a usable monitor database: garbage, a
    truncated file, a directory. An OSError, so every command reports it as a store failure."""


class LeaseLost(Exception):
    """A write was refused: the unit's lease is no longer this holder's. Nothing of that write
    happened."""


class LeaseEnding(LeaseLost):
    """A send was not started: the lease, still held, ends before the send could finish. The
    next renewal makes room; nothing was written."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to poll and send for one unit of work, until `expires_at` (store clock)."""

    unit: str
    holder: str
    token: int  # the fencing token: grows by one at each change of holder
    acquired_at: datetime
    expires_at: datetime
    polled_at: datetime | None = None  # the unit's last committed cycle, by any holder
    now: datetime | None = None  # the store's clock when this was read


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One unit's lease as `monitor status` shows it."""

    unit: str
    holder: str | None
    token: int
    acquired_at: datetime | None
    expires_at: datetime | None
    polled_at: datetime | None
    holder_alive: bool  # the holder's instance heartbeat has not expired
    now: datetime

    @property
    def held(self) -> bool:
        return self.holder is not None and self.expires_at is not None and \
            self.expires_at > self.now


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
    lease: Lease | None = None  # the fence: the commit happens only while this is still held


class Store(Protocol):
    def load_state(self, unit: str | None = None) -> State:
        """One unit's state; with None, every unit's together (status and reports)."""
        ...

    def checkpoint(self, unit: str) -> Checkpoint | None: ...

    def seen_keys(self, keys: list[str]) -> set[str]: ...

    def commit_cycle(self, state: State, record: CycleRecord) -> None: ...

    def queued(self, units: Collection[str] | None = None) -> list[Queued]: ...

    def thread(self, incident_id: str) -> Thread | None: ...

    def sent(self, incident_id: str) -> list[Sent]: ...

    def mark_sent(self, queued: Queued, thread: Thread, lease: Lease | None = None) -> None: ...

    def mark_attempt(self, queued: Queued, lease: Lease | None = None,
                     min_left: timedelta = timedelta(0)) -> None:
        """Count an attempt before the call; with a lease, only while it has `min_left` to run,
        so a send never starts that the lease would not cover."""
        ...

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None,
                    lease: Lease | None = None) -> None:
        ...

    # --- leases (see the module docstring) ---------------------------------------------

    def heartbeat(self, holder: str, ttl: timedelta) -> int:
        """This instance is alive for `ttl` more; returns how many instances are alive."""
        ...

    def claim(self, holder: str, units: Collection[str], ttl: timedelta,
              limit: int) -> list[Lease]:
        """Take up to `limit` of `units` whose lease is free or expired (a new token each)."""
        ...

    def renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        """Extend a lease still held with the same token; None when it was lost."""
        ...

    def release(self, lease: Lease) -> None: ...

    def leave(self, holder: str) -> None:
        """This instance stops: its leases are released and it no longer counts as alive."""
        ...

    def leases(self) -> list[LeaseInfo]: ...

    def last_cycle(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


def check_fence(lease: Lease, row: tuple[Any, Any, Any] | None, now: datetime,
                min_left: timedelta, parse: Callable[[Any], datetime | None]) -> None:
    """Raise LeaseLost unless `row` (holder, token, expires_at of the unit's lease, read in the
    writing transaction) is still `lease`, with at least `min_left` of it to run."""
    if row is None or row[0] != lease.holder or int(row[1]) != lease.token:
        holder = row[0] if row is not None else None
        raise LeaseLost(f"unit {lease.unit}: the lease (token {lease.token}) is no longer "
                        f"this instance's" + (f"; {holder} holds it" if holder else ""))
    expires = parse(row[2])
    if min_left and (expires is None or expires <= now + min_left):
        raise LeaseEnding(f"unit {lease.unit}: the lease ends in less than "
                        f"{min_left.total_seconds():.0f}s; not starting a send it may not cover")


def correlate_doc(state: State) -> dict[str, Any]:
    """The parts of State that are not incidents or revisions, as one JSON document. Maps are
    kept as lists: their order is the order the core met them in (JSONB would re-sort keys)."""
    return {
        "request_services": sorted(state.request_services),
        "source_failures": [[unit, n] for unit, n in state.source_failures.items()],
        "read_rates": [[name, rate] for name, rate in state.read_rates.items()],
        "pending": [
            [service, signal,
             [[format_time(at), revision, sample, instance]
              for at, revision, sample, instance in items]]
            for (service, signal), items in state.pending.items()
        ],
    }


def merge_correlate(state: State, doc: dict[str, Any]) -> None:
    """Add a `correlate_doc` (or the older SQLite form, maps as objects) to `state`."""
    state.request_services.update(doc.get("request_services", []))
    failures = doc.get("source_failures", [])
    state.source_failures.update(failures.items() if isinstance(failures, dict) else
                                 ((unit, n) for unit, n in failures))
    state.read_rates.update((name, float(rate)) for name, rate in doc.get("read_rates", []))
    pending = doc.get("pending", [])
    if isinstance(pending, dict):
        pending = [[*key.split("\x1f", 1), items] for key, items in pending.items()]
    for service, signal, items in pending:
        state.pending[(service, signal)] = [
            (parse_time(item[0]), item[1], item[2], item[3] if len(item) > 3 else None)
            for item in items]
