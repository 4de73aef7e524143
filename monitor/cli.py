"""The command line: once, run, status and check-config (DESIGN.md's CLI contract).

Rules: stdout carries only the command's output (one JSON object with `--format json`); logs and
console notifications in JSON mode go to stderr. Exit codes for `once`: 0 nothing open, 1 at least
one incident open, 2 usage or config error, 3 the check could not complete (or a notification it
owes is not delivered yet), 4 checked read-only because another instance leads the unit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
import yaml

from monitor import logs, notify, sources
from monitor.check import ClockBehind, run_cycle
from monitor.config import (
    SEND_MARGIN,
    Config,
    ConfigError,
    default_config_path,
    load_config,
    masked,
    unit_name,
)
from monitor.instance import instance_id
from monitor.leadership import Leadership
from monitor.notify.console import ConsoleNotifier
from monitor.notify.message import DeliveryError
from monitor.output import CycleResult, result_json, result_text
from monitor.redact import mask_url, scrub
from monitor.sources.base import Source, SourceError
from monitor.sources.cloud_logging import CredentialsError
from monitor.sources.file import FileSource
from monitor.store import open_store
from monitor.store.base import LeaseLost, Store
from monitor.times import EARLIEST, LATEST, BadTime, TimeOutOfRange, parse_time
from monitor.times import parse_duration as _parse_duration

EXIT_OK, EXIT_OPEN, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_READ_ONLY = 0, 1, 2, 3, 4

log = logging.getLogger("monitor")


class DurationParam(click.ParamType[timedelta]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return _parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class TimeParam(click.ParamType[datetime]):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(value)
        except TimeOutOfRange:
            self.fail(f"{value!r} is out of range (years {EARLIEST.year} to "
                      f"{LATEST.year - 1})", param, ctx)
        except BadTime:
            self.fail(f"{value!r} is not an RFC3339 time (e.g. 2025-12-13T02:00:00Z)", param, ctx)


def _setup_logging(level: str = "WARNING") -> None:
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"monitor: {message}", err=True)
    sys.exit(code)


def _open_store(config: Config) -> Store:
    try:
        return open_store(config.state.url)
    except (OSError, ValueError) as exc:
        _fail(EXIT_INCOMPLETE, f"cannot open the state store: {mask_url(str(exc))}")


def _load(path: str | None) -> Config:
    try:
        return load_config(path or default_config_path())
    except ConfigError as exc:
        _fail(EXIT_USAGE, f"config error: {exc}")


config_option = click.option(
    "--config", "config_path", metavar="PATH",
    help="config file (default: $MONITOR_CONFIG, else ./config.yaml)",
)


class _Commands(click.Group):
    """The command group; an error no command expected is one clear line and exit 3.

    A deploy gate reads exit 1 as "an incident is open", so a crash must never exit 1 (Python's
    default for a traceback). The traceback itself is logged at `--log-level DEBUG`.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            log.debug("unexpected error", exc_info=True)
            detail = scrub(mask_url(" ".join(str(exc).split())))[:500]
            _fail(EXIT_INCOMPLETE, f"unexpected error: {type(exc).__name__}: {detail} (the "
                                   "traceback: --log-level DEBUG)")


log_level_option = click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING", show_default=True, help="what is logged to stderr")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """monitor: a log-driven incident monitor for Cloud Run services."""


@main.command()
@config_option
@click.option("--since", type=DurationParam(), help="read this far back (e.g. 2h) when no "
              "checkpoint is stored")
@click.option("--now", "now_", type=TimeParam(), help="the clock (RFC3339); default: now, or "
              "the latest entry of a file source")
@click.option("--dry-run", is_flag=True, help="compute and print, send and save nothing")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@log_level_option
def once(config_path: str | None, since: timedelta | None, now_: datetime | None,
         dry_run: bool, fmt: str, log_level: str) -> None:
    """Run one check; the exit code says whether anything is open (0 no, 1 yes)."""
    _setup_logging(log_level.upper())
    config = _load(config_path)
    out = sys.stdout if fmt == "text" else sys.stderr
    notifier = notify.build(config, out)
    results: list[CycleResult] = []
    store = _open_store(config)
    # Like any instance, `once` writes a unit only under its lease, with the leadership code of
    # `monitor run` in burst mode; a unit that `monitor run` leads is checked read-only (nothing
    # saved or sent: the leader does that).
    leadership = Leadership(store, f"once-{instance_id()}", config.unit_names, config.lease,
                            config.poll.interval, burst=True,
                            min_left=timedelta(seconds=notifier.timeout) + SEND_MARGIN)
    try:
        # The clocks first: a replay's is a pass over the export, which needs no lease.
        checks = [(unit, source, now_ or _clock(source)) for unit in config.units
                  for source in [sources.build(config, unit)]]
        if not dry_run:
            leadership.refresh()
        for unit, source, now in checks:
            name = unit_name(unit)
            led = name in leadership.held
            if not led and not dry_run:
                log.warning("%s is led by another instance (`monitor status` shows which): "
                            "checked read-only, nothing saved or sent", name)
            results.append(run_cycle(
                config, store, leadership.guard(name, source) if led else source, notifier,
                unit=name,
                services=unit.services,
                project=unit.project,
                now=now,
                since=since,
                default_lookback=config.poll.first_lookback if source.live else None,
                dry_run=dry_run or not led,
                lease=leadership.held.get(name),
                keep_alive=functools.partial(leadership.keep, name) if led else None,
            ))
            results[-1].read_only = not led and not dry_run
    except CredentialsError as exc:
        _fail(EXIT_USAGE, str(exc))
    except ClockBehind as exc:
        _fail(EXIT_USAGE, f"{'--now ' if now_ else 'the clock: '}{exc}; nothing was read or "
                          "sent (--dry-run looks at an earlier time without saving anything)")
    except (SourceError, DeliveryError) as exc:
        _fail(EXIT_INCOMPLETE, f"check could not complete: {exc}")
    except LeaseLost as exc:
        _fail(EXIT_INCOMPLETE, f"check could not complete: another instance took over: {exc}")
    except (OSError, sqlite3.Error) as exc:  # the store went away (StoreUnavailable is an OSError)
        _fail(EXIT_INCOMPLETE, f"check could not complete: the state store failed: "
                               f"{mask_url(str(exc))}")
    finally:
        with contextlib.suppress(Exception):  # else they expire by themselves
            leadership.leave()
        store.close()
    result = results[0] if len(results) == 1 else _merge(results)
    if dry_run:
        console = ConsoleNotifier(out)
        for message in result.messages:
            console.print_message(message)
    if fmt == "json":
        click.echo(json.dumps(result_json(result), indent=2))
    else:
        click.echo(result_text(result))
    failed = [r.error for r in results if r.error]
    if failed:
        _fail(EXIT_INCOMPLETE, f"check could not complete: {failed[0]}")
    owed = sum(r.delivery.owed for r in results)
    if owed:
        _fail(EXIT_INCOMPLETE, f"{owed} notification(s) not delivered yet; they stay queued "
                               "and are sent by the next check")
    others = [unit_name(u) for u, r in zip(config.units, results, strict=True) if r.read_only]
    if others:
        _fail(EXIT_READ_ONLY, f"{', '.join(others)}: led by another instance, checked read-only "
                              "(nothing saved or sent; `monitor status` shows the leader)")
    sys.exit(EXIT_OPEN if result.open_incidents else EXIT_OK)


def _merge(results: list[CycleResult]) -> CycleResult:
    """Several units of work: one result with every unit's state, counts and messages."""
    last = results[-1]
    for r in results[:-1]:
        last.state.incidents.update(r.state.incidents)
        last.state.revisions.update(r.state.revisions)
        last.stats.entries_read += r.stats.entries_read
        last.stats.entries_skipped += r.stats.entries_skipped
        last.stats.api_requests += r.stats.api_requests
        last.delivery.sent += r.delivery.sent
        last.delivery.failed += r.delivery.failed
        last.delivery.waiting += r.delivery.waiting
        last.read_only = last.read_only or r.read_only
        last.messages[:0] = r.messages
    return last


def _clock(source: Source) -> datetime:
    """A replayed export's clock is its newest entry; anything else runs on real time."""
    if isinstance(source, FileSource):
        latest = source.latest_timestamp()
        if latest is None:
            raise SourceError(f"{source.path}: no log entries to replay")
        return latest
    return datetime.now(UTC)


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the config and print it, as the monitor will use it, with secrets masked."""
    config = _load(config_path)
    click.echo(yaml.safe_dump(masked(config), sort_keys=False), nl=False)
    click.echo("config OK", err=True)


def _secrets(config: Config) -> list[str]:
    """Values that must never appear in a log line, whatever logs them."""
    found = [config.slack.token, config.slack.webhook_url or ""]
    password = re.search(r"://[^:/@]*:([^@/]+)@", config.state.url)
    if password:
        found.append(password.group(1))
    return found


@main.command()
@config_option
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False), default="INFO")
def run(config_path: str | None, log_level: str) -> None:
    """Run continuously: a check every poll.interval, /healthz and /metrics on $PORT."""
    config = _load(config_path)
    logs.configure(log_level, secrets=_secrets(config))
    from monitor import service

    store = _open_store(config)
    try:
        service.run(config, store)
    except CredentialsError as exc:
        store.close()
        _fail(EXIT_USAGE, str(exc))
    except ValueError as exc:  # $PORT
        store.close()
        _fail(EXIT_USAGE, str(exc))


@main.command()
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@log_level_option
def status(config_path: str | None, fmt: str, log_level: str) -> None:
    """Show incidents, revisions, the checkpoint and the last check, from the store only."""
    from monitor.status import status_report, status_text

    _setup_logging(log_level.upper())
    config = _load(config_path)
    store = _open_store(config)
    try:
        report = status_report(config, store, datetime.now(UTC))
    finally:
        store.close()
    click.echo(json.dumps(report, indent=2) if fmt == "json" else status_text(report))


@main.command()
@click.argument("incident", required=False)
@config_option
@click.option("--since", type=DurationParam(), default="7d", show_default=True,
              help="without INCIDENT: the incidents open or active in this period before the "
              "last check")
@click.option("--format", "fmt", type=click.Choice(["markdown", "html", "json"]),
              default="markdown", show_default=True)
@log_level_option
def report(incident: str | None, config_path: str | None, since: timedelta, fmt: str,
           log_level: str) -> None:
    """Write up one incident (or every one in the period), from the store only."""
    from monitor import report as write_up

    _setup_logging(log_level.upper())
    config = _load(config_path)
    store = _open_store(config)
    try:
        built = write_up.build(config, store, incident, since)
        if fmt == "html":
            from monitor.report.html import report_html

            text = report_html(built, config)
        elif fmt == "json":
            text = json.dumps(write_up.to_json(built), indent=2)
        else:
            text = write_up.report_markdown(built)
    except KeyError:
        _fail(EXIT_USAGE, f"no incident {incident!r} in the store (`monitor status` lists them)")
    finally:
        store.close()
    click.echo(text, nl=not text.endswith("\n"))
