"""A TCP proxy in front of PostgreSQL that a test controls: it loses connections on demand.

    with PgProxy() as proxy:                      # 127.0.0.1:<free port> -> 127.0.0.1:5432
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        proxy.drop_all()                          # every live connection closed, now
        proxy.refuse(2.0)                         # new connections closed at once, for 2 s
        proxy.drop_on(b"COMMIT")                  # the client's next COMMIT never arrives
        proxy.drop_on(b"COMMIT", deliver=True)    # it arrives and runs; its answer is lost
        proxy.drop_on(b"COMMIT", after=b"INSERT INTO meta")  # the COMMIT of such a transaction
        proxy.drop_on(b"COMMIT", hold=True)       # never arrives, and the server is not told:
                                                  # its session stays "idle in transaction"

A rule looks at what the client sends (PostgreSQL messages carry their SQL as text), so a test
can cut a connection at an exact point of a transaction. Loopback only; threads; no
dependencies.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class _Rule:
    pattern: bytes
    deliver: bool  # forward the matching data first (it runs), then lose the answer
    hold: bool  # cut only the client's side: the server's session lives on, as if partitioned
    times: int
    after: bytes | None  # armed on a connection once it has sent this


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: PgProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.mute = False  # the server's answers are no longer passed on
        self.sent = bytearray()  # what the client sent since its last COMMIT (for `after`)
        self.closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.upstream, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.upstream, self.client, False),
                         daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    self.sent += data
                    rule = self.proxy._match(data, self.sent)
                    if b"COMMIT" in data:
                        self.sent.clear()
                    if rule is not None:
                        if rule.hold:
                            self._hold()
                            return
                        if rule.deliver:
                            self.mute = True
                            dst.sendall(data)
                            time.sleep(self.proxy.deliver_grace)  # let the server act on it
                        break
                elif self.mute:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def _hold(self) -> None:
        """Close the client's side only; the upstream stays open until the server ends it or
        the proxy closes (`drop_all`)."""
        self.mute = True
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        self.client.close()
        with self.proxy._lock:
            self.proxy.held += 1

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.proxy._forget(self)


class PgProxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self.deliver_grace = 0.3  # seconds a delivered, answer-lost message gets to run
        self.connections = 0  # accepted and passed on, in all
        self.dropped = 0  # live connections closed by drop_all() or a rule
        self.held = 0  # of those, cut by a `hold` rule: the server's side left open
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._rules: list[_Rule] = []
        self._refuse_until = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> PgProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what a test does ------------------------------------------------------------------

    def drop_all(self) -> int:
        """Close every live connection, both ways, now. Returns how many there were."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        with self._lock:
            self.dropped += len(links)
        return len(links)

    def refuse(self, seconds: float) -> None:
        """For `seconds`, close each new connection at once (a reset, as from a restarting
        server or a closed port); connections already open are left alone."""
        self._refuse_until = time.monotonic() + seconds

    def drop_on(self, pattern: bytes, *, deliver: bool = False, hold: bool = False,
                times: int = 1, after: bytes | None = None) -> None:
        """Cut the connection the next `times` the client sends data containing `pattern`
        (in a transaction that has sent `after`, if given): before it reaches the server, or
        (`deliver`) after the server got it, losing the answer. With `hold`, the data never
        reaches the server and only the client's side is cut: the server's session stays
        open, in its transaction, until the server ends it or `drop_all` closes it."""
        assert not (deliver and hold), "a held message is never delivered"
        with self._lock:
            self._rules.append(_Rule(pattern, deliver, hold, times, after))

    def clear_rules(self) -> int:
        """Forget the rules that have not fired. Returns how many there were."""
        with self._lock:
            pending = len(self._rules)
            self._rules.clear()
        return pending

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_all()

    # --- internals -----------------------------------------------------------------------

    def _match(self, data: bytes, sent: bytes) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.pattern in data and (rule.after is None or rule.after in sent):
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    self.dropped += 1
                    return rule
        return None

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                # SO_LINGER 0: close with a reset, as a refused or restarting server would.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):  # no Nagle delays on small protocol messages
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self.connections += 1
            link.start()
