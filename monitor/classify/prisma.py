"""Prisma Migrate output to MigrationEvent, reassembled from one instance's log lines.

Rules:
- Pure: no I/O, no clock, no state kept between calls, so one `PrismaParser` can be shared;
  `stream()` is the same parse a line at a time, its state in the object it returns.
- Input is ONE (service, revision, instance) stream in timestamp order. Cloud Run logs every
  output line as its own entry, so one Prisma message (an error block, the tree of applied
  migrations) arrives as many entries and has to be put back together here; the caller splits
  instances apart, and unrelated app lines in between are skipped.
- Understood (wordings from prisma/prisma packages/migrate, the CLI's `Error: ` prefix, and
  prisma-engines user-facing-errors): "Prisma schema loaded from" (a run starts),
  "Applying migration `X`", the "The following migration(s) have been applied:" tree,
  "All migrations have been successfully applied." (APPLIED per migration),
  "No pending migrations to apply." (UP_TO_DATE), "Error: P3009" and its
  "The `X` migration started at T failed" lines (BLOCKED per X), "Error: P3018" with
  "Migration name:" / "Database error code:" / "Database error:" (FAILED), any other
  "Error: Pxxxx" (ERROR), an uncoded "Error: ..." right after Prisma's own start-up lines
  (ERROR, code None), and `migrate resolve`'s "Migration X marked as rolled back|applied.".
- A failure is never dropped: an error block still open at the next block start or at the end
  of the stream is reported with whatever it gathered. The same failure printed twice in one run
  (between two "Prisma schema loaded from" lines: a wrapper echoing the CLI's output) is one.
  Migrations applied by a run that then fails are not reported APPLIED: that run did not finish.
- ANSI colour codes are stripped: the CLI colours "Error: " and the names in the tree.
- Cheap: unless an error block is waiting for free text, a line without one of a few marker
  substrings is dropped before any regex runs; every app line of every instance comes here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from monitor.classify.observations import MigrationEvent, MigrationOutcome
from monitor.entries import LogEntry

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_MARKERS = ("igrat", "Error:", "Prisma schema", "└─")
_PREAMBLE = ("Datasource", "Environment variables loaded", "Loaded Prisma config")
_ERROR = re.compile(r"Error:\s*(?:(P\d{4})\b:?)?\s*(.*)")
_RESOLVED = re.compile(r"Migration (\S+) marked as (rolled back|applied)\b")
_APPLYING = re.compile(r"Applying migration `([^`]+)`")
_TREE = re.compile(r"[└├]─+\s*(\S+)/")
_FAILED = re.compile(r"The `([^`]+)` migration started at (.+?) failed\b")
_NAME = re.compile(r"Migration name:\s*`?([^`\s]+)`?")
_DB_CODE = re.compile(r"Database error code:\s*(\S+)")
_DB_ERROR = re.compile(r"Database error:\s*(.*)")
# "The following migration(s) have been applied:" since 5.9; before it "migration" for one and
# "migrations" for several (tests/data/real/prisma/README.md).
_TREE_HEADER = re.compile(r"The following migration(?:\(s\)|s)? have been applied")
_RUN_LINE = re.compile(
    r"Applying migration `|The following migration(?:\(s\)|s)? have been applied"
    r"|All migrations have been successfully applied|No pending migrations to apply"
)
_MAX_MESSAGE = 500


# What the error codes a failed run ends with mean for the person on call (prisma-engines,
# user-facing-errors: common.rs for P1xxx, migration_engine.rs for P3xxx).
CODE_MEANINGS = {
    "P1000": "database authentication failed",
    "P1001": "database unreachable",
    "P1002": "database server timed out",
    "P1003": "database does not exist",
    "P1008": "database operation timed out",
    "P1017": "database server closed the connection",
    "P3005": "database schema is not empty (baseline it first)",
    "P3009": "blocked by a failed migration",
    "P3018": "a migration failed to apply",
}
_OUTCOME_WORDS = {
    "applied": "applied", "up_to_date": "no pending migrations", "failed": "failed to apply",
    "blocked": "blocked", "error": "failed", "rolled_back": "marked as rolled back",
    "marked_applied": "marked as applied",
}


def run_label(name: str | None, outcome: str, code: str | None,
              quote: Callable[[str], str] = str) -> str:
    """One migration record in words: `migrate deploy failed (P1001: database unreachable)`,
    `migrate deploy: no pending migrations`, `20251213003742_fix applied`. A run without a
    migration name is never called "none pending" unless it said so. `quote` formats (and
    escapes) the name and the code, which come from the logs; the rest is the monitor's own."""
    words = _OUTCOME_WORDS.get(outcome, outcome.replace("_", " "))
    text = f"{quote(name)} {words}" if name else (
        f"migrate deploy: {words}" if outcome == "up_to_date" else f"migrate deploy {words}")
    if code:
        meaning = CODE_MEANINGS.get(code)
        text += (f" ({quote(code)}: {meaning})" if meaning and outcome != "failed"
                 else f" ({quote(code)})")
    return text


class MigrationStream(Protocol):
    """One stream's parse, a line at a time, for a reader that cannot hold the stream's lines
    (a replay classified page by page). The lines added, then `end`, give what `parse` gives."""

    @property
    def pending_since(self) -> datetime | None:
        """No event still to be reported is stamped before this; None: none is pending."""
        ...

    def add(self, entry: LogEntry) -> list[MigrationEvent]:
        """The next line; the events it completes."""
        ...

    def end(self) -> list[MigrationEvent]:
        """The stream ended or went quiet: what is still open, reported as it is."""
        ...


class MigrationParser(Protocol):
    """What the classify package needs from a migration tool's output reader."""

    def parse(self, lines: Sequence[LogEntry]) -> list[MigrationEvent]: ...

    def stream(self) -> MigrationStream: ...


@dataclass(slots=True)
class _Block:
    """One `Error:` message, gathered line by line until it says enough to be reported."""

    code: str | None
    last: LogEntry  # the latest line that added to the block: its `at` if flushed early
    applying: str | None  # the migration in progress when the error began (older P3018)
    explanation: str = ""
    name: str | None = None
    db_code: str | None = None
    db_error: str | None = None
    awaiting_db_error: bool = False
    reported: bool = False

    @property
    def wants_any_line(self) -> bool:
        """P3009 lines all carry "igrat"; the others read free text without marker substrings."""
        return self.code != "P3009"


def _clean(text: str) -> str:
    return (_ANSI.sub("", text) if "\x1b" in text else text).strip()


class _Stream:
    """The state of one parse call; kept out of PrismaParser so the parser stays shareable."""

    def __init__(self) -> None:
        self.events: list[MigrationEvent] = []
        self.block: _Block | None = None
        self.applied: dict[str, None] = {}  # this run's migrations, ordered, without duplicates
        self.applying: str | None = None
        self.in_tree = False
        self.in_run = False  # only Prisma start-up lines so far: an uncoded Error: is Prisma's
        # Failures reported since this run's "Prisma schema loaded from": a wrapper that prints
        # the CLI's output again (its stderr, a caught error's stdout) repeats the same block,
        # and one run that failed is one failed run.
        self.run_failures: set[tuple[MigrationOutcome, str | None, str | None]] = set()

    def emit(
        self,
        at: LogEntry,
        outcome: MigrationOutcome,
        name: str | None = None,
        code: str | None = None,
        message: str = "",
    ) -> None:
        if outcome.run_failed:
            if (outcome, name, code) in self.run_failures:
                return
            self.run_failures.add((outcome, name, code))
        self.events.append(
            MigrationEvent(
                at=at.timestamp,
                service=at.service or "",
                revision=at.revision,
                instance_id=at.instance_id,
                outcome=outcome,
                name=name,
                code=code,
                message=message[:_MAX_MESSAGE],
            )
        )

    def reset_run(self) -> None:
        self.applied, self.applying, self.in_tree, self.in_run = {}, None, False, False

    @property
    def pending_since(self) -> datetime | None:
        b = self.block
        return b.last.timestamp if b is not None and not b.reported else None

    def add(self, entry: LogEntry) -> list[MigrationEvent]:
        raw = entry.text
        if "\n" in raw or "\r" in raw:  # a wrapper that logged a whole message at once
            for piece in raw.splitlines():
                self.feed(entry, piece)
        else:
            self.feed(entry, raw)
        return self.drain()

    def end(self) -> list[MigrationEvent]:
        self.flush()
        return self.drain()

    def drain(self) -> list[MigrationEvent]:
        events, self.events = self.events, []
        return events

    def flush(self) -> None:
        """Report the open block, complete or not: a cut stream must not hide a failure."""
        b, self.block = self.block, None
        if b is None or b.reported:
            return
        if b.code == "P3009":
            self.emit(b.last, MigrationOutcome.BLOCKED, None, b.code, b.explanation)
        elif b.code == "P3018":
            if b.db_code and b.db_error:
                message = f"{b.db_code}: {b.db_error}"
            else:
                message = b.db_error or (b.db_code and f"database error {b.db_code}") or ""
            self.emit(
                b.last,
                MigrationOutcome.FAILED,
                b.name or b.applying,
                b.code,
                message or b.explanation,
            )
        else:
            self.emit(b.last, MigrationOutcome.ERROR, None, b.code, b.explanation)

    def feed(self, entry: LogEntry, raw: str) -> None:
        b = self.block
        if (b is None or not b.wants_any_line) and not any(m in raw for m in _MARKERS):
            if self.in_run and raw.strip() and not _clean(raw).startswith(_PREAMBLE):
                self.in_run = False
            return
        text = _clean(raw)
        if not text:
            return
        if text.startswith("Prisma schema loaded from"):
            self.flush()
            self.reset_run()
            self.run_failures = set()
            self.in_run = True
            return
        if (m := _ERROR.match(text)) and (m[1] or (self.in_run and b is None)):
            self.flush()
            self.block = _Block(code=m[1], last=entry, applying=self.applying, explanation=m[2])
            self.reset_run()
            if m[1] not in ("P3009", "P3018") and m[2] and not m[2].endswith(":"):
                self.flush()
            return
        if m := _RESOLVED.match(text):
            self.flush()
            rolled_back = m[2] == "rolled back"
            self.emit(
                entry,
                MigrationOutcome.ROLLED_BACK if rolled_back else MigrationOutcome.MARKED_APPLIED,
                m[1],
            )
            self.reset_run()
            return
        if b is not None and not b.awaiting_db_error and _RUN_LINE.match(text):
            self.flush()  # a new run whose "Prisma schema loaded" line was lost
            b = None
        if b is not None:
            self.block_line(b, entry, text)
        else:
            self.run_line(entry, text)

    def run_line(self, entry: LogEntry, text: str) -> None:
        if m := _APPLYING.match(text):
            self.applied[m[1]] = None
            self.applying = m[1]
        elif _TREE_HEADER.match(text):
            self.in_tree = True
        elif self.in_tree and (m := _TREE.match(text)):
            self.applied[m[1]] = None
        elif text.startswith("All migrations have been successfully applied"):
            # No names means their lines were lost; the run's success still counts.
            for name in self.applied or [None]:
                self.emit(entry, MigrationOutcome.APPLIED, name)
            self.reset_run()
        elif text.startswith("No pending migrations to apply"):
            self.emit(entry, MigrationOutcome.UP_TO_DATE)
            self.reset_run()

    def block_line(self, b: _Block, entry: LogEntry, text: str) -> None:
        """A line inside an open error block; the block closes once it has said enough."""
        if b.code == "P3009":
            if m := _FAILED.match(text):
                b.last, b.reported = entry, True
                self.emit(
                    entry,
                    MigrationOutcome.BLOCKED,
                    m[1],
                    b.code,
                    f"migration started at {m[2]} failed earlier; "
                    "new migrations will not be applied until it is resolved",
                )
            elif not b.explanation and not b.reported:
                b.explanation, b.last = text, entry
            return
        if b.code == "P3018":
            b.last = entry
            if b.awaiting_db_error:
                b.db_error = text
            elif m := _NAME.match(text):
                b.name = m[1]
            elif m := _DB_CODE.match(text):
                b.db_code = m[1]
            elif m := _DB_ERROR.match(text):
                b.db_error = m[1] or None
                b.awaiting_db_error = b.db_error is None
            elif not b.explanation:
                b.explanation = text
            if b.db_error:
                self.flush()
            return
        b.last = entry
        b.explanation = f"{b.explanation} {text}" if b.explanation else text
        if not b.explanation.endswith(":"):
            self.flush()


class PrismaParser:
    """Reads `prisma migrate deploy` / `migrate resolve` output; implements MigrationParser."""

    def parse(self, lines: Sequence[LogEntry]) -> list[MigrationEvent]:
        stream = self.stream()
        events = [event for entry in lines for event in stream.add(entry)]
        return events + stream.end()

    def stream(self) -> MigrationStream:
        return _Stream()
