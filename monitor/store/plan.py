"""The commit plan: what one cycle writes and deletes, decided once for every store.

Why a value: the two stores used to decide this each in their own SQL, with two ways of telling
what changed, and drifted (retention compared times as text in one, as times in the other). Here
it is a pure function of the State, the CycleRecord and what the store last held, so it is
tested without a database and a store only executes it: fence first, then these rows, in one
transaction. Built before that transaction, a bad value fails having written nothing, and a
re-run after a lost COMMIT (PostgreSQL) writes exactly the same rows.

Change detection, one rule for both stores: a document (an incident, a revision's facts) is
written when the digest of its canonical JSON (`canonical`: sorted keys, ASCII, no spaces)
differs from the digest of the canonical JSON of the document the store last held under that key:
loaded, or written by a commit that committed. Canonical, because the stores do not give back
the text they were given: JSONB re-orders members and re-spaces them, and both stores must find
an unchanged document unchanged (every rewritten row costs a write, and on PostgreSQL a dead row
version until vacuum). SQLite stores the canonical text itself, so the digest of a row it reads
is the digest of that text; PostgreSQL recomputes it from the value it reads. Digests, not
values: a value compare takes 1 for true, and a value held by reference could change with the
live state and hide the change it should show.

Retention's outbox rule: an incident's row, thread and sent messages are deleted only once none
of its messages waits to be sent, so a message queued for an old thread (a clock far ahead that
resolves and expires an incident in one cycle) still finds it. This cycle's messages are known
here; older ones waiting are a fact of the database, read by the executor inside its transaction
and handed to `Retention.deletable`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.store.base import RETENTION, CycleRecord, Lease, correlate_doc, merge_correlate
from monitor.window import Checkpoint

DocKey = tuple[str, ...]  # ("i", unit, incident id) or ("r", unit, service, revision)
Held = Mapping[DocKey, bytes]  # what a store last held: document key -> digest


def incident_key(unit: str, incident_id: str) -> DocKey:
    return ("i", unit, incident_id)


def revision_key(unit: str, service: str, name: str) -> DocKey:
    return ("r", unit, service, name)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)


def canonical(doc: Any) -> str:
    """A document's canonical JSON: the same text for the same JSON value, whatever its member
    order; ASCII, so any text (a lone surrogate from the logs) can be stored."""
    return _CANONICAL.encode(doc)


def digest_text(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def digest(doc: Any) -> bytes:
    """The digest of a document's canonical JSON."""
    return digest_text(canonical(doc))


@dataclass(frozen=True, slots=True)
class IncidentRow:
    id: str
    service: str
    signal: str
    status: str
    first_seen: datetime
    doc: dict[str, Any]
    text: str  # canonical(doc)


@dataclass(frozen=True, slots=True)
class RevisionRow:
    service: str
    name: str
    doc: dict[str, Any]
    text: str  # canonical(doc)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    key: str  # the message's idempotency key: queued twice is queued once
    incident_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Retention:
    """What retention takes this cycle (see the module docstring for the outbox rule)."""

    incidents: tuple[str, ...]  # resolved before the horizon, no message queued this cycle
    revisions: tuple[tuple[str, str], ...]  # (service, name) last seen before the horizon
    sent_kept_for: timedelta  # sent messages older than this (real time) go

    def deletable(self, waiting: Collection[str]) -> list[str]:
        """The expired incidents to delete, row, thread and sent messages, given the incidents
        with a message waiting in the outbox (read in the writing transaction)."""
        return [i for i in self.incidents if i not in waiting]


@dataclass(frozen=True, slots=True)
class CommitPlan:
    unit: str
    lease: Lease | None  # the fence: checked first, in the writing transaction
    incidents: list[IncidentRow]  # to upsert: only those that changed
    revisions: list[RevisionRow]  # to upsert: only those that changed
    correlate: dict[str, Any]  # the rest of the state, one document (meta `correlate:UNIT`)
    checkpoint: Checkpoint | None  # None: it stays where it was
    seen: Mapping[str, datetime]  # dedupe keys to insert (kept as given: a replay's are many)
    forget_before: datetime | None  # the unit's dedupe keys older than this go
    outbox: list[OutboxRow]  # in order: the outbox's ids follow it
    retention: Retention | None
    summary: dict[str, Any] | None  # the last-cycle record, when there is one
    written: dict[DocKey, bytes]  # the digests the store holds once this committed

    @property
    def correlate_key(self) -> str:
        return f"correlate:{self.unit}"

    def remember(self, held: MutableMapping[DocKey, bytes], gone: Iterable[str]) -> None:
        """Once committed (never before: a rolled-back write must be written again), what the
        store holds: the documents written, less those retention deleted (`gone`)."""
        held.update(self.written)
        for incident_id in gone:
            held.pop(incident_key(self.unit, incident_id), None)
        if self.retention is not None:
            for service, name in self.retention.revisions:
                held.pop(revision_key(self.unit, service, name), None)


def plan_commit(state: State, record: CycleRecord, held: Held) -> CommitPlan:
    """What committing `state` and `record` writes, given what the store last `held`."""
    unit = record.unit
    written: dict[DocKey, bytes] = {}
    incidents = []
    for i in state.incidents.values():
        doc = i.to_state()
        text = canonical(doc)
        key, sign = incident_key(unit, i.id), digest_text(text)
        if held.get(key) != sign:
            written[key] = sign
            incidents.append(IncidentRow(i.id, i.service, i.signal, i.status.value,
                                         i.first_seen, doc, text))
    revisions = []
    for f in state.revisions.values():
        doc = f.to_state()
        text = canonical(doc)
        key, sign = revision_key(unit, f.service, f.name), digest_text(text)
        if held.get(key) != sign:
            written[key] = sign
            revisions.append(RevisionRow(f.service, f.name, doc, text))
    return CommitPlan(
        unit=unit,
        lease=record.lease,
        incidents=incidents,
        revisions=revisions,
        correlate=correlate_doc(state),
        checkpoint=record.checkpoint,
        seen=record.seen,
        forget_before=record.forget_before,
        outbox=[OutboxRow(m.key, m.incident_id, m.to_json()) for m in record.messages],
        retention=_retention(state, record),
        summary=record.summary or None,
        written=written,
    )


def _retention(state: State, record: CycleRecord) -> Retention | None:
    horizon = record.retain_after
    if horizon is None:
        return None
    queued = {m.incident_id for m in record.messages}
    return Retention(
        incidents=tuple(i.id for i in state.incidents.values()
                        if i.status == IncidentStatus.RESOLVED and i.resolved_at is not None
                        and i.resolved_at < horizon and i.id not in queued),
        revisions=tuple((f.service, f.name) for f in state.revisions.values()
                        if f.last_seen is not None and f.last_seen < horizon),
        sent_kept_for=RETENTION,
    )


Loaded = tuple[str, dict[str, Any], bytes]  # (unit, document, digest of what the row holds)


def loaded_state(incidents: Iterable[Loaded], revisions: Iterable[Loaded],
                 metas: Iterable[Any]) -> tuple[State, dict[DocKey, bytes]]:
    """The State from a store's rows and correlate documents, and the digests the store now
    holds: the other half of the change-detection rule."""
    state = State()
    held: dict[DocKey, bytes] = {}
    for unit, doc, sign in incidents:
        incident = Incident.from_state(doc)
        state.incidents[incident.id] = incident
        held[incident_key(unit, incident.id)] = sign
    for unit, doc, sign in revisions:
        facts = RevisionFacts.from_state(doc)
        state.revisions[(facts.service, facts.name)] = facts
        held[revision_key(unit, facts.service, facts.name)] = sign
    for meta in metas:
        if meta:
            merge_correlate(state, meta)
    return state, held
