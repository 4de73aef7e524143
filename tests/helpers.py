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
        timestamp=at(seconds), severity="DEFAULT", kind=kind,
        project="spector-prod", service=service, revision=revision, instance_id=instance,
        text=text, http_status=status, raw=raw or {},
    )


def export_entry(n: int, seconds: float, text: str | None = None, *,
                 log: str = "run.googleapis.com%2Fstderr", revision: str = "spector-00042-wex",
                 service: str = "spector", status: int | None = None,
                 instance: str = "inst-1") -> dict:
    """One entry as `gcloud logging read --format=json` writes it."""
    ts = at(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    d: dict = {
        "insertId": f"e{n:06d}", "logName": f"projects/spector-prod/logs/{log}",
        "timestamp": ts, "receiveTimestamp": ts, "severity": "ERROR" if text else "INFO",
        "resource": {"type": "cloud_run_revision", "labels": {
            "service_name": service, "revision_name": revision, "project_id": "spector-prod",
            "location": "us-central1", "configuration_name": service}},
        "labels": {"instanceId": instance},
    }
    if text is not None:
        d["textPayload"] = text
    if status is not None:
        d["logName"] = "projects/spector-prod/logs/run.googleapis.com%2Frequests"
        d["httpRequest"] = {"requestMethod": "GET", "requestUrl": "https://spector/app",
                            "status": status}
    return d


def small_incident() -> list[dict]:
    """Bad migration at 0, errors at 60-120 s, fix live at 90 s, healthy requests to 36 min."""
    lines = [
        (0, "Prisma schema loaded from prisma/schema.prisma"),
        (1, "Applying migration `20251204205052_map_session_table_to_lowercase`"),
        (2, "All migrations have been successfully applied."),
        (60, "MissingSessionTableError: Prisma session table does not exist."),
        (61, "    at PrismaSessionStorage.ensureReady (/app/prisma.js:60:13)"),
        (120, "MissingSessionTableError: Prisma session table does not exist."),
    ]
    out = [export_entry(i, s, t) for i, (s, t) in enumerate(lines)]
    out.append(export_entry(50, 59, status=500))
    fix = "spector-00044-mop"
    out.append(export_entry(60, 90, "Applying migration `20251213003742_fix_session_table_"
                            "uppercase`", revision=fix))
    out.append(export_entry(61, 91, "All migrations have been successfully applied.",
                            revision=fix))
    out += [export_entry(100 + k, 180 + 60 * k, revision=fix, status=200) for k in range(32)]
    return out
