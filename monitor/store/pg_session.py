"""The PostgreSQL session: one connection, and what to do when it is lost.

Why: Cloud SQL restarts, fails over, and networks cut idle connections, and a monitor that gave
up on the first lost connection would miss cycles or, worse, send twice. Every store operation
runs here as one transaction, retried at most `attempts` tries with exponential backoff (0.25 s,
0.5 s, 1 s, 2 s by default: about 4 s of waiting, plus the connect timeout of each try):
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
- A COMMIT whose answer was lost has an unknown outcome. An idempotent write (the store's
  `commit_cycle`, `mark_sent`, `mark_failed`: running one twice leaves what running it once
  leaves) is simply run again. A write that is not (`idempotent=False`: `mark_attempt`
  increments) records its transaction id (`pg_current_xact_id()`), and after a lost COMMIT the
  server is asked (`pg_xact_status`) whether it committed; only an aborted one is run again.
- Anything else (a constraint, a type, a bug) is not retried: the transaction is rolled back and
  the error raised. When the budget runs out, StoreUnavailable (an OSError) is raised and the
  transaction did not commit, or committed whole: the checkpoint is old or new, never half.

Secrets: every error raised or logged here passes through `monitor.redact.hide`, which hides the
password itself, a URL's password, `password=...` in connection strings and anything else shaped
like a secret;
psycopg's own exceptions are never chained to ours, so no traceback shows them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from monitor.redact import hide

log = logging.getLogger("monitor.store.postgres")

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]

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


def connection_params(url: str) -> dict[str, str]:
    """libpq parameters for a `state.url`, with the monitor's defaults; no connection is made.

    `postgresql://user:pw@host:5432/db` (TCP) and `postgresql://user@/db?host=/cloudsql/
    PROJECT:REGION:INSTANCE` (the Cloud SQL unix socket on Cloud Run) both parse; so does
    anything else libpq accepts, and libpq's PG* environment variables (PGPASSWORD) apply.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error as exc:
        raise ValueError(f"state.url: not a valid PostgreSQL URL: {hide(str(exc), ())}") from None
    for key, value in DEFAULT_PARAMS.items():
        params.setdefault(key, value)
    return params


def one(cur: Cursor, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row, or None."""
    row = cur.execute(query, params).fetchone()
    return row[0] if row else None


class Session:
    """One connection at a time, and `run`, which retries as the module docstring says."""

    def __init__(self, url: str, *, attempts: int | None = None,
                 backoff: float | None = None) -> None:
        self._params = connection_params(url)
        password = self._params.get("password", "")
        self._secrets = (password,) if password else ()
        self.url = hide(url, self._secrets)
        self._attempts = max(1, ATTEMPTS if attempts is None else attempts)
        self._backoff = BACKOFF if backoff is None else backoff
        # `monitor run` uses the store from the scheduler's worker and, at shutdown, from the
        # main thread: one operation (and one transaction) at a time on the one connection.
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self.backend: tuple[int, datetime] | None = None  # (pid, backend_start) of _conn
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

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
        self.backend = (int(row[0]), row[1]) if row else None
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
        return hide(str(exc).strip(), self._secrets) or type(exc).__name__

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

    def run(self, work: Callable[[Cursor], T], *, what: str, write: bool = False,
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
                backend = self.backend
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
                        self._end(backend)  # on a new connection, which the re-run uses
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
                    self._end(backend)
                    if not idempotent and xid is not None and self._committed(xid, what):
                        return result
                    # Not committed, or idempotent (re-running it changes nothing): again.
                    failures = self._again(exc, failures, what, discard=False)
                    continue
                return result

    def _end(self, backend: tuple[int, datetime] | None) -> None:
        """After a write lost its connection: end that session if the server still runs it, and
        wait until it is gone (a COMMIT it had begun completes first; a transaction it had not
        committed aborts). If it outlives the wait, the caller's look-up or re-run finds out."""
        if backend is None:
            return
        for _ in range(SESSION_POLLS):
            running = self.run(lambda cur: one(
                cur, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE pid = %s AND backend_start = %s", backend),
                what="end a disconnected session")
            if running is None:
                return
            time.sleep(0.05)
        log.warning("PostgreSQL: the session of a lost connection (pid %d) is still running",
                    backend[0])

    def _committed(self, xid: str, what: str) -> bool:
        """After a lost COMMIT answer, its session ended: did transaction `xid` commit? Raises
        when unknowable (the session outlived `_end`, or the server forgot the xid)."""
        status = self.run(lambda cur: one(cur, "SELECT pg_xact_status(%s::xid8)", (xid,)),
                          what="look up a transaction's outcome")
        if status in ("committed", "aborted"):
            return bool(status == "committed")
        raise StoreError(f"cannot {what}: the outcome of its transaction is unknown "
                         f"({status or 'forgotten'}; PostgreSQL at {self.url}); the next cycle "
                         "retries")
