"""`monitor run`'s HTTP server under slow, idle and many clients, HEAD, and $PORT errors.

A real server on 127.0.0.1, port 0, and real sockets. Bounds are generous and waits poll: what
is checked is that a connection IS closed and that /healthz DOES answer, not how fast.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import parse_config
from monitor.http_server import AddressError, HTTPServer, listen_address
from monitor.notify.console import ConsoleNotifier
from monitor.service import Service
from monitor.store import open_store

TIMEOUT = 1.5  # the server's read timeout in these tests (READ_TIMEOUT is 10 s)
BOUND = 15.0  # how long anything may take before the test calls it hung


def config_yaml(tmp_path) -> str:
    (tmp_path / "x.json").write_text("[]")
    return ("services: [spector]\nsource: {type: file, path: x.json}\n"
            "signals: [{name: s, match: x}]\n"
            f"state: {{url: 'sqlite:///{tmp_path}/s.db'}}\n")


@pytest.fixture
def start(tmp_path) -> Iterator[Callable[..., int]]:
    """start(**limits) -> the port of a running server for a fresh Service."""
    config = parse_config({"services": ["spector"],
                           "source": {"type": "file", "path": str(tmp_path / "x.json")},
                           "signals": [{"name": "s", "match": "x"}],
                           "state": {"url": f"sqlite:///{tmp_path}/s.db"}}, env={})
    (tmp_path / "x.json").write_text("[]")
    store = open_store(config.state.url)
    servers: list[HTTPServer] = []

    def run(**limits: float) -> int:
        service = Service(config, store, ConsoleNotifier(io.StringIO()))
        servers.append(service.listen("127.0.0.1", 0, timeout=TIMEOUT, **limits))
        return int(servers[-1].server_address[1])

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()
    store.close()


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    if data:
        sock.sendall(data)
    return sock


def exchange(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request (asking for keep-alive), read until the server closes the connection."""
    with connect(port, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n"
                       "\r\n".encode()) as sock:
        data = b""
        while chunk := sock.recv(65536):  # EOF: the connection does not idle after a response
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def closed_by_server(sock: socket.socket, within: float = BOUND) -> bool:
    """True once the server has closed `sock` (EOF or reset); False if it still holds it."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass  # a response (e.g. 503) before the close is fine
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        sock.setblocking(True)


def wait_for(check: Callable[[], bool], within: float = BOUND) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_slowloris_is_disconnected_while_healthz_answers(start):
    port = start()
    stalled = connect(port, b"GET /hea")
    trickle = connect(port, b"GET /healthz HTTP/1.1\r\n")
    status, _, body = exchange(port, "GET", "/healthz")
    assert status == 200 and body.startswith(b"starting")
    assert still_open(stalled)  # answered while the slow client held its connection

    cut: list[bool] = []

    def drip() -> None:  # one header line every 0.2 s: each read is quick, the head never ends
        with trickle:
            try:
                for n in range(int(BOUND / 0.2)):
                    trickle.sendall(f"X-{n}: y\r\n".encode())
                    time.sleep(0.2)
            except OSError:
                cut.append(True)

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    started = time.monotonic()
    assert closed_by_server(stalled)
    dripping.join(BOUND)
    assert cut, "a client trickling its headers was never disconnected"
    assert time.monotonic() - started < BOUND
    stalled.close()


def test_idle_connections_beyond_the_pool_do_not_hang_healthz(start):
    port = start(workers=2, waiting=2)
    idle = [connect(port) for _ in range(6)]  # 2 held by workers, 2 waiting, 2 refused
    assert wait_for(lambda: exchange(port, "GET", "/healthz")[0] == 200)
    assert all(closed_by_server(sock) for sock in idle)
    for sock in idle:
        sock.close()


def test_threads_stay_bounded_under_many_slow_connections(start):
    before = threading.active_count()
    port = start(workers=4, waiting=4)
    slow = [connect(port, b"GET /healthz HTTP/1.1\r\n") for _ in range(40)]
    assert threading.active_count() <= before + 4 + 1  # the workers and the accept loop
    refused = 0
    for sock in slow:
        sock.settimeout(BOUND)
        try:
            first = sock.recv(64)
        except ConnectionError:
            first = b""
        refused += first.startswith(b"HTTP/1.0 503")
        assert threading.active_count() <= before + 4 + 1
    assert refused >= 40 - 4 - 4  # beyond the workers and the queue: a 503 at once
    assert wait_for(lambda: exchange(port, "GET", "/healthz")[0] == 200)
    for sock in slow:
        sock.close()


def test_head_answers_like_get_without_a_body(start):
    port = start()
    for path in ["/healthz", "/", "/readyz", "/metrics", "/nowhere"]:
        status, headers, body = exchange(port, "GET", path)
        head_status, head_headers, head_body = exchange(port, "HEAD", path)
        assert (path, head_status, head_body) == (path, status, b"")
        assert head_headers["content-length"] == str(len(body)) == headers["content-length"]
        assert head_headers["content-type"] == headers["content-type"]


@pytest.mark.parametrize("value", ["eighty", "0", "-1", "70000", "8080.5"])
def test_a_bad_port_names_it(value):
    with pytest.raises(AddressError, match=rf"^PORT: {value} is not a port number \(1-65535\)$"):
        listen_address({"PORT": value})
    assert listen_address({"PORT": "65535"})[1] == 65535


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`monitor run` routes the root logger to its stdout; give the next tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_cli(tmp_path, port: str):
    (tmp_path / "config.yaml").write_text(config_yaml(tmp_path))
    return CliRunner().invoke(main, ["run", "--config", str(tmp_path / "config.yaml")],
                              env={"PORT": port, "MONITOR_HTTP_HOST": "127.0.0.1",
                                   "K_SERVICE": None})


def test_monitor_run_with_a_bad_port_exits_2(tmp_path, root_logging):
    result = run_cli(tmp_path, "70000")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "monitor: PORT: 70000 is not a port number (1-65535)"


def test_monitor_run_on_a_port_in_use_exits_2(tmp_path, root_logging):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, str(port))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"monitor: port {port} is already in use"
    assert "Traceback" not in result.output
