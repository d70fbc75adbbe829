"""The HTTP plumbing: a threading server that tracks its connections, the request
handler, and turning client models into the API's JSON."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agent.sim.kube_api.resources import _RESOURCES, _THREAD_PREFIX, JsonObj
from agent.sim.kube_api.validation import _format_time


class _Api(Protocol):
    """What the HTTP plumbing needs of the server (``server.KubeApiServer``)."""

    _stopping: threading.Event

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None: ...

    def _serve(self, handler: _Handler) -> None: ...


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: _Api) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Named threads, so that tests can check that stop() left none behind.
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"{_THREAD_PREFIX}-conn:{self.server_address[1]}")
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.api._stopping.is_set():
            return  # clients hanging up (and our own shutdown) are routine
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; with Nagle on, the body waits ~40 ms for the
        # client's delayed ACK on every single request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.api._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.api._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr noise helps nobody

    def do_GET(self) -> None:
        self.server.api._serve(self)

    def do_POST(self) -> None:
        self.server.api._serve(self)

    def do_PUT(self) -> None:
        self.server.api._serve(self)

    def do_PATCH(self) -> None:
        self.server.api._serve(self)

    def do_DELETE(self) -> None:
        self.server.api._serve(self)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _format_time(value if value.tzinfo else value.replace(tzinfo=UTC), micro=True)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_MODEL_NAME = re.compile(r"^(Core|Events)?V\d+(?:(?:alpha|beta)\d+)?(?P<kind>[A-Z]\w*)$")


def _as_json_obj(obj: Any) -> JsonObj:
    """A deep, JSON-clean copy of a dict or of a kubernetes client model.

    A model without ``api_version``/``kind`` gets them from its class name (``V1Pod``).
    """
    if hasattr(obj, "openapi_types"):
        from kubernetes.client import ApiClient

        model = type(obj).__name__
        obj = ApiClient().sanitize_for_serialization(obj)
        match = _MODEL_NAME.match(model)
        if match and "kind" not in obj:
            candidates = [r for r in _RESOURCES if r.kind == match["kind"]
                          and (r.group == "events.k8s.io") == (match[1] == "Events")]
            if candidates:
                obj.setdefault("apiVersion", candidates[0].api_version)
                obj["kind"] = candidates[0].kind
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a mapping or a kubernetes model, got {type(obj).__name__}")
    result: JsonObj = json.loads(json.dumps(obj, default=_to_json_value))
    return result
