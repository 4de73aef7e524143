"""Observation: what the classifiers conclude from log entries, as plain values.

Rules: observations are facts about one moment of one revision ("this entry matched signal X",
"this instance applied migration Y", "this revision became ready"); they carry no judgement about
incidents. `correlate` is the only reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class ErrorHit:
    """One entry whose text matched a configured signal (counted once per entry)."""

    at: datetime
    service: str
    revision: str | None
    signal: str
    insert_id: str
    sample: str  # the matching line, untrusted text
    instance_id: str | None = None  # the instance that failed: evidence must come from it
    # The matches it stands for: 1, or `w` when a flood's matches were read as a sample of one
    # in `w` (`sample(insertId, 1/w)`, queries.Selection): counted as `w`, an estimate.
    weight: int = 1


class MigrationOutcome(StrEnum):
    APPLIED = "applied"  # the migration was applied by a run that finished successfully
    UP_TO_DATE = "up_to_date"  # "No pending migrations to apply." (name is None)
    FAILED = "failed"  # P3018: this migration failed to apply
    BLOCKED = "blocked"  # P3009: the run refused to start because this migration failed earlier
    ERROR = "error"  # any other failed run: P1001 unreachable, ... (name is usually None)
    ROLLED_BACK = "rolled_back"  # `migrate resolve --rolled-back NAME`
    MARKED_APPLIED = "marked_applied"  # `migrate resolve --applied NAME`

    @property
    def run_succeeded(self) -> bool:
        return self in (MigrationOutcome.APPLIED, MigrationOutcome.UP_TO_DATE)

    @property
    def run_failed(self) -> bool:
        return self in (MigrationOutcome.FAILED, MigrationOutcome.BLOCKED, MigrationOutcome.ERROR)


@dataclass(frozen=True, slots=True)
class MigrationEvent:
    """An outcome reported by the migration tool on one instance of one revision."""

    at: datetime
    service: str
    revision: str | None
    instance_id: str | None
    outcome: MigrationOutcome
    name: str | None = None  # the migration, e.g. 20251204205052_map_session_table_to_lowercase
    code: str | None = None  # the tool's error code, e.g. P3018
    message: str = ""  # the tool's explanation (database error ...), untrusted text


class DeployStage(StrEnum):
    DEPLOYED = "deployed"  # a new revision was requested (admin activity audit log)
    REJECTED = "rejected"  # the deploy call failed (a non-zero status): nothing was deployed
    READY = "ready"  # Cloud Run reported the revision Ready (system event)
    FAILED = "failed"  # Cloud Run reported the revision not Ready: it never served


@dataclass(frozen=True, slots=True)
class DeployEvent:
    at: datetime
    service: str
    revision: str | None
    stage: DeployStage
    message: str = ""


@dataclass(frozen=True, slots=True)
class RequestServed:
    """One request log line: the evidence that a revision served traffic, and how well."""

    at: datetime
    service: str
    revision: str | None
    status: int
    instance_id: str | None = None
    route: str | None = None  # classify.requests.route_of the URL; None without one
    asset: bool = False  # a static asset: never evidence that the app works
    weight: int = 1  # a failed request read in a flood's sample stands for `weight` (ErrorHit)

    @property
    def ok(self) -> bool:
        """Served without a server error: the revision ran (its facts count these)."""
        return self.status < 500


@dataclass(frozen=True, slots=True)
class InstanceStopped:
    """Cloud Run shut an instance down: whatever state it was in, it serves no more."""

    at: datetime
    service: str
    revision: str | None
    instance_id: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class RevisionSeen:
    """Any entry of a revision: first / last seen, and its deploy time when no audit log says."""

    at: datetime
    service: str
    revision: str
    location: str | None = None


Observation = (ErrorHit | MigrationEvent | DeployEvent | RequestServed | RevisionSeen
               | InstanceStopped)
