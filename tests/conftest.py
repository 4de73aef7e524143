from __future__ import annotations

import os
import uuid
import warnings
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


# The `slow` marker (pyproject.toml): `pytest -m "not slow"` is the fast inner loop, well under a
# minute on two cores; plain `pytest` (the README's command, run by .ci/run) still runs them all.
# Marked here rather than in the test files; the hook only adds the marker, it never deselects.
SLOW_DIRS = {
    "tests/e2e/": "end to end: subprocesses against the emulator, Slack, PostgreSQL, gcloud, "
                  "Chromium; chaos and fault injection",
}
SLOW_FILES = {
    "tests/test_bench_quick.py": "runs every benchmark section (about 50 s)",
}
# One test each (every parametrization when the id has no [...]); the time is a 2-core figure.
SLOW_TESTS = {
    "tests/test_properties_config.py::test_deep_or_recursive_yaml_is_a_config_error":
        "Hypothesis: YAML nested up to 20,000 deep (~18 s)",
    "tests/test_cli.py::test_slack_failure_exits_3_and_keeps_the_message_queued":
        "three `monitor once` runs and real backoff waits (~11 s)",
    "tests/test_replay_memory.py::test_a_replay_50_times_bigger_peaks_within_1_6x":
        "replays 2,000 and 50,000 entries to compare memory peaks (~6 s)",
    "tests/test_cli_failures.py::test_a_check_longer_than_its_lease_keeps_it_and_owes_nothing":
        "paced sends that outlast a 3 s lease (~5 s)",
    "tests/test_store_postgres.py::test_monitor_once_in_steps_through_lost_connections":
        "the whole spector replay in steps on PostgreSQL through a lossy proxy (~4 s)",
    "tests/test_file_source.py::test_large_file_is_streamed_with_bounded_memory":
        "writes and streams a ~30 MB export (~3 s)",
    "tests/test_dockerfile.py::test_build_stage_builds_a_wheel_of_the_whole_package":
        "pip builds the wheel in a subprocess (~3 s)",
    # About a second or two each, nearly all of it real waiting (timeouts, pacing, outages) or
    # a subprocess: together ~20 s of the fast loop.
    "tests/test_http_server.py::test_a_slowloris_is_disconnected_while_healthz_answers":
        "holds slow clients until the server drops them (~2 s)",
    "tests/test_http_server.py::test_idle_connections_beyond_the_pool_do_not_hang_healthz":
        "holds idle connections until the server drops them (~2 s)",
    "tests/test_http_server.py::test_threads_stay_bounded_under_many_slow_connections":
        "40 slow connections held until the server drops them (~2 s)",
    "tests/test_store_postgres.py::test_cycles_under_random_connection_loss_end_consistent":
        "100+ cycles while a proxy cuts connections at random (~2 s)",
    "tests/test_store_postgres.py::test_a_server_away_for_a_while_is_waited_for":
        "waits out a refused server with backoff (~1 s)",
    "tests/test_outbox.py::test_a_message_whose_answer_was_lost_is_found_not_posted_twice":
        "a real 1 s client timeout (~1 s)",
    "tests/test_slack.py::test_a_timeout_is_retryable": "a 1 s client timeout (~1 s)",
    "tests/test_slack.py::test_a_lost_response_leaves_the_post_findable":
        "a 1 s client timeout (~1 s)",
    "tests/test_webhook.py::test_a_timeout_is_retryable": "a 1 s client timeout (~1 s)",
    "tests/test_service.py::test_a_clock_that_steps_back_skips_the_check_with_a_warning_until_it_passes":
        "real 1 s poll intervals (~1 s)",
    "tests/test_report.py::test_matplotlib_warnings_never_reach_stderr":
        "`python -m monitor report` in a subprocess (~1.3 s)",
    "tests/test_scenario_spector.py::test_polling_in_steps_reaches_the_same_conclusions":
        "33 `monitor once` checks over the whole spector replay (~1.2 s)",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        test = item.nodeid.split("[", 1)[0]
        if (any(path.startswith(d) for d in SLOW_DIRS) or path in SLOW_FILES
                or item.nodeid in SLOW_TESTS or test in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
    # A renamed or removed test would quietly put its slow replacement back in the fast loop:
    # say so whenever its module was collected.
    modules = {item.nodeid.split("::", 1)[0]: item.module for item in items
               if isinstance(item, pytest.Function) and item.module is not None}
    for nodeid in SLOW_TESTS:
        file, name = nodeid.split("::", 1)
        module = modules.get(file)
        if module is not None and not hasattr(module, name.split("::", 1)[0].split("[", 1)[0]):
            warnings.warn(pytest.PytestWarning(
                f"tests/conftest.py SLOW_TESTS names {nodeid}, which does not exist"), stacklevel=1)
