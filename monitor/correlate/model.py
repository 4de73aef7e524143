"""The values correlate reads and writes: revision facts, incidents and transitions.

Rules: plain dataclasses, no behaviour beyond derived properties and (de)serialisation to JSON-able
dicts, so the store can keep them and the renderer can read them without importing the state
machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from monitor.classify.prisma import run_label
from monitor.times import format_time, parse_time


def _t(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None



def count_text(count: int, bound: int | None, noun: str | None = None) -> str:
    """`Incident.count_text` of a count and its bound (None: exact), as the JSON has them."""
    text = f"{count:,}"
    if noun:
        text += f" {noun if count == 1 else plural(noun)}"
    if bound is None:
        return text
    return f"~{text} (estimated from a sample of the matches, \u00b1{bound:,})"


def plural(noun: str) -> str:
    """`errors`, `matches`, `failed migration runs`: the English plural of a count's noun."""
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


@dataclass(slots=True)
class MigrationRecord:
    """One outcome of one `migrate deploy` (or `migrate resolve`) run: every run is its own."""

    name: str | None
    outcome: str  # a MigrationOutcome value
    code: str | None
    at: datetime
    instance_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome, "code": self.code,
                "at": format_time(self.at), "instance_id": self.instance_id}

    @property
    def label(self) -> str:
        return run_label(self.name, self.outcome, self.code)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MigrationRecord:
        at = _t(d["at"])
        assert at is not None
        return cls(name=d.get("name"), outcome=d["outcome"], code=d.get("code"), at=at,
                   instance_id=d.get("instance_id"))


@dataclass(slots=True)
class RevisionFacts:
    """What the logs say about one deployed revision of one service."""

    service: str
    name: str
    deployed_at: datetime | None = None  # audit log deploy time, else the first entry
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    ready: bool | None = None  # Cloud Run's Ready condition; None when no system event says
    ready_at: datetime | None = None
    migrations: list[MigrationRecord] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    requests_ok: int = 0
    requests_failed: int = 0
    location: str | None = None  # the Cloud Run region, for links to the revision
    # Routes that failed (HTTP 5xx, not assets) -> the latest failure, the most recent few only:
    # an incident that opens on this revision takes the routes that failed around its start.
    failed_routes: dict[str, datetime] = field(default_factory=dict)

    @property
    def arrival(self) -> tuple[str, datetime | None]:
        """("deployed", t) when an audit entry says so, else ("first seen", t): a revision known
        only from its first log line was not necessarily deployed then."""
        if self.deployed_at is not None:
            return "deployed", self.deployed_at
        return "first seen", self.first_seen

    @property
    def live_since(self) -> datetime | None:
        """When it could first have served: Ready if known, else deploy or first entry."""
        return self.ready_at or self.deployed_at or self.first_seen

    def to_state(self) -> dict[str, Any]:
        """Everything, as stored."""
        return {
            "service": self.service,
            "name": self.name,
            "deployed_at": format_time(self.deployed_at),
            "first_seen": format_time(self.first_seen),
            "last_seen": format_time(self.last_seen),
            "migrations": [m.to_json() for m in self.migrations],
            "errors": dict(self.errors),
            "ready": self.ready,
            "ready_at": format_time(self.ready_at),
            "requests_ok": self.requests_ok,
            "requests_failed": self.requests_failed,
            "location": self.location,
            "failed_routes": {r: format_time(t) for r, t in self.failed_routes.items()},
        }

    def to_json(self) -> dict[str, Any]:
        """The `revisions[]` object of the JSON contract, plus the readiness facts.

        `deployed_at` is null unless an audit entry shows the deploy: a revision known only from
        its first log line was first seen then, not deployed then (`first_seen` says when).
        """
        out = self.to_state()
        del out["failed_routes"]
        return out

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> RevisionFacts:
        return cls(
            service=d["service"],
            name=d["name"],
            deployed_at=_t(d.get("deployed_at")),
            first_seen=_t(d.get("first_seen")),
            last_seen=_t(d.get("last_seen")),
            ready=d.get("ready"),
            ready_at=_t(d.get("ready_at")),
            migrations=[MigrationRecord.from_json(m) for m in d.get("migrations", [])],
            errors=dict(d.get("errors", {})),
            requests_ok=int(d.get("requests_ok", 0)),
            requests_failed=int(d.get("requests_failed", 0)),
            location=d.get("location"),
            failed_routes={r: t for r, v in d.get("failed_routes", {}).items()
                           if (t := _t(v)) is not None},
        )


MAX_BUCKETS = 240  # per incident: a bounded document, whatever the incident's length


class IncidentStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class IncidentKind(StrEnum):
    ERROR = "error"  # a configured error signature matched
    MIGRATION = "migration"  # the migration tool failed on the service
    SOURCE = "source"  # the monitor itself cannot read the logs of a project


class Reason(StrEnum):
    """Why: every decision (`correlate.decide`) names one.

    Most are about the incident's status (open, kept open or resolved): the incident keeps the
    latest (`Incident.reason`), shown in Slack (in words, `notify.render`), in
    `once --format json` as `resolution_reason` and in the write-up. The last group is about
    whether to say something now; those leave the incident's reason as it was (`kept`).
    """

    # open
    FAILING = "failing"  # matches keep coming: the quiet period has not run yet
    DATA_INCOMPLETE = "data_incomplete"  # quiet, but late entries for that period may still come
    NO_TRAFFIC = "no_traffic"  # quiet, but no successful request since
    ONLY_STATIC_ASSETS = "only_static_assets"  # quiet, but only assets were served with 2xx/3xx
    OTHER_ROUTES_ONLY = "other_routes_only"  # successes, but none on the routes that failed
    OTHER_INSTANCES_ONLY = "other_instances_only"  # successes only from instances that never
    # failed, on the failing revision, while the failing instances are still up
    MIGRATION_FAILING = "migration_failing"  # no successful `migrate deploy` since the failure
    CANNOT_READ = "cannot_read"  # the monitor's own incident: reading logs fails
    # resolved
    FIXED_BY_DEPLOY = "fixed_by_deploy"  # evidence of health, and a revision that explains it
    NO_DEPLOY_EXPLAINS_IT = "no_deploy_explains_it"  # evidence of health, no new revision
    SILENCE_WITHOUT_REQUEST_LOGS = "silence_without_request_logs"  # the service writes no
    # request logs (a worker), so quiet is all there can be
    MIGRATION_SUCCEEDED = "migration_succeeded"  # a later `migrate deploy` run succeeded
    READING_WORKS_AGAIN = "reading_works_again"  # the monitor reads the logs again
    # whether to speak (not kept)
    BELOW_THRESHOLD = "below_threshold"  # fewer than `open_after` matches within `window`
    # (or failed reads): no incident yet
    SIGNAL_UNCONFIGURED = "signal_unconfigured"  # its signal left the config: nothing resolves
    # it, it stays as it is
    NEWS = "news"  # the count doubled, another revision failed or a deploy happened: an update
    UPDATE_THROTTLED = "update_throttled"  # news, but the last message is under `update_every` old
    NO_NEWS = "no_news"  # nothing to add since the last message

    @property
    def holds(self) -> bool:
        """A reason to keep an incident open although its quiet period has run."""
        return self in _HOLDS

    @property
    def kept(self) -> bool:
        """The incident keeps it as its `reason`: it is about the incident's status."""
        return self not in _SPEAKING


_HOLDS = frozenset({Reason.NO_TRAFFIC, Reason.ONLY_STATIC_ASSETS, Reason.OTHER_ROUTES_ONLY,
                    Reason.OTHER_INSTANCES_ONLY})
_SPEAKING = frozenset({Reason.BELOW_THRESHOLD, Reason.SIGNAL_UNCONFIGURED, Reason.NEWS,
                       Reason.UPDATE_THROTTLED, Reason.NO_NEWS})


# What a hold lacks, in the words of the thread's one line ("... but <words>: keeping it open").
HOLD_WORDS: dict[str, str] = {
    Reason.NO_TRAFFIC: "no successful request was served since",
    Reason.ONLY_STATIC_ASSETS: "only static assets were served",
    Reason.OTHER_ROUTES_ONLY: "no request succeeded on the routes that failed",
    Reason.OTHER_INSTANCES_ONLY: "only instances that never failed served, and the failing "
                                 "ones are still up",
}


class Evidence(StrEnum):
    """What one successful request, after the last match, says about an error incident."""

    ASSET = "asset"  # a static asset (2xx/3xx): says nothing
    OTHER_ROUTE = "other_route"  # an app route that never failed in this incident
    NEW_REVISION = "new_revision"  # a route that failed, on a revision without matches
    FAILING_INSTANCE = "failing_instance"  # a route that failed, on an instance that failed
    OTHER_INSTANCE = "other_instance"  # a route that failed, on the failing revision, elsewhere


MAX_ROUTES = 20  # failed routes kept per incident and per revision
MAX_INSTANCES = 50  # failing instances tracked per incident


@dataclass(slots=True)
class MigrationFailure:
    name: str | None
    outcome: str
    code: str | None
    message: str = ""


@dataclass(slots=True)
class Incident:
    id: str
    service: str
    signal: str
    kind: IncidentKind
    severity: str
    status: IncidentStatus
    first_seen: datetime
    last_seen: datetime
    count: int
    revisions: dict[str, int] = field(default_factory=dict)
    # The variance of `count` as an estimate: the sum of w*w - w over the matches read as a
    # sample of one in w (Horvitz-Thompson); 0 while every match was read, and `count` exact.
    count_variance: int = 0
    introduced_by: str | None = None
    suspect_migrations: list[str] = field(default_factory=list)
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution_note: str = ""  # the evidence, in words, for the confirmation
    regression_of: str | None = None
    migration: MigrationFailure | None = None
    sample: str = ""  # one matching line (untrusted text)
    reason: str = Reason.FAILING.value  # the latest decision on its status (a kept Reason)
    # Evidence of health in the quiet period: successful app requests since the last match.
    ok_requests_since_last: int = 0
    first_ok_since_last: datetime | None = None
    evidence: dict[str, int] = field(default_factory=dict)  # Evidence value -> count since last
    evidence_since: dict[str, datetime] = field(default_factory=dict)  # ... -> the first one
    failed_routes: list[str] = field(default_factory=list)  # app routes that failed (5xx)
    probed_until: datetime | None = None  # evidence was asked for (correlate.probe) up to here
    instances: dict[str, bool] = field(default_factory=dict)  # failing instance -> shut down
    # Notification bookkeeping, in event time (the pure core decides when to speak).
    seq: int = 0  # transitions emitted so far; (id, seq) keys the outbox
    notified_count: int = 0
    notified_at: datetime | None = None
    changes: list[str] = field(default_factory=list)
    noted_reason: str = ""  # the hold (a Reason) the thread was last told of: told once each
    # Matches per time bucket and revision, for the report's chart: bucket start (epoch seconds,
    # as text for JSON) -> revision -> count. At most MAX_BUCKETS: the buckets widen as it lasts.
    bucket_seconds: int = 60
    buckets: dict[str, dict[str, int]] = field(default_factory=dict)

    def count_in_bucket(self, at: datetime, revision: str | None, weight: int = 1) -> None:
        size = self.bucket_seconds
        key = str(int(at.timestamp()) // size * size)
        per_revision = self.buckets.setdefault(key, {})
        name = revision or "(unknown)"
        per_revision[name] = per_revision.get(name, 0) + weight
        while len(self.buckets) > MAX_BUCKETS:
            size *= 2
            merged: dict[str, dict[str, int]] = {}
            for start, counts in self.buckets.items():
                target = merged.setdefault(str(int(start) // size * size), {})
                for rev, n in counts.items():
                    target[rev] = target.get(rev, 0) + n
            self.bucket_seconds, self.buckets = size, merged

    @property
    def count_estimated(self) -> bool:
        """Some of `count` was read as a flood's sample: it is an estimate."""
        return self.count_variance > 0

    @property
    def count_bound(self) -> int | None:
        """The estimate's 95 % bound: the true count is within `count` +/- this, 19 times in
        20 (1.96 standard deviations). None: `count` is exact."""
        if not self.count_variance:
            return None
        return math.ceil(1.96 * math.sqrt(self.count_variance))

    def count_text(self, noun: str | None = None) -> str:
        """`1,234`, `1,234 errors` with a `noun`, or `~1,234 errors (estimated from a sample of
        the matches, ±56)`: an estimate says so, with its bound, wherever a count is shown."""
        return count_text(self.count, self.count_bound, noun)

    def to_json(self) -> dict[str, Any]:
        """The `incidents[]` object of the JSON contract."""
        return {
            "id": self.id,
            "service": self.service,
            "signal": self.signal,
            "kind": self.kind.value,
            "severity": self.severity,
            "status": self.status.value,
            "first_seen": format_time(self.first_seen),
            "last_seen": format_time(self.last_seen),
            "count": self.count,
            "count_estimated": self.count_estimated,
            "count_bound": self.count_bound,
            "revisions": dict(self.revisions),
            "introduced_by": self.introduced_by,
            "suspect_migrations": list(self.suspect_migrations),
            "resolved_at": format_time(self.resolved_at),
            "resolved_by": self.resolved_by,
            "regression_of": self.regression_of,
            "resolution_reason": self.reason,
            "migration": (
                {"name": self.migration.name, "outcome": self.migration.outcome,
                 "code": self.migration.code}
                if self.migration is not None
                else None
            ),
        }

    def to_state(self) -> dict[str, Any]:
        """Everything, for the store (a superset of `to_json`)."""
        d = asdict(self)
        for key in ("first_seen", "last_seen", "resolved_at", "first_ok_since_last",
                    "notified_at", "probed_until"):
            d[key] = format_time(d[key])
        d["evidence_since"] = {k: format_time(t) for k, t in self.evidence_since.items()}
        d["kind"] = self.kind.value
        d["status"] = self.status.value
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Incident:
        first, last = _t(d["first_seen"]), _t(d["last_seen"])
        assert first is not None and last is not None
        mig = d.get("migration")
        return cls(
            id=d["id"],
            service=d["service"],
            signal=d["signal"],
            kind=IncidentKind(d["kind"]),
            severity=d["severity"],
            status=IncidentStatus(d["status"]),
            first_seen=first,
            last_seen=last,
            count=int(d["count"]),
            revisions=dict(d.get("revisions", {})),
            count_variance=int(d.get("count_variance", 0)),
            introduced_by=d.get("introduced_by"),
            suspect_migrations=list(d.get("suspect_migrations", [])),
            resolved_at=_t(d.get("resolved_at")),
            resolved_by=d.get("resolved_by"),
            resolution_note=d.get("resolution_note", ""),
            regression_of=d.get("regression_of"),
            migration=MigrationFailure(**mig) if mig else None,
            sample=d.get("sample", ""),
            reason=d.get("reason") or _old_reason(d),
            ok_requests_since_last=int(d.get("ok_requests_since_last", 0)),
            first_ok_since_last=_t(d.get("first_ok_since_last")),
            evidence={k: int(v) for k, v in d.get("evidence", {}).items()},
            evidence_since={k: t for k, v in d.get("evidence_since", {}).items()
                            if (t := _t(v)) is not None},
            failed_routes=list(d.get("failed_routes", [])),
            probed_until=_t(d.get("probed_until")),
            instances={k: bool(v) for k, v in d.get("instances", {}).items()},
            seq=int(d.get("seq", 0)),
            notified_count=int(d.get("notified_count", 0)),
            notified_at=_t(d.get("notified_at")),
            changes=list(d.get("changes", [])),
            noted_reason=d.get("noted_reason") or (
                Reason.NO_TRAFFIC.value if d.get("quiet_noted") else ""),
            bucket_seconds=int(d.get("bucket_seconds", 60)),
            buckets={k: dict(v) for k, v in d.get("buckets", {}).items()},
        )


def _old_reason(d: dict[str, Any]) -> str:
    """The reason of an incident stored before reasons were kept (schema of the first versions)."""
    if d.get("status") == IncidentStatus.RESOLVED.value:
        if d.get("kind") == IncidentKind.MIGRATION.value:
            return Reason.MIGRATION_SUCCEEDED.value
        if d.get("kind") == IncidentKind.SOURCE.value:
            return Reason.READING_WORKS_AGAIN.value
        return (Reason.FIXED_BY_DEPLOY if d.get("resolved_by")
                else Reason.NO_DEPLOY_EXPLAINS_IT).value
    return {IncidentKind.MIGRATION.value: Reason.MIGRATION_FAILING,
            IncidentKind.SOURCE.value: Reason.CANNOT_READ}.get(d.get("kind", ""),
                                                               Reason.FAILING).value


class TransitionKind(StrEnum):
    OPENED = "opened"
    REGRESSED = "regressed"  # opened again after a resolution: a new incident, linked
    UPDATED = "updated"
    QUIET_NO_TRAFFIC = "quiet_no_traffic"  # silent, but nothing shows the work succeeds yet
    # (its reason, a hold of `Reason`, says what is missing)
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Transition:
    """One thing worth telling people, with why. (incident.id, seq) is its idempotency key."""

    kind: TransitionKind
    incident: Incident  # a snapshot at the moment of the transition
    seq: int
    at: datetime
    reason: str
    changes: tuple[str, ...] = ()
    revision_facts: tuple[RevisionFacts, ...] = ()  # evidence quoted by the message

    @property
    def key(self) -> str:
        return f"{self.incident.id}#{self.seq}"
