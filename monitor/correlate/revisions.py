"""Per-revision facts: deploy time, readiness, traffic, migrations and errors of each revision.

Rules: pure; folds one observation at a time into `RevisionFacts` and never decides anything
about incidents. It also holds the two judgements the incident rules need about a revision:
whether it may be named as the cause, and whether it may be named as the fix.
"""

from __future__ import annotations

from datetime import datetime

from monitor.classify.observations import (
    DeployEvent,
    DeployStage,
    ErrorHit,
    InstanceStopped,
    MigrationEvent,
    RequestServed,
    RevisionSeen,
)
from monitor.correlate.model import MAX_ROUTES, MigrationRecord, RevisionFacts

RevisionKey = tuple[str, str]


def _min(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _max(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def facts_for(
    revisions: dict[RevisionKey, RevisionFacts], service: str, name: str, at: datetime
) -> RevisionFacts:
    facts = revisions.get((service, name))
    if facts is None:
        facts = revisions[(service, name)] = RevisionFacts(service=service, name=name)
    facts.first_seen = _min(facts.first_seen, at)
    facts.last_seen = _max(facts.last_seen, at)
    return facts


def fold(
    revisions: dict[RevisionKey, RevisionFacts],
    obs: ErrorHit | MigrationEvent | DeployEvent | RequestServed | RevisionSeen | InstanceStopped,
) -> None:
    """Record what one observation says about its revision (if it names one)."""
    if obs.revision is None:
        return
    facts = facts_for(revisions, obs.service, obs.revision, obs.at)
    if isinstance(obs, ErrorHit):
        facts.errors[obs.signal] = facts.errors.get(obs.signal, 0) + obs.weight
    elif isinstance(obs, RequestServed):
        if obs.ok:
            facts.requests_ok += 1
        else:
            facts.requests_failed += obs.weight
            if obs.route is not None and not obs.asset:
                routes = facts.failed_routes
                routes[obs.route] = _max(routes.get(obs.route), obs.at)
                if len(routes) > MAX_ROUTES:
                    del routes[min(routes, key=routes.__getitem__)]
    elif isinstance(obs, MigrationEvent):
        # Every run is its own record, however alike: a clean run on another instance after a
        # failed one is what resolves a migration incident. Only the very same event (read
        # again) is not added twice.
        record = MigrationRecord(obs.name, obs.outcome.value, obs.code, obs.at, obs.instance_id)
        if record not in facts.migrations:
            facts.migrations.append(record)
            if len(facts.migrations) > MAX_RUNS:
                facts.migrations.remove(_oldest_clean_run(facts.migrations))
    elif isinstance(obs, RevisionSeen):
        facts.location = obs.location or facts.location
    elif isinstance(obs, DeployEvent):
        if obs.stage is DeployStage.DEPLOYED:
            facts.deployed_at = _min(facts.deployed_at, obs.at)
        elif obs.stage is DeployStage.READY:
            facts.ready = True
            facts.ready_at = _min(facts.ready_at, obs.at)
        elif obs.stage is DeployStage.FAILED and facts.ready is None:
            facts.ready = False  # a later Ready=True wins: Cloud Run retries a revision


MAX_RUNS = 100  # migration records kept per revision: every instance start runs migrate deploy


def _oldest_clean_run(records: list[MigrationRecord]) -> MigrationRecord:
    """The record to drop when a revision has too many: the oldest "no pending migrations" run,
    else the oldest; a failure or an applied migration outlives routine start-ups."""
    routine = [m for m in records if m.outcome == "up_to_date"]
    return min(routine or records, key=lambda m: m.at)


def may_be_cause(facts: RevisionFacts) -> bool:
    """A revision that never became ready served nothing, so it caused nothing users saw."""
    return facts.ready is not False


def may_be_fix(facts: RevisionFacts, service_has_request_logs: bool) -> bool:
    """The fix must have run and served successfully, where request logs can show it."""
    if facts.ready is False:
        return False
    return facts.requests_ok > 0 or not service_has_request_logs


def migrations_run(facts: RevisionFacts) -> list[str]:
    """Migrations a revision applied or tried to apply: the suspects when it breaks things."""
    names: list[str] = []
    for m in facts.migrations:
        if m.name and m.outcome in ("applied", "failed") and m.name not in names:
            names.append(m.name)
    return names
