"""The PostgreSQL store: state that outlives the instance, shared by the instances of a deploy.

Rules:
- Behaviour is exactly SQLiteStore's: the same methods, semantics and return values
  (`tests/test_store.py` runs one suite against both, on a real server).
- The schema is versioned in `schema_version` (one row per applied step) and migrated by the
  monitor itself when the store opens: every pending step in ONE transaction that first takes
  `pg_advisory_xact_lock(MIGRATION_LOCK)`, so instances that start together wait for the first
  one, which migrates, and then find the version current. A current schema takes no lock.
- `commit_cycle` is ONE transaction, as are `mark_attempt`, `mark_sent` and `mark_failed`.
- Documents (incidents, revision facts, checkpoints, outbox payloads, meta) are JSONB. JSONB
  cannot hold NUL or a lone surrogate, and `text` cannot hold NUL, but untrusted log text may
  carry both: such characters (and U+E000, the escape itself) are stored as U+E000 + 4 hex
  digits and restored on reading, so any text round-trips and ordinary text is stored as is.
- Rows come back in the order SQLite gives them: incidents and revisions in the order they were
  first inserted (a `seq` column: PostgreSQL's heap order changes with every update, and the
  order decides which incident or revision the pure core considers first), the outbox by its
  BIGSERIAL id, i.e. in insert order. JSON objects come back with JSONB's member order (shorter
  keys first); nothing depends on member order, so the meta document keeps its maps as lists.

Connection loss (Cloud SQL restarts, fail-overs, idle connections cut by the network) is retried,
at most `attempts` tries per operation with exponential backoff (0.25 s, 0.5 s, 1 s, 2 s by
default: about 4 s of waiting, plus the connect timeout of each try):
- A read is re-run on a new connection: it changes nothing.
- A transaction that failed before its COMMIT was sent did not commit (the server rolls back a
  transaction whose connection is gone; psycopg raises OperationalError): it is re-run whole.
  So are deadlocks and serialization failures, which PostgreSQL rolled back.
- A write whose connection was lost may still be running on the server: a partition leaves the
  old session "idle in transaction" (or still in its COMMIT), holding its row locks, until the
  server notices (its TCP keepalive: hours by default). Before such a write is looked up or run
  again, that session (its pid and `backend_start`, read when the connection was made) is ended
  with `pg_terminate_backend` and waited for: its transaction is then over, committed or aborted,
  and the re-run does not wait on its locks.
- A COMMIT whose answer was lost has an unknown outcome. `commit_cycle`, `mark_sent` and
  `mark_failed` are idempotent by design: upserts of whole documents, `INSERT ... ON CONFLICT DO
  NOTHING` for the seen keys and for the outbox (keyed by the message's idempotency key), a
  DELETE by time and UPDATEs that set values. Running one twice leaves what running it once
  leaves, so it is simply run again. `mark_attempt` increments and is not idempotent: its
  transaction records its id (`pg_current_xact_id()`), and after a lost COMMIT the store asks the
  server (`pg_xact_status`) whether it committed; only an aborted one is run again.
- Anything else (a constraint, a type, a bug) is not retried: the transaction is rolled back and
  the error raised. When the budget runs out, StoreUnavailable (an OSError) is raised and the
  transaction did not commit, or committed whole: the checkpoint is old or new, never half.

Secrets: every error this module raises or logs passes through `mask`, which masks a URL's
password (`monitor.redact.mask_url`), `password=...` in connection strings and the password
itself; psycopg's own exceptions are never chained to ours, so no traceback shows them.

Leases (store/base.py): expiry is the server's clock (`now()`), never an instance's. `claim`
takes free or expired leases with `FOR UPDATE SKIP LOCKED`, so instances claiming together never
wait for each other nor take the same unit; the fence (`_fence`) reads the lease row `FOR SHARE`
as the first statement of each write for a unit, so a claim of that unit waits until the write
has committed or rolled back (and a SKIP LOCKED claim simply passes it over this time): a write
is either before the change of holder or refused.

Only the documents a cycle changed are written (as SQLiteStore does): every rewritten row
leaves a dead row version behind until vacuum, so rewriting the whole state each cycle would
grow the table with every cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.messages import Action, Message, Queued, Sent, Thread
from monitor.redact import mask_url
from monitor.store.base import (
    RETENTION,
    CycleRecord,
    Lease,
    LeaseInfo,
    check_fence,
    correlate_doc,
    merge_correlate,
)
from monitor.window import Checkpoint

log = logging.getLogger(__name__)

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]

# The key of the advisory lock that serialises schema migrations (database-wide): "monitor\x01".
MIGRATION_LOCK = int.from_bytes(b"monitor\x01", "big")

MIGRATIONS: list[str] = [
    # 1: the first schema (SQLite's versions 1 to 3 together)
    """
    CREATE TABLE incidents (
        id text PRIMARY KEY,
        seq bigserial NOT NULL,
        service text NOT NULL,
        signal text NOT NULL,
        status text NOT NULL,
        first_seen timestamptz NOT NULL,
        data jsonb NOT NULL
    );
    CREATE INDEX incidents_open ON incidents (status, service, signal);
    CREATE TABLE revisions (
        service text NOT NULL,
        name text NOT NULL,
        seq bigserial NOT NULL,
        data jsonb NOT NULL,
        PRIMARY KEY (service, name)
    );
    CREATE TABLE threads (
        incident_id text PRIMARY KEY,
        channel text NOT NULL,
        ts text NOT NULL
    );
    CREATE TABLE meta (
        key text PRIMARY KEY,
        value jsonb NOT NULL
    );
    CREATE TABLE checkpoints (
        unit text PRIMARY KEY,
        value jsonb NOT NULL,
        until timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    );
    CREATE TABLE seen (
        key text PRIMARY KEY,
        ts timestamptz NOT NULL
    );
    CREATE INDEX seen_ts ON seen (ts);
    CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        key text NOT NULL UNIQUE,
        unit text NOT NULL,
        incident_id text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        attempted_at timestamptz,
        last_error text,
        next_attempt_at timestamptz,
        sent_at timestamptz,
        sent_ts text
    );
    CREATE INDEX outbox_queued ON outbox (id) WHERE sent_at IS NULL;
    """,
    # 2: the state partitioned by unit of work, leases and instances (see store/base.py). A
    # store that watched one unit gives it its rows; with several, older rows stay unit ''
    # (shown by status and reports, no longer loaded by a cycle).
    """
    ALTER TABLE incidents ADD COLUMN unit text NOT NULL DEFAULT '';
    CREATE INDEX incidents_unit ON incidents (unit, status);
    ALTER TABLE revisions ADD COLUMN unit text NOT NULL DEFAULT '';
    ALTER TABLE seen ADD COLUMN unit text NOT NULL DEFAULT '';
    DROP INDEX seen_ts;
    CREATE INDEX seen_unit_ts ON seen (unit, ts);
    CREATE TABLE leases (
        unit text PRIMARY KEY,
        holder text,
        token bigint NOT NULL DEFAULT 0,
        acquired_at timestamptz,
        renewed_at timestamptz,
        expires_at timestamptz NOT NULL DEFAULT '-infinity',
        polled_at timestamptz
    );
    CREATE TABLE instances (
        id text PRIMARY KEY,
        started_at timestamptz NOT NULL,
        seen_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    UPDATE incidents SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE revisions SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE seen SET unit = (SELECT unit FROM checkpoints)
        WHERE (SELECT count(*) FROM checkpoints) = 1;
    UPDATE meta SET key = 'correlate:' || (SELECT unit FROM checkpoints)
        WHERE key = 'correlate' AND (SELECT count(*) FROM checkpoints) = 1;
    ALTER TABLE revisions DROP CONSTRAINT revisions_pkey;
    ALTER TABLE revisions ADD PRIMARY KEY (unit, service, name);
    """,
]

# libpq parameters the monitor sets unless the URL does: a bounded connect, and keepalives so a
# connection that the network silently dropped is noticed (TCP only; ignored on unix sockets).
DEFAULT_PARAMS = {
    "connect_timeout": "5",
    "application_name": "monitor",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

# Errors after which PostgreSQL has rolled the transaction back: safe to run it again.
_ROLLED_BACK = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)

ATTEMPTS = 5  # tries per operation
BACKOFF = 0.25  # seconds before the second try, doubling after each failed one
MAX_BACKOFF = 2.0  # seconds between two tries at most
SESSION_POLLS = 40  # looks, 0.05 s apart, at an ended session until the server has closed it


class StoreError(Exception):
    """A PostgreSQL error, its message masked."""


class StoreUnavailable(StoreError, OSError):
    """The server could not be reached, or the connection kept being lost, within the budget."""


# --- secrets ---------------------------------------------------------------------------------

def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without passwords: in URLs, in `password=...` and the given values themselves."""
    text = mask_url(text)
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def connection_params(url: str) -> dict[str, str]:
    """libpq parameters for a `state.url`, with the monitor's defaults; no connection is made.

    `postgresql://user:pw@host:5432/db` (TCP) and `postgresql://user@/db?host=/cloudsql/
    PROJECT:REGION:INSTANCE` (the Cloud SQL unix socket on Cloud Run) both parse; so does
    anything else libpq accepts, and libpq's PG* environment variables (PGPASSWORD) apply.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error as exc:
        raise ValueError(f"state.url: not a valid PostgreSQL URL: {mask(str(exc))}") from None
    for key, value in DEFAULT_PARAMS.items():
        params.setdefault(key, value)
    return params


# --- text PostgreSQL cannot hold ---------------------------------------------------------------

_ESC = "\ue000"
_UNSAFE = re.compile("[\x00\ud800-\udfff\ue000]")
_ESCAPED = re.compile("\ue000([0-9a-f]{4})")


def _enc_text(s: str) -> str:
    return _UNSAFE.sub(lambda m: f"{_ESC}{ord(m[0]):04x}", s)


def _dec_text(s: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), s) if _ESC in s else s


def _enc(value: Any) -> Any:
    """A JSON value that JSONB can hold (see the module docstring)."""
    if isinstance(value, str):
        return _enc_text(value)
    if isinstance(value, dict):
        return {_enc_text(str(k)): _enc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_enc(v) for v in value]
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, str):
        return _dec_text(value)
    if isinstance(value, dict):
        return {_dec_text(k): _dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


def _doc(value: Any) -> Jsonb:
    return Jsonb(_enc(value))


def _utc(t: datetime | None) -> datetime | None:
    return t.astimezone(UTC) if t is not None else None


# --- the store -------------------------------------------------------------------------------


class PostgresStore:
    def __init__(self, url: str, *, attempts: int | None = None,
                 backoff: float | None = None) -> None:
        self._params = connection_params(url)
        password = self._params.get("password", "")
        self._secrets = (password,) if password else ()
        self.url = mask(url, self._secrets)
        self._attempts = max(1, ATTEMPTS if attempts is None else attempts)
        self._backoff = BACKOFF if backoff is None else backoff
        # `monitor run` uses the store from the scheduler's worker and, at shutdown, from the
        # main thread: one operation (and one transaction) at a time on the one connection.
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._session: tuple[int, datetime] | None = None  # (pid, backend_start) of _conn
        self._closed = False
        self._written: dict[str, str] = {}  # document key -> JSON text as last loaded or written
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    # --- connection, transactions, retries ------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError("the state store is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        # Autocommit for the one query that names the session: no transaction, no COMMIT.
        conn = psycopg.connect(make_conninfo("", **self._params), autocommit=True)
        try:
            row = conn.execute("SELECT pid, backend_start FROM pg_stat_activity "
                               "WHERE pid = pg_backend_pid()").fetchone()
            conn.autocommit = False
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn = conn
        self._session = (int(row[0]), row[1]) if row else None
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if not conn.closed and not conn.broken:
                conn.rollback()
                return
        except Exception:
            pass
        self._discard()

    @staticmethod
    def _lost(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
        """The connection is gone (the server dropped it, the network did, it was terminated)."""
        if not isinstance(exc, psycopg.OperationalError):
            return False
        state = exc.sqlstate or ""
        return bool(conn is None or conn.closed or conn.broken or state.startswith("08")
                    or state in ("57P01", "57P02", "57P03"))

    def _masked(self, exc: BaseException) -> str:
        return mask(str(exc).strip(), self._secrets) or type(exc).__name__

    def _error(self, exc: BaseException, what: str) -> StoreError:
        return StoreError(f"cannot {what} in PostgreSQL ({self.url}): "
                          f"{type(exc).__name__}: {self._masked(exc)}")

    def _again(self, exc: BaseException, failures: int, what: str,
               discard: bool = True) -> int:
        """Count a failed try; after the last one raise, else wait and let the caller retry.
        The connection is replaced, unless `discard` is false (the caller made a new one)."""
        failures += 1
        if discard:
            self._discard()
        if failures >= self._attempts:
            raise StoreUnavailable(
                f"cannot {what}: PostgreSQL at {self.url} unavailable after {failures} "
                f"attempt(s): {self._masked(exc)}"
            ) from None
        delay = min(self._backoff * 2 ** (failures - 1), MAX_BACKOFF)
        log.warning("PostgreSQL: cannot %s (%s); try %d of %d in %.2fs", what,
                    self._masked(exc), failures + 1, self._attempts, delay)
        time.sleep(delay)
        return failures

    def _run(self, work: Callable[[Cursor], T], *, what: str, write: bool = False,
             idempotent: bool = True) -> T:
        """`work` in one transaction, retried as the module docstring says."""
        with self._lock:
            failures = 0
            while True:
                try:
                    conn = self._connection()
                except psycopg.Error as exc:
                    failures = self._again(exc, failures, what)
                    continue
                xid: str | None = None
                session = self._session
                try:
                    with conn.cursor() as cur:
                        if write and not idempotent:
                            row = cur.execute("SELECT pg_current_xact_id()::text").fetchone()
                            xid = row[0] if row else None
                        result = work(cur)
                except BaseException as exc:
                    self._rollback(conn)
                    if write and self._lost(exc, conn):
                        self._discard()
                        self._end(session)  # on a new connection, which the re-run uses
                        failures = self._again(exc, failures, what, discard=False)
                        continue
                    if isinstance(exc, _ROLLED_BACK) or self._lost(exc, conn):
                        failures = self._again(exc, failures, what)
                        continue
                    if isinstance(exc, psycopg.Error):
                        raise self._error(exc, what) from None
                    raise
                try:
                    conn.commit()
                except psycopg.Error as exc:
                    if not self._lost(exc, conn):  # refused by the server: nothing was written
                        self._rollback(conn)
                        raise self._error(exc, what) from None
                    if not write:
                        self._discard()
                        return result  # what was read stands; the next call reconnects
                    self._discard()
                    self._end(session)
                    if not idempotent and xid is not None and self._committed(xid, what):
                        return result
                    # Not committed, or idempotent (re-running it changes nothing): again.
                    failures = self._again(exc, failures, what, discard=False)
                    continue
                return result

    def _end(self, session: tuple[int, datetime] | None) -> None:
        """After a write lost its connection: end that session if the server still runs it, and
        wait until it is gone (a COMMIT it had begun completes first; a transaction it had not
        committed aborts). If it outlives the wait, the caller's look-up or re-run finds out."""
        if session is None:
            return
        for _ in range(SESSION_POLLS):
            running = self._run(lambda cur: _one(
                cur, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE pid = %s AND backend_start = %s", session),
                what="end a disconnected session")
            if running is None:
                return
            time.sleep(0.05)
        log.warning("PostgreSQL: the session of a lost connection (pid %d) is still running",
                    session[0])

    def _committed(self, xid: str, what: str) -> bool:
        """After a lost COMMIT answer, its session ended: did transaction `xid` commit? Raises
        when unknowable (the session outlived `_end`, or the server forgot the xid)."""
        status = self._run(lambda cur: _one(cur, "SELECT pg_xact_status(%s::xid8)", (xid,)),
                           what="look up a transaction's outcome")
        if status in ("committed", "aborted"):
            return bool(status == "committed")
        raise StoreError(f"cannot {what}: the outcome of its transaction is unknown "
                         f"({status or 'forgotten'}; PostgreSQL at {self.url}); the next cycle "
                         "retries")

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        # A current schema needs no lock: `monitor status` must not wait for `monitor run`.
        if self.schema_version >= len(MIGRATIONS):
            return

        def work(cur: Cursor) -> None:
            # Instances starting together queue here; the first migrates, the others then find
            # the version current. Released when this transaction ends.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute("""CREATE TABLE IF NOT EXISTS schema_version (
                               version integer PRIMARY KEY,
                               applied_at timestamptz NOT NULL DEFAULT now())""")
            version = _one(cur, "SELECT coalesce(max(version), 0) FROM schema_version")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                cur.execute(script)
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

        self._run(work, what="migrate the schema", write=True)

    @property
    def schema_version(self) -> int:
        def work(cur: Cursor) -> int:
            if _one(cur, "SELECT to_regclass('schema_version')") is None:
                return 0
            return int(_one(cur, "SELECT coalesce(max(version), 0) FROM schema_version"))

        return self._run(work, what="read the schema version")

    # --- state ---------------------------------------------------------------------------

    def load_state(self, unit: str | None = None) -> State:
        where, args = ("WHERE unit = %s", (_enc_text(unit),)) if unit is not None else ("", ())

        def work(cur: Cursor) -> tuple[list[Any], list[Any], list[Any]]:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            incidents = cur.execute(f"SELECT unit, data::text FROM incidents {where} ORDER BY seq",
                                    args).fetchall()
            revisions = cur.execute(f"SELECT unit, data::text FROM revisions {where} ORDER BY seq",
                                    args).fetchall()
            if unit is not None:
                metas = cur.execute("SELECT value FROM meta WHERE key = %s",
                                    (_enc_text(f"correlate:{unit}"),)).fetchall()
            else:
                # every unit's, and one from before the state was partitioned
                metas = cur.execute("SELECT value FROM meta WHERE key = 'correlate' OR "
                                    "key LIKE 'correlate:%' ORDER BY key").fetchall()
            return incidents, revisions, metas

        incidents, revisions, metas = self._run(work, what="load the state")
        state = State()
        for u, text in incidents:
            incident = Incident.from_state(_dec(json.loads(text)))
            state.incidents[incident.id] = incident
            self._written[_doc_key("i", _dec_text(u), incident.id)] = text
        for u, text in revisions:
            facts = RevisionFacts.from_state(_dec(json.loads(text)))
            state.revisions[(facts.service, facts.name)] = facts
            self._written[_doc_key("r", _dec_text(u), facts.service, facts.name)] = text
        for (meta,) in metas:
            if meta:
                merge_correlate(state, _dec(meta))
        return state

    def _meta(self, key: str) -> Any:
        return _dec(self._run(lambda cur: _one(cur, "SELECT value FROM meta WHERE key = %s",
                                               (key,)), what="read the state"))

    def checkpoint(self, unit: str) -> Checkpoint | None:
        value = self._run(lambda cur: _one(cur, "SELECT value FROM checkpoints WHERE unit = %s",
                                           (_enc_text(unit),)), what="read a checkpoint")
        return Checkpoint.from_json(_dec(value)) if value is not None else None

    def seen_keys(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        rows = self._run(lambda cur: cur.execute(
            "SELECT key FROM seen WHERE key = ANY(%s::text[])",
            ([_enc_text(k) for k in keys],)).fetchall(), what="read the seen keys")
        return {_dec_text(k) for (k,) in rows}

    def commit_cycle(self, state: State, record: CycleRecord) -> None:
        """The cycle's conclusions in ONE transaction: state, checkpoint, seen keys, outbox.

        Idempotent by design, so that a COMMIT whose answer was lost can be run again: whole
        documents are upserted, the seen keys and the outbox are `INSERT ... ON CONFLICT DO
        NOTHING` (the outbox keyed by each message's idempotency key: a message already queued,
        or already sent, is not queued again), pruning deletes by time. Run twice, it leaves
        exactly what running it once leaves. With `record.lease`, fenced (store/base.py).
        """
        # Built before the transaction: a bad value fails here, having written nothing, and a
        # retry writes exactly the same rows. Only documents that changed are written.
        unit = _enc_text(record.unit)
        incidents = []
        for i in state.incidents.values():
            data = _enc(i.to_state())
            key = _doc_key("i", record.unit, i.id)
            text = _canonical(key, data, self._written)
            if text is not None:
                incidents.append((key, text, (_enc_text(i.id), unit, _enc_text(i.service),
                                              _enc_text(i.signal), i.status.value,
                                              i.first_seen, Jsonb(data))))
        revisions = []
        for f in state.revisions.values():
            data = _enc(f.to_state())
            key = _doc_key("r", record.unit, f.service, f.name)
            text = _canonical(key, data, self._written)
            if text is not None:
                revisions.append((key, text, (unit, _enc_text(f.service), _enc_text(f.name),
                                              Jsonb(data))))
        correlate = _doc(correlate_doc(state))
        checkpoint = record.checkpoint
        seen_keys = [_enc_text(k) for k in record.seen]
        seen_times = list(record.seen.values())
        created = datetime.now(UTC)
        messages = [(_enc_text(m.key), unit, _enc_text(m.incident_id), _doc(m.to_json()),
                     created) for m in record.messages]
        summary = _doc(record.summary) if record.summary else None
        lease = record.lease

        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease)
            if incidents:
                cur.executemany(
                    """INSERT INTO incidents (id, unit, service, signal, status, first_seen, data)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                           data = excluded.data""", [row for _, _, row in incidents])
            if revisions:
                cur.executemany(
                    """INSERT INTO revisions (unit, service, name, data) VALUES (%s, %s, %s, %s)
                       ON CONFLICT (unit, service, name) DO UPDATE SET data = excluded.data""",
                    [row for _, _, row in revisions])
            _set_meta(cur, _enc_text(f"correlate:{record.unit}"), correlate)
            if checkpoint is not None:
                cur.execute(
                    """INSERT INTO checkpoints (unit, value, until, updated_at)
                       VALUES (%s, %s, %s, %s)
                       ON CONFLICT (unit) DO UPDATE SET value = excluded.value,
                           until = excluded.until, updated_at = excluded.updated_at""",
                    (unit, _doc(checkpoint.to_json()), checkpoint.until, created))
            if seen_keys:
                cur.execute(
                    """INSERT INTO seen (key, unit, ts)
                       SELECT k, %s, t FROM unnest(%s::text[], %s::timestamptz[]) AS s(k, t)
                       ON CONFLICT (key) DO NOTHING""", (unit, seen_keys, seen_times))
            if record.forget_before is not None:
                cur.execute("DELETE FROM seen WHERE unit = %s AND ts < %s",
                            (unit, record.forget_before))
            if messages:
                # One statement per message, in order: ids (BIGSERIAL) follow the list.
                cur.executemany(
                    """INSERT INTO outbox (key, unit, incident_id, payload, created_at)
                       VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING""", messages)
            if record.retain_after is not None:
                gone = [i for (i,) in cur.execute(
                    "DELETE FROM incidents WHERE unit = %s AND status = 'resolved' AND "
                    "(data->>'resolved_at')::timestamptz < %s AND NOT EXISTS (SELECT 1 FROM "
                    "outbox o WHERE o.incident_id = incidents.id AND o.sent_at IS NULL) "
                    "RETURNING id",
                    (unit, record.retain_after)).fetchall()]
                cur.execute("DELETE FROM revisions WHERE unit = %s AND "
                            "(data->>'last_seen')::timestamptz < %s",
                            (unit, record.retain_after))
                # A deleted incident's thread and sent messages go with it; other sent messages
                # after RETENTION of real time. An incident with a message still to send (this
                # cycle's, queued above, or an older one) stays: its thread is where it goes.
                cur.execute("DELETE FROM threads WHERE incident_id = ANY(%s::text[])", (gone,))
                cur.execute("DELETE FROM outbox WHERE unit = %s AND sent_at IS NOT NULL AND "
                            "(sent_at < %s OR incident_id = ANY(%s::text[]))",
                            (unit, datetime.now(UTC) - RETENTION, gone))
            cur.execute("UPDATE leases SET polled_at = now() WHERE unit = %s", (unit,))
            if summary is not None:
                _set_meta(cur, "last_cycle", summary)

        self._run(work, what="commit the cycle", write=True)
        # Remembered only once committed: a rolled-back write must be written again.
        self._written.update((key, text) for key, text, _ in [*incidents, *revisions])

    def last_cycle(self) -> dict[str, Any] | None:
        value = self._meta("last_cycle")
        return value if isinstance(value, dict) else None

    def open_incidents(self) -> list[Incident]:
        rows = self._run(lambda cur: cur.execute(
            "SELECT data FROM incidents WHERE status = %s ORDER BY first_seen, seq",
            (IncidentStatus.OPEN.value,)).fetchall(), what="read the open incidents")
        return [Incident.from_state(_dec(d)) for (d,) in rows]

    # --- outbox --------------------------------------------------------------------------

    def queued(self, units: Collection[str] | None = None) -> list[Queued]:
        rows = self._run(lambda cur: cur.execute(
            "SELECT id, payload, attempts, last_error, next_attempt_at, attempted_at, unit "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id").fetchall(), what="read the outbox")
        queued = [Queued(i, Message.from_json(_dec(p)), a,
                         _dec_text(e) if e is not None else None, _utc(n), _utc(t), _dec_text(u))
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

        self._run(work, what="count a delivery attempt", write=True, idempotent=False)

    def sent(self, incident_id: str) -> list[Sent]:
        rows = self._run(lambda cur: cur.execute(
            "SELECT payload, sent_at, sent_ts FROM outbox WHERE incident_id = %s AND sent_at IS "
            "NOT NULL ORDER BY sent_at, id", (_enc_text(incident_id),)).fetchall(),
            what="read sent messages")
        return [Sent(Message.from_json(_dec(p)), _utc(at) or datetime.now(UTC),
                     _dec_text(ts) if ts is not None else None) for p, at, ts in rows]

    def thread(self, incident_id: str) -> Thread | None:
        row = self._run(lambda cur: cur.execute(
            "SELECT channel, ts FROM threads WHERE incident_id = %s",
            (_enc_text(incident_id),)).fetchone(), what="read a thread")
        return Thread(channel=_dec_text(row[0]), ts=_dec_text(row[1])) if row else None

    def mark_sent(self, queued: Queued, thread: Thread, lease: Lease | None = None) -> None:
        sent_at = datetime.now(UTC)
        root = queued.message.action is Action.POST_ROOT

        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease)
            cur.execute("UPDATE outbox SET sent_at = %s, sent_ts = %s WHERE id = %s",
                        (sent_at, _enc_text(thread.ts), queued.id))
            if root:
                cur.execute(
                    """INSERT INTO threads (incident_id, channel, ts) VALUES (%s, %s, %s)
                       ON CONFLICT (incident_id) DO UPDATE SET channel = excluded.channel,
                           ts = excluded.ts""",
                    (_enc_text(queued.message.incident_id), _enc_text(thread.channel),
                     _enc_text(thread.ts)))

        self._run(work, what="mark a message sent", write=True)

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None,
                    lease: Lease | None = None) -> None:
        def work(cur: Cursor) -> None:
            if lease is not None:
                _fence(cur, lease)
            cur.execute("UPDATE outbox SET last_error = %s, next_attempt_at = %s WHERE id = %s",
                        (_enc_text(error), retry_at, queued.id))

        self._run(work, what="record a delivery failure", write=True)

    # --- leases (store/base.py) ---------------------------------------------------------

    def heartbeat(self, holder: str, ttl: timedelta) -> int:
        def work(cur: Cursor) -> int:
            cur.execute(
                """INSERT INTO instances (id, started_at, seen_at, expires_at)
                   VALUES (%s, now(), now(), now() + %s)
                   ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at,
                       expires_at = excluded.expires_at""", (_enc_text(holder), ttl))
            cur.execute("DELETE FROM instances WHERE expires_at < now() - %s", (GONE,))
            return int(_one(cur, "SELECT count(*) FROM instances WHERE expires_at > now()"))

        return self._run(work, what="record this instance's heartbeat", write=True)

    def claim(self, holder: str, units: Collection[str], ttl: timedelta,
              limit: int) -> list[Lease]:
        if limit <= 0 or not units:
            return []
        names = [_enc_text(u) for u in units]

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
                (names, limit, _enc_text(holder), ttl)).fetchall()

        rows = self._run(work, what="claim leases", write=True)
        return sorted((Lease(_dec_text(u), holder, int(t), _utc(a) or _epoch(),
                             _utc(e) or _epoch(), _utc(p), _utc(n))
                       for u, t, a, e, p, n in rows), key=lambda lease: lease.unit)

    def renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        row = self._run(lambda cur: cur.execute(
            """UPDATE leases SET renewed_at = now(), expires_at = now() + %s
               WHERE unit = %s AND holder = %s AND token = %s
               RETURNING expires_at, polled_at, now()""",
            (ttl, _enc_text(lease.unit), _enc_text(lease.holder), lease.token)).fetchone(),
            what="renew a lease", write=True)
        if row is None:
            return None
        return Lease(lease.unit, lease.holder, lease.token, lease.acquired_at,
                     _utc(row[0]) or _epoch(), _utc(row[1]), _utc(row[2]))

    def release(self, lease: Lease) -> None:
        self._run(lambda cur: cur.execute(
            """UPDATE leases SET holder = NULL, expires_at = now()
               WHERE unit = %s AND holder = %s AND token = %s""",
            (_enc_text(lease.unit), _enc_text(lease.holder), lease.token)),
            what="release a lease", write=True)

    def leave(self, holder: str) -> None:
        def work(cur: Cursor) -> None:
            cur.execute("UPDATE leases SET holder = NULL, expires_at = now() WHERE holder = %s",
                        (_enc_text(holder),))
            cur.execute("DELETE FROM instances WHERE id = %s", (_enc_text(holder),))

        self._run(work, what="leave", write=True)

    def leases(self) -> list[LeaseInfo]:
        rows = self._run(lambda cur: cur.execute(
            f"""SELECT l.unit, l.holder, l.token, l.acquired_at, {_EXPIRES}, l.polled_at,
                      coalesce(i.expires_at > now(), false), now()
               FROM leases l LEFT JOIN instances i ON i.id = l.holder
               ORDER BY l.unit""").fetchall(), what="read the leases")
        return [LeaseInfo(_dec_text(u), _dec_text(h) if h is not None else None, int(t), _utc(a),
                          _utc(e), _utc(p), bool(alive), _utc(n) or datetime.now(UTC))
                for u, h, t, a, e, p, alive, n in rows]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()


GONE = timedelta(days=1)  # an instance not seen for this long is forgotten


def _epoch() -> datetime:
    return datetime.min.replace(tzinfo=UTC)


# A lease never taken expires at '-infinity', which psycopg cannot read (DataError): read NULL.
_EXPIRES = "CASE WHEN isfinite(l.expires_at) THEN l.expires_at END"


def _doc_key(kind: str, unit: str, *names: str) -> str:
    return "\x1f".join((kind, unit, *names))


def _canonical(key: str, data: Any, written: dict[str, str]) -> str | None:
    """The document as JSONB gives it back, if it differs from what was last loaded or
    written under `key`; None when it is unchanged and need not be written."""
    text = _jsonb_text(data)
    return None if written.get(key) == text else text


def _jsonb_text(value: Any) -> str:
    """JSON text in JSONB's output form, so a loaded document compares equal to its rewrite:
    object members ordered by key length then bytes, ", " and ": " separators."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_jsonb_text(v)}"
                               for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_jsonb_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _fence(cur: Cursor, lease: Lease, min_left: timedelta = timedelta(0)) -> None:
    """The first statement of a write for a unit: refuse unless `lease` still holds it. The row
    is locked FOR SHARE until the transaction ends, so a change of holder waits for it."""
    row = cur.execute(f"SELECT holder, token, {_EXPIRES}, now() FROM leases l WHERE unit = %s "
                      "FOR SHARE", (_enc_text(lease.unit),)).fetchone()
    now = row[3] if row else datetime.now(UTC)
    check_fence(lease, (_dec_text(row[0]) if row[0] is not None else None, row[1], row[2])
                if row else None, now, min_left, parse=_utc)


def _one(cur: Cursor, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row, or None."""
    row = cur.execute(query, params).fetchone()
    return row[0] if row else None


def _set_meta(cur: Cursor, key: str, value: Jsonb) -> None:
    cur.execute(
        """INSERT INTO meta (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (key, value))
