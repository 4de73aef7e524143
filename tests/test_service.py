"""The service's own logic without a process: health answers, the job wrapper, logging."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from monitor import logs
from monitor.config import parse_config
from monitor.http_server import listen_address
from monitor.notify.console import ConsoleNotifier
from monitor.service import Health, Service
from monitor.store import open_store

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("last_ok", "now", "error", "expected"), [
    (None, T0 + timedelta(seconds=10), None, (200, "starting")),
    (T0, T0 + timedelta(minutes=2), None, (200, "ok")),
    (T0, T0 + timedelta(minutes=4), "UNAVAILABLE from Cloud Logging",
     (503, "no check completed for 4m (last error: UNAVAILABLE from Cloud Logging)")),
    (None, T0 + timedelta(minutes=5), None, (503, "no check has completed for 5m")),
])
def test_healthz(last_ok, now, error, expected):
    health = Health(interval=timedelta(minutes=1), started=T0, last_ok=last_ok, last_error=error)
    assert health.healthz(now) == expected


def test_readyz():
    health = Health(interval=timedelta(minutes=1), started=T0)
    assert health.readyz() == (503, "starting: the first check has not finished")
    health.ran = True
    assert health.readyz() == (200, "ready")
    health.stopping = True
    assert health.readyz() == (503, "shutting down")


def test_listen_address():
    assert listen_address({}) == ("127.0.0.1", 8080)
    assert listen_address({"PORT": "9000", "K_SERVICE": "monitor"}) == ("0.0.0.0", 9000)
    assert listen_address({"MONITOR_HTTP_HOST": "::1", "PORT": "1"}) == ("::1", 1)
    with pytest.raises(ValueError, match="PORT"):
        listen_address({"PORT": "eighty"})


def test_a_cycle_that_raises_is_logged_counted_and_the_next_one_runs(tmp_path, caplog,
                                                                     monkeypatch):
    config = parse_config({"services": ["spector"], "source": {"type": "file",
                                                               "path": str(tmp_path / "x.json")},
                           "signals": [{"name": "s", "match": "x"}]}, env={})
    (tmp_path / "x.json").write_text("[]")
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    service = Service(config, store, ConsoleNotifier(io.StringIO()),
                      clock=lambda: T0)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    import monitor.service as svc
    real = svc.run_cycle
    monkeypatch.setattr(svc, "run_cycle", broken)
    with caplog.at_level(logging.ERROR):
        service.tick()
    assert "check of default failed unexpectedly" in caplog.text
    assert "RuntimeError: a bug" in caplog.text  # the traceback
    assert service.health.last_error == "RuntimeError: a bug"
    service.tick()
    assert service.health.last_ok == T0 and len(calls) == 2
    samples = {s.labels["outcome"]: s.value for m in service.metrics.registry.collect()
               if m.name == "monitor_cycles" for s in m.samples if s.name.endswith("_total")}
    assert samples == {"ok": 1.0, "failed": 0.0, "error": 1.0}
    store.close()


def test_json_logs_are_what_cloud_logging_parses_and_carry_no_secret():
    stream = io.StringIO()
    logs.configure("INFO", stream=stream, json_lines=True, secrets=["xoxb-secret-123"])
    log = logging.getLogger("monitor.test")
    log.warning("posting with %s to postgresql://u:hunter2@db/x", "xoxb-secret-123")
    try:
        raise ValueError("token xoxb-secret-123 rejected")
    except ValueError:
        log.exception("it failed")
    # google-cloud-logging's StructuredLogHandler writes the lines; its one diagnostic entry
    # per process (`logging.googleapis.com/diagnostic`, no message) is left out here.
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    lines = [line for line in lines if "logging.googleapis.com/diagnostic" not in line]
    assert [line["severity"] for line in lines] == ["WARNING", "ERROR"]
    assert lines[0]["logging.googleapis.com/labels"] == {"component": "monitor",
                                                         "python_logger": "monitor.test"}
    assert lines[0]["logging.googleapis.com/sourceLocation"]["function"] == (
        "test_json_logs_are_what_cloud_logging_parses_and_carry_no_secret")
    text = stream.getvalue()
    assert "xoxb-secret-123" not in text and "hunter2" not in text
    assert "Traceback" in lines[1]["message"] and "ValueError" in lines[1]["message"]
    logging.getLogger().handlers.clear()


def test_text_logs_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    logs.configure("INFO", stream=stream)
    logging.getLogger("monitor.test").info("hello")
    assert "INFO" in stream.getvalue() and "hello" in stream.getvalue()
    assert not stream.getvalue().startswith("{")
    logging.getLogger().handlers.clear()


def test_a_bad_slack_token_is_reported_at_start_up(caplog):
    from monitor.notify.slack import SlackNotifier
    from monitor.service import check_slack
    from tests.slack_server import SlackServer

    with SlackServer() as slack:
        with caplog.at_level(logging.INFO):
            check_slack(SlackNotifier(slack.token, base_url=slack.base_url))
        assert "Slack: authenticated as monitor in Test" in caplog.text
        caplog.clear()
        check_slack(SlackNotifier("xoxb-wrong-token", base_url=slack.base_url))
        assert "the token does not work" in caplog.text
        assert "xoxb-wrong-token" not in caplog.text
        url = slack.base_url
    # the server is gone: Slack is unreachable, which says nothing about the token
    caplog.clear()
    check_slack(SlackNotifier(slack.token, base_url=url, timeout=2))
    assert "Slack: cannot be reached (cannot reach Slack" in caplog.text
    assert "token does not work" not in caplog.text and slack.token not in caplog.text


def test_a_clock_that_steps_back_skips_the_check_with_a_warning_until_it_passes(tmp_path,
                                                                               caplog):
    """`monitor run` on a host whose clock stepped back: no check (the checkpoint never moves
    back, or the window would be read again and every alert in it posted as new), a warning,
    a failure on /healthz; checks resume once the clock is past the last one."""
    (tmp_path / "x.json").write_text("[]")
    config = parse_config({"services": ["spector"], "poll": {"interval": "1s"},
                           "source": {"type": "file", "path": str(tmp_path / "x.json")},
                           "signals": [{"name": "s", "match": "x"}]}, env={})
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    now = [T0]
    service = Service(config, store, ConsoleNotifier(io.StringIO()), clock=lambda: now[0])
    try:
        service.tick()
        assert store.checkpoint("default").until == T0 and service.health.failures == 0
        now[0] = T0 - timedelta(hours=1)
        with caplog.at_level(logging.WARNING):
            service.tick()
        assert ("no check of default: 2026-11-25T11:00:00Z is before the last completed check "
                "of default (2026-11-25T12:00:00Z)") in caplog.text
        assert store.checkpoint("default").until == T0  # not moved back
        assert service.health.failures == 1 and "before the last" in service.health.last_error
        now[0] = T0 + timedelta(minutes=1)
        service.tick()
        assert store.checkpoint("default").until == T0 + timedelta(minutes=1)
        assert service.health.last_ok == T0 + timedelta(minutes=1)
    finally:
        store.close()
