"""The HTTP endpoint of every Steward process: ``/metrics``, ``/healthz``, ``/readyz``.

Handlers only read what the collection loops already produced; nothing here touches a GPU
or an API server, so a slow source can never stall a scrape or a probe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.exporter.exposition import Exposition

log = logging.getLogger(__name__)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """A handler for clients that keep their connection (Prometheus, Alertmanager).

    Headers and body must then leave in one segment: written separately, Nagle's algorithm
    and the client's delayed ACK stall every response by ~40 ms. A buffered wfile (flushed
    once per request by the base class) plus TCP_NODELAY avoids that.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 256 * 1024

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


class BackgroundServer(ThreadingHTTPServer):
    """A threaded HTTP server serving from a background thread: start(), stop(), port."""

    daemon_threads = True
    # How often serve_forever checks for shutdown(): stop() waits up to this long.
    poll_interval = 0.5

    def __init__(self, address: tuple[str, int],
                 handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, args=(self.poll_interval,),
                                        name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


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
