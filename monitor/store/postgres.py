"""The PostgreSQL store: state that outlives the instance, shared by the instances of a deploy.

Why it is built as it is:
- Behaviour is exactly SQLiteStore's: the same methods, semantics and return values
  (`tests/test_store.py` runs one suite against both, on a real server), and the same commit
  plan (store/plan.py), which this module only executes.
- Every operation is ONE transaction run by the session (store/pg_session.py), which survives
  lost connections. A COMMIT whose answer was lost is simply run again when the write is
  idempotent, so `commit_cycle`, `mark_sent` and `mark_failed` are, by design: upserts of whole
  documents, `INSERT ... ON CONFLICT DO NOTHING` for the seen keys and for the outbox (keyed by
  the message's idempotency key), DELETEs by time or by the plan's keys and UPDATEs that set
  values. `mark_attempt` increments: the session looks its outcome up instead.
- Documents (incidents, revision facts, checkpoints, outbox payloads, meta) are JSONB, and every
  string is escaped for what PostgreSQL cannot hold (store/pg_text.py). JSON objects come back
  with JSONB's member order (shorter keys first); nothing depends on member order, so the meta
  document keeps its maps as lists, and what a row holds is the digest of its value's canonical
  JSON, never of JSONB's text.
- Only the documents a cycle changed are written: every rewritten row leaves a dead row version
  behind until vacuum, so rewriting the whole state each cycle would grow the table each cycle.
- The schema is migrated by the monitor itself (store/pg_schema.py).

Leases (store/base.py): expiry is the server's clock (`now()`), never an instance's. `claim`
takes free or expired leases with `FOR UPDATE SKIP LOCKED`, so instances claiming together never
wait for each other nor take the same unit; the fence (`_fence`) reads the lease row `FOR SHARE`
as the first statement of each write for a unit, so a claim of that unit waits until the write
has committed or rolled back (and a SKIP LOCKED claim simply passes it over this time): a write
is either before the change of holder or refused.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from monitor.correlate.model import Incident, IncidentStatus
from monitor.correlate.state import State
from monitor.messages import Action, Message, Queued, Sent, Thread
from monitor.store import pg_schema
from monitor.store.base import CycleRecord, Lease, LeaseInfo, check_fence
from monitor.store.pg_schema import MIGRATION_LOCK, MIGRATIONS
from monitor.store.pg_session import (
    Cursor,
    Session,
    StoreError,
    StoreUnavailable,
    connection_params,
    one,
)
from monitor.store.pg_text import dec, dec_text, enc_text, jsonb
from monitor.store.plan import CommitPlan, DocKey, digest, loaded_state, plan_commit
from monitor.window import Checkpoint

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "PostgresStore", "StoreError", "StoreUnavailable",
           "connection_params"]


def _utc(t: datetime | None) -> datetime | None:
    return t.astimezone(UTC) if t is not None else None


def _docs(rows: list[Any]) -> Iterator[tuple[str, Any]]:
    return ((unit, dec(json.loads(text))) for unit, text in rows)


class PostgresStore:
    def __init__(self, url: str, *, attempts: int | None = None,
                 backoff: float | None = None) -> None:
        self._pg = Session(url, attempts=attempts, backoff=backoff)
        self.url = self._pg.url
        self._held: dict[DocKey, bytes] = {}  # what the rows hold (store/plan.py)
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        pg_schema.migrate(self._pg)

    @property
    def schema_version(self) -> int:
        return pg_schema.schema_version(self._pg)

    # --- state ---------------------------------------------------------------------------

    def load_state(self, unit: str | None = None) -> State:
        where, args = ("WHERE unit = %s", (enc_text(unit),)) if unit is not None else ("", ())

        def work(cur: Cursor) -> tuple[list[Any], list[Any], list[Any]]:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            incidents = cur.execute(f"SELECT unit, data::text FROM incidents {where} ORDER BY seq",
                                    args).fetchall()
            revisions = cur.execute(f"SELECT unit, data::text FROM revisions {where} ORDER BY seq",
                                    args).fetchall()
            if unit is not None:
                metas = cur.execute("SELECT value FROM meta WHERE key = %s",
                                    (enc_text(f"correlate:{unit}"),)).fetchall()
            else:
                # every unit's, and one from before the state was partitioned
                metas = cur.execute("SELECT value FROM meta WHERE key = 'correlate' OR "
                                    "key LIKE 'correlate:%' ORDER BY key").fetchall()
            return incidents, revisions, metas

        incidents, revisions, metas = self._pg.run(work, what="load the state")
        # JSONB gives back its own text: the digest is that of the value's canonical JSON.
        state, held = loaded_state(
            ((dec_text(u), doc, digest(doc)) for u, doc in _docs(incidents)),
            ((dec_text(u), doc, digest(doc)) for u, doc in _docs(revisions)),
            (dec(meta) for (meta,) in metas))
        self._held.update(held)
        return state

    def _meta(self, key: str) -> Any:
        return dec(self._pg.run(lambda cur: one(cur, "SELECT value FROM meta WHERE key = %s",
                                                (key,)), what="read the state"))

    def checkpoint(self, unit: str) -> Checkpoint | None:
        value = self._pg.run(lambda cur: one(cur, "SELECT value FROM checkpoints WHERE unit = %s",
                                             (enc_text(unit),)), what="read a checkpoint")
        return Checkpoint.from_json(dec(value)) if value is not None else None

    def seen_keys(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        rows = self._pg.run(lambda cur: cur.execute(
            "SELECT key FROM seen WHERE key = ANY(%s::text[])",
            ([enc_text(k) for k in keys],)).fetchall(), what="read the seen keys")
        return {dec_text(k) for (k,) in rows}

    def commit_cycle(self, state: State, record: CycleRecord) -> None:
        """The plan of the cycle (store/plan.py), in ONE transaction, fenced by its lease.

        Run twice, it leaves exactly what running it once leaves (the module docstring), so a
        COMMIT whose answer was lost is run again.
        """
        plan = plan_commit(state, record, self._held)
        # Encoded before the transaction: a bad value fails here, having written nothing, and a
        # re-run writes exactly the same rows.
        rows = _Rows(plan, created=datetime.now(UTC))
        gone = self._pg.run(lambda cur: _execute(cur, plan, rows), what="commit the cycle",
                            write=True)
        plan.remember(self._held, gone)

    def last_cycle(self) -> dict[str, Any] | None:
        value = self._meta("last_cycle")
        return value if isinstance(value, dict) else None

    def open_incidents(self) -> list[Incident]:
        rows = self._pg.run(lambda cur: cur.execute(
            "SELECT data FROM incidents WHERE status = %s ORDER BY first_seen, seq",
            (IncidentStatus.OPEN.value,)).fetchall(), what="read the open incidents")
        return [Incident.from_state(dec(d)) for (d,) in rows]

    # --- outbox --------------------------------------------------------------------------

    def queued(self, units: Collection[str] | None = None) -> list[Queued]:
        rows = self._pg.run(lambda cur: cur.execute(
            "SELECT id, payload, attempts, last_error, next_attempt_at, attempted_at, unit "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id").fetchall(), what="read the outbox")
        queued = [Queued(i, Message.from_json(dec(p)), a,
                         dec_text(e) if e is not None else None, _utc(n), _utc(t), dec_text(u))
                  for i, p, a, e, n, t, u in rows]
        return [q for q in queued if units is None or q.unit in units]

    def mark_attempt(self, queued: Queued, lease: Lease | None = None,
                     min_left: timedelta = timedelta(0)) -> None:
        # Not idempotent (an increment): a lost COMMIT is looked up, never blindly re-run.
        attempted_at = datetime.now(UTC)

        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease, min_left)
            cur.execute("UPDATE outbox SET attempts = attempts + 1, attempted_at = %s "
                        "WHERE id = %s", (attempted_at, queued.id))

        self._pg.run(work, what="count a delivery attempt", write=True, idempotent=False)

    def sent(self, incident_id: str) -> list[Sent]:
        rows = self._pg.run(lambda cur: cur.execute(
            "SELECT payload, sent_at, sent_ts FROM outbox WHERE incident_id = %s AND sent_at IS "
            "NOT NULL ORDER BY sent_at, id", (enc_text(incident_id),)).fetchall(),
            what="read sent messages")
        return [Sent(Message.from_json(dec(p)), _utc(at) or datetime.now(UTC),
                     dec_text(ts) if ts is not None else None) for p, at, ts in rows]

    def thread(self, incident_id: str) -> Thread | None:
        row = self._pg.run(lambda cur: cur.execute(
            "SELECT channel, ts FROM threads WHERE incident_id = %s",
            (enc_text(incident_id),)).fetchone(), what="read a thread")
        return Thread(channel=dec_text(row[0]), ts=dec_text(row[1])) if row else None

    def mark_sent(self, queued: Queued, thread: Thread, lease: Lease | None = None) -> None:
        sent_at = datetime.now(UTC)
        root = queued.message.action is Action.POST_ROOT

        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease)
            cur.execute("UPDATE outbox SET sent_at = %s, sent_ts = %s WHERE id = %s",
                        (sent_at, enc_text(thread.ts), queued.id))
            if root:
                cur.execute(
                    """INSERT INTO threads (incident_id, channel, ts) VALUES (%s, %s, %s)
                       ON CONFLICT (incident_id) DO UPDATE SET channel = excluded.channel,
                           ts = excluded.ts""",
                    (enc_text(queued.message.incident_id), enc_text(thread.channel),
                     enc_text(thread.ts)))

        self._pg.run(work, what="mark a message sent", write=True)

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None,
                    lease: Lease | None = None) -> None:
        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease)
            cur.execute("UPDATE outbox SET last_error = %s, next_attempt_at = %s WHERE id = %s",
                        (enc_text(error), retry_at, queued.id))

        self._pg.run(work, what="record a delivery failure", write=True)

    # --- leases (store/base.py) ---------------------------------------------------------

    def heartbeat(self, holder: str, ttl: timedelta) -> int:
        def work(cur: Cursor) -> int:
            cur.execute(
                """INSERT INTO instances (id, started_at, seen_at, expires_at)
                   VALUES (%s, now(), now(), now() + %s)
                   ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at,
                       expires_at = excluded.expires_at""", (enc_text(holder), ttl))
            cur.execute("DELETE FROM instances WHERE expires_at < now() - %s", (GONE,))
            return int(one(cur, "SELECT count(*) FROM instances WHERE expires_at > now()"))

        return self._pg.run(work, what="record this instance's heartbeat", write=True)

    def claim(self, holder: str, units: Collection[str], ttl: timedelta,
              limit: int) -> list[Lease]:
        if limit <= 0 or not units:
            return []
        names = [enc_text(u) for u in units]

        def work(cur: Cursor) -> list[Any]:
            # Only the rows missing: an INSERT that conflicts with a row another transaction
            # has updated (a renew, a claim, a commit's polled_at) waits for that transaction.
            cur.execute("INSERT INTO leases (unit) SELECT u FROM unnest(%s::text[]) AS n(u) "
                        "WHERE NOT EXISTS (SELECT 1 FROM leases WHERE unit = n.u) "
                        "ON CONFLICT (unit) DO NOTHING", (names,))
            return cur.execute(
                """WITH free AS (
                       SELECT unit FROM leases
                       WHERE unit = ANY(%s::text[]) AND (holder IS NULL OR expires_at <= now())
                       ORDER BY expires_at, unit LIMIT %s
                       FOR UPDATE SKIP LOCKED)
                   UPDATE leases l SET holder = %s, token = l.token + 1, acquired_at = now(),
                       renewed_at = now(), expires_at = now() + %s
                   FROM free WHERE l.unit = free.unit
                   RETURNING l.unit, l.token, l.acquired_at, l.expires_at, l.polled_at, now()""",
                (names, limit, enc_text(holder), ttl)).fetchall()

        rows = self._pg.run(work, what="claim leases", write=True)
        return sorted((Lease(dec_text(u), holder, int(t), _utc(a) or _epoch(),
                             _utc(e) or _epoch(), _utc(p), _utc(n))
                       for u, t, a, e, p, n in rows), key=lambda lease: lease.unit)

    def renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        row = self._pg.run(lambda cur: cur.execute(
            """UPDATE leases SET renewed_at = now(), expires_at = now() + %s
               WHERE unit = %s AND holder = %s AND token = %s
               RETURNING expires_at, polled_at, now()""",
            (ttl, enc_text(lease.unit), enc_text(lease.holder), lease.token)).fetchone(),
            what="renew a lease", write=True)
        if row is None:
            return None
        return Lease(lease.unit, lease.holder, lease.token, lease.acquired_at,
                     _utc(row[0]) or _epoch(), _utc(row[1]), _utc(row[2]))

    def release(self, lease: Lease) -> None:
        self._pg.run(lambda cur: cur.execute(
            """UPDATE leases SET holder = NULL, expires_at = now()
               WHERE unit = %s AND holder = %s AND token = %s""",
            (enc_text(lease.unit), enc_text(lease.holder), lease.token)),
            what="release a lease", write=True)

    def leave(self, holder: str) -> None:
        def work(cur: Cursor) -> None:
            cur.execute("UPDATE leases SET holder = NULL, expires_at = now() WHERE holder = %s",
                        (enc_text(holder),))
            cur.execute("DELETE FROM instances WHERE id = %s", (enc_text(holder),))

        self._pg.run(work, what="leave", write=True)

    def leases(self) -> list[LeaseInfo]:
        rows = self._pg.run(lambda cur: cur.execute(
            f"""SELECT l.unit, l.holder, l.token, l.acquired_at, {_EXPIRES}, l.polled_at,
                      coalesce(i.expires_at > now(), false), now()
               FROM leases l LEFT JOIN instances i ON i.id = l.holder
               ORDER BY l.unit""").fetchall(), what="read the leases")
        return [LeaseInfo(dec_text(u), dec_text(h) if h is not None else None, int(t), _utc(a),
                          _utc(e), _utc(p), bool(alive), _utc(n) or datetime.now(UTC))
                for u, h, t, a, e, p, alive, n in rows]

    def close(self) -> None:
        self._pg.close()


GONE = timedelta(days=1)  # an instance not seen for this long is forgotten


def _epoch() -> datetime:
    return datetime.min.replace(tzinfo=UTC)


# A lease never taken expires at '-infinity', which psycopg cannot read (DataError): read NULL.
_EXPIRES = "CASE WHEN isfinite(l.expires_at) THEN l.expires_at END"


def _fence(cur: Cursor, lease: Lease, min_left: timedelta = timedelta(0)) -> None:
    """The first statement of a write for a unit: refuse unless `lease` still holds it. The row
    is locked FOR SHARE until the transaction ends, so a change of holder waits for it."""
    row = cur.execute(f"SELECT holder, token, {_EXPIRES}, now() FROM leases l WHERE unit = %s "
                      "FOR SHARE", (enc_text(lease.unit),)).fetchone()
    now = row[3] if row else datetime.now(UTC)
    check_fence(lease, (dec_text(row[0]) if row[0] is not None else None, row[1], row[2])
                if row else None, now, min_left, parse=_utc)


def _set_meta(cur: Cursor, key: str, value: Jsonb) -> None:
    cur.execute(
        """INSERT INTO meta (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (key, value))


# --- the commit plan's executor ----------------------------------------------------------------


class _Rows:
    """A plan's parameters, escaped and as psycopg sends them (arrays for unnest)."""

    def __init__(self, plan: CommitPlan, created: datetime) -> None:
        unit = self.unit = enc_text(plan.unit)
        self.created = created
        self.incidents = [(enc_text(i.id), unit, enc_text(i.service), enc_text(i.signal),
                           i.status, i.first_seen, jsonb(i.doc)) for i in plan.incidents]
        self.revisions = [(unit, enc_text(f.service), enc_text(f.name), jsonb(f.doc))
                          for f in plan.revisions]
        self.correlate_key = enc_text(plan.correlate_key)
        self.correlate = jsonb(plan.correlate)
        self.checkpoint = (jsonb(plan.checkpoint.to_json()), plan.checkpoint.until) \
            if plan.checkpoint is not None else None
        self.seen_keys = [enc_text(k) for k in plan.seen]
        self.seen_times = list(plan.seen.values())
        self.outbox = [(enc_text(m.key), unit, enc_text(m.incident_id), jsonb(m.payload),
                        created) for m in plan.outbox]
        retention = plan.retention
        self.expired = [enc_text(i) for i in retention.incidents] if retention else []
        self.old_services = [enc_text(s) for s, _ in retention.revisions] if retention else []
        self.old_names = [enc_text(n) for _, n in retention.revisions] if retention else []
        self.summary = jsonb(plan.summary) if plan.summary is not None else None


def _execute(cur: Cursor, plan: CommitPlan, rows: _Rows) -> list[str]:
    """The plan's writes, fence first; returns the incidents retention deleted."""
    if plan.lease is not None:
        _fence(cur, plan.lease)
    unit = rows.unit
    if rows.incidents:
        cur.executemany(
            """INSERT INTO incidents (id, unit, service, signal, status, first_seen, data)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                   data = excluded.data""", rows.incidents)
    if rows.revisions:
        cur.executemany(
            """INSERT INTO revisions (unit, service, name, data) VALUES (%s, %s, %s, %s)
               ON CONFLICT (unit, service, name) DO UPDATE SET data = excluded.data""",
            rows.revisions)
    _set_meta(cur, rows.correlate_key, rows.correlate)
    if rows.checkpoint is not None:
        cur.execute(
            """INSERT INTO checkpoints (unit, value, until, updated_at)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (unit) DO UPDATE SET value = excluded.value,
                   until = excluded.until, updated_at = excluded.updated_at""",
            (unit, *rows.checkpoint, rows.created))
    if rows.seen_keys:
        cur.execute(
            """INSERT INTO seen (key, unit, ts)
               SELECT k, %s, t FROM unnest(%s::text[], %s::timestamptz[]) AS s(k, t)
               ON CONFLICT (key) DO NOTHING""", (unit, rows.seen_keys, rows.seen_times))
    if plan.forget_before is not None:
        cur.execute("DELETE FROM seen WHERE unit = %s AND ts < %s", (unit, plan.forget_before))
    if rows.outbox:
        # One statement per message, in order: ids (BIGSERIAL) follow the list.
        cur.executemany(
            """INSERT INTO outbox (key, unit, incident_id, payload, created_at)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING""", rows.outbox)
    gone: list[str] = []
    if (retention := plan.retention) is not None:
        waiting = {dec_text(i) for (i,) in cur.execute(
            "SELECT DISTINCT incident_id FROM outbox WHERE sent_at IS NULL AND "
            "incident_id = ANY(%s::text[])", (rows.expired,)).fetchall()} if rows.expired else ()
        gone = retention.deletable(waiting)
        deleted = [enc_text(i) for i in gone]
        if deleted:
            cur.execute("DELETE FROM incidents WHERE unit = %s AND id = ANY(%s::text[])",
                        (unit, deleted))
            cur.execute("DELETE FROM threads WHERE incident_id = ANY(%s::text[])", (deleted,))
        if rows.old_names:
            cur.execute("DELETE FROM revisions WHERE unit = %s AND (service, name) IN "
                        "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                        (unit, rows.old_services, rows.old_names))
        cur.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND ((unit = %s AND "
                    "sent_at < %s) OR incident_id = ANY(%s::text[]))",
                    (unit, datetime.now(UTC) - retention.sent_kept_for, deleted))
    cur.execute("UPDATE leases SET polled_at = now() WHERE unit = %s", (unit,))
    if rows.summary is not None:
        _set_meta(cur, "last_cycle", rows.summary)
    return gone
