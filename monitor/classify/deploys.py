"""Deploys, readiness and instance shutdowns from what Cloud Run itself logs.

Rules: pure. The shapes are those of tests/data/real/cloudrun (each file names its source).
- Admin Activity entries (`Services.ReplaceService` / `CreateService` / `UpdateService`, v1 or v2)
  say a deploy was requested, but only when the call succeeded: `protoPayload.status` absent or
  code 0. A non-zero code is a rejected call (a revision name already taken, a permission
  missing, an invalid setting) and never a deploy, whatever revision its request names.
- The new revision's name: the resource label, else the name the caller gave it
  (`spec.template.metadata.name` in v1, `template.revision` in v2, response or request), else, on
  the LAST entry of a v2 long-running call, the basename of `response.latestCreatedRevision`.
  A long-running call is read from its last entry only: the first is written before the call
  can fail, so it would be a deploy that may never happen, and one deploy twice. A v1
  response's `status.latestCreatedRevisionName` is written before the new revision exists and
  names the previous one: it is never read. A deploy whose entry names no revision is still a
  deploy ("a new revision"); its name comes from the revision's Ready event.
- System Event entries ("Ready condition status changed to True for Revision X.", with or
  without " with message: ...") say a revision became ready, or never did; "... for Service X."
  is about the service and says nothing of a revision.
- Cloud Run's `varlog/system` lines say an instance is gone ("Shutting down user disabled
  instance", "Container called exit(1).", "Container terminated on signal 9."): whatever state it
  was in, it serves no more.
Without audit logs a revision is known from its first entry only: first seen, not deployed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from monitor.classify.observations import DeployEvent, DeployStage, InstanceStopped
from monitor.entries import EntryKind, LogEntry

_DEPLOY_METHODS = re.compile(r"Services\.(?:ReplaceService|CreateService|UpdateService)$")
_INSTANCE_GONE = re.compile(r"^(?:Shutting down user disabled instance|Container called exit\("
                            r"|Container terminated on signal)")
_READY = re.compile(
    r"Ready condition status changed to (?P<status>True|False) for Revision (?P<rev>[\w.-]+?)\.?"
    r"(?:\s|$)"
)


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def deploy_event(entry: LogEntry) -> DeployEvent | None:
    if entry.service is None or entry.kind not in (EntryKind.AUDIT, EntryKind.SYSTEM):
        return None
    payload = entry.raw.get("protoPayload")
    if not isinstance(payload, Mapping):
        return None
    status_message = _get(payload, "status", "message")
    if isinstance(status_message, str):
        m = _READY.search(status_message)
        if m:
            stage = DeployStage.READY if m["status"] == "True" else DeployStage.FAILED
            return DeployEvent(entry.timestamp, entry.service, m["rev"], stage, status_message)
    method = payload.get("methodName")
    if entry.kind is not EntryKind.AUDIT or not isinstance(method, str) \
            or not _DEPLOY_METHODS.search(method):
        return None
    who = _get(payload, "authenticationInfo", "principalEmail")
    by = f" by {who}" if isinstance(who, str) and who else ""
    code = _get(payload, "status", "code")
    if isinstance(code, int | str) and str(code) not in ("", "0"):
        reason = status_message if isinstance(status_message, str) else f"status code {code}"
        return DeployEvent(entry.timestamp, entry.service, None, DeployStage.REJECTED,
                           f"{reason} (code {code}{by and ', ' + by.strip()})")
    operation = entry.raw.get("operation")
    if isinstance(operation, Mapping) and operation.get("last") is not True:
        return None  # a long-running call's first entry: its last one says how it ended
    revision = entry.revision or _named_revision(payload)
    if revision is None and isinstance(operation, Mapping):
        created = _get(payload, "response", "latestCreatedRevision")  # v2, the call is done
        if isinstance(created, str) and created:
            revision = created.rsplit("/", 1)[-1]
    return DeployEvent(entry.timestamp, entry.service, revision, DeployStage.DEPLOYED,
                       f"deployed{by}")


def _named_revision(payload: Any) -> str | None:
    """The revision name the caller chose, if it chose one (gcloud does, the console does not)."""
    for path in (("response", "spec", "template", "metadata", "name"),
                 ("request", "service", "spec", "template", "metadata", "name"),
                 ("response", "template", "revision"),
                 ("request", "service", "template", "revision")):
        name = _get(payload, *path)
        if isinstance(name, str) and name:
            return name
    return None


def instance_event(entry: LogEntry) -> InstanceStopped | None:
    """An instance Cloud Run shut down or whose container exited, from its varlog/system line."""
    if entry.kind is not EntryKind.PLATFORM or entry.service is None \
            or entry.instance_id is None or not _INSTANCE_GONE.match(entry.text):
        return None
    return InstanceStopped(entry.timestamp, entry.service, entry.revision, entry.instance_id,
                           entry.text[:200])
