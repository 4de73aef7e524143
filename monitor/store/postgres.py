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
password (`monitor.config.mask_url`), `password=...` in connection strings and the password
itself; psycopg's own exceptions are never chained to ours, so no traceback shows them.

Leases and fencing (several instances, #8) come as a later step of MIGRATIONS, e.g. a table
`leases (unit text PRIMARY KEY, holder text, token bigint, expires_at timestamptz)`; the fencing
check is then the first statement of every write transaction (`_run(write=True)`):
`commit_cycle` knows its unit, and each outbox row records the unit that queued it
(`outbox.unit`), so `mark_attempt`/`mark_sent`/`mark_failed` can be fenced too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from monitor.config import mask_url
from monitor.correlate.model import Incident, IncidentStatus, RevisionFacts
from monitor.correlate.state import State
from monitor.entries import format_time, parse_time
from monitor.notify.message import Action, Message, Thread
from monitor.sources.base import Checkpoint
from monitor.store.base import RETENTION, CycleRecord, Queued, Sent

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
STATUS_POLLS = 20  # looks at a lost commit's transaction that is still "in progress"


class StoreError(Exception):
    """A PostgreSQL error, its message masked."""


class StoreUnavailable(StoreError, OSError):
    """The server could not be reached, or the connection kept being lost, within the budget."""


# --- secrets ---------------------------------------------------------------------------------

_CONNINFO_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"&]+)""", re.I)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without passwords: in URLs, in `password=...` and the given values themselves."""
    text = _CONNINFO_PASSWORD.sub(r"\1***", mask_url(text))
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
        self._pid: int | None = None
        self._closed = False
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
        conn = psycopg.connect(make_conninfo("", **self._params), autocommit=False)
        self._conn, self._pid = conn, conn.info.backend_pid
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

    def _again(self, exc: BaseException, failures: int, what: str) -> int:
        """Count a failed try; after the last one raise, else wait and let the caller retry."""
        failures += 1
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
                pid = self._pid
                try:
                    with conn.cursor() as cur:
                        if write and not idempotent:
                            row = cur.execute("SELECT pg_current_xact_id()::text").fetchone()
                            xid = row[0] if row else None
                        result = work(cur)
                except BaseException as exc:
                    self._rollback(conn)
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
                    if not idempotent and xid is not None and self._committed(xid, pid, what):
                        self._discard()
                        return result
                    # Not committed, or idempotent (re-running it changes nothing): again.
                    failures = self._again(exc, failures, what)
                    continue
                return result

    def _committed(self, xid: str, pid: int | None, what: str) -> bool:
        """After a lost COMMIT answer: did transaction `xid` commit? Raises when unknowable."""
        for _ in range(STATUS_POLLS):
            status = self._run(
                lambda cur: _one(cur, "SELECT pg_xact_status(%s::xid8)", (xid,)),
                what="look up a transaction's outcome")
            if status in ("committed", "aborted"):
                return bool(status == "committed")
            if status is None:
                break
            # "in progress": the old backend has not noticed the loss yet; end it (a commit it
            # has written stays committed) and look again.
            self._run(lambda cur: cur.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE pid = %s AND backend_xid::text = (%s::xid8::text::numeric
                         % 4294967296)::text""", (pid, xid)),
                what="end a disconnected session")
            time.sleep(0.05)
        raise StoreError(f"cannot {what}: the outcome of its transaction is unknown "
                         f"(PostgreSQL at {self.url}); the next cycle retries")

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

    def load_state(self) -> State:
        def work(cur: Cursor) -> tuple[list[Any], list[Any], Any]:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            incidents = cur.execute("SELECT data FROM incidents ORDER BY seq").fetchall()
            revisions = cur.execute("SELECT data FROM revisions ORDER BY seq").fetchall()
            meta = _one(cur, "SELECT value FROM meta WHERE key = 'correlate'")
            return incidents, revisions, meta

        incidents, revisions, meta = self._run(work, what="load the state")
        state = State()
        for (data,) in incidents:
            incident = Incident.from_state(_dec(data))
            state.incidents[incident.id] = incident
        for (data,) in revisions:
            facts = RevisionFacts.from_state(_dec(data))
            state.revisions[(facts.service, facts.name)] = facts
        meta = _dec(meta)
        if meta:
            state.request_services = set(meta.get("request_services", []))
            state.source_failures = {unit: n for unit, n in meta.get("source_failures", [])}
            for service, signal, items in meta.get("pending", []):
                state.pending[(service, signal)] = [
                    (parse_time(at), revision, sample) for at, revision, sample in items
                ]
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
        exactly what running it once leaves.
        """
        # Built before the transaction: a bad value fails here, having written nothing, and a
        # retry writes exactly the same rows.
        incidents = [
            (_enc_text(i.id), _enc_text(i.service), _enc_text(i.signal), i.status.value,
             i.first_seen, _doc(i.to_state()))
            for i in state.incidents.values()
        ]
        revisions = [(_enc_text(f.service), _enc_text(f.name), _doc(f.to_state()))
                     for f in state.revisions.values()]
        correlate = _doc({
            "request_services": sorted(state.request_services),
            "source_failures": [[unit, n] for unit, n in state.source_failures.items()],
            "pending": [
                [service, signal,
                 [[format_time(at), revision, sample] for at, revision, sample in items]]
                for (service, signal), items in state.pending.items()
            ],
        })
        checkpoint = record.checkpoint
        seen_keys = [_enc_text(k) for k in record.seen]
        seen_times = list(record.seen.values())
        created = datetime.now(UTC)
        unit = _enc_text(record.unit)
        messages = [(_enc_text(m.key), unit, _enc_text(m.incident_id), _doc(m.to_json()),
                     created) for m in record.messages]
        summary = _doc(record.summary) if record.summary else None

        def work(cur: Cursor) -> None:
            if incidents:
                cur.executemany(
                    """INSERT INTO incidents (id, service, signal, status, first_seen, data)
                       VALUES (%s, %s, %s, %s, %s, %s)
                       ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                           data = excluded.data""", incidents)
            if revisions:
                cur.executemany(
                    """INSERT INTO revisions (service, name, data) VALUES (%s, %s, %s)
                       ON CONFLICT (service, name) DO UPDATE SET data = excluded.data""",
                    revisions)
            _set_meta(cur, "correlate", correlate)
            if checkpoint is not None:
                cur.execute(
                    """INSERT INTO checkpoints (unit, value, until, updated_at)
                       VALUES (%s, %s, %s, %s)
                       ON CONFLICT (unit) DO UPDATE SET value = excluded.value,
                           until = excluded.until, updated_at = excluded.updated_at""",
                    (unit, _doc(checkpoint.to_json()), checkpoint.until, created))
            if seen_keys:
                cur.execute(
                    """INSERT INTO seen (key, ts)
                       SELECT * FROM unnest(%s::text[], %s::timestamptz[])
                       ON CONFLICT (key) DO NOTHING""", (seen_keys, seen_times))
            if record.forget_before is not None:
                cur.execute("DELETE FROM seen WHERE ts < %s", (record.forget_before,))
            if record.retain_after is not None:
                cur.execute("DELETE FROM incidents WHERE status = 'resolved' AND "
                            "(data->>'resolved_at')::timestamptz < %s", (record.retain_after,))
                cur.execute("DELETE FROM revisions WHERE (data->>'last_seen')::timestamptz < %s",
                            (record.retain_after,))
                cur.execute("DELETE FROM outbox WHERE sent_at < %s",
                            (datetime.now(UTC) - RETENTION,))
            if messages:
                # One statement per message, in order: ids (BIGSERIAL) follow the list.
                cur.executemany(
                    """INSERT INTO outbox (key, unit, incident_id, payload, created_at)
                       VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING""", messages)
            if summary is not None:
                _set_meta(cur, "last_cycle", summary)

        self._run(work, what="commit the cycle", write=True)

    def last_cycle(self) -> dict[str, Any] | None:
        value = self._meta("last_cycle")
        return value if isinstance(value, dict) else None

    def open_incidents(self) -> list[Incident]:
        rows = self._run(lambda cur: cur.execute(
            "SELECT data FROM incidents WHERE status = %s ORDER BY first_seen, seq",
            (IncidentStatus.OPEN.value,)).fetchall(), what="read the open incidents")
        return [Incident.from_state(_dec(d)) for (d,) in rows]

    # --- outbox --------------------------------------------------------------------------

    def queued(self) -> list[Queued]:
        rows = self._run(lambda cur: cur.execute(
            "SELECT id, payload, attempts, last_error, next_attempt_at, attempted_at "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id").fetchall(), what="read the outbox")
        return [Queued(i, Message.from_json(_dec(p)), a,
                       _dec_text(e) if e is not None else None, _utc(n), _utc(t))
                for i, p, a, e, n, t in rows]

    def mark_attempt(self, queued: Queued) -> None:
        # Not idempotent (an increment): a lost COMMIT is looked up, never blindly re-run.
        attempted_at = datetime.now(UTC)
        self._run(lambda cur: cur.execute(
            "UPDATE outbox SET attempts = attempts + 1, attempted_at = %s WHERE id = %s",
            (attempted_at, queued.id)),
            what="count a delivery attempt", write=True, idempotent=False)

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

    def mark_sent(self, queued: Queued, thread: Thread) -> None:
        sent_at = datetime.now(UTC)
        root = queued.message.action is Action.POST_ROOT

        def work(cur: Cursor) -> None:
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

    def mark_failed(self, queued: Queued, error: str, retry_at: datetime | None = None) -> None:
        self._run(lambda cur: cur.execute(
            "UPDATE outbox SET last_error = %s, next_attempt_at = %s WHERE id = %s",
            (_enc_text(error), retry_at, queued.id)),
            what="record a delivery failure", write=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()


def _one(cur: Cursor, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row, or None."""
    row = cur.execute(query, params).fetchone()
    return row[0] if row else None


def _set_meta(cur: Cursor, key: str, value: Jsonb) -> None:
    cur.execute(
        """INSERT INTO meta (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (key, value))
