"""Emulator: ListLogEntries over gRPC and REST on 127.0.0.1, with faults injected on cue.

Rules:
- Plaintext and loopback only (127.0.0.1, port 0 by default): it is a test and demo tool.
- gRPC serves `google.logging.v2.LoggingServiceV2/ListLogEntries` through a generic handler (the
  GAPIC package ships no servicer base class); requests are parsed with the real protobuf class
  and responses are the store's cached entry bytes concatenated, so the real generated client
  (`LoggingServiceV2Client` over `grpc.insecure_channel`) reads it as it reads Cloud Logging.
- REST serves `POST /v2/entries:list` with the JSON body of `entries.list` (camelCase, as the
  `google-cloud-logging` HTTP client and gcloud send it) and answers `{"entries": [...],
  "nextPageToken": ...}` with the entries in their stored JSON form; `nextPageToken` is omitted on
  the last page and `entries` when there are none (proto3 JSON omits empty fields). Errors are
  Google JSON errors, `{"error": {"code", "message", "status"}}`, with the matching HTTP status.
- Faults apply to both transports, in the order they were armed: `fail_next(code, times,
  message, after_pages=N)` fails the next `times` requests asking for page N or later of a read
  (0: any request; "errors can arrive mid-iteration"), `delay_next(seconds, times)` stalls the
  next requests (past the client's deadline, that is DEADLINE_EXCEEDED on the client side).
- Every ListLogEntries call is counted and logged (`requests`, `request_log`), failed ones too;
  `reset_counters()` starts the count again.
- It serves any store with EntryStore's `query` (`LogStore`): an EntryStore by default, or a
  `SyntheticStore` that makes its traffic on the fly (synthetic.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast, overload
from urllib.parse import urlsplit

import grpc
from google.cloud.logging_v2.types import ListLogEntriesRequest

from monitor.emulator.query import InvalidArgument
from monitor.emulator.store import EntryStore, StoredEntry, encode_response, page_number

SERVICE = "google.logging.v2.LoggingServiceV2"
HOST = "127.0.0.1"
_REQUEST_PB: Any = ListLogEntriesRequest.pb()
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass
class RequestRecord:
    """One ListLogEntries call as the emulator saw it."""

    transport: str  # "grpc" | "rest"
    resource_names: tuple[str, ...]
    filter: str
    order_by: str
    page_size: int
    page_token: str
    page: int  # which page of its read (0: the first)
    status: str = "OK"  # a grpc.StatusCode name
    entries: int = 0  # entries returned
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class _Fault:
    times: int
    after_pages: int = 0
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    seconds: float = 0.0


class _Failure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _take(faults: list[_Fault], page: int) -> _Fault | None:
    for fault in faults:
        if page >= fault.after_pages:
            fault.times -= 1
            if fault.times <= 0:
                faults.remove(fault)
            return fault
    return None


def _identity(data: bytes) -> bytes:
    return data


class LogStore(Protocol):
    """What the servers need of a store: one page of a ListLogEntries read (EntryStore.query)."""

    def query(self, resource_names: Sequence[str], filter: str = "", order_by: str = "",
              page_size: int = 0, page_token: str = "") -> tuple[list[StoredEntry], str]: ...


S = TypeVar("S", bound=LogStore)


class Emulator(Generic[S]):
    """A local Cloud Logging read API; a context manager that starts and stops both servers."""

    @overload
    def __init__(self: Emulator[EntryStore], store: None = None, *, grpc_port: int = 0,
                 rest: bool = True, rest_port: int = 0, max_workers: int = 8) -> None: ...

    @overload
    def __init__(self, store: S, *, grpc_port: int = 0, rest: bool = True, rest_port: int = 0,
                 max_workers: int = 8) -> None: ...

    def __init__(self, store: Any = None, *, grpc_port: int = 0, rest: bool = True,
                 rest_port: int = 0, max_workers: int = 8) -> None:
        # the overloads say which: an EntryStore when none is given
        self.store: S = cast(S, store if store is not None else EntryStore())
        self._grpc_port = grpc_port
        self._rest_port = rest_port if rest else None
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._delays: list[_Fault] = []
        self._log: list[RequestRecord] = []
        self._grpc: Any = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_endpoint = ""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Emulator[S]:
        self._stopping.clear()
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "ListLogEntries": grpc.unary_unary_rpc_method_handler(
                self._grpc_list, request_deserializer=_REQUEST_PB.FromString,
                response_serializer=_identity),
        })
        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=self._max_workers,
                                                    thread_name_prefix="emulator-grpc"))
        self._grpc.add_generic_rpc_handlers((handler,))
        port = self._grpc.add_insecure_port(f"{HOST}:{self._grpc_port}")
        self._grpc.start()
        self.grpc_endpoint = f"{HOST}:{port}"
        if self._rest_port is not None:
            self._http = ThreadingHTTPServer((HOST, self._rest_port), _RestHandler)
            self._http.daemon_threads = True
            self._http.emulator = self  # type: ignore[attr-defined]
            self._http_thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                                 name="emulator-rest", daemon=True)
            self._http_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=0.5).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None

    def __enter__(self) -> Emulator[S]:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def rest_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, the value for `client_options={"api_endpoint": ...}`."""
        if self._http is None:
            raise RuntimeError("the REST server is not running (rest=False, or stopped)")
        return f"http://{HOST}:{self._http.server_address[1]}"

    # --- faults and counters ------------------------------------------------------------------

    def fail_next(self, code: grpc.StatusCode, times: int = 1, message: str | None = None, *,
                  after_pages: int = 0) -> None:
        """Fail the next `times` requests for page `after_pages` or later with `code`."""
        with self._lock:
            self._faults.append(_Fault(times, after_pages, code,
                                       message or f"injected {code.name} (emulator)"))

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Stall the next `times` requests by `seconds` before they are answered."""
        with self._lock:
            self._delays.append(_Fault(times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    @property
    def requests(self) -> int:
        """ListLogEntries calls served since start (or `reset_counters`), failed ones included."""
        with self._lock:
            return len(self._log)

    @property
    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def reset_counters(self) -> None:
        with self._lock:
            self._log.clear()

    # --- serving ------------------------------------------------------------------------------

    def serve(self, transport: str, resource_names: list[str], filter: str, order_by: str,
              page_size: int, page_token: str) -> tuple[list[StoredEntry], str]:
        """One ListLogEntries call for either transport; raises _Failure with a status code."""
        page = page_number(page_token)
        record = RequestRecord(transport, tuple(resource_names), filter, order_by, page_size,
                               page_token, page)
        with self._lock:
            self._log.append(record)
            fault = _take(self._faults, page)
            delay = _take(self._delays, page)
        if delay is not None:
            self._stopping.wait(delay.seconds)
        try:
            if fault is not None:
                raise _Failure(fault.code, fault.message)
            try:
                entries, token = self.store.query(resource_names, filter, order_by, page_size,
                                                  page_token)
            except InvalidArgument as exc:
                raise _Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            except Exception as exc:  # a bug here must reach the client as INTERNAL, not hang it
                raise _Failure(grpc.StatusCode.INTERNAL, f"emulator error: {exc!r}") from exc
        except _Failure as failure:
            record.status = failure.code.name
            raise
        record.entries = len(entries)
        return entries, token

    def _grpc_list(self, request: Any, context: Any) -> bytes:
        try:
            entries, token = self.serve("grpc", list(request.resource_names), request.filter,
                                        request.order_by, request.page_size, request.page_token)
        except _Failure as failure:
            context.abort(failure.code, failure.message)
            raise  # abort raises; this keeps the type checker honest
        return encode_response(entries, token)


def _field(body: dict[str, Any], name: str, default: Any) -> Any:
    """A request field by its JSON name (camelCase) or its proto name (snake_case)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return body.get(name, body.get(snake, default))


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "monitor-emulator"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/v2/entries:list":
            self._error(grpc.StatusCode.NOT_FOUND, f"no such method: POST {self.path}")
            return
        emulator: Emulator[Any] = self.server.emulator  # type: ignore[attr-defined]
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the body is not a JSON object")
            names = _field(req, "resourceNames", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("resourceNames must be a list of strings")
            args = (names, str(_field(req, "filter", "")), str(_field(req, "orderBy", "")),
                    int(_field(req, "pageSize", 0)), str(_field(req, "pageToken", "")))
        except (ValueError, TypeError) as exc:
            self._error(grpc.StatusCode.INVALID_ARGUMENT, f"invalid JSON payload: {exc}")
            return
        try:
            entries, token = emulator.serve("rest", *args)
        except _Failure as failure:
            self._error(failure.code, failure.message)
            return
        out: dict[str, Any] = {}
        if entries:
            out["entries"] = [e.json for e in entries]
        if token:
            out["nextPageToken"] = token
        self._send(200, out)

    def do_GET(self) -> None:
        self._error(grpc.StatusCode.NOT_FOUND, f"no such method: GET {self.path}")

    def _error(self, code: grpc.StatusCode, message: str) -> None:
        status = HTTP_STATUS.get(code, 500)
        self._send(status, {"error": {"code": status, "message": message, "status": code.name}})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
