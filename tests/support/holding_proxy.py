"""A reverse proxy in front of a real server (the Kubernetes API stand-in, moto, the OCI
registry) that can hold a reply: it forwards the request, lets the server act and reads its
whole answer, then keeps the answer from the client and tells the test, which kills the
client there. That is the one crash a checkpoint in the client cannot make: after the
external call took effect, before its reply was read.

It can also fail a request (any page of a listing, say) with a status of the test's
choosing, and it logs every request it forwarded with the server's status.

For a TLS server (a real kube-apiserver) it speaks TLS on both sides: it verifies the
upstream against ``ca`` and serves ``certificate``/``key`` to the client (the server's own
pair, so the client's kubeconfig needs only another port). A TCP-level proxy could not hold
a reply: it cannot tell where one request ends and the next begins.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Hop-by-hop headers, and the ones the proxy sets itself.
_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                      "upgrade", "proxy-authorization", "proxy-authenticate", "content-length",
                      "host"})


@dataclass
class Hold:
    """Holds the reply to the ``nth`` request matching ``method`` and ``pattern`` (searched
    in the path with its query) until released; then drops it (the client was killed) or,
    with ``deliver``, sends it late (the client was only slow)."""

    method: str
    pattern: re.Pattern[str]
    nth: int = 1
    deliver: bool = False
    seen: int = 0
    held: threading.Event = field(default_factory=threading.Event)  # the reply is held
    released: threading.Event = field(default_factory=threading.Event)
    status: int | None = None  # what the server answered

    def wait_held(self, timeout: float = 60.0) -> None:
        if not self.held.wait(timeout):
            raise AssertionError(f"no {self.method} {self.pattern.pattern} reached the "
                                 f"server within {timeout:g}s")


@dataclass
class Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    skip: int = 0  # let this many matching requests through first
    times: int | None = 1  # then fail this many (None: every one)
    seen: int = 0


@dataclass(frozen=True)
class Forwarded:
    method: str
    path: str  # with the query
    status: int  # the server's answer (0: refused by a Failure, never forwarded)


class HoldingProxy:
    def __init__(self, upstream: str, *, ca: str | None = None, certificate: str | None = None,
                 key: str | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or parts.hostname is None or \
                parts.port is None:
            raise ValueError(f"an http(s)://host:port upstream, not {upstream!r}")
        self._host, self._port = parts.hostname, parts.port
        self._upstream_tls = ssl.create_default_context(cafile=ca) \
            if parts.scheme == "https" else None
        self._serving_tls: ssl.SSLContext | None = None
        if certificate is not None:
            self._serving_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._serving_tls.load_cert_chain(certificate, key)
        self._lock = threading.Lock()
        self._holds: list[Hold] = []
        self._failures: list[Failure] = []
        self._log: list[Forwarded] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="holding-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self._serving_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def hold(self, method: str, pattern: str, *, nth: int = 1, deliver: bool = False) -> Hold:
        hold = Hold(method.upper(), re.compile(pattern), nth, deliver)
        with self._lock:
            self._holds.append(hold)
        return hold

    def fail(self, method: str, pattern: str, *, status: int, skip: int = 0,
             times: int | None = 1) -> Failure:
        failure = Failure(method.upper(), re.compile(pattern), status, skip, times)
        with self._lock:
            self._failures.append(failure)
        return failure

    def forwarded(self, method: str | None = None, pattern: str = ".*") -> list[Forwarded]:
        with self._lock:
            return [f for f in self._log if (method is None or f.method == method)
                    and re.search(pattern, f.path)]

    def stop(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------------ serving

    def _rule(self, method: str, path: str) -> tuple[Hold | None, Failure | None]:
        with self._lock:
            for failure in self._failures:
                if failure.method == method and failure.pattern.search(path):
                    failure.seen += 1
                    limit = None if failure.times is None else failure.skip + failure.times
                    if failure.seen > failure.skip and (limit is None or failure.seen <= limit):
                        return None, failure
            for hold in self._holds:
                if hold.method == method and hold.pattern.search(path) and not hold.held.is_set():
                    hold.seen += 1
                    if hold.seen == hold.nth:
                        return hold, None
        return None, None

    def _forward(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(self._host, self._port, timeout=60) \
            if self._upstream_tls is None else http.client.HTTPSConnection(
                self._host, self._port, timeout=60, context=self._upstream_tls)
        try:
            upstream.request(method, path, body=body or None,
                             headers={**headers, "Host": f"{self._host}:{self._port}"})
            response = upstream.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            upstream.close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _DROPPED}
        hold, failure = self._rule(method, path)
        if failure is not None:
            with self._lock:
                self._log.append(Forwarded(method, path, 0))
            payload = b'{"message": "failed by the test proxy"}'
            handler.send_response(failure.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        status, reason, upstream_headers, data = self._forward(method, path, headers, body)
        with self._lock:
            self._log.append(Forwarded(method, path, status))
        if hold is not None:
            hold.status = status
            hold.held.set()
            hold.released.wait(120)
            if not hold.deliver:
                handler.close_connection = True
                return  # the reply never goes out: the client is dead by now
        handler.send_response(status, reason)
        for name, value in upstream_headers:
            if name.lower() not in _DROPPED:
                handler.send_header(name, value)
        if method == "HEAD":
            length_header = next((v for k, v in upstream_headers
                                  if k.lower() == "content-length"), None)
            if length_header is not None:
                handler.send_header("Content-Length", length_header)
            handler.end_headers()
            return
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                # The handshake in this connection's own thread, not in the accept loop.
                if proxy._serving_tls is not None:
                    self.request = proxy._serving_tls.wrap_socket(self.request,
                                                                  server_side=True)
                super().setup()

            def finish(self) -> None:
                super().finish()
                if proxy._serving_tls is not None:
                    self.request.close()

            def do_GET(self) -> None:
                proxy._serve(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def holding_proxy(upstream: str, *, ca: str | None = None, certificate: str | None = None,
                  key: str | None = None) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(upstream, ca=ca, certificate=certificate, key=key)
    try:
        yield proxy
    finally:
        proxy.stop()
