"""The SQLite store: the default, for one long-lived host or local use.

Rules: standard library only; the schema is versioned with `PRAGMA user_version` and migrated by
the monitor itself, each step in a transaction, so running any version twice is harmless. Values
the core owns (incidents, revision facts) are stored as JSON documents beside the columns queries
need; the outbox is a real table keyed by the message's idempotency key, so enqueueing the same
transition twice is a no-op.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.entries import format_time, parse_time
from monitor.notify.message import Action, Message, Thread
from monitor.sources.base import Checkpoint
from monitor.store.base import RETENTION, CycleRecord, Queued, Sent

_Doc = TypeVar("_Doc", Incident, RevisionFacts)

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        signal TEXT NOT NULL,
        status TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX incidents_open ON incidents (status, service, signal);
    CREATE TABLE revisions (
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (service, name)
    );
    CREATE TABLE threads (
        incident_id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        ts TEXT NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE checkpoints (unit TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE seen (key TEXT PRIMARY KEY, ts TEXT NOT NULL);
    CREATE INDEX seen_ts ON seen (ts);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        incident_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        sent_at TEXT,
        sent_ts TEXT
    );
    CREATE INDEX outbox_queued ON outbox (sent_at, id);
    """,
    # 2: a failed message waits before its next attempt (Retry-After, backoff)
    """
    ALTER TABLE outbox ADD COLUMN next_attempt_at TEXT;
    """,
    # 3: when the last attempt started, so a send still in flight is not looked for too early
    """
    ALTER TABLE outbox ADD COLUMN attempted_at TEXT;
    """,
]


def _ts(t: datetime) -> str:
    """Fixed-width UTC text, so SQLite's string comparison is time order (RFC3339 with an
    optional fraction is not: '...00.5Z' sorts before '...00Z')."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key(key: str) -> str:
    """A dedupe key as SQLite can store it: log text may hold lone surrogates."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _now() -> str:
    return _ts(datetime.now(UTC))


class SQLiteStore:
    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        # check_same_thread=False: `monitor run` opens the store in the main thread and uses it
        # from the scheduler's worker, one at a time (max_instances=1), never concurrently.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._written: dict[str, str] = {}  # document key -> JSON as stored
        self.migrate()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def migrate(self) -> None:
        # A current schema needs no write lock: `monitor status` must not wait for `monitor run`.
        if self.schema_version == len(MIGRATIONS):
            return
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- state ---------------------------------------------------------------------------

    def load_state(self) -> State:
        state = State()
        for (data,) in self._db.execute("SELECT data FROM incidents"):
            incident = Incident.from_state(json.loads(data))
            state.incidents[incident.id] = incident
            self._written[f"i\x1f{incident.id}"] = data
        for (data,) in self._db.execute("SELECT data FROM revisions"):
            facts = RevisionFacts.from_state(json.loads(data))
            state.revisions[(facts.service, facts.name)] = facts
            self._written[f"r\x1f{facts.service}\x1f{facts.name}"] = data
        meta = self._meta("correlate")
        if meta:
            state.request_services = set(meta.get("request_services", []))
            state.source_failures = dict(meta.get("source_failures", {}))
            for key, items in meta.get("pending", {}).items():
                service, signal = key.split("\x1f", 1)
                state.pending[(service, signal)] = [
                    (parse_time(at), revision, sample) for at, revision, sample in items
                ]
        return state

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def checkpoint(self, unit: str) -> Checkpoint | None:
        row = self._db.execute("SELECT value FROM checkpoints WHERE unit = ?", (unit,)).fetchone()
        return Checkpoint.from_json(json.loads(row[0])) if row else None

    def seen_keys(self, keys: list[str]) -> set[str]:
        stored = {_key(k): k for k in keys}
        found: set[str] = set()
        names = list(stored)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                stored[k]
                for (k,) in self._db.execute(f"SELECT key FROM seen WHERE key IN ({marks})", chunk)
            )
        return found

    def commit_cycle(self, state: State, record: CycleRecord) -> None:
        # Only the documents that changed since they were loaded or last written: most cycles
        # touch one incident and a revision or two, not the whole history.
        incidents = self._changed(
            (f"i\x1f{i.id}", i, json.dumps(i.to_state())) for i in state.incidents.values())
        revisions = self._changed(
            (f"r\x1f{f.service}\x1f{f.name}", f, json.dumps(f.to_state()))
            for f in state.revisions.values())
        with self._tx() as db:
            db.executemany(
                """INSERT INTO incidents (id, service, signal, status, first_seen, data)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                       data = excluded.data""",
                [(i.id, i.service, i.signal, i.status.value, _ts(i.first_seen), text)
                 for key, i, text in incidents],
            )
            db.executemany(
                """INSERT INTO revisions (service, name, data) VALUES (?, ?, ?)
                   ON CONFLICT (service, name) DO UPDATE SET data = excluded.data""",
                [(f.service, f.name, text) for key, f, text in revisions],
            )
            correlate = {
                "request_services": sorted(state.request_services),
                "source_failures": state.source_failures,
                "pending": {
                    f"{service}\x1f{signal}": [
                        (format_time(at), revision, sample) for at, revision, sample in items
                    ]
                    for (service, signal), items in state.pending.items()
                },
            }
            self._set_meta(db, "correlate", correlate)
            if record.checkpoint is not None:
                db.execute(
                    """INSERT INTO checkpoints (unit, value) VALUES (?, ?)
                       ON CONFLICT (unit) DO UPDATE SET value = excluded.value""",
                    (record.unit, json.dumps(record.checkpoint.to_json())),
                )
            db.executemany(
                "INSERT OR IGNORE INTO seen (key, ts) VALUES (?, ?)",
                [(_key(k), _ts(ts)) for k, ts in record.seen.items()],
            )
            if record.forget_before is not None:
                db.execute("DELETE FROM seen WHERE ts < ?", (_ts(record.forget_before),))
            if record.retain_after is not None:
                cutoff = format_time(record.retain_after)
                db.execute("DELETE FROM incidents WHERE status = 'resolved' AND "
                           "json_extract(data, '$.resolved_at') < ?", (cutoff,))
                db.execute("DELETE FROM revisions WHERE json_extract(data, '$.last_seen') < ?",
                           (cutoff,))
                db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                           (_ts(datetime.now(UTC) - RETENTION),))
            created = _now()
            db.executemany(
                """INSERT OR IGNORE INTO outbox (key, incident_id, payload, created_at)
                   VALUES (?, ?, ?, ?)""",
                [(m.key, m.incident_id, json.dumps(m.to_json()), created)
                 for m in record.messages],
            )
            if record.summary:
                self._set_meta(db, "last_cycle", record.summary)

        # Remembered only once committed: a rolled-back write must be written again.
        self._written.update((key, text) for key, _, text in [*incidents, *revisions])

    def _changed(self, docs: Iterable[tuple[str, _Doc, str]]) -> list[tuple[str, _Doc, str]]:
        return [(key, obj, text) for key, obj, text in docs if self._written.get(key) != text]

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute(
            """INSERT INTO meta (key, value) VALUES (?, ?)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
            (key, json.dumps(value)),
        )

    def last_cycle(self) -> dict[str, Any] | None:
        value = self._meta("last_cycle")
        return value if isinstance(value, dict) else None

    def open_incidents(self) -> list[Incident]:
        rows = self._db.execute(
            "SELECT data FROM incidents WHERE status = ? ORDER BY first_seen",
            (IncidentStatus.OPEN.value,),
        )
        return [Incident.from_state(json.loads(d)) for (d,) in rows]

    # --- outbox --------------------------------------------------------------------------

    def queued(self) -> list[Queued]:
        rows = self._db.execute(
            "SELECT id, payload, attempts, last_error, next_attempt_at, attempted_at FROM outbox "
            "WHERE sent_at IS NULL ORDER BY id"
        )
        return [Queued(i, Message.from_json(json.loads(p)), a, e,
                       parse_time(n) if n else None, parse_time(t) if t else None)
                for i, p, a, e, n, t in rows]

    def mark_attempt(self, queued: Queued) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, attempted_at = ? WHERE id = ?",
                       (_now(), queued.id))

    def sent(self, incident_id: str) -> list[Sent]:
        rows = self._db.execute(
            "SELECT payload, sent_at, sent_ts FROM outbox WHERE incident_id = ? AND sent_at IS "
            "NOT NULL ORDER BY sent_at, id", (incident_id,))
        return [Sent(Message.from_json(json.loads(p)), parse_time(at), ts) for p, at, ts in rows]

    def thread(self, incident_id: str) -> Thread | None:
        row = self._db.execute(
            "SELECT channel, ts FROM threads WHERE incident_id = ?", (incident_id,)
        ).fetchone()
        return Thread(channel=row[0], ts=row[1]) if row else None

    def mark_sent(self, queued: Queued, thread: Thread) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET sent_at = ?, sent_ts = ? WHERE id = ?",
                (_now(), thread.ts, queued.id),
            )
            if queued.message.action is Action.POST_ROOT:
                db.execute(
                    "INSERT OR REPLACE INTO threads (incident_id, channel, ts) VALUES (?, ?, ?)",
                    (queued.message.incident_id, thread.channel, thread.ts),
                )

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET last_error = ?, next_attempt_at = ? WHERE id = ?",
                (error, format_time(retry_at), queued.id),
            )

    def close(self) -> None:
        self._db.close()
