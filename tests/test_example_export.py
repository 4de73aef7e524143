"""The demo export tells the story make_spector_export.py says it tells, and is reproducible.

Other tests and the README lean on this file's timeline (deploys, Ready events, migration output,
the last error); these checks make sure a change to the generator cannot silently change it.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from monitor.entries import EntryKind, LogEntry
from monitor.sources.file import FileSource
from monitor.times import parse_time
from monitor.window import ReadStats, Window

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPORT = EXAMPLES / "spector-incident.json"
GENERATOR = EXAMPLES / "make_spector_export.py"

LOWER = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"
SIGNATURE = "MissingSessionTableError"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_spector_export", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def entries() -> list[LogEntry]:
    stats = ReadStats()
    got = list(FileSource(EXPORT).read(Window(), stats))
    assert stats.entries_skipped == 0
    assert stats.entries_read == len(got)
    return got


def spector(entries: list[LogEntry]) -> Iterator[LogEntry]:
    return (e for e in entries if e.service == "spector")


def lines(entries: list[LogEntry], revision: str) -> list[LogEntry]:
    """One revision's output lines in time order (the file itself is newest first)."""
    found = [e for e in entries if e.revision == revision and e.kind is EntryKind.APP]
    return sorted(found, key=lambda e: e.timestamp)


def texts(entries: list[LogEntry]) -> list[str]:
    return [e.text for e in entries]


def test_every_entry_parses_and_the_file_is_newest_first(entries: list[LogEntry]) -> None:
    assert len(entries) == len(json.loads(EXPORT.read_text(encoding="utf-8")))
    times = [e.timestamp for e in entries]
    assert times == sorted(times, reverse=True)
    assert len({e.key for e in entries}) == len(entries)
    assert EXPORT.stat().st_size < 1_500_000
    assert FileSource(EXPORT).latest_timestamp() == times[0]
    assert times[0] > utc("2025-12-13 02:14:00")
    assert times[-1] < utc("2025-12-04 20:01:00")


def test_three_deploys_are_in_the_admin_activity_log(entries: list[LogEntry]) -> None:
    deploys: list[tuple[datetime, str]] = []
    for e in entries:
        if e.kind is EntryKind.AUDIT:
            payload: Any = e.raw["protoPayload"]
            assert payload["methodName"] == "google.cloud.run.v1.Services.ReplaceService"
            assert payload["resourceName"] == "namespaces/spector-prod/services/spector"
            assert payload["authenticationInfo"]["principalEmail"].endswith(".gserviceaccount.com")
            deploys.append(
                (e.timestamp, payload["response"]["spec"]["template"]["metadata"]["name"])
            )
    assert sorted(deploys) == [
        (utc("2025-12-04 21:02:00.514839"), "spector-00042-wex"),
        (utc("2025-12-13 00:41:03.207114"), "spector-00043-fiz"),
        (utc("2025-12-13 01:05:02.846530"), "spector-00044-mop"),
    ]


def test_each_new_revision_becomes_ready(entries: list[LogEntry]) -> None:
    ready = sorted(
        (e.timestamp, e.revision)
        for e in entries
        if e.kind is EntryKind.SYSTEM and "for Revision" in e.text
    )
    assert ready == [
        (utc("2025-12-04 21:02:40.217305"), "spector-00042-wex"),
        (utc("2025-12-13 00:41:48.533901"), "spector-00043-fiz"),
        (utc("2025-12-13 01:06:20.418277"), "spector-00044-mop"),
    ]
    for when, revision in ready:
        assert any(
            e.text.endswith(f"Ready condition status changed to True for Revision {revision}.")
            for e in entries
            if e.timestamp == when
        )


def test_00042_applies_the_lowercase_migration_once_across_two_instances(
    entries: list[LogEntry],
) -> None:
    deploy = [e for e in lines(entries, "spector-00042-wex") if e.timestamp.day == 4]
    by_instance: dict[str, list[str]] = {}
    for e in deploy:
        if not e.text.startswith(("MissingSessionTableError", "    at", "[shopify")):
            by_instance.setdefault(str(e.instance_id), []).append(e.text)
    first, second = sorted(by_instance.values(), key=lambda t: "No pending" in " ".join(t))
    assert f"Applying migration `{LOWER}`" in first
    assert "All migrations have been successfully applied." in first
    assert "No pending migrations to apply." in second
    assert f"Applying migration `{LOWER}`" not in second
    for out in (first, second):
        assert "Prisma schema loaded from prisma/schema.prisma" in out
        assert "3 migrations found in prisma/migrations" in out
    # the two instances' migrate output interleaves in time
    window = [e.instance_id for e in deploy if e.timestamp < utc("2025-12-04 21:02:13")]
    assert sum(a != b for a, b in itertools.pairwise(window)) >= 2


def test_p3018_on_a_later_00042_instance(entries: list[LogEntry]) -> None:
    out = [e for e in lines(entries, "spector-00042-wex") if e.timestamp.day == 5]
    start = next(i for i, e in enumerate(out) if e.text == "Error: P3018")
    block = out[start : start + 7]
    assert {e.instance_id for e in block} == {out[start].instance_id}
    assert all(e.severity == "ERROR" for e in block)
    assert block[0].timestamp.strftime("%Y-%m-%d %H:%M") == "2025-12-05 03:10"
    body = texts(block)
    assert f"Migration name: {LOWER}" in body
    assert "Database error code: 42P07" in body
    assert "Database error:" in body
    assert 'ERROR: relation "session" already exists' in body
    assert body[-1].startswith("DbError { ")
    applying = out[start - 1]
    assert applying.text == f"Applying migration `{LOWER}`"
    assert applying.timestamp == utc("2025-12-05 03:10:14.262")


def test_p3009_on_00043_names_the_failed_run(entries: list[LogEntry]) -> None:
    body = texts(lines(entries, "spector-00043-fiz"))
    at = body.index("Error: P3009")
    assert body[at - 1] == "4 migrations found in prisma/migrations"
    assert body[at + 1].startswith("migrate found failed migrations in the target database")
    # the start time Prisma quotes is the P3018 run's "Applying migration" line above
    assert body[at + 2] == f"The `{LOWER}` migration started at 2025-12-05 03:10:14.262 UTC failed"
    assert "> remix-serve ./build/server/index.js" in body[at:]  # the app starts anyway


def test_00044_rolls_back_and_applies_the_fix(entries: list[LogEntry]) -> None:
    body = texts(lines(entries, "spector-00044-mop"))
    rolled = body.index(f"Migration {LOWER} marked as rolled back.")
    fix = body.index(f"Applying migration `{FIX}`")
    done = body.index("All migrations have been successfully applied.")
    assert rolled < fix < done
    assert f"  └─ {FIX}/" in body[fix:done]
    assert not any(SIGNATURE in t for t in body)


def test_missing_session_table_errors_span_the_story(entries: list[LogEntry]) -> None:
    hits = sorted((e for e in entries if SIGNATURE in e.text), key=lambda e: e.timestamp)
    assert {e.service for e in hits} == {"spector"}
    assert {e.revision for e in hits} == {"spector-00042-wex", "spector-00043-fiz"}
    assert all(e.severity == "ERROR" and e.log_name.endswith("%2Fstderr") for e in hits)
    assert hits[0].text.startswith(
        "MissingSessionTableError: Prisma session table does not exist. This could happen if the "
        "migration wasn't run. Please ensure the migration has been run."
    )
    first, last = hits[0], hits[-1]
    assert first.revision == "spector-00042-wex"
    assert first.timestamp.strftime("%Y-%m-%d %H:%M") == "2025-12-04 21:03"
    assert last.revision == "spector-00043-fiz"
    assert last.timestamp.strftime("%Y-%m-%d %H:%M:%S") == "2025-12-13 01:07:05"
    assert last.timestamp > utc("2025-12-13 01:06:20.418277")  # after 00044 is Ready
    days = {e.timestamp.date().isoformat() for e in hits}
    assert {f"2025-12-{d:02d}" for d in range(4, 14)} <= days  # every day of the incident


def test_requests_fail_on_the_broken_revisions_and_succeed_after_the_fix(
    entries: list[LogEntry],
) -> None:
    requests = sorted(
        (e for e in spector(entries) if e.kind is EntryKind.REQUEST), key=lambda e: e.timestamp
    )
    for e in requests:
        if e.revision in ("spector-00042-wex", "spector-00043-fiz"):
            assert e.http_status == 500
    ok_41 = [e for e in requests if e.revision == "spector-00041-kav" and e.http_status == 200]
    assert ok_41[-1].timestamp < utc("2025-12-04 21:05:00")
    # Between 00041's last request and 00044's first, spector served nothing successfully.
    ok_44 = [e for e in requests if e.revision == "spector-00044-mop" and e.http_status == 200]
    assert ok_44[0].timestamp == utc("2025-12-13 01:06:30.412")
    between = [e for e in requests if ok_41[-1].timestamp < e.timestamp < ok_44[0].timestamp]
    assert between and all(e.http_status == 500 for e in between)
    # A healthy hour: 00044 answers at least every minute until about 02:15.
    times = [e.timestamp for e in ok_44]
    assert max((b - a).total_seconds() for a, b in itertools.pairwise(times)) <= 61
    assert times[-1] > utc("2025-12-13 02:13:00")


def test_the_unwatched_worker_has_its_own_unrelated_errors(entries: list[LogEntry]) -> None:
    worker = [e for e in entries if e.service == "spector-worker"]
    assert worker
    assert any(e.text == "TimeoutError: job fetch-orders exceeded 30s" for e in worker)
    assert any(e.http_status == 500 for e in worker)
    assert not any(SIGNATURE in e.text for e in worker)


def test_entries_have_cloud_run_shapes(entries: list[LogEntry]) -> None:
    for e in entries:
        raw: Any = e.raw
        assert raw["resource"]["type"] == "cloud_run_revision"
        assert raw["resource"]["labels"]["project_id"] == "spector-prod"
        assert raw["resource"]["labels"]["location"] == "us-central1"
        assert parse_time(raw["receiveTimestamp"]) >= e.timestamp
        if e.kind in (EntryKind.APP, EntryKind.REQUEST):
            assert e.instance_id and e.instance_id.startswith("00")
            assert e.revision
        if e.kind is EntryKind.REQUEST:
            http = raw["httpRequest"]
            assert http["latency"].endswith("s") and isinstance(http["status"], int)
            assert raw["trace"].startswith("projects/spector-prod/traces/")
        if e.kind is EntryKind.APP:
            assert isinstance(raw["textPayload"], str)


def test_the_generator_reproduces_the_file_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "export.json"
    assert load_generator().main(["--output", str(out), "--quiet"]) == 0
    assert out.read_bytes() == EXPORT.read_bytes()
