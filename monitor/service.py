"""`monitor run`: the check cycle on a schedule, health and metrics over HTTP, a clean SIGTERM.

Rules:
- The cycle is `check.run_cycle`, the same one `monitor once` runs; this module only schedules
  it (APScheduler: one at a time, a late run coalesces, never piles up), watches it, and serves
  `/healthz`, `/readyz` and `/metrics`.
- Slow or idle clients cannot starve the probes: `http_server.HTTPServer` answers them with a
  fixed pool of threads, a bounded queue and a deadline for each request head.
- A cycle that raises is logged with its traceback and counted; the next one runs on time.
- Each tick first renews this instance's leases and rebalances (leadership.py), then checks only
  the units it leads; an instance that leads nothing is a healthy standby. /healthz and /metrics
  say which role and leases it has. At shutdown it hands its units over at once (`leave`).
- Shutdown (SIGTERM from Cloud Run, or SIGINT) abandons the running cycle before its commit, so
  the checkpoint stays consistent; then it sends what it can from the outbox within a bounded
  time, closes the store and returns: all well inside Cloud Run's 10-second grace period.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor import notify, sources
from monitor.check import Cancelled, ClockBehind, run_cycle
from monitor.config import SEND_MARGIN, Config, unit_name
from monitor.http_server import (
    HTTP_QUEUE,
    HTTP_WORKERS,
    READ_TIMEOUT,
    AddressError,
    HTTPServer,
    listen_address,
)
from monitor.instance import instance_id
from monitor.leadership import Change, Leadership
from monitor.metrics import Metrics
from monitor.notify.message import Notifier
from monitor.notify.outbox import drain
from monitor.sources.base import Source
from monitor.sources.budget import RateLimiter
from monitor.store.base import LeaseLost, Store
from monitor.times import format_duration

log = logging.getLogger(__name__)

JOB_GRACE = 5.0  # seconds a running cycle gets to notice the shutdown and stop
DRAIN_GRACE = 2.5  # seconds of sending from the outbox at shutdown


@dataclass
class Health:
    """What /healthz and /readyz answer, derived from when cycles last completed."""

    interval: timedelta
    started: datetime
    last_ok: datetime | None = None
    last_error: str | None = None
    ran: bool = False
    stopping: bool = False
    failures: int = 0

    @property
    def allowed_gap(self) -> timedelta:
        """A few intervals: one slow or failed cycle is not yet a sick monitor."""
        return max(3 * self.interval, timedelta(seconds=30))

    def healthz(self, now: datetime) -> tuple[int, str]:
        since = self.last_ok or self.started
        gap = now - since
        if gap <= self.allowed_gap:
            return 200, ("ok" if self.last_ok else "starting")
        what = "no check has completed" if self.last_ok is None else "no check completed"
        reason = f"{what} for {format_duration(gap)}"
        if self.last_error:
            reason += f" (last error: {self.last_error})"
        return 503, reason

    def readyz(self) -> tuple[int, str]:
        if self.stopping:
            return 503, "shutting down"
        if not self.ran:
            return 503, "starting: the first check has not finished"
        return 200, "ready"


@dataclass
class Service:
    config: Config
    store: Store
    notifier: Notifier
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    holder: str = field(default_factory=instance_id)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.health = Health(self.config.poll.interval, self.clock())
        send = timedelta(seconds=self.notifier.timeout) + SEND_MARGIN
        self.leadership = Leadership(self.store, self.holder, self.config.unit_names,
                                     self.config.lease, self.config.poll.interval,
                                     sleep=self.stop.wait, min_left=send)
        limiters: dict[str | None, RateLimiter] = {}
        self.sources: list[tuple[str, Any, Source]] = []
        for unit in self.config.units:
            # one budget per project, shared by all of its cycles, interrupted by a shutdown
            limiter = limiters.setdefault(unit.project, RateLimiter(
                self.config.source.max_requests_per_minute, sleep=self.stop.wait))
            self.sources.append((unit_name(unit), unit,
                                 sources.build(self.config, unit, limiter, sleep=self.stop.wait)))

    # --- the job -------------------------------------------------------------------------

    def tick(self) -> None:
        """One scheduled check over every unit this instance leads; never raises."""
        if self.stop.is_set():
            return
        self.idle.clear()
        try:
            if not self._lead():
                return
            checked = 0
            for name, unit, source in self.sources:
                if self.stop.is_set():
                    break
                if self.leadership.due(name):
                    checked += 1
                    self._check(name, unit, source)
            if not checked and not self.stop.is_set():
                self.health.last_ok = self.clock()  # a standby's work is its heartbeat
        finally:
            self.health.ran = True
            self.idle.set()

    def _lead(self) -> bool:
        """Renew, rebalance; False when the store could not be reached (no check this tick:
        what this instance held is still fenced, and expires if this goes on)."""
        try:
            changes = self.leadership.refresh()
        except Exception as exc:
            self.health.last_error = f"cannot renew the leases: {type(exc).__name__}: {exc}"
            self.health.failures += 1
            log.warning("%s; no check this time", self.health.last_error)
            return False
        self.metrics.observe_leases(self.leadership, changes)
        return True

    def _check(self, name: str, unit: Any, source: Source) -> None:
        started = time.monotonic()
        now = self.clock()
        try:
            result = run_cycle(
                self.config, self.store, self.leadership.guard(name, source), self.notifier,
                unit=name,
                services=unit.services, project=unit.project, now=now,
                default_lookback=self.config.poll.first_lookback if source.live else None,
                stop=self.stop, lease=self.leadership.held[name],
                keep_alive=functools.partial(self.leadership.keep, name),
            )
        except Cancelled as exc:
            log.info("check of %s abandoned: %s; the next run re-reads it", name, exc)
            return
        except ClockBehind as exc:  # the host's clock stepped back: wait until it passes
            self.health.last_error = str(exc)
            self.health.failures += 1
            log.warning("no check of %s: %s", name, exc)
            return
        except LeaseLost as exc:
            self._lost(name, exc)
            return
        except Exception as exc:
            self.metrics.cycles.labels("error").inc()
            self.health.last_error = f"{type(exc).__name__}: {exc}"
            self.health.failures += 1
            log.exception("check of %s failed unexpectedly; the next one runs on schedule", name)
            return
        if name in result.delivery.lost:
            self._lost(name, LeaseLost("refused while sending"))
        checkpoint = self.store.checkpoint(name)
        self.metrics.observe_cycle(name, result, time.monotonic() - started,
                                   len(self.store.queued()),
                                   checkpoint.until if checkpoint else None, self.clock())
        if result.error:
            self.health.last_error = result.error
            self.health.failures += 1
            log.warning("check of %s could not complete: %s", name, result.error)
            return
        self.health.last_ok = now
        self.health.failures = 0
        opened = len(result.open_incidents)
        log.info("check of %s: %d entries read, %d skipped, %d API request(s), %d "
                 "transition(s), %d notification(s) sent, %d incident(s) open", name,
                 result.stats.entries_read, result.stats.entries_skipped,
                 result.stats.api_requests, len(result.transitions), result.delivery.sent,
                 opened)

    def _lost(self, name: str, exc: Exception) -> None:
        """Another instance leads `name` now: nothing of this cycle was written or sent."""
        lease = self.leadership.held.get(name)
        self.leadership.lost(name)
        self.metrics.observe_leases(self.leadership, [
            Change(name, "lost", lease.token if lease else 0)])
        log.warning("lost the lease of %s (%s); another instance leads it now", name, exc)

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_ERROR:  # tick() never raises; this is a last resort
            self.metrics.cycles.labels("error").inc()
            log.error("scheduled check raised: %s", event.exception)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("the previous check is still running: this run is skipped")
        elif event.code == EVENT_JOB_MISSED:
            log.warning("a check ran late and was coalesced with the next one")

    # --- running -------------------------------------------------------------------------

    def listen(self, host: str, port: int, *, timeout: float = READ_TIMEOUT,
               workers: int = HTTP_WORKERS, waiting: int = HTTP_QUEUE) -> HTTPServer:
        """Bind and serve the HTTP endpoints on a thread of their own; AddressError if the
        address cannot be used."""
        try:
            http = HTTPServer((host, port), _handler(self), timeout=timeout, workers=workers,
                              waiting=waiting)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressError(f"port {port} is already in use") from exc
            raise AddressError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
        return http

    def serve(self, host: str, port: int) -> None:
        """Run until SIGTERM or SIGINT, then shut down within Cloud Run's grace period."""
        http = self.listen(host, port)
        interval = self.config.poll.interval.total_seconds()
        scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": max(int(interval), 1)})
        scheduler.add_listener(self._on_event,
                               EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        scheduler.add_job(self.tick, "interval", seconds=interval, id="check",
                          next_run_time=datetime.now(UTC))

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if not self.stop.is_set():  # a second signal (e.g. from a wrapper) changes nothing
                log.info("received %s: shutting down", signal.Signals(signum).name)
                self.health.stopping = True
                self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("monitor running as %s: %d unit(s) of work every %s, leases of %s; http on "
                 "%s:%d", self.holder, len(self.sources),
                 format_duration(self.config.poll.interval), format_duration(self.config.lease),
                 host, port)
        scheduler.start()
        try:
            # The main thread only waits: signal handlers run here and just set `stop`.
            while not self.stop.wait(0.5):
                pass
        finally:
            scheduler.shutdown(wait=False)
            self.shutdown(http)

    def shutdown(self, http: HTTPServer | None = None) -> None:
        self.stop.set()
        self.health.stopping = True
        if not self.idle.wait(JOB_GRACE):
            log.warning("the running check did not stop within %.0fs", JOB_GRACE)
        else:
            held = dict(self.leadership.held)
            if held:
                sent = drain(self.store, self.notifier, leases=held,
                             deadline=time.monotonic() + DRAIN_GRACE)
                if sent.sent or sent.waiting:
                    log.info("shutdown: %d notification(s) sent, %d left queued", sent.sent,
                             sent.waiting + sent.failed)
            try:
                self.leadership.leave()
                if held:
                    log.info("shutdown: handed over %s", ", ".join(sorted(held)))
            except Exception as exc:  # the leases then expire by themselves
                log.warning("shutdown: cannot release the leases (%s); they expire in %s",
                            exc, format_duration(self.config.lease))
            self.store.close()
        if http is not None:
            http.shutdown()
            http.server_close()
        log.info("monitor stopped")


def _handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server: HTTPServer

        def setup(self) -> None:
            super().setup()
            self.connection.settimeout(self.server.timeout_s)  # every read and write on it

        def parse_request(self) -> bool:  # reads the headers; False: nothing to answer
            return super().parse_request() and self.server.head_read(self.connection)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                code, text = service.health.healthz(service.clock())
                self._text(code, f"{text}\n{service.holder}: {service.leadership.describe()}")
            elif path == "/readyz":
                self._text(*service.health.readyz())
            elif path == "/metrics":
                self._send(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._page(path)

        do_HEAD = do_GET  # the same status and headers; _send leaves the body out

        def _page(self, path: str) -> None:
            """`/` and `/incidents/<id>`: read-only pages, each on its own store connection."""
            from monitor import web

            try:
                answer = web.respond(service.config, path, service.clock())
            except Exception:
                log.exception("http: %s failed", path)
                self._text(500, "internal error (see the monitor's logs)")
                return
            if answer is None:
                self._text(404, "not found")
                return
            code, body = answer
            self._send(code, body.encode(), web.HTML)

        def _text(self, code: int, text: str) -> None:
            self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler


def check_slack(notifier: Notifier) -> None:
    """auth.test at start-up: a bad token is reported now, not when the first incident opens.

    The service still starts: incidents are detected and their messages wait in the outbox
    until the token is fixed, and /metrics shows them queued.
    """
    from monitor.notify.message import DeliveryError
    from monitor.notify.slack import SlackNotifier

    if not isinstance(notifier, SlackNotifier):
        return
    try:
        log.info("Slack: authenticated as %s", notifier.check_auth())
    except DeliveryError as exc:
        if exc.retryable:  # unreachable, timed out, 5xx: nothing is known about the token
            log.error("Slack: cannot be reached (%s); notifications will wait in the outbox "
                      "until it can", exc)
        else:
            log.error("Slack: the token does not work (%s); notifications will wait in the "
                      "outbox until it does", exc)


def run(config: Config, store: Store) -> None:
    host, port = listen_address()  # a bad $PORT is said before anything else happens
    service = Service(config, store, notify.build(config, sys.stdout, timeout=5))
    check_slack(service.notifier)
    service.serve(host, port)
