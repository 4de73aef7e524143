"""LogEntry: the one normalised value every source yields.

Rules: this module knows the shape of a Cloud Logging entry (as `gcloud logging read
--format=json` and the REST API write it, camelCase) and nothing about signals, incidents or I/O.
Every source turns what it reads into `LogEntry` through `from_json`, so the file replay, the
emulator and production feed the classifier exactly the same values. The one exception is the
gRPC source's protobuf fast path (`sources/cloud_logging.py:_from_pb`): it builds `LogEntry`
field by field for speed, from the same pieces (`origin`, `json_message`, `audit_text`), and a
test holds it equal to `normalise` for every kind of entry.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from monitor.times import BadTime, parse_time

AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"


class EntryKind(StrEnum):
    """What produced the entry; decides which classifiers look at it."""

    APP = "app"  # a container's stdout / stderr line, or a structured app log
    REQUEST = "request"  # run.googleapis.com/requests: one per HTTP request served
    AUDIT = "audit"  # cloudaudit.googleapis.com/activity: deploys (Services.ReplaceService)
    SYSTEM = "system"  # cloudaudit.googleapis.com/system_event: revision readiness
    PLATFORM = "platform"  # run.googleapis.com/varlog/system: Cloud Run about an instance


class MalformedEntry(ValueError):
    """An entry that cannot be normalised; sources count it and skip it."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    insert_id: str
    log_name: str
    timestamp: datetime
    severity: str
    kind: EntryKind
    project: str | None
    service: str | None
    revision: str | None
    instance_id: str | None
    text: str
    http_status: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    location: str | None = None  # the Cloud Run region, e.g. us-central1
    http_url: str | None = None  # a request log's httpRequest.requestUrl (untrusted text)
    # How many entries this one stands for: a flood's sample reads one in `weight` of its
    # class (monitor/sampling.py); 1 for everything read whole.
    weight: int = 1

    @property
    def key(self) -> str:
        """Dedupe identity: Cloud Logging guarantees insertId unique only within one log."""
        return f"{self.log_name}\x1f{self.insert_id}"


class _NewEntry:
    """Calling it makes a `LogEntry` of all its fields, positionally, in their order.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__` (about 1.5 us
    for LogEntry's 14; a source builds one per entry read). This class has LogEntry's very
    slots, writable: it fills them plainly, then becomes the LogEntry it is (`__class__`
    assignment between two classes of one layout, checked by CPython), about 0.3 us. What comes
    out is an ordinary LogEntry: frozen, equal, hashed and `dataclasses.replace`d as any.
    """

    __slots__ = LogEntry.__slots__

    def __init__(self, insert_id: str, log_name: str, timestamp: datetime, severity: str,
                 kind: EntryKind, project: str | None, service: str | None,
                 revision: str | None, instance_id: str | None, text: str,
                 http_status: int | None, raw: Mapping[str, Any], location: str | None,
                 http_url: str | None) -> None:
        self.insert_id = insert_id
        self.log_name = log_name
        self.timestamp = timestamp
        self.severity = severity
        self.kind = kind
        self.project = project
        self.service = service
        self.revision = revision
        self.instance_id = instance_id
        self.text = text
        self.http_status = http_status
        self.raw = raw
        self.location = location
        self.http_url = http_url
        self.weight = 1
        self.__class__ = LogEntry  # type: ignore[assignment]


if _NewEntry.__slots__ != tuple(f for f in LogEntry.__dataclass_fields__):  # every field, in order
    raise TypeError("_NewEntry must set every field of LogEntry, in its order")

new_entry: Callable[[str, str, datetime, str, EntryKind, str | None, str | None, str | None,
                     str | None, str, int | None, Mapping[str, Any], str | None, str | None],
                    LogEntry] = _NewEntry  # type: ignore[assignment]


@functools.lru_cache(maxsize=1024)  # a project has few log names; this runs for every entry
def _kind(log_name: str) -> EntryKind:
    tail = log_name.rsplit("/", 1)[-1].replace("%2F", "/").replace("%2f", "/")
    if tail == "run.googleapis.com/requests":
        return EntryKind.REQUEST
    if tail == "cloudaudit.googleapis.com/activity":
        return EntryKind.AUDIT
    if tail == "cloudaudit.googleapis.com/system_event":
        return EntryKind.SYSTEM
    if tail == "run.googleapis.com/varlog/system":
        return EntryKind.PLATFORM
    return EntryKind.APP


def _project(log_name: str, labels: Mapping[str, Any]) -> str | None:
    project = labels.get("project_id")
    if isinstance(project, str) and project:
        return project
    if log_name.startswith("projects/"):
        return log_name.split("/", 2)[1]
    return None


class Origin(NamedTuple):
    """Where an entry comes from: all that its log name and monitored resource say."""

    kind: EntryKind
    project: str | None
    service: str | None
    revision: str | None
    location: str | None


def origin(log_name: str, resource_labels: Mapping[str, Any]) -> Origin:
    """The same for every entry of one log of one revision, so a source may cache it."""
    revision = resource_labels.get("revision_name") or None
    service = resource_labels.get("service_name") or resource_labels.get("job_name") or None
    project = _project(log_name, resource_labels)
    return Origin(
        kind=_kind(log_name),
        project=_name(project) if project else None,
        service=_name(service) if service else None,
        revision=_name(revision) if revision else None,
        location=_name(resource_labels.get("location") or "") or None,
    )


def _name(value: Any) -> str:
    """A name as text that any store can hold: a lone surrogate (a JSON export may escape one,
    `"\\ud800"`) becomes U+FFFD; SQLite and PostgreSQL refuse to encode it, on every commit."""
    text = str(value)
    return text if text.isascii() else replace_surrogates(text)


def replace_surrogates(text: str) -> str:
    """Each lone surrogate as U+FFFD, one character for one, so positions stay: UTF-8 (a
    store, RE2, a URL) cannot encode one."""
    return _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


# Where real loggers put an error's text in a structured (JSON) line, in the order they are
# joined. The class name is often in one field and the message in another: pino's `err` holds
# `type` (the constructor's name), `message` and `stack`; an Error subclass that does not set
# `name` has a stack beginning "Error: <message>"; Error Reporting reads `stack_trace` or
# `exception`; Google's structured logging and most Node loggers write `message`, pino `msg`.
# `queries.logs_query` searches the same fields, so a Logs Explorer link finds what we matched.
# The most common come first: a Logs Explorer link that must stay short searches a prefix.
JSON_TEXT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("message",), ("msg",), ("stack_trace",), ("stack",),
    *((outer, *inner) for outer in ("err", "error", "exception")
      for inner in ((), ("type",), ("message",), ("stack",), ("name",))),
)
# The top-level keys those paths start from: all a source needs to pass to `json_message`.
JSON_TEXT_KEYS = tuple(dict.fromkeys(path[0] for path in JSON_TEXT_FIELDS))


def json_message(payload: Mapping[str, Any]) -> str | None:
    """The text of `JSON_TEXT_FIELDS`, joined without repeats; None when the payload has none.

    One entry, one text: a signal found in several fields still counts once for the entry. An
    error object's class and message make one line, `MissingSessionTableError: Prisma session
    table does not exist`, as `console.error` prints them, so the quoted sample says both (pino
    puts the class in `err.type` and the message apart). A `message` that is itself an object
    (Google's logging-winston and logging-bunyan with `useMessageField`) is read the same way.
    Only the `JSON_TEXT_KEYS` of `payload` are read, so a source may pass just those.
    """
    parts: list[str] = []
    _collect(payload, parts)
    nested = payload.get("message")
    if nested is not None and not isinstance(nested, str) and isinstance(nested, Mapping):
        _collect(nested, parts)
    return "\n".join(dict.fromkeys(parts)) if parts else None


# `JSON_TEXT_FIELDS` as (first key, the rest of each path that starts with it), in their order:
# a payload without the key (most have only `message`) skips all its paths at once.
_FIELD_GROUPS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = tuple(
    (head, tuple(path[1:] for path in paths))
    for head, paths in itertools.groupby(JSON_TEXT_FIELDS, key=lambda path: path[0]))


def _collect(payload: Mapping[str, Any], parts: list[str]) -> None:
    """The text at each of `JSON_TEXT_FIELDS` in `payload`, in order; an error object (a
    mapping at a path of one key) as `type: message`."""
    for head, tails in _FIELD_GROUPS:
        top = payload.get(head)
        if top is None:
            continue
        if isinstance(top, str):  # only the path that ends here can say something
            if top and () in tails:
                parts.append(top)
            continue
        if not isinstance(top, Mapping):
            continue
        for tail in tails:
            if not tail:  # an error object
                kind, message = (top.get("type") or top.get("name")), top.get("message")
                if isinstance(kind, str) and kind and isinstance(message, str) and message:
                    parts.append(f"{kind}: {message}")
                continue
            value: Any = top
            for key in tail:
                value = value.get(key) if isinstance(value, Mapping) else None
            if isinstance(value, str) and value:
                parts.append(value)


def json_text(payload: Mapping[str, Any]) -> str:
    """The human text of a structured log: its message, else its scalar fields as k=v."""
    message = json_message(payload)
    if message is not None:
        return message
    return " ".join(f"{k}={v}" for k, v in payload.items() if isinstance(v, str | int | float))


def audit_text(payload: Mapping[str, Any]) -> str:
    """One readable line for an audit entry: method, resource and status message."""
    status = payload.get("status")
    message = status.get("message", "") if isinstance(status, Mapping) else ""
    method = payload.get("methodName", "")
    resource = payload.get("resourceName", "")
    return " ".join(str(p) for p in (method, resource, message) if p)


def normalise(
    *,
    insert_id: str,
    log_name: str,
    timestamp: datetime,
    severity: str,
    resource_labels: Mapping[str, Any],
    labels: Mapping[str, Any],
    text_payload: str | None = None,
    json_payload: Mapping[str, Any] | None = None,
    proto_payload: Mapping[str, Any] | None = None,
    http: Mapping[str, Any] | None = None,
    raw: Mapping[str, Any] | None = None,
) -> LogEntry:
    """The one place an entry's parts become a LogEntry, whatever the wire format was."""
    text: str
    http_status: int | None = None
    http_url: str | None = None
    if text_payload is not None:
        text = text_payload
    elif json_payload is not None:
        text = json_text(json_payload)
    elif proto_payload is not None:
        text = audit_text(proto_payload)
    else:
        text = ""
    if http is not None:
        status = http.get("status")
        if isinstance(status, int) or (isinstance(status, str) and status.isascii()
                                       and status.isdigit()):
            http_status = int(status)
        url = http.get("requestUrl")
        http_url = url if isinstance(url, str) and url else None
        if not text:
            text = f"{http.get('requestMethod', '')} {http.get('requestUrl', '')} {status}".strip()
    where = origin(log_name, resource_labels)
    instance = labels.get("instanceId") or None
    return new_entry(
        insert_id, log_name, timestamp, severity or "DEFAULT", where.kind, where.project,
        where.service, where.revision, str(instance) if instance else None, text, http_status,
        raw if raw is not None else {}, where.location, http_url,
    )


def from_json(obj: Any) -> LogEntry:
    """Normalise one entry in Cloud Logging's JSON form; raises MalformedEntry if it is not one."""
    if not isinstance(obj, Mapping):
        raise MalformedEntry(f"entry is a {type(obj).__name__}, not an object")
    ts = obj.get("timestamp") or obj.get("receiveTimestamp")
    if ts is None:
        raise MalformedEntry("entry has no timestamp")
    if not isinstance(ts, str):
        raise MalformedEntry(f"timestamp is not an RFC 3339 string: {ts!r:.40}")
    log_name = obj.get("logName")
    if not isinstance(log_name, str) or not log_name:
        raise MalformedEntry("entry has no logName")
    insert_id = obj.get("insertId")
    if not isinstance(insert_id, str) or not insert_id:
        raise MalformedEntry("entry has no insertId")
    try:
        return _from_parts(obj, insert_id, log_name, ts)
    except MalformedEntry:
        raise
    except BadTime as exc:
        raise MalformedEntry(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # a 4,300-digit number, a field nested too deep
        raise MalformedEntry(f"unreadable value in the entry: {str(exc)[:100]}") from None


def _from_parts(obj: Mapping[str, Any], insert_id: str, log_name: str, ts: str) -> LogEntry:
    resource = obj.get("resource")
    rlabels: Mapping[str, Any] = {}
    if isinstance(resource, Mapping) and isinstance(resource.get("labels"), Mapping):
        rlabels = resource["labels"]
    labels = obj.get("labels")
    receive = obj.get("receiveTimestamp")
    if isinstance(receive, str):
        parse_time(receive)  # an entry with a receive time that is not one is malformed
    text = obj.get("textPayload")
    payload = obj.get("jsonPayload")
    proto = obj.get("protoPayload")
    http = obj.get("httpRequest")
    return normalise(
        insert_id=insert_id,
        log_name=log_name,
        timestamp=parse_time(ts),
        severity=str(obj.get("severity") or "DEFAULT"),
        resource_labels=rlabels,
        labels=labels if isinstance(labels, Mapping) else {},
        text_payload=text if isinstance(text, str) else None,
        json_payload=payload if isinstance(payload, Mapping) else None,
        proto_payload=proto if isinstance(proto, Mapping) else None,
        http=http if isinstance(http, Mapping) else None,
        raw=obj,
    )
