"""Deploys and readiness from Cloud Run's audit logs.

Rules: pure. Admin Activity entries (`Services.ReplaceService` / `CreateService`, v1 or v2) say a
deploy was requested; System Event entries ("Ready condition status changed to True for Revision
X.") say a revision became ready, or never did. Without audit logs a revision's deploy time is its
first entry, which correlate derives on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from monitor.classify.observations import DeployEvent, DeployStage
from monitor.entries import EntryKind, LogEntry

_DEPLOY_METHODS = re.compile(r"Services\.(?:ReplaceService|CreateService|UpdateService)$")
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
    if entry.kind is EntryKind.AUDIT and isinstance(method, str) and _DEPLOY_METHODS.search(method):
        revision = (
            entry.revision
            or _get(payload, "response", "spec", "template", "metadata", "name")
            or _get(payload, "response", "template", "revision")
            or _get(payload, "request", "service", "spec", "template", "metadata", "name")
        )
        who = _get(payload, "authenticationInfo", "principalEmail")
        message = f"deployed by {who}" if isinstance(who, str) else "deployed"
        return DeployEvent(
            entry.timestamp,
            entry.service,
            revision if isinstance(revision, str) and revision else None,
            DeployStage.DEPLOYED,
            message,
        )
    return None
