"""The HTTP endpoint of every Steward process: ``/metrics``, ``/healthz``, ``/readyz``.

Handlers only read what the collection loops already produced; nothing here touches a GPU
or an API server, so a slow source can never stall a scrape or a probe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.exporter.exposition import Exposition

log = logging.getLogger(__name__)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """A handler for clients that keep their connection (Prometheus, Alertmanager).

    Headers and body must then leave in one segment: written separately, Nagle's algorithm
    and the client's delayed ACK stall every response by ~40 ms. A buffered wfile (flushed
    once per request by the base class) plus TCP_NODELAY avoids that.

    Every read and write on the connection times out (``timeout``, else the server's
    ``idle_timeout``), and the server knows whether the connection waits for a request
    (it may then be closed to make room) or is being served.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 256 * 1024
    server: BackgroundServer

    def setup(self) -> None:
        super().setup()
        if self.timeout is None:
            self.connection.settimeout(self.server.idle_timeout)

    def handle_one_request(self) -> None:
        self.server.connection_waiting(self.request)
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.connection_busy(self.request)
        return parsed

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Per-request access logs would dominate the log at a 15 s scrape interval.
        pass


class _Handler(KeepAliveHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.exposition.body(
                accept=self.headers.get("Accept", ""),
                accept_encoding=self.headers.get("Accept-Encoding", ""))
            headers = {"Content-Encoding": "gzip"} if body.gzipped else {}
            self._send(200, body.data, body.content_type, headers)
        elif path == "/healthz":
            ok = self.server.healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"collection loop stopped\n",
                       "text/plain; charset=utf-8")
        elif path == "/readyz":
            ok = self.server.ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"first collection pending\n",
                       "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, b"steward node agent: /metrics /healthz /readyz\n",
                       "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET


@dataclass
class _Connection:
    busy: bool
    since: float
    closing: bool = False


_REJECT = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
           b"Content-Length: 0\r\n\r\n")


class BackgroundServer(ThreadingHTTPServer):
    """A threaded HTTP server serving from a background thread: start(), stop(), port.

    Bounded against clients that hold connections: at most ``max_connections`` are served
    at once (one thread each). A connection that waits for a request longer than
    ``idle_timeout`` (an idle keep-alive, or a client that stopped mid-headers) is closed,
    and so is one whose request takes longer than ``request_timeout``. When every slot is
    taken, a new connection takes the slot of the one that has waited longest for a
    request; if all are being served, it gets a 503 at once. So hundreds of idle or
    half-open connections cost a bounded number of threads and never stall a scrape.
    """

    daemon_threads = True
    # server_close() must not wait for handler threads: stop() closes their connections.
    block_on_close = False
    # The listen backlog, read by server_activate() before listen(): socketserver's default
    # of 5 stalled connects (SYNs dropped, retried after a second) under a burst.
    request_queue_size = 1024
    max_connections = 64
    idle_timeout = 30.0
    request_timeout = 30.0

    def __init__(self, address: tuple[str, int],
                 handler: type[BaseHTTPRequestHandler], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # stop() writes here to wake the serving loop: it blocks with no timeout while no
        # connection has a deadline, instead of socketserver's wake-up every 0.5 s (120 a
        # minute, a fifth of an idle node agent's CPU). Made before the socket: a failed
        # bind calls server_close().
        self._wake_r, self._wake_w = os.pipe()
        super().__init__(address, handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def connection_count(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(self._until_next_deadline()):
                    if key.fileobj is self and not self._stopping.is_set():
                        self._accept_one()
                self.service_actions()

    def _accept_one(self) -> None:
        # What socketserver's serve_forever does with a ready listening socket.
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def _until_next_deadline(self) -> float | None:
        """Seconds until a connection may pass its deadline; None (block) with none open.

        Handler threads only ever move a deadline later (a request started or finished
        resets ``since``), so waking at the earliest with the shorter limit is never late."""
        limit = min(self.idle_timeout, self.request_timeout)
        with self._connections_lock:
            since = [c.since for c in self._connections.values() if not c.closing]
        if not since:
            return None
        return max(0.0, min(since) + limit - self._clock()) + 0.01

    def shutdown(self) -> None:
        """Stop the serving loop and wait for it (socketserver's would wait forever: the loop
        is not its serve_forever)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            for sock in self._connections:
                _close_for_reading(sock)
        if self._thread is not None:
            self._thread.join(5)

    # -- the connection cap -------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        with self._connections_lock:
            if self._open_count() >= self.max_connections and not self._make_room():
                _reject(sock)
                return
            self._connections[sock] = _Connection(busy=False, since=self._clock())
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def connection_waiting(self, sock: socket.socket) -> None:
        self._mark(sock, busy=False)

    def connection_busy(self, sock: socket.socket) -> None:
        self._mark(sock, busy=True)

    def _mark(self, sock: socket.socket, *, busy: bool) -> None:
        with self._connections_lock:
            connection = self._connections.get(sock)
            if connection is not None and not connection.closing:
                connection.busy, connection.since = busy, self._clock()

    def _open_count(self) -> int:
        return sum(1 for c in self._connections.values() if not c.closing)

    def _make_room(self) -> bool:
        waiting = [(c.since, sock) for sock, c in self._connections.items()
                   if not c.busy and not c.closing]
        if not waiting:
            return False
        _, oldest = min(waiting, key=lambda item: item[0])
        self._close(oldest)
        return True

    def _close(self, sock: socket.socket) -> None:
        self._connections[sock].closing = True
        _close_for_reading(sock)

    def service_actions(self) -> None:
        # Called by the serving loop on every wake: the deadlines of every connection.
        now = self._clock()
        with self._connections_lock:
            for sock, connection in list(self._connections.items()):
                limit = self.request_timeout if connection.busy else self.idle_timeout
                if not connection.closing and now - connection.since > limit:
                    self._close(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            # A client that went away, or a connection closed above: not a server fault.
            log.debug("connection ended: %s", exc)
            return
        log.exception("HTTP handler failed")


def _close_for_reading(sock: socket.socket) -> None:
    """Wake the thread blocked on ``sock``: its read returns end-of-file, it ends."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reject(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_REJECT)
    with contextlib.suppress(OSError):
        sock.close()


class MetricsServer(BackgroundServer):
    def __init__(self, address: tuple[str, int], exposition: Exposition, *,
                 healthy: Callable[[], bool], ready: Callable[[], bool]) -> None:
        super().__init__(address, _Handler)
        self.exposition = exposition
        self.healthy = healthy
        self.ready = ready


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
