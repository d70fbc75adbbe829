"""The PodResources client against servers that misbehave on the wire: closed or silent
sockets, HTTP/1, and HTTP/2 answers that break the gRPC protocol. Whatever comes back, the
client ends in one ``PodResourcesError`` line within its deadline, never a hang, a traceback
from the HTTP/2 library, or a half-read answer taken for the node's devices.

The well-behaved paths run against real gRPC servers: grpcio's (tests/node/test_podresources.py)
and the kubelet's own Go server (tests/realk8s/test_kubelet_podresources.py)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import pytest

from agent.node.podresources import PodResourcesClient, PodResourcesError, api_pb2
from tests.support.podresources_server import Container, Pod, list_response

Handler = Callable[[socket.socket], None]


class RawServer:
    """A unix socket whose every accepted connection is handed to ``handler`` in a thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.dir = Path(tempfile.mkdtemp(prefix="steward-h2-"))
        self.path = self.dir / "kubelet.sock"
        self.accepted = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def grpc_frame(message: bytes, *, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(message)) + message


ONE_POD = list_response([Pod("ml", "p", [Container("c", {"nvidia.com/gpu": ["GPU-a"]})])]
                        ).SerializeToString()
Answer = Callable[[h2.connection.H2Connection, int, int], None]  # conn, stream, call number


def h2_server(answer: Answer, *, calls: list[int] | None = None) -> Handler:
    """A handler speaking HTTP/2 that answers each request with ``answer``."""
    made = calls if calls is not None else []

    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    made.append(event.stream_id)
                    answer(conn, event.stream_id, len(made))
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                return

    return handle


def ok_headers() -> list[tuple[str, str]]:
    return [(":status", "200"), ("content-type", "application/grpc")]


def respond(conn: h2.connection.H2Connection, stream: int, body: bytes,
            trailers: list[tuple[str, str]] | None = None,
            headers: list[tuple[str, str]] | None = None) -> None:
    conn.send_headers(stream, headers if headers is not None else ok_headers())
    if body:
        conn.send_data(stream, body)
    conn.send_headers(stream, trailers if trailers is not None else [("grpc-status", "0")],
                      end_stream=True)


def failure(client: PodResourcesClient, *, within: float) -> PodResourcesError:
    started = time.monotonic()
    with pytest.raises(PodResourcesError) as info:
        client.list_devices()
    assert time.monotonic() - started < within
    assert "\n" not in str(info.value)
    return info.value


# --- sockets that are not a gRPC server ---------------------------------------------------


def test_a_server_that_closes_at_once_is_unavailable_not_a_hang(
        serve: Callable[[Handler], RawServer]) -> None:
    server = serve(lambda sock: None)
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        error = failure(client, within=3.0)
    assert error.reason == "unavailable"
    assert "closed the connection" in str(error) or "reset by peer" in str(error)


def test_a_server_that_never_answers_is_a_timeout_at_the_deadline(
        serve: Callable[[Handler], RawServer]) -> None:
    def silent(sock: socket.socket) -> None:
        while sock.recv(65536):
            pass

    server = serve(silent)
    with PodResourcesClient(str(server.path), timeout=0.5) as client:
        started = time.monotonic()
        error = failure(client, within=3.0)
    assert error.reason == "timeout"
    assert time.monotonic() - started >= 0.45


def test_an_http1_server_is_an_error_line(serve: Callable[[Handler], RawServer]) -> None:
    def http1(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = serve(http1)
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        error = failure(client, within=3.0)
    assert error.reason in {"error", "unavailable"}
    assert "PodResources List()" in str(error)


# --- HTTP/2 answers that break gRPC -------------------------------------------------------


@pytest.mark.parametrize(("answer", "reason", "says"), [
    pytest.param(lambda c, s, n: respond(c, s, grpc_frame(ONE_POD), trailers=[("x", "y")]),
                 "error", "without a grpc-status", id="no-grpc-status"),
    pytest.param(lambda c, s, n: respond(c, s, grpc_frame(ONE_POD, compressed=1)),
                 "error", "compressed", id="compressed-unasked"),
    pytest.param(lambda c, s, n: respond(c, s, grpc_frame(ONE_POD)[:-3]),
                 "error", "holds", id="truncated-message"),
    pytest.param(lambda c, s, n: respond(c, s, grpc_frame(ONE_POD) * 2),
                 "error", "one message expected", id="two-messages"),
    pytest.param(lambda c, s, n: respond(c, s, b""),
                 "error", "no message", id="no-message"),
    pytest.param(lambda c, s, n: respond(c, s, grpc_frame(b"\xff\xff\xff")),
                 "error", "does not decode", id="not-protobuf"),
    pytest.param(lambda c, s, n: respond(c, s, b"", headers=[(":status", "503")],
                                         trailers=[("grpc-status", "0")]),
                 "unavailable", "HTTP status 503", id="http-503"),
    pytest.param(lambda c, s, n: c.send_headers(s, [*ok_headers(), ("grpc-status", "12")],
                                                end_stream=True),
                 "error", "UNIMPLEMENTED", id="trailers-only"),
    pytest.param(lambda c, s, n: c.reset_stream(s, error_code=2),
                 "error", "reset", id="rst-stream"),
])
def test_a_broken_grpc_answer_is_one_error_line(
        serve: Callable[[Handler], RawServer], answer: Answer, reason: str, says: str) -> None:
    server = serve(h2_server(answer))
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        error = failure(client, within=3.0)
    assert error.reason == reason, error
    assert says in str(error)


def test_the_servers_message_is_decoded_bounded_and_one_line(
        serve: Callable[[Handler], RawServer]) -> None:
    details = "kubelet says:\nno\x1b[31m way " + "x" * 5000

    def answer(conn: h2.connection.H2Connection, stream: int, n: int) -> None:
        conn.send_headers(stream, [*ok_headers(), ("grpc-status", "7"),
                                   ("grpc-message", quote(details))], end_stream=True)

    server = serve(h2_server(answer))
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        error = failure(client, within=3.0)
    assert error.reason == "error"
    assert "PERMISSION_DENIED: kubelet says: no" in str(error)
    assert len(str(error)) < 700


def test_an_answer_over_the_clients_limit_fails_fast_and_the_next_call_works(
        serve: Callable[[Handler], RawServer]) -> None:
    big = list_response([Pod("ml", f"p{i}", [Container("c", {"nvidia.com/gpu": [
        f"GPU-{i:04d}-{j}-" + "0" * 40 for j in range(8)]})]) for i in range(200)]
    ).SerializeToString()
    assert len(big) > 64 * 1024

    def answer(conn: h2.connection.H2Connection, stream: int, n: int) -> None:
        body = grpc_frame(big if n == 1 else ONE_POD)
        conn.send_headers(stream, ok_headers())
        # As much as the windows allow; the client gives up at its limit long before the end.
        conn.send_data(stream, body[:min(len(body), conn.local_flow_control_window(stream),
                                         conn.max_outbound_frame_size)])

    calls: list[int] = []
    server = serve(h2_server(answer, calls=calls))
    with PodResourcesClient(str(server.path), timeout=5.0, max_message_bytes=4096) as client:
        error = failure(client, within=3.0)
        assert error.reason == "error"
        assert "RESOURCE_EXHAUSTED" in str(error) and "4096 bytes" in str(error)


def test_a_reused_connection_the_server_went_away_on_is_retried_once(
        serve: Callable[[Handler], RawServer]) -> None:
    """A GOAWAY that names an earlier stream means the server never started this call, so
    it is sent again on a fresh connection (what grpc does); only the one retry."""
    calls: list[int] = []

    def answer(conn: h2.connection.H2Connection, stream: int, n: int) -> None:
        if n == 2:  # the second call, the first on the reused connection: refuse it
            conn.close_connection(last_stream_id=stream - 2)
            return
        respond(conn, stream, grpc_frame(ONE_POD))

    server = serve(h2_server(answer, calls=calls))
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        assert [d.pod for d in client.list_devices()] == ["p"]
        assert [d.pod for d in client.list_devices()] == ["p"]
    assert calls == [1, 3, 1]  # stream 3 refused, then stream 1 of a second connection
    assert server.accepted == 2


def test_a_first_connection_that_goes_away_is_not_retried(
        serve: Callable[[Handler], RawServer]) -> None:
    calls: list[int] = []

    def answer(conn: h2.connection.H2Connection, stream: int, n: int) -> None:
        conn.close_connection(last_stream_id=0)

    server = serve(h2_server(answer, calls=calls))
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        error = failure(client, within=3.0)
    assert error.reason == "unavailable"
    assert server.accepted == 1


def test_the_request_is_a_grpc_call_the_kubelet_routes(
        serve: Callable[[Handler], RawServer]) -> None:
    """The headers a gRPC server needs to route and bound the call, and an empty request."""
    seen: list[dict[str, str]] = []
    bodies: list[bytes] = []

    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    seen.append({str(k): str(v) for k, v in event.headers})
                elif isinstance(event, h2.events.DataReceived):
                    bodies.append(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    respond(conn, event.stream_id, grpc_frame(
                        api_pb2.AllocatableResourcesResponse().SerializeToString()))
            sock.sendall(conn.data_to_send())

    server = serve(handle)
    with PodResourcesClient(str(server.path), timeout=5.0) as client:
        assert client.allocatable_devices() == []
    headers = seen[0]
    assert headers[":method"] == "POST"
    assert headers[":path"] == "/v1.PodResourcesLister/GetAllocatableResources"
    assert headers["content-type"] == "application/grpc"
    assert headers["te"] == "trailers"
    assert headers["grpc-timeout"].endswith("m") and 0 < int(headers["grpc-timeout"][:-1]) <= 5000
    assert b"".join(bodies) == b"\x00\x00\x00\x00\x00"
