"""PrismaParser over real Prisma CLI output shapes (tests/data/real/prisma, sources in its README).

Each fixture is what one `prisma migrate deploy` / `migrate resolve` run (or a start-up wrapper
around it) prints, one line per Cloud Run log entry. Whether Cloud Run keeps the CLI's empty lines
as entries of their own is not confirmed, so every fixture is parsed both with and without them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.classify.observations import MigrationEvent, MigrationOutcome
from monitor.classify.prisma import CODE_MEANINGS, PrismaParser, run_label
from monitor.entries import EntryKind, LogEntry

DATA = Path(__file__).parent / "data" / "real" / "prisma"
T0 = datetime(2025, 12, 5, 3, 10, 12, tzinfo=UTC)
LOWER = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

Out = MigrationOutcome
Summary = list[tuple[MigrationOutcome, str | None, str | None]]

APPLIED_BOTH: Summary = [(Out.APPLIED, LOWER, None), (Out.APPLIED, FIX, None)]
P3018_FAILED: Summary = [(Out.FAILED, LOWER, "P3018")]

# What an engineer reading each run would conclude from it.
EXPECTED: dict[str, Summary] = {
    "deploy_applied_v4.txt": [(Out.APPLIED, LOWER, None)],
    "deploy_applied_v3_0.txt": APPLIED_BOTH,  # "migrations have been applied", no "Applying"
    "deploy_applied_v4_two.txt": APPLIED_BOTH,
    "deploy_applied_v6.txt": APPLIED_BOTH,
    "deploy_applied_v6_force_color.txt": APPLIED_BOTH,
    "deploy_none_pending_v4.txt": [(Out.UP_TO_DATE, None, None)],
    "deploy_none_pending_v6.txt": [(Out.UP_TO_DATE, None, None)],
    "deploy_p3009.txt": [(Out.BLOCKED, LOWER, "P3009")],
    "deploy_p3009_v3_empty_logs.txt": [(Out.BLOCKED, LOWER, "P3009")],
    "deploy_p3009_without_failed_lines.txt": [(Out.BLOCKED, None, "P3009")],
    "deploy_p3018.txt": P3018_FAILED,
    "deploy_p3018_force_color.txt": P3018_FAILED,
    "deploy_p1001_v4.txt": [(Out.ERROR, None, "P1001")],
    "deploy_p1001_v6.txt": [(Out.ERROR, None, "P1001")],
    "deploy_p1001_v6_force_color.txt": [(Out.ERROR, None, "P1001")],
    "deploy_p3005_v3.txt": [(Out.ERROR, None, "P3005")],
    "deploy_p3005_v4.txt": [(Out.ERROR, None, "P3005")],
    "resolve_rolled_back_v4.txt": [(Out.ROLLED_BACK, LOWER, None)],
    "resolve_rolled_back_v6.txt": [(Out.ROLLED_BACK, LOWER, None)],
    "resolve_applied_v4.txt": [(Out.MARKED_APPLIED, LOWER, None)],
    "resolve_applied_v6.txt": [(Out.MARKED_APPLIED, LOWER, None)],
    # The same P3018 block twice in one run (execSync re-throws the CLI's stderr): ONE failure.
    "wrapper_execsync_p3018_npm_error.txt": P3018_FAILED,
    "wrapper_execsync_p3018_npm_err.txt": P3018_FAILED,
}
COLOURED = {
    "deploy_applied_v6_force_color.txt": "deploy_applied_v6.txt",
    "deploy_p3018_force_color.txt": "deploy_p3018.txt",
    "deploy_p1001_v6_force_color.txt": "deploy_p1001_v6.txt",
}


def lines_of(name: str) -> list[str]:
    """The fixture's lines as printed; the newline that ends the output makes no entry."""
    text = (DATA / name).read_text(encoding="utf-8")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def stream(texts: list[str], keep_blank: bool = True) -> list[LogEntry]:
    """One instance's lines, one entry each, one second apart (as tests/test_prisma.py builds)."""
    kept = [t for t in texts if keep_blank or t.strip()]
    return [
        LogEntry(
            insert_id=f"id-{i}",
            log_name="projects/spector-prod/logs/run.googleapis.com%2Fstderr",
            timestamp=T0 + timedelta(seconds=i),
            severity="DEFAULT",
            kind=EntryKind.APP,
            project="spector-prod",
            service="spector",
            revision="spector-00042-wex",
            instance_id="inst-1",
            text=text,
        )
        for i, text in enumerate(kept)
    ]


def parse(texts: list[str], keep_blank: bool = True) -> list[MigrationEvent]:
    return PrismaParser().parse(stream(texts, keep_blank))


def summary(events: list[MigrationEvent]) -> Summary:
    return [(e.outcome, e.name, e.code) for e in events]


def label(e: MigrationEvent) -> str:
    return run_label(e.name, e.outcome.value, e.code)


BLANK = pytest.mark.parametrize("keep_blank", [True, False], ids=["blank-lines", "no-blank-lines"])


def test_every_fixture_is_covered() -> None:
    on_disk = {p.name for p in DATA.glob("*.txt")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@BLANK
def test_fixture_events(name: str, keep_blank: bool) -> None:
    events = parse(lines_of(name), keep_blank)
    assert summary(events) == EXPECTED[name]
    for e in events:
        assert (e.service, e.revision, e.instance_id) == ("spector", "spector-00042-wex", "inst-1")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_force_color_fixtures_carry_ansi(name: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    assert ("\x1b" in text) == (name in COLOURED)
    assert "\r" not in text


@pytest.mark.parametrize("coloured", sorted(COLOURED))
def test_colour_codes_change_nothing(coloured: str) -> None:
    """FORCE_COLOR=1 output (kleur's codes, see the README) parses exactly like the plain output."""
    plain = COLOURED[coloured]
    assert [ANSI.sub("", t) for t in lines_of(coloured)] == lines_of(plain)
    a, b = parse(lines_of(coloured)), parse(lines_of(plain))
    assert [(e.outcome, e.name, e.code, e.message, e.at) for e in a] == [
        (e.outcome, e.name, e.code, e.message, e.at) for e in b
    ]


def test_applied_events_are_stamped_at_the_success_line() -> None:
    lines = lines_of("deploy_applied_v6.txt")
    done = lines.index("All migrations have been successfully applied.")
    events = parse(lines)
    assert {e.at for e in events} == {T0 + timedelta(seconds=done)}


def test_migrate_deploy_tree_wordings_differ_by_version() -> None:
    """Guards the fixtures themselves: the header changed in Prisma 5.9 (MigrateDeploy.ts)."""
    assert "The following migration have been applied:" in lines_of("deploy_applied_v4.txt")
    assert "The following migrations have been applied:" in lines_of("deploy_applied_v4_two.txt")
    assert "The following migration(s) have been applied:" in lines_of("deploy_applied_v6.txt")


@BLANK
def test_p3018_carries_name_and_database_error(keep_blank: bool) -> None:
    (event,) = parse(lines_of("deploy_p3018.txt"), keep_blank)
    assert (event.outcome, event.name, event.code) == (Out.FAILED, LOWER, "P3018")
    assert "42P07" in event.message
    assert 'relation "session" already exists' in event.message
    assert label(event).startswith(LOWER)


@pytest.mark.parametrize("name", ["deploy_p1001_v4.txt", "deploy_p1001_v6.txt"])
@BLANK
def test_p1001_is_an_unreachable_database_not_none_pending(name: str, keep_blank: bool) -> None:
    (event,) = parse(lines_of(name), keep_blank)
    assert event.outcome is Out.ERROR and event.outcome.run_failed
    assert (event.name, event.code) == (None, "P1001")
    assert "Can't reach database server" in event.message
    assert CODE_MEANINGS["P1001"] == "database unreachable"
    text = label(event)
    assert "database unreachable" in text
    assert "P1001" in text
    assert "no pending" not in text


@BLANK
def test_p3009_names_the_blocking_migration(keep_blank: bool) -> None:
    (event,) = parse(lines_of("deploy_p3009.txt"), keep_blank)
    assert event.outcome.run_failed
    assert "2025-12-05 03:10:14.262 UTC" in event.message
    assert LOWER in label(event) and "P3009" in label(event)


@pytest.mark.parametrize("name", ["deploy_p3005_v3.txt", "deploy_p3005_v4.txt"])
def test_p3005_is_a_failed_run(name: str) -> None:
    (event,) = parse(lines_of(name))
    assert event.outcome.run_failed and event.code == "P3005"
    assert "is not empty" in event.message
    assert "P3005" in label(event) and "no pending" not in label(event)


def test_none_pending_label() -> None:
    (event,) = parse(lines_of("deploy_none_pending_v6.txt"))
    assert event.outcome.run_succeeded
    assert "no pending migrations" in label(event)


@pytest.mark.parametrize("version", ["v4", "v6"])
def test_resolve_then_deploy_on_one_instance(version: str) -> None:
    """spector-00044's start command: `migrate resolve --rolled-back X; migrate deploy`."""
    deploy = "deploy_applied_v4_two.txt" if version == "v4" else "deploy_applied_v6.txt"
    events = parse(lines_of(f"resolve_rolled_back_{version}.txt") + lines_of(deploy))
    assert summary(events) == [(Out.ROLLED_BACK, LOWER, None), *APPLIED_BOTH]


def test_failed_run_then_retry_run_are_two_failures() -> None:
    """A second `migrate deploy` (own "Prisma schema loaded from") is a new run: P3009 counts."""
    events = parse(lines_of("deploy_p3018.txt") + lines_of("deploy_p3009.txt"))
    assert summary(events) == [*P3018_FAILED, (Out.BLOCKED, LOWER, "P3009")]


@pytest.mark.parametrize(
    "name", ["wrapper_execsync_p3018_npm_error.txt", "wrapper_execsync_p3018_npm_err.txt"]
)
def test_wrapper_prints_the_block_twice(name: str) -> None:
    lines = lines_of(name)
    assert lines.count("Error: P3018") == 2  # the fixture really repeats it
    failed = [e for e in parse(lines) if e.outcome.run_failed]
    assert len(failed) == 1
    assert (failed[0].name, failed[0].code) == (LOWER, "P3018")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("spacing", [0.01, 0.3])
def test_a_read_of_the_needles_gets_every_line_the_parser_needs(name: str, spacing: float) -> None:
    """What a selective read keeps of each run: the lines the query selects (TOOL_LINES, as the
    server's RE2 evaluates it: the emulator's matcher), and those a follow-up reads, one second
    either side of a block header (TOOL_HEADERS). The parser must conclude the same from them.
    Lines `spacing` seconds apart: a block printed at once, or line by line."""
    from monitor.classify import TOOL_HEADERS, TOOL_LINES
    from monitor.queries import FOLLOW_AFTER, FOLLOW_BEFORE
    from monitor.regex import compile_regex

    selects = compile_regex(TOOL_LINES)
    entries = [replace(e, timestamp=T0 + timedelta(seconds=spacing * i))
               for i, e in enumerate(stream(lines_of(name)))]
    headers = [e.timestamp for e in entries if TOOL_HEADERS.search(e.text)]
    kept = [e for e in entries if selects.search(e.text) or any(
        h - FOLLOW_BEFORE <= e.timestamp <= h + FOLLOW_AFTER for h in headers)]
    assert summary(PrismaParser().parse(kept)) == EXPECTED[name]
    assert headers  # every run has a header to follow


def test_an_apps_own_errors_are_not_read_as_tool_output() -> None:
    from monitor.classify import TOOL_HEADERS, TOOL_LINES
    from monitor.regex import compile_regex

    app = ["MissingSessionTableError: Prisma session table does not exist. This could happen if "
           "the migration wasn't run. Please ensure the migration has been run.",
           "Error: Permission denied", "TypeError: Cannot read properties of undefined",
           "PrismaClientKnownRequestError: Invalid `prisma.session.findUnique()` invocation"]
    assert not any(compile_regex(TOOL_LINES).search(t) or TOOL_HEADERS.search(t) for t in app)
