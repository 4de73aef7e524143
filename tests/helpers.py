"""Small builders of LogEntry values for tests of the pure core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

from monitor.entries import EntryKind, LogEntry

T0 = datetime(2025, 12, 4, 21, 0, tzinfo=UTC)
_ids = count()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def line(seconds: float, text: str, *, revision: str = "spector-00042-wex",
         instance: str = "i1", service: str = "spector",
         kind: EntryKind = EntryKind.APP, status: int | None = None,
         raw: dict | None = None) -> LogEntry:
    log = {EntryKind.APP: "run.googleapis.com%2Fstdout",
           EntryKind.REQUEST: "run.googleapis.com%2Frequests",
           EntryKind.AUDIT: "cloudaudit.googleapis.com%2Factivity",
           EntryKind.SYSTEM: "cloudaudit.googleapis.com%2Fsystem_event"}[kind]
    return LogEntry(
        insert_id=f"id{next(_ids)}", log_name=f"projects/spector-prod/logs/{log}",
        timestamp=at(seconds), receive_timestamp=None, severity="DEFAULT", kind=kind,
        project="spector-prod", service=service, revision=revision, instance_id=instance,
        text=text, http_status=status, raw=raw or {},
    )
