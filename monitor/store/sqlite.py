"""The SQLite store: the default, for one long-lived host or local use.

Rules: standard library only; the schema is versioned with `PRAGMA user_version` and migrated by
the monitor itself, each step in a transaction, so running any version twice is harmless. Values
the core owns (incidents, revision facts) are stored as JSON documents beside the columns queries
need, in the canonical form of the commit plan (store/plan.py), which this store only executes:
so what a row holds is known from its text. The outbox is a real table keyed by the message's
idempotency key, so enqueueing the same transition twice is a no-op.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.correlate.model import Incident, IncidentStatus
from monitor.correlate.state import State
from monitor.instance import gone_locally
from monitor.messages import Action, Message, Queued, Sent, Thread
from monitor.store.base import CycleRecord, Lease, LeaseInfo, NotAMonitorDatabase, check_fence
from monitor.store.plan import CommitPlan, DocKey, digest_text, loaded_state, plan_commit
from monitor.times import format_time, parse_time, sortable
from monitor.window import Checkpoint

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
    # 4: the state partitioned by unit of work, leases and instances (see store/base.py). A
    # store that watched one unit gives it its rows; with several, older rows stay unit ''
    # (shown by status and reports, no longer loaded by a cycle).
    """
    ALTER TABLE incidents ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    CREATE INDEX incidents_unit ON incidents (unit, status);
    CREATE TABLE revisions_4 (
        unit TEXT NOT NULL DEFAULT '',
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (unit, service, name)
    );
    INSERT INTO revisions_4 (service, name, data) SELECT service, name, data FROM revisions;
    DROP TABLE revisions;
    ALTER TABLE revisions_4 RENAME TO revisions;
    ALTER TABLE seen ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    CREATE INDEX seen_unit_ts ON seen (unit, ts);
    ALTER TABLE outbox ADD COLUMN unit TEXT NOT NULL DEFAULT '';
    CREATE TABLE leases (
        unit TEXT PRIMARY KEY,
        holder TEXT,
        token INTEGER NOT NULL DEFAULT 0,
        acquired_at TEXT,
        renewed_at TEXT,
        expires_at TEXT NOT NULL DEFAULT '',
        polled_at TEXT
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        seen_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    UPDATE incidents SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE revisions SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE seen SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE outbox SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE meta SET key = 'correlate:' || (SELECT unit FROM checkpoints)
        WHERE key = 'correlate' AND (SELECT count(*) FROM checkpoints) = 1;
    """,
]


def _key(key: str) -> str:
    """A dedupe key as SQLite can store it: log text may hold lone surrogates."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _now() -> str:
    return sortable(datetime.now(UTC))


class SQLiteStore:
    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        # check_same_thread=False: `monitor run` opens the store in the main thread and uses it
        # from the scheduler's worker, one at a time (max_instances=1), never concurrently.
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # A truncated file opens, and fails at the first page it lacks, mid-cycle: find out
            # now. It reads every page once (milliseconds for a month of state).
            (verdict,) = self._db.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            self._held: dict[DocKey, bytes] = {}  # what the rows hold (store/plan.py)
            self.migrate()
        except sqlite3.DatabaseError as exc:  # garbage, truncated, a directory, unreadable
            raise NotAMonitorDatabase(f"{path}: not a monitor database ({exc})") from None

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

    def load_state(self, unit: str | None = None) -> State:
        where, args = ("WHERE unit = ?", (unit,)) if unit is not None else ("", ())
        # A row holds the canonical JSON the plan wrote: its digest is that of its text (an
        # older row's differs, and the next commit rewrites it canonical).
        incidents = ((u, json.loads(d), digest_text(d)) for u, d in
                     self._db.execute(f"SELECT unit, data FROM incidents {where}", args))
        revisions = ((u, json.loads(d), digest_text(d)) for u, d in
                     self._db.execute(f"SELECT unit, data FROM revisions {where}", args))
        if unit is not None:
            metas = [self._meta(f"correlate:{unit}")]
        else:
            # every unit's, and one from before the state was partitioned
            metas = [json.loads(v) for (v,) in self._db.execute(
                "SELECT value FROM meta WHERE key = 'correlate' OR key LIKE 'correlate:%' "
                "ORDER BY key")]
        state, held = loaded_state(incidents, revisions, metas)
        self._held.update(held)
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
        plan = plan_commit(state, record, self._held)
        with self._tx() as db:
            now = datetime.now(UTC)
            if plan.lease is not None:
                _fence(db, plan.lease, now)
            gone = self._execute(db, plan, now)
        plan.remember(self._held, gone)

    def _execute(self, db: sqlite3.Connection, plan: CommitPlan, now: datetime) -> list[str]:
        """The plan's rows, after the fence; returns the incidents retention deleted."""
        unit = plan.unit
        db.executemany(
            """INSERT INTO incidents (id, unit, service, signal, status, first_seen, data)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                   data = excluded.data""",
            [(i.id, unit, i.service, i.signal, i.status, sortable(i.first_seen), i.text)
             for i in plan.incidents],
        )
        db.executemany(
            """INSERT INTO revisions (unit, service, name, data) VALUES (?, ?, ?, ?)
               ON CONFLICT (unit, service, name) DO UPDATE SET data = excluded.data""",
            [(unit, f.service, f.name, f.text) for f in plan.revisions],
        )
        self._set_meta(db, plan.correlate_key, plan.correlate)
        if plan.checkpoint is not None:
            db.execute(
                """INSERT INTO checkpoints (unit, value) VALUES (?, ?)
                   ON CONFLICT (unit) DO UPDATE SET value = excluded.value""",
                (unit, json.dumps(plan.checkpoint.to_json())),
            )
        db.executemany(
            "INSERT OR IGNORE INTO seen (key, unit, ts) VALUES (?, ?, ?)",
            # a generator: a replay's keys are many
            ((_key(k), unit, sortable(ts)) for k, ts in plan.seen.items()),
        )
        if plan.forget_before is not None:
            db.execute("DELETE FROM seen WHERE unit = ? AND ts < ?",
                       (unit, sortable(plan.forget_before)))
        created = sortable(now)
        db.executemany(
            """INSERT OR IGNORE INTO outbox (key, unit, incident_id, payload, created_at)
               VALUES (?, ?, ?, ?, ?)""",
            [(m.key, unit, m.incident_id, json.dumps(m.payload), created) for m in plan.outbox],
        )
        gone: list[str] = []
        if (retention := plan.retention) is not None:
            gone = retention.deletable(self._waiting(db, retention.incidents))
            db.executemany("DELETE FROM incidents WHERE unit = ? AND id = ?",
                           [(unit, i) for i in gone])
            db.executemany("DELETE FROM revisions WHERE unit = ? AND service = ? AND name = ?",
                           [(unit, s, n) for s, n in retention.revisions])
            db.executemany("DELETE FROM threads WHERE incident_id = ?", [(i,) for i in gone])
            db.executemany("DELETE FROM outbox WHERE incident_id = ? AND sent_at IS NOT NULL",
                           [(i,) for i in gone])
            db.execute("DELETE FROM outbox WHERE unit = ? AND sent_at IS NOT NULL AND "
                       "sent_at < ?", (unit, sortable(now - retention.sent_kept_for)))
        db.execute("UPDATE leases SET polled_at = ? WHERE unit = ?", (created, unit))
        if plan.summary is not None:
            self._set_meta(db, "last_cycle", plan.summary)
        return gone

    @staticmethod
    def _waiting(db: sqlite3.Connection, incidents: Collection[str]) -> set[str]:
        """Those of `incidents` with a message still to send (any unit's)."""
        ids, waiting = list(incidents), set[str]()
        for n in range(0, len(ids), 500):
            chunk = ids[n : n + 500]
            waiting.update(i for (i,) in db.execute(
                "SELECT DISTINCT incident_id FROM outbox WHERE sent_at IS NULL AND "
                f"incident_id IN ({','.join('?' * len(chunk))})", chunk))
        return waiting

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

    def queued(self, units: Collection[str] | None = None) -> list[Queued]:
        rows = self._db.execute(
            "SELECT id, payload, attempts, last_error, next_attempt_at, attempted_at, unit "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id"
        )
        return [Queued(i, Message.from_json(json.loads(p)), a, e,
                       parse_time(n) if n else None, parse_time(t) if t else None, u)
                for i, p, a, e, n, t, u in rows if units is None or u in units]

    def mark_attempt(self, queued: Queued, lease: Lease | None = None,
                     min_left: timedelta = timedelta(0)) -> None:
        with self._tx() as db:
            now = datetime.now(UTC)
            if lease is not None:
                _fence(db, lease, now, min_left)
            db.execute("UPDATE outbox SET attempts = attempts + 1, attempted_at = ? WHERE id = ?",
                       (sortable(now), queued.id))

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

    def mark_sent(self, queued: Queued, thread: Thread, lease: Lease | None = None) -> None:
        with self._tx() as db:
            if lease is not None:
                _fence(db, lease, datetime.now(UTC))
            db.execute(
                "UPDATE outbox SET sent_at = ?, sent_ts = ? WHERE id = ?",
                (_now(), thread.ts, queued.id),
            )
            if queued.message.action is Action.POST_ROOT:
                db.execute(
                    "INSERT OR REPLACE INTO threads (incident_id, channel, ts) VALUES (?, ?, ?)",
                    (queued.message.incident_id, thread.channel, thread.ts),
                )

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None,
                    lease: Lease | None = None) -> None:
        with self._tx() as db:
            if lease is not None:
                _fence(db, lease, datetime.now(UTC))
            db.execute(
                "UPDATE outbox SET last_error = ?, next_attempt_at = ? WHERE id = ?",
                (error, format_time(retry_at), queued.id),
            )

    # --- leases ------------------------------------------------------------------------

    def heartbeat(self, holder: str, ttl: timedelta) -> int:
        with self._tx() as db:
            now = datetime.now(UTC)
            db.execute(
                """INSERT INTO instances (id, started_at, seen_at, expires_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at,
                       expires_at = excluded.expires_at""",
                (holder, sortable(now), sortable(now), sortable(now + ttl)))
            db.execute("DELETE FROM instances WHERE expires_at < ?", (sortable(now - GONE),))
            (alive,) = db.execute("SELECT count(*) FROM instances WHERE expires_at > ?",
                                  (sortable(now),)).fetchone()
        return int(alive)

    def claim(self, holder: str, units: Collection[str], ttl: timedelta,
              limit: int) -> list[Lease]:
        if limit <= 0 or not units:
            return []
        claimed = []
        with self._tx() as db:
            now = datetime.now(UTC)
            db.executemany("INSERT OR IGNORE INTO leases (unit) VALUES (?)",
                           [(u,) for u in units])
            marks = ",".join("?" * len(units))
            rows = db.execute(
                f"""SELECT unit, token, polled_at, holder IS NULL OR expires_at <= ?, holder
                    FROM leases WHERE unit IN ({marks}) ORDER BY expires_at, unit""",
                (sortable(now), *units)).fetchall()
            # One host: a holder that is a dead process of this host holds nothing.
            free = [(u, t, p) for u, t, p, expired, holder in rows
                    if expired or gone_locally(holder)][:limit]
            for unit, token, polled in free:
                db.execute(
                    """UPDATE leases SET holder = ?, token = ?, acquired_at = ?, renewed_at = ?,
                           expires_at = ? WHERE unit = ?""",
                    (holder, token + 1, sortable(now), sortable(now), sortable(now + ttl), unit))
                claimed.append(Lease(unit, holder, token + 1, now, now + ttl,
                                     parse_time(polled) if polled else None, now))
        return claimed

    def renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        with self._tx() as db:
            now = datetime.now(UTC)
            row = db.execute(
                """UPDATE leases SET renewed_at = ?, expires_at = ?
                   WHERE unit = ? AND holder = ? AND token = ? RETURNING polled_at""",
                (sortable(now), sortable(now + ttl), lease.unit, lease.holder, lease.token),
            ).fetchone()
        if row is None:
            return None
        return Lease(lease.unit, lease.holder, lease.token, lease.acquired_at, now + ttl,
                     parse_time(row[0]) if row[0] else None, now)

    def release(self, lease: Lease) -> None:
        with self._tx() as db:
            db.execute("""UPDATE leases SET holder = NULL, expires_at = ?
                          WHERE unit = ? AND holder = ? AND token = ?""",
                       (sortable(datetime.now(UTC)), lease.unit, lease.holder, lease.token))

    def leave(self, holder: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE leases SET holder = NULL, expires_at = ? WHERE holder = ?",
                       (sortable(datetime.now(UTC)), holder))
            db.execute("DELETE FROM instances WHERE id = ?", (holder,))

    def leases(self) -> list[LeaseInfo]:
        now = datetime.now(UTC)
        rows = self._db.execute(
            """SELECT l.unit, l.holder, l.token, l.acquired_at, l.expires_at, l.polled_at,
                      i.expires_at > ? FROM leases l LEFT JOIN instances i ON i.id = l.holder
               ORDER BY l.unit""", (sortable(now),))
        return [LeaseInfo(u, h, t, _time(a), _time(e), _time(p), bool(alive), now)
                for u, h, t, a, e, p, alive in rows]

    def close(self) -> None:
        self._db.close()


GONE = timedelta(days=1)  # an instance not seen for this long is forgotten


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def _fence(db: sqlite3.Connection, lease: Lease, now: datetime,
           min_left: timedelta = timedelta(0)) -> None:
    """The first statement of a write for a unit: refuse unless `lease` still holds it."""
    row = db.execute("SELECT holder, token, expires_at FROM leases WHERE unit = ?",
                     (lease.unit,)).fetchone()
    check_fence(lease, row, now, min_left, parse=_time)
