"""The HTTP server of `monitor run`: /healthz, /readyz, /metrics and the status pages.

Rules: slow or idle clients cannot starve Cloud Run's probes. A fixed pool of handler threads
takes connections from a bounded queue (beyond it a quick 503); a connection whose request head
has not arrived within READ_TIMEOUT of being accepted is closed; HTTP/1.0, one request per
connection, so nothing idles on keep-alive. Daemon threads on a bounded `queue.Queue`, not a
ThreadPoolExecutor: its threads are joined at exit (a worker stuck on a slow client could push
the exit past Cloud Run's 10-second grace) and its queue is unbounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # seconds a client has, from its connection, to send its request head
HTTP_WORKERS = 8  # threads answering HTTP requests
HTTP_QUEUE = 16  # accepted connections waiting for a worker; beyond, a 503 at once


class AddressError(ValueError):
    """$PORT, or the address, cannot be served on: a usage error (exit code 2)."""


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")


class HTTPServer(socketserver.TCPServer):
    """A TCP server with `workers` daemon threads taking accepted connections from a queue of
    `waiting`; a connection that finds the queue full gets a 503 at once.

    Each connection must deliver its request head within `timeout` of being accepted (time spent
    waiting in the queue included): serve_forever's `service_actions`, every half second, shuts
    late ones down, so a slow trickle cannot hold a worker longer than that. The handler's
    socket timeout (the same `timeout`) bounds every read and write after that.
    """

    allow_reuse_address = True  # a restart binds at once; a port still listened on is refused
    request_queue_size = 64  # the kernel's backlog in front of accept(), which never blocks

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 timeout: float, workers: int, waiting: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.timeout_s = timeout
        self._queue: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(max(waiting, 1))
        self._deadlines: dict[socket.socket, float] = {}  # request head due by (monotonic)
        self._late: set[socket.socket] = set()  # shut down: their head came too late
        self._lock = threading.Lock()
        self._busy_logged = -60.0
        super().__init__(address, handler)  # binds; closes the socket if that fails
        self._workers = [threading.Thread(target=self._work, name=f"http-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.timeout_s
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            with self._lock:
                self._deadlines.pop(request, None)
            now = time.monotonic()
            if now - self._busy_logged >= 60:
                self._busy_logged = now
                log.warning("http: all %d workers busy and %d connection(s) waiting: "
                            "answering 503", len(self._workers), self._queue.maxsize)
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY)
            self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                with self._lock:
                    self._deadlines.pop(request, None)
                    self._late.discard(request)
                self.shutdown_request(request)

    def head_read(self, request: socket.socket) -> bool:
        """The request head is in: no deadline for the rest; False if it came too late (the
        connection was shut down and what was read of it is not to be answered)."""
        with self._lock:
            self._deadlines.pop(request, None)
            return request not in self._late

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._lock:  # held while shutting down: the connection cannot be closed meanwhile
            for request in [r for r, due in self._deadlines.items() if due <= now]:
                del self._deadlines[request]
                self._late.add(request)
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)  # its worker reads EOF and closes it

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("http: %s went away", client_address)
        else:
            log.exception("http: error serving %s", client_address)

    def server_close(self) -> None:
        """Stop listening, end the connections still waiting or sending their request head
        (a request being answered finishes within its socket timeout), stop the workers."""
        super().server_close()
        with self._lock:
            for request in self._deadlines:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
            self._deadlines.clear()
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    self.shutdown_request(item[0])
        for _ in getattr(self, "_workers", ()):  # absent if binding failed
            with contextlib.suppress(queue.Full):  # workers are daemons: none can hold the exit
                self._queue.put_nowait(None)


def listen_address(env: dict[str, str] | None = None) -> tuple[str, int]:
    """$PORT (Cloud Run sets it), default 8080; all interfaces only on Cloud Run ($K_SERVICE),
    else loopback, unless MONITOR_HTTP_HOST says otherwise."""
    env = dict(os.environ) if env is None else env
    host = env.get("MONITOR_HTTP_HOST") or ("0.0.0.0" if env.get("K_SERVICE") else "127.0.0.1")
    raw = env.get("PORT") or "8080"
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise AddressError(f"PORT: {raw} is not a port number (1-65535)")
    return host, port
