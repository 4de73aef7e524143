from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.slack_server import SlackServer

# The PostgreSQL server the tests use (each run makes, and drops, its own database on it).
PG_ADMIN_URL = os.environ.get("MONITOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def slack_server() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway database for this test session; its URL. Dropped at the end.

    Without a reachable server the PostgreSQL tests are skipped, except in CI (`CI` set),
    where `.ci/run` has started the server and a missing one is a failure.
    """
    psycopg = pytest.importorskip("psycopg")

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"monitor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        _drop_orphans(admin)
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_orphans(admin) -> None:
    """Drop the databases of earlier test runs on this machine that were killed before their
    clean-up (their process is gone)."""
    rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'monitor\\_test\\_%'")
    for (name,) in rows.fetchall():
        pid = name.split("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's database with an empty `public` schema: every test starts from nothing.

    Sessions left open by an earlier test (one that failed before closing its store) are ended
    first, so that they can neither block the reset nor leak into this test.
    """
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database


def _hypothesis_profiles() -> None:
    """Hypothesis profiles for the property tests (tests/test_properties_*.py).

    "ci", the default, keeps the whole property suite well under a minute on two cores; set
    HYPOTHESIS_PROFILE=explore to hunt for bugs with many more examples per property.
    """
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", deadline=None, max_examples=40, print_blob=True,
                              suppress_health_check=slow)
    settings.register_profile("explore", deadline=None, max_examples=2000,
                              suppress_health_check=slow)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
