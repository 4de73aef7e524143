"""The PostgreSQL schema, and its migration by the monitor itself.

Why here: the steps are data, versioned in `schema_version` (one row per applied step), and
instances of one deploy start together. Every pending step runs in ONE transaction that first
takes `pg_advisory_xact_lock(MIGRATION_LOCK)`, so the first instance migrates while the others
wait, then find the version current. A current schema takes no lock: `monitor status` must not
wait for an instance that migrates.

Rows come back in the order SQLite gives them: incidents and revisions in the order they were
first inserted (a `seq` column: PostgreSQL's heap order changes with every update, and the order
decides which incident or revision the pure core considers first), the outbox by its BIGSERIAL
id, i.e. in insert order.
"""

from __future__ import annotations

from monitor.store.pg_session import Cursor, Session, one

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


def schema_version(session: Session) -> int:
    def work(cur: Cursor) -> int:
        if one(cur, "SELECT to_regclass('schema_version')") is None:
            return 0
        return int(one(cur, "SELECT coalesce(max(version), 0) FROM schema_version"))

    return session.run(work, what="read the schema version")


def migrate(session: Session) -> None:
    """Apply the steps of MIGRATIONS this database lacks."""
    migrations = MIGRATIONS
    if schema_version(session) >= len(migrations):
        return

    def work(cur: Cursor) -> None:
        # Instances starting together queue here; the first migrates, the others then find
        # the version current. Released when this transaction ends.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur.execute("""CREATE TABLE IF NOT EXISTS schema_version (
                           version integer PRIMARY KEY,
                           applied_at timestamptz NOT NULL DEFAULT now())""")
        version = one(cur, "SELECT coalesce(max(version), 0) FROM schema_version")
        for number, script in enumerate(migrations[version:], start=version + 1):
            cur.execute(script)
            cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    session.run(work, what="migrate the schema", write=True)
