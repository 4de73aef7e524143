"""EntryStore: the emulator's log entries in memory, read the way ListLogEntries reads them.

Rules, after the API reference of `entries.list` (google.logging.v2.ListLogEntriesRequest):
- Entries are kept sorted by (timestamp, insertId) at nanosecond precision; `orderBy` is
  "timestamp asc" (the default) or "timestamp desc", anything else is INVALID_ARGUMENT.
- `resourceNames` are required (at most 100); `projects/<id>` (or a log view under it) restricts
  the read to entries whose logName starts with `projects/<id>/`; other parents are refused.
  With `central=<id>` the store is also that project's central bucket, as an aggregated sink
  makes it: reading `projects/<id>` returns every project's entries, their logNames unchanged.
- `pageSize` 0 means 50, as the API's default; negative or above 1,000 is INVALID_ARGUMENT. A
  page also stops before it would exceed `max_page_bytes` of serialized entries, so a page
  always fits in gRPC's default 4 MiB message (the API, too, may return fewer than asked).
  With `max_scan`, a page also stops after looking at that many entries, found or not, with a
  token to go on: Cloud Logging does that on a long search ("If a value for next_page_token
  appears and the entries field is empty, it means that the search found no log entries so
  far but it did not have time to search all the possible log entries": ListLogEntriesResponse,
  cloud.google.com/logging/docs/reference/v2/rpc/google.logging.v2).
- `nextPageToken` is present only when another matching entry exists. It is opaque (base64 of a
  small JSON document) and holds the position of the next page as a sort key, not an offset, so
  entries appended between pages neither repeat nor shift what the read sees: like Cloud Logging,
  an entry landing behind the cursor is not seen by that read. A token is bound to its request
  (filter, order, resource names) and to the store's epoch: reused with a different request, or
  after `shift_to`/`clear`, it is INVALID_ARGUMENT.
- Every entry is converted to the protobuf `google.logging.v2.LogEntry` once, when it is stored,
  and kept serialized: serving a page is concatenating bytes, which is what lets the gRPC
  server feed the real client at client speed.

Thread-safety: writers build new sorted lists under a lock and swap them in (copy on write), so
a read works on a consistent snapshot without holding the lock while it filters.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.cloud.audit.audit_log_pb2  # noqa: F401  (registers AuditLog for protoPayload)
from google.cloud.logging_v2.types import LogEntry
from google.protobuf import json_format

from monitor.emulator.query import (
    InvalidArgument,
    compile_filter,
    format_rfc3339_ns,
    parse_rfc3339_ns,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_RESOURCE_NAMES = 100
DEFAULT_MAX_PAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
_LOG_ENTRY_PB: Any = LogEntry.pb()

Key = tuple[int, str, str, int]  # (timestamp ns, insertId, logName, arrival sequence)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry: its JSON form (as loaded), its project and its serialized protobuf."""

    key: Key
    json: dict[str, Any]
    project: str | None
    pb: bytes  # google.logging.v2.LogEntry, serialized
    framed: bytes  # the same as field 1 of a ListLogEntriesResponse: concatenate to build one


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_response(entries: Sequence[StoredEntry], next_page_token: str) -> bytes:
    """A serialized ListLogEntriesResponse, by concatenating the cached entry bytes."""
    parts = [e.framed for e in entries]
    if next_page_token:
        token = next_page_token.encode()
        parts.append(b"\x12" + _varint(len(token)) + token)
    return b"".join(parts)


def to_log_entry_pb(entry: Mapping[str, Any]) -> bytes:
    """The JSON form as a serialized LogEntry; unknown fields are ignored.

    A protoPayload whose `@type` has no descriptor here cannot be packed into an Any: the entry
    is kept without it rather than refused (the JSON form, served over REST, still has it).
    """
    msg = _LOG_ENTRY_PB()
    try:
        json_format.ParseDict(entry, msg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        if "protoPayload" not in entry:
            raise ValueError(f"not a LogEntry: {exc}") from None
        msg = _LOG_ENTRY_PB()
        rest = {k: v for k, v in entry.items() if k != "protoPayload"}
        try:
            json_format.ParseDict(rest, msg, ignore_unknown_fields=True)
        except json_format.ParseError as exc2:
            raise ValueError(f"not a LogEntry: {exc2}") from None
    data: bytes = msg.SerializeToString()
    return data


def _project(log_name: str) -> str | None:
    if log_name.startswith("projects/"):
        return log_name.split("/", 2)[1]
    return None


def _ns(t: datetime) -> int:
    ns = parse_rfc3339_ns(t.astimezone(UTC).isoformat() if t.tzinfo else t.isoformat())
    assert ns is not None
    return ns


def _stored(obj: Any, seq: int, received_ns: int | None = None) -> StoredEntry:
    """Validate and complete one JSON-form entry, as the API does on write."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"an entry is a JSON object, not {type(obj).__name__}")
    entry = dict(obj)
    log_name = entry.get("logName")
    if not isinstance(log_name, str) or not log_name:
        raise ValueError("an entry needs a logName")
    if received_ns is not None:
        entry["receiveTimestamp"] = format_rfc3339_ns(received_ns)
    recv = entry.get("receiveTimestamp")
    if not isinstance(recv, str):
        recv = entry["receiveTimestamp"] = format_rfc3339_ns(time.time_ns())
    if not isinstance(entry.get("timestamp"), str):
        entry["timestamp"] = recv
    ts = parse_rfc3339_ns(entry["timestamp"])
    if ts is None or parse_rfc3339_ns(recv) is None:
        raise ValueError(f"bad timestamp in entry {entry.get('insertId')!r}")
    if not isinstance(entry.get("insertId"), str) or not entry["insertId"]:
        entry["insertId"] = f"emu{seq:012d}"
    pb = to_log_entry_pb(entry)
    return StoredEntry((ts, entry["insertId"], log_name, seq), entry, _project(log_name), pb,
                       b"\x0a" + _varint(len(pb)) + pb)


def read_export(path: Path | str) -> list[Any]:
    """The entries of a `gcloud logging read --format=json` export, JSON lines, or either .gz."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig").strip()
    if text.startswith("["):
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class EntryStore:
    """Log entries in (timestamp, insertId) order, queried as ListLogEntries queries them."""

    def __init__(self, entries: Iterable[Mapping[str, Any]] = (), *,
                 max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES, central: str | None = None,
                 max_scan: int | None = None) -> None:
        self.max_page_bytes = max_page_bytes
        self.max_scan = max_scan
        self.central = central
        self._lock = threading.Lock()
        self._seq = itertools.count()
        # (entries, their keys, epoch): replaced whole, so a reader's snapshot is consistent
        self._state: tuple[list[StoredEntry], list[Key], str] = ([], [], os.urandom(6).hex())
        self.add(entries)

    def __len__(self) -> int:
        return len(self._state[0])

    def entries(self) -> list[dict[str, Any]]:
        """Every entry's JSON form, oldest first (copies)."""
        return [dict(item.json) for item in self._state[0]]

    def load(self, path: Path | str) -> int:
        """Add the entries of an export file, keeping their receiveTimestamp; returns the count."""
        return self.add(read_export(path))

    def add(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Add entries as they are (a missing receiveTimestamp becomes now).

        Raises ValueError naming the first entry that is not a LogEntry; none is added then.
        """
        return self._insert(entries, None)

    def append(self, entries: Iterable[Mapping[str, Any]], *,
               received_at: datetime | None = None) -> int:
        """Add entries received at `received_at` (default now), whatever their timestamp.

        This is how tests make LATE entries: an old timestamp with a new receiveTimestamp, as
        Cloud Logging shows an entry that was delayed on its way in.
        """
        return self._insert(entries, time.time_ns() if received_at is None else _ns(received_at))

    def clear(self) -> None:
        with self._lock:
            self._state = ([], [], os.urandom(6).hex())

    def shift_to(self, now: datetime) -> int:
        """Move every timestamp and receiveTimestamp by one delta so the newest entry is at `now`.

        Returns the delta in nanoseconds. Page tokens issued before it become invalid.
        """
        target = _ns(now)
        with self._lock:
            if not self._state[0]:
                return 0
            delta = target - self._state[0][-1].key[0]
            shifted = []
            for item in self._state[0]:
                entry = dict(item.json)
                for field in ("timestamp", "receiveTimestamp"):
                    ns = parse_rfc3339_ns(entry[field])
                    assert ns is not None
                    entry[field] = format_rfc3339_ns(ns + delta)
                pb = to_log_entry_pb(entry)
                key = (item.key[0] + delta, *item.key[1:])
                shifted.append(replace(item, key=key, json=entry, pb=pb,
                                       framed=b"\x0a" + _varint(len(pb)) + pb))
            self._state = (shifted, [s.key for s in shifted], os.urandom(6).hex())
        return delta

    def _insert(self, entries: Iterable[Mapping[str, Any]], received_ns: int | None) -> int:
        batch = []
        for n, entry in enumerate(entries, 1):  # converted outside the lock
            try:
                batch.append(_stored(entry, next(self._seq), received_ns))
            except ValueError as exc:
                raise ValueError(f"entry {n}: {exc}") from None
        if not batch:
            return 0
        with self._lock:
            old, _, epoch = self._state
            items = sorted([*old, *batch], key=lambda s: s.key)
            self._state = (items, [s.key for s in items], epoch)
        return len(batch)

    # --- reading ------------------------------------------------------------------------------

    def query(self, resource_names: Sequence[str], filter: str = "", order_by: str = "",
              page_size: int = 0, page_token: str = "") -> tuple[list[StoredEntry], str]:
        """One page of matching entries and the token of the next page ("" on the last page).

        Raises InvalidArgument (QueryError for the filter) for what the API rejects.
        """
        projects = _projects(resource_names)
        desc = _descending(order_by)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, "
                                  f"not {page_size}")
        size = page_size or DEFAULT_PAGE_SIZE
        query = compile_filter(filter)
        request_id = hashlib.sha256(
            json.dumps([sorted(resource_names), filter, desc]).encode()).hexdigest()[:16]
        items, keys, epoch = self._state  # one consistent snapshot
        lo = 0 if query.min_ns is None else bisect.bisect_left(keys, (query.min_ns,))
        hi = len(keys) if query.max_ns is None else bisect.bisect_left(keys, (query.max_ns + 1,))
        page = 0
        if page_token:
            cursor, page = _decode_token(page_token, request_id, epoch)
            if desc:
                hi = min(hi, bisect.bisect_right(keys, cursor))
            else:
                lo = max(lo, bisect.bisect_left(keys, cursor))
        found: list[StoredEntry] = []
        size_bytes = 0
        matches = query.matches
        scan = self.max_scan
        for n, i in enumerate(range(hi - 1, lo - 1, -1) if desc else range(lo, hi)):
            item = items[i]
            if scan is not None and n >= scan:  # out of time: what it found, and go on
                token = {"v": 1, "r": request_id, "e": epoch, "k": list(item.key), "n": page + 1}
                return found, base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            if (item.project not in projects and self.central not in projects) \
                    or not matches(item.json):
                continue
            if len(found) == size or (found and size_bytes + len(item.framed)
                                      > self.max_page_bytes):
                token = {"v": 1, "r": request_id, "e": epoch, "k": list(item.key), "n": page + 1}
                return found, base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            found.append(item)
            size_bytes += len(item.framed)
        return found, ""


def page_number(page_token: str) -> int:
    """Which page of a read a token asks for (0: the first); 0 for a token it cannot read."""
    if not page_token:
        return 0
    try:
        n = json.loads(base64.urlsafe_b64decode(page_token.encode()))["n"]
    except (ValueError, KeyError, TypeError):
        return 0
    return n if isinstance(n, int) else 0


def _decode_token(page_token: str, request_id: str, epoch: str) -> tuple[Key, int]:
    try:
        token = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        ts, insert_id, log_name, seq = token["k"]
        key: Key = (int(ts), str(insert_id), str(log_name), int(seq))
        page, req, ep = int(token["n"]), token["r"], token["e"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("invalid page_token") from None
    if req != request_id:
        raise InvalidArgument("page_token does not belong to this request: the filter, "
                              "order_by and resource_names must not change between pages")
    if ep != epoch:
        raise InvalidArgument("page_token has expired (the emulator's entries were replaced)")
    return key, page


def _projects(resource_names: Sequence[str]) -> frozenset[str]:
    if not resource_names:
        raise InvalidArgument("resource_names is required, e.g. projects/my-project")
    if len(resource_names) > MAX_RESOURCE_NAMES:
        raise InvalidArgument(f"at most {MAX_RESOURCE_NAMES} resource_names are allowed")
    projects = set()
    for name in resource_names:
        parts = name.split("/")
        if len(parts) < 2 or parts[0] != "projects" or not parts[1] or (
                len(parts) > 2 and (len(parts) != 8 or parts[2::2] != ["locations", "buckets",
                                                                       "views"])):
            raise InvalidArgument(f"unsupported resource name {name!r}: the emulator serves "
                                  "projects/PROJECT_ID (and log views under it)")
        projects.add(parts[1])
    return frozenset(projects)


def _descending(order_by: str) -> bool:
    normal = " ".join(order_by.lower().split())
    if normal in ("", "timestamp", "timestamp asc"):
        return False
    if normal == "timestamp desc":
        return True
    raise InvalidArgument(f'order_by must be "timestamp asc" or "timestamp desc", '
                          f"not {order_by!r}")
