"""PrismaParser: Prisma Migrate output, one log entry per line, back into MigrationEvents."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from monitor.classify.observations import MigrationEvent, MigrationOutcome
from monitor.classify.prisma import MigrationParser, PrismaParser
from monitor.entries import EntryKind, LogEntry

T0 = datetime(2025, 12, 4, 21, 2, 0, tzinfo=UTC)
MIG = "20251204205052_map_session_table_to_lowercase"
MIG2 = "20251205101010_add_shop_index"
RED, GREEN, CYAN, BOLD, RESET = "\x1b[31m", "\x1b[32m", "\x1b[36m", "\x1b[1m", "\x1b[39m\x1b[22m"

Out = MigrationOutcome


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=i)


def stream(*texts: str, service: str | None = "spector") -> list[LogEntry]:
    """One instance's lines, one entry each, one second apart (entry i is at `at(i)`)."""
    return [
        LogEntry(
            insert_id=f"id-{i}",
            log_name="projects/p/logs/run.googleapis.com%2Fstderr",
            timestamp=at(i),
            severity="DEFAULT",
            kind=EntryKind.APP,
            project="p",
            service=service,
            revision="spector-00042-abc",
            instance_id="inst-1",
            text=text,
        )
        for i, text in enumerate(texts)
    ]


def parse(*texts: str) -> list[MigrationEvent]:
    return PrismaParser().parse(stream(*texts))


def summary(events: list[MigrationEvent]) -> list[tuple[Out, str | None, str | None]]:
    return [(e.outcome, e.name, e.code) for e in events]


HEADER = (
    "Prisma schema loaded from prisma/schema.prisma",
    'Datasource "db": PostgreSQL database "spector", schema "public" at "10.12.0.3:5432"',
    "",
    "3 migrations found in prisma/migrations",
    "",
)

DEPLOY_OK = (
    *HEADER,
    f"Applying migration `{MIG}`",
    "",
    "The following migration(s) have been applied:",
    "",
    "migrations/",
    f"  └─ {MIG}/",
    "    └─ migration.sql",
    "      ",
    "All migrations have been successfully applied.",
)

P3009 = (
    *HEADER,
    "Error: P3009",
    "",
    "migrate found failed migrations in the target database, new migrations will not be "
    "applied. Read more about how to resolve migration issues in a production database: "
    "https://pris.ly/d/migrate-resolve",
    f"The `{MIG}` migration started at 2025-12-04 21:02:11.431 UTC failed",
    "",
)

P3018_HEAD = (
    *HEADER,
    f"Applying migration `{MIG}`",
    "Error: P3018",
    "",
    "A migration failed to apply. New migrations cannot be applied before the error is "
    "recovered from. Read more about how to resolve migration issues in a production "
    "database: https://pris.ly/d/migrate-resolve",
    "",
)
P3018 = (
    *P3018_HEAD,
    f"Migration name: {MIG}",
    "",
    "Database error code: 42P01",
    "",
    "Database error:",
    'ERROR: relation "Session_shop_idx" does not exist',
    "",
    'DbError { severity: "ERROR", parsed_severity: Some(Error), code: SqlState(E42P01), '
    'message: "relation \\"Session_shop_idx\\" does not exist", detail: None }',
    "",
)
P3018_MESSAGE = '42P01: ERROR: relation "Session_shop_idx" does not exist'


def test_it_is_a_migration_parser() -> None:
    parser: MigrationParser = PrismaParser()
    assert parser.parse([]) == []


def test_successful_deploy_reports_each_applied_migration_once_at_the_success_line() -> None:
    events = parse(*DEPLOY_OK)
    assert events == [
        MigrationEvent(
            at=at(len(DEPLOY_OK) - 1),
            service="spector",
            revision="spector-00042-abc",
            instance_id="inst-1",
            outcome=Out.APPLIED,
            name=MIG,
        )
    ]


def test_deploy_applying_two_migrations_keeps_their_order_and_no_duplicates() -> None:
    events = parse(
        *HEADER,
        f"Applying migration `{MIG}`",
        f"Applying migration `{MIG2}`",
        "The following migration(s) have been applied:",
        "migrations/",
        f"  └─ {MIG}/",
        "    └─ migration.sql",
        f"  └─ {MIG2}/",
        "    └─ migration.sql",
        "All migrations have been successfully applied.",
    )
    assert summary(events) == [(Out.APPLIED, MIG, None), (Out.APPLIED, MIG2, None)]
    assert {e.at for e in events} == {at(len(HEADER) + 8)}


def test_tree_alone_names_the_applied_migrations() -> None:
    events = parse(
        "The following migration(s) have been applied:",
        "migrations/",
        f"  └─ {MIG2}/",
        "    └─ migration.sql",
        "All migrations have been successfully applied.",
    )
    assert summary(events) == [(Out.APPLIED, MIG2, None)]


def test_no_pending_migrations_is_up_to_date() -> None:
    events = parse(*HEADER, "No pending migrations to apply.")
    assert summary(events) == [(Out.UP_TO_DATE, None, None)]
    assert events[0].at == at(len(HEADER))


def test_p3009_blocks_with_the_failed_migration_named() -> None:
    events = parse(*P3009)
    assert summary(events) == [(Out.BLOCKED, MIG, "P3009")]
    assert events[0].at == at(len(P3009) - 2)
    assert "2025-12-04 21:02:11.431 UTC" in events[0].message


def test_p3009_reports_every_failed_migration_and_ignores_their_logs() -> None:
    events = parse(
        *P3009[:-1],
        "with the following logs:",
        f"Migration name: {MIG}",
        "Database error code: 42P01",
        f"The `{MIG2}` migration started at 2025-12-04 21:03:00 UTC failed",
    )
    assert summary(events) == [(Out.BLOCKED, MIG, "P3009"), (Out.BLOCKED, MIG2, "P3009")]


def test_p3018_names_the_migration_and_the_database_error() -> None:
    events = parse(*P3018)
    assert summary(events) == [(Out.FAILED, MIG, "P3018")]
    assert events[0].message == P3018_MESSAGE
    assert events[0].at == at(P3018.index('ERROR: relation "Session_shop_idx" does not exist'))


def test_p3018_older_wording_takes_the_name_from_the_applying_line() -> None:
    events = parse(*P3018_HEAD, "Database error:", 'ERROR: syntax error at or near "x"')
    assert summary(events) == [(Out.FAILED, MIG, "P3018")]
    assert events[0].message == 'ERROR: syntax error at or near "x"'


def test_p3018_cut_at_the_end_of_the_stream_still_fails() -> None:
    cut = P3018[: P3018.index("Database error code: 42P01")]
    events = parse(*cut)
    assert summary(events) == [(Out.FAILED, MIG, "P3018")]
    assert events[0].message.startswith("A migration failed to apply.")
    assert events[0].at == at(len(cut) - 2)  # the "Migration name:" line, not the blank after


def test_p3018_cut_after_its_header_uses_the_migration_in_progress() -> None:
    assert summary(parse(*HEADER, f"Applying migration `{MIG2}`", "Error: P3018")) == [
        (Out.FAILED, MIG2, "P3018")
    ]


def test_migrations_applied_before_a_failure_are_not_reported_applied() -> None:
    events = parse(*HEADER, f"Applying migration `{MIG2}`", *P3018[len(HEADER) :])
    assert summary(events) == [(Out.FAILED, MIG, "P3018")]


def test_p1001_inline_reason_is_the_message() -> None:
    events = parse(
        *HEADER,
        "Error: P1001: Can't reach database server at `10.12.0.3`:`5432`",
        "",
        "Please make sure your database server is running at `10.12.0.3`:`5432`.",
    )
    assert summary(events) == [(Out.ERROR, None, "P1001")]
    assert events[0].message == "Can't reach database server at `10.12.0.3`:`5432`"
    assert events[0].at == at(len(HEADER))


def test_p1001_reason_on_the_next_line() -> None:
    events = parse(
        "Error: P1001",
        "",
        "Can't reach database server at `db`:`5432`",
        "",
        "Please make sure your database server is running at `db`:`5432`.",
    )
    assert summary(events) == [(Out.ERROR, None, "P1001")]
    assert events[0].message == "Can't reach database server at `db`:`5432`"
    assert events[0].at == at(2)


def test_error_block_ends_at_the_next_run_and_both_are_reported() -> None:
    events = parse("Error: P1001", *DEPLOY_OK)
    assert summary(events) == [(Out.ERROR, None, "P1001"), (Out.APPLIED, MIG, None)]
    assert events[0].message == ""
    assert events[0].at == at(0)


def test_resolve_lines() -> None:
    events = parse(
        *HEADER[:2],
        "",
        f"Migration {MIG} marked as rolled back.",
        *HEADER[:2],
        f"Migration {MIG2} marked as applied.",
    )
    assert summary(events) == [(Out.ROLLED_BACK, MIG, None), (Out.MARKED_APPLIED, MIG2, None)]
    assert [e.at for e in events] == [at(3), at(6)]


def test_recovery_sequence_in_one_stream() -> None:
    events = parse(*P3009, f"Migration {MIG} marked as rolled back.", *DEPLOY_OK)
    assert summary(events) == [
        (Out.BLOCKED, MIG, "P3009"),
        (Out.ROLLED_BACK, MIG, None),
        (Out.APPLIED, MIG, None),
    ]


def test_unrelated_app_lines_are_ignored_between_and_around_prisma_output() -> None:
    noise = (
        "> spector@1.0.0 start",
        "listening on port 3000",
        "Error: connect ECONNREFUSED 10.12.0.9:6379",
        "    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16)",
        "GET /healthz 200 1.234 ms - 2",
    )
    lines = [*noise]
    for line in DEPLOY_OK:
        lines += [line, noise[1]]
    lines += noise
    events = parse(*lines)
    assert summary(events) == [(Out.APPLIED, MIG, None)]


def test_uncoded_error_right_after_prisma_start_up_is_a_failure() -> None:
    events = parse(*HEADER[:2], "", "Error: Environment variable not found: DATABASE_URL.")
    assert summary(events) == [(Out.ERROR, None, None)]
    assert events[0].message == "Environment variable not found: DATABASE_URL."


def test_uncoded_error_after_the_app_started_is_not_a_migration_failure() -> None:
    assert parse(*HEADER[:2], "listening on port 3000", "Error: boom") == []
    assert summary(parse(*DEPLOY_OK, "Error: boom")) == [(Out.APPLIED, MIG, None)]


def test_a_failed_run_is_over_its_earlier_migrations_and_later_errors_are_not_its() -> None:
    events = parse(
        *HEADER,
        f"Applying migration `{MIG2}`",
        "Error: P1001: Can't reach database server at `db`:`5432`",
        "Error: Cannot find module '/app/dist/server.js'",
        "All migrations have been successfully applied.",
    )
    assert summary(events) == [(Out.ERROR, None, "P1001"), (Out.APPLIED, None, None)]


def test_ansi_colour_codes_are_stripped() -> None:
    events = parse(
        *HEADER,
        "The following migration(s) have been applied:",
        f"  └─ 20251204205052_{CYAN}{BOLD}map_session_table_to_lowercase{RESET}/",
        f"{GREEN}All migrations have been successfully applied.{RESET}   ",
        f"{BOLD}{RED}Error: {RESET}P1001: Can't reach database server at `db`:`5432`",
    )
    assert summary(events) == [(Out.APPLIED, MIG, None), (Out.ERROR, None, "P1001")]
    assert "\x1b" not in events[1].message


def test_a_whole_message_logged_as_one_entry_is_split_into_lines() -> None:
    events = parse("\n".join(P3018))
    assert summary(events) == [(Out.FAILED, MIG, "P3018")]
    assert events[0].message == P3018_MESSAGE


def test_missing_service_becomes_empty_string() -> None:
    events = PrismaParser().parse(stream("No pending migrations to apply.", service=None))
    assert events[0].service == ""


def test_parser_keeps_no_state_between_calls() -> None:
    parser = PrismaParser()
    assert parser.parse(stream(f"Applying migration `{MIG}`")) == []
    assert summary(parser.parse(stream("Error: P3018"))) == [(Out.FAILED, None, "P3018")]


def test_long_messages_are_capped() -> None:
    events = parse("Error: P1001: " + "x" * 10_000)
    assert 0 < len(events[0].message) <= 500


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["No pending migrations to apply."], [(Out.UP_TO_DATE, None, None)]),
        (["  No pending migrations to apply.  \r"], [(Out.UP_TO_DATE, None, None)]),
        ([f"Migration {MIG} marked as rolled back."], [(Out.ROLLED_BACK, MIG, None)]),
        ([f"Migration {MIG} marked as applied."], [(Out.MARKED_APPLIED, MIG, None)]),
        (["Error: P3009"], [(Out.BLOCKED, None, "P3009")]),
        (["Error: P3018"], [(Out.FAILED, None, "P3018")]),
        (["Error: P3018", "Migration name: `m1`"], [(Out.FAILED, "m1", "P3018")]),
        (["Error: P3018", "Database error: ERROR: x"], [(Out.FAILED, None, "P3018")]),
        (["Error: P1001"], [(Out.ERROR, None, "P1001")]),
        (["Error: P3005", "", "The database schema is not empty."], [(Out.ERROR, None, "P3005")]),
        (["Error: P1000: Authentication failed"], [(Out.ERROR, None, "P1000")]),
        (
            ["Error: P3009", "Error: P1001: x"],
            [(Out.BLOCKED, None, "P3009"), (Out.ERROR, None, "P1001")],
        ),
        (["All migrations have been successfully applied."], [(Out.APPLIED, None, None)]),
        (
            [f"Applying migration `{MIG}`", "All migrations have been successfully applied."],
            [(Out.APPLIED, MIG, None)],
        ),
        (
            ["Error: P3009", "No pending migrations to apply."],
            [(Out.BLOCKED, None, "P3009"), (Out.UP_TO_DATE, None, None)],
        ),
        (
            ["  └─ not_a_migration/", "All migrations have been successfully applied."],
            [(Out.APPLIED, None, None)],
        ),
        (["Error: P12345"], []),
        (["Error: boom"], []),
        (["Migration name: m1"], []),
        (["The `m1` migration started at 2025 failed"], []),
        (["ERROR: relation does not exist"], []),
        (["All migrations have been applied to staging"], []),
    ],
)
def test_single_cases(lines: list[str], expected: list[tuple[Out, str | None, str | None]]) -> None:
    assert summary(parse(*lines)) == expected


ODD = [
    "",
    "   ",
    "\t\r",
    "└─",
    "─" * 1000,
    "└─ /",
    "├─├─├─└─",
    "Error:",
    "Error: P",
    "Error: P3018:",
    "Migration  marked as rolled back.",
    "Applying migration ``",
    "Database error:",
    "日本語のログ行 ✓ émigration",
    "\x1b[",
    "\x1b[31m\x1b[",
    "igrat" * 100_000,
    "Error: P1001: " + "é" * 100_000,
    "\u2028\x85\x1c",
    "\x00\ufffd",
]


@pytest.mark.parametrize("line", ODD)
def test_odd_lines_never_raise(line: str) -> None:
    events = PrismaParser().parse(stream(line))
    assert all(isinstance(e, MigrationEvent) for e in events)


def test_shuffled_prisma_and_odd_lines_never_raise_and_stay_typed() -> None:
    vocabulary = [*DEPLOY_OK, *P3009, *P3018, *ODD[:-4], "listening on port 3000"]
    rng = random.Random(1234)
    for _ in range(300):
        lines = [rng.choice(vocabulary) for _ in range(rng.randint(0, 40))]
        for e in PrismaParser().parse(stream(*lines)):
            assert e.outcome in set(Out)
            assert e.service == "spector"
            assert e.at >= T0
