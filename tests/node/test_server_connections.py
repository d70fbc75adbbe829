"""The HTTP server every Steward process shares (node agent, controller, notifier), against
clients that hold connections: hundreds of idle or half-open connections cost a bounded
number of threads, time out, never stall a scrape, and never hold up a stop."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from agent.config import load_config
from agent.exporter.server import BackgroundServer
from agent.node.app import NodeAgent, build_node_agent
from agent.notify.app import Notifier
from agent.sim.node import simulated_sources
from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import notifier_config
from tests.support.net import wait_until

CONNECTIONS = 400


@pytest.fixture
def agent() -> Iterator[NodeAgent]:
    config = load_config(None, environ={"STEWARD_NODE__GPU_BACKEND": "sim",
                                        "STEWARD_NODE__LISTEN": "127.0.0.1:0",
                                        "STEWARD_NODE__COLLECT_INTERVAL_SECONDS": "0.2"})
    node_agent = build_node_agent(config, sources=simulated_sources(config))
    node_agent.start()
    yield node_agent
    node_agent.stop()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def scrape(port: int, path: str = "/metrics") -> tuple[int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def connect(port: int, opened: list[socket.socket], *, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    opened.append(sock)
    if send:
        sock.sendall(send)
    return sock


def closed_by_server(sock: socket.socket, *, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass  # a 503 or an error reply may come first; then end-of-file
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return True


HALF_OPEN = b"GET /metrics HTTP/1.1\r\nHost: steward\r\n"  # headers never finished


def test_hundreds_of_idle_connections_cost_bounded_threads_and_scrapes_stay_fast(
        agent: NodeAgent, sockets: list[socket.socket]) -> None:
    port = agent.port
    wait_until(lambda: scrape(port, "/readyz")[0] == 200, timeout=10, what="ready")
    baseline = threading.active_count()
    started = time.monotonic()
    for n in range(CONNECTIONS):
        connect(port, sockets, send=HALF_OPEN if n % 2 else b"")
    # Before, the backlog of 5 dropped SYNs under this burst: 400 connects took 63 s.
    assert time.monotonic() - started < 3
    server = agent.server
    wait_until(lambda: server.connection_count <= server.max_connections, timeout=5,
               what="the server to settle at its connection cap")

    timings = []
    for _ in range(20):
        status, seconds = scrape(port)
        assert status == 200
        timings.append(seconds)
    assert max(timings) < 1.0, timings
    # One thread per connection served, capped: before, 400 connections held 407 threads.
    assert threading.active_count() - baseline <= server.max_connections + 4
    # The oldest idle connections made room: their clients saw the connection close.
    assert sum(closed_by_server(sock, within=0.01) for sock in sockets[:50]) == 50


def test_idle_and_half_open_connections_time_out(agent: NodeAgent,
                                                 sockets: list[socket.socket]) -> None:
    agent.server.idle_timeout = 0.5
    idle = connect(agent.port, sockets)
    half_open = connect(agent.port, sockets, send=HALF_OPEN)
    kept_alive = connect(agent.port, sockets,
                         send=b"GET /healthz HTTP/1.1\r\nHost: steward\r\n\r\n")
    assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    for sock in (idle, half_open, kept_alive):
        assert closed_by_server(sock, within=5)
    assert time.monotonic() - started < 3
    wait_until(lambda: agent.server.connection_count == 0, timeout=5, what="no connections")


def test_listen_backlog_takes_a_burst_of_connects_before_any_accept(
        sockets: list[socket.socket]) -> None:
    """The backlog is set before listen(): 400 connects complete while nothing accepts."""
    config = load_config(None, environ={"STEWARD_NODE__GPU_BACKEND": "sim",
                                        "STEWARD_NODE__LISTEN": "127.0.0.1:0"})
    # Bound and listening, never started.
    node_agent = build_node_agent(config, sources=simulated_sources(config))
    try:
        started = time.monotonic()
        for _ in range(CONNECTIONS):
            sock = socket.socket()
            sock.settimeout(0.5)  # a dropped SYN is retried after 1 s: this would time out
            sockets.append(sock)
            sock.connect(("127.0.0.1", node_agent.port))
        assert time.monotonic() - started < 2
    finally:
        node_agent.server.server_close()
        node_agent.sources.gpus.close()


def test_stop_is_prompt_with_kept_alive_connections(agent: NodeAgent,
                                                    sockets: list[socket.socket]) -> None:
    for _ in range(50):
        sock = connect(agent.port, sockets,
                       send=b"GET /healthz HTTP/1.1\r\nHost: steward\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # now waiting for the next one
    started = time.monotonic()
    agent.server.stop()
    assert time.monotonic() - started < 2
    assert all(closed_by_server(sock, within=2) for sock in sockets)


# -- the same server under the notifier: slow bodies and a full house --------------------

@pytest.fixture
def notifier(tmp_path: Path) -> Iterator[Notifier]:
    from agent.notify.app import build_notifier

    with SlackStub(tokens=("xoxb-test",)) as stub:
        built = build_notifier(notifier_config(stub, tmp_path / "state.db"), environ={})
        built.start()
        yield built
        built.stop()


def test_a_request_that_never_finishes_its_body_is_cut(notifier: Notifier,
                                                       sockets: list[socket.socket]) -> None:
    server: BackgroundServer = notifier.server
    server.request_timeout = 0.5
    sock = connect(notifier.port, sockets, send=(
        b"POST /alertmanager HTTP/1.1\r\nHost: steward\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{\"version\": \"4\""))
    started = time.monotonic()
    assert closed_by_server(sock, within=5)
    assert time.monotonic() - started < 3


def test_when_every_slot_is_busy_a_new_connection_gets_503_at_once(
        notifier: Notifier, sockets: list[socket.socket]) -> None:
    server: BackgroundServer = notifier.server
    server.max_connections = 4
    for _ in range(4):  # four slow webhooks, each inside its request
        connect(notifier.port, sockets, send=(
            b"POST /alertmanager HTTP/1.1\r\nHost: steward\r\nContent-Length: 1000\r\n\r\n{"))
    wait_until(lambda: server.connection_count == 4, timeout=5, what="four busy connections")
    status, seconds = scrape(notifier.port)
    assert status == 503 and seconds < 1
    for sock in sockets:
        sock.close()
    wait_until(lambda: scrape(notifier.port)[0] == 200, timeout=5, what="slots free again")


def _wakeups(thread: threading.Thread) -> int:
    """How many times the OS has run ``thread`` (its timeslices, /proc schedstat)."""
    path = Path(f"/proc/self/task/{thread.native_id}/schedstat")
    return int(path.read_text(encoding="ascii").split()[2])


def test_an_idle_server_sleeps_until_a_connection_or_stop() -> None:
    """No connection, no deadline: the serving thread blocks instead of waking every 0.5 s
    (socketserver's poll: 120 wake-ups a minute, each a cold run of Python code), yet a new
    connection is served at once and stop() returns at once."""
    server = BackgroundServer(("127.0.0.1", 0), _Ok)
    server.start()
    try:
        assert server._thread is not None
        status, _ = scrape(server.port, "/")
        assert status == 200
        wait_until(lambda: server.connection_count == 0, timeout=5, what="connection gone")
        before = _wakeups(server._thread)
        time.sleep(2.0)
        assert _wakeups(server._thread) - before <= 1
        status, seconds = scrape(server.port, "/")
        assert status == 200 and seconds < 0.5
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 0.5
    assert server._thread is not None and not server._thread.is_alive()


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass
