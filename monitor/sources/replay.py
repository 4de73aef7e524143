"""A complete read in event order, a page at a time, each entry once, without holding it whole.

Why: the cycle folds a replayed export page by page in event order (`check.py`), and an export
may be in any order (`gcloud logging read` writes newest first, other tools oldest first, a
concatenation of exports neither) and far too big to sort in memory: the entries of a
1,000,000-entry export take gigabytes as Python objects. Up to `spill_after` entries are sorted in
memory; past that they go to a temporary SQLite file, which SQLite indexes on disk within a small
page cache, and come back in order a page at a time. Memory stays that of a page or two, whatever
the size or the order of the export; the disk holds about the export's size until the read ends.

Rules:
- Deduplicated by `LogEntry.key` (log name and insert id), the first one read kept, as
  a live read is (`check.fresh_pages`).
- Event order is `classify.event_order` (timestamp, insert id) with ties broken by log name, so
  the order never depends on the file's.
- An entry comes back equal to the one read, `raw` included (JSON values, marshalled: the file is
  this process's own, in a private temporary directory removed when the read ends or stops).
"""

from __future__ import annotations

import marshal
import sqlite3
import tempfile
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.entries import EntryKind, LogEntry

PAGE_ENTRIES = 1000
SPILL_AFTER = 1000  # entries sorted in memory; more go to disk
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_CACHE_KIB = 4096  # SQLite's page cache for the spill file: the disk does the rest


def event_order(entry: LogEntry) -> tuple[datetime, str, str]:
    return entry.timestamp, entry.insert_id, entry.log_name


def replay_pages(entries: Iterable[LogEntry], page: int = PAGE_ENTRIES, *,
                 spill_after: int = SPILL_AFTER,
                 directory: str | Path | None = None) -> Generator[list[LogEntry]]:
    """`entries` deduplicated and in event order, `page` at a time (the last page shorter)."""
    source = iter(entries)
    first: dict[str, LogEntry] = {}
    for entry in source:
        first.setdefault(entry.key, entry)
        if len(first) > spill_after:
            break
    else:  # small enough to sort here
        ordered = sorted(first.values(), key=event_order)
        for start in range(0, len(ordered), page):
            yield ordered[start:start + page]
        return
    with _Spill(directory) as spill:
        spill.add(first.values())
        del first
        spill.add(source)
        yield from spill.pages(page)


class _Spill:
    """Entries in a temporary SQLite table, unique by key, read back by an index in event order."""

    def __init__(self, directory: str | Path | None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="monitor-replay-", dir=directory)
        try:
            self._db = sqlite3.connect(Path(self._dir.name) / "entries.db", isolation_level=None)
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "temp_store = FILE",
                           f"cache_size = -{_CACHE_KIB}"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.execute(
                "CREATE TABLE entries (micros INTEGER NOT NULL, insert_id BLOB NOT NULL, "
                "log_name BLOB NOT NULL, body BLOB NOT NULL, UNIQUE (log_name, insert_id))")
            self._db.execute("BEGIN")
        except BaseException:
            self._dir.cleanup()
            raise

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        self._dir.cleanup()

    def add(self, entries: Iterable[LogEntry]) -> None:
        """Insert in read order: of two entries with one key, the first stays."""
        insert = "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)"
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        for e in entries:
            rows.append(((e.timestamp - _EPOCH) // _MICRO, _sortable(e.insert_id),
                         _sortable(e.log_name), marshal.dumps(_fields(e))))
            if len(rows) >= PAGE_ENTRIES:
                self._db.executemany(insert, rows)
                rows = []
        if rows:
            self._db.executemany(insert, rows)

    def pages(self, size: int) -> Iterator[list[LogEntry]]:
        self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX event_order ON entries (micros, insert_id, log_name)")
        cursor = self._db.execute(
            "SELECT body FROM entries ORDER BY micros, insert_id, log_name")
        while rows := cursor.fetchmany(size):
            yield [_entry(marshal.loads(body)) for (body,) in rows]


def _sortable(text: str) -> bytes:
    """UTF-8, lone surrogates kept (log text may hold them): bytes compare as the text does."""
    return text.encode("utf-8", "surrogatepass")


def _micros(t: datetime | None) -> int | None:
    return None if t is None else (t - _EPOCH) // _MICRO


def _fields(e: LogEntry) -> tuple[Any, ...]:
    return (e.insert_id, e.log_name, _micros(e.timestamp),
            e.severity, e.kind.value, e.project, e.service, e.revision, e.instance_id, e.text,
            e.http_status, dict(e.raw), e.location, e.http_url)


def _entry(f: tuple[Any, ...]) -> LogEntry:
    return LogEntry(
        insert_id=f[0], log_name=f[1], timestamp=_EPOCH + f[2] * _MICRO, severity=f[3],
        kind=EntryKind(f[4]), project=f[5], service=f[6], revision=f[7], instance_id=f[8],
        text=f[9], http_status=f[10], raw=f[11], location=f[12], http_url=f[13])
