"""Unary gRPC calls over HTTP/2 on a unix socket: the little of gRPC the kubelet's
PodResources API needs.

Why not grpcio: the node agent makes two unary calls per cycle to one local socket, and
``import grpc`` alone costs the node ~14 MiB of its 60 MiB budget (its C core and asyncio).
The HTTP/2 state machine (framing, HPACK, flow control, SETTINGS and PING acks) is the ``h2``
library's; this module only frames the request as gRPC does and reads the answer back,
following the gRPC-over-HTTP/2 protocol
(https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).

One connection is kept and reused; a call on a reused connection that dies before any answer
arrived (the kubelet restarted, or closed an idle connection) is retried once on a fresh one:
every call made through here only reads.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Final
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
STATUS_NAMES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
CANCELLED: Final = 1
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
RESOURCE_EXHAUSTED: Final = 8
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

# What a gRPC client makes of a non-200 HTTP status (PROTOCOL-HTTP2.md, "HTTP to gRPC
# status code mapping").
_HTTP_STATUS: Final = {400: INTERNAL, 401: 16, 403: 7, 404: 12, 429: UNAVAILABLE,
                       502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}
# HTTP/2 RST_STREAM codes a gRPC client maps to a status: REFUSED_STREAM means the server
# never started the call; CANCEL is the server cancelling it.
_RESET_STATUS: Final = {0x7: UNAVAILABLE, 0x8: CANCELLED, 0xB: RESOURCE_EXHAUSTED}
_MAX_DETAILS: Final = 500  # characters of a server's grpc-message kept in an error
_RECV_BYTES: Final = 256 * 1024
# Our receive windows: the kubelet answers for every pod of the node in one message, so a
# window this large lets a dense node's answer (a few MiB) through in a few round trips
# instead of one per 64 KiB (HTTP/2's default).
_WINDOW: Final = 4 * 1024 * 1024


class GrpcError(Exception):
    """A call that did not return a message: ``code`` is the gRPC status code."""

    def __init__(self, code: int, details: str) -> None:
        self.code = code
        self.details = " ".join(details.split())[:_MAX_DETAILS]
        super().__init__(f"{self.name}: {self.details}")

    @property
    def name(self) -> str:
        return STATUS_NAMES[self.code] if 0 <= self.code < len(STATUS_NAMES) else "UNKNOWN"


class _Retryable(GrpcError):
    """The connection failed before the server answered anything: the call may be re-sent."""


class UnixGrpcChannel:
    """Unary calls to one gRPC server on a unix socket; safe to share between threads (calls
    are made one at a time)."""

    def __init__(self, socket_path: str, *, max_message_bytes: int,
                 authority: str = "localhost") -> None:
        self.socket_path = socket_path
        self.max_message_bytes = max_message_bytes
        self.authority = authority
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conn: h2.connection.H2Connection | None = None

    def unary(self, method: str, request: bytes, *, timeout: float) -> bytes:
        """Send ``request`` (a serialized message) to ``method`` (``/pkg.Service/Method``) and
        return the serialized answer, or raise ``GrpcError`` (``DEADLINE_EXCEEDED`` once
        ``timeout`` seconds have passed, ``UNAVAILABLE`` when the server cannot be reached)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:  # at most twice: a failed call leaves no connection to reuse
                reused = self._sock is not None
                try:
                    return self._call(method, request, deadline)
                except _Retryable:
                    self._close()
                    if not reused:
                        raise
                except BaseException:
                    self._close()
                    raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        sock, self._sock, self._conn = self._sock, None, None
        if sock is not None:
            sock.close()

    def _connect(self, deadline: float) -> tuple[socket.socket, h2.connection.H2Connection]:
        if self._sock is not None and self._conn is not None:
            return self._sock, self._conn
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(self.socket_path)
        except TimeoutError:
            sock.close()
            raise GrpcError(DEADLINE_EXCEEDED, "deadline exceeded while connecting") from None
        except OSError as exc:
            sock.close()
            raise GrpcError(UNAVAILABLE, f"connect: {exc.strerror or exc}") from None
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(_WINDOW)  # the connection's window, beside streams'
        self._sock, self._conn = sock, conn
        return sock, conn

    def _call(self, method: str, request: bytes, deadline: float) -> bytes:
        sock, conn = self._connect(deadline)
        stream = conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
            (b":authority", self.authority.encode()), (b"te", b"trailers"),
            (b"content-type", b"application/grpc"), (b"user-agent", b"steward-node"),
            # The server gives up too (and frees what it holds for the call) at our deadline.
            (b"grpc-timeout", f"{max(1, int(_remaining(deadline) * 1000))}m".encode()),
        ]
        conn.send_headers(stream, headers)
        conn.send_data(stream, struct.pack(">BI", 0, len(request)) + request, end_stream=True)
        answer = _Answer(stream, self.max_message_bytes)
        self._send(sock, conn, answered=False)
        while not answer.ended:
            sock.settimeout(_remaining(deadline))
            try:
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                raise GrpcError(DEADLINE_EXCEEDED, "deadline exceeded") from None
            except OSError as exc:
                raise self._lost(answer, f"receive: {exc.strerror or exc}") from None
            if not data:
                raise self._lost(answer, "the server closed the connection")
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                raise GrpcError(INTERNAL, f"HTTP/2 protocol error: {exc}") from None
            for event in events:
                answer.take(conn, event)
            self._send(sock, conn, answered=answer.started)
        return answer.message()

    def _send(self, sock: socket.socket, conn: h2.connection.H2Connection, *,
              answered: bool) -> None:
        out = conn.data_to_send()
        if not out:
            return
        try:
            sock.sendall(out)
        except TimeoutError:
            raise GrpcError(DEADLINE_EXCEEDED, "deadline exceeded while sending") from None
        except OSError as exc:
            # A reused connection the server has closed fails here (EPIPE) before it read
            # anything of this call.
            error = _Retryable if not answered else GrpcError
            raise error(UNAVAILABLE, f"send: {exc.strerror or exc}") from None

    @staticmethod
    def _lost(answer: _Answer, why: str) -> GrpcError:
        return (GrpcError if answer.started else _Retryable)(UNAVAILABLE, why)


class _Answer:
    """One call's answer as the HTTP/2 events bring it."""

    def __init__(self, stream: int, max_message_bytes: int) -> None:
        self.stream = stream
        self.max_message_bytes = max_message_bytes
        self.started = False  # any frame of this stream arrived
        self.ended = False
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()

    def take(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            if event.last_stream_id is not None and event.last_stream_id < self.stream:
                # GOAWAY naming an earlier stream: the server never started this call.
                raise _Retryable(UNAVAILABLE, "the server is going away (GOAWAY)")
            if not self.ended:
                raise GrpcError(UNAVAILABLE, f"connection closed by the server "
                                f"(GOAWAY {event.error_code!s})")
            return
        if getattr(event, "stream_id", None) != self.stream:
            return
        self.started = True
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            # Trailers-only answers (errors) come as one HEADERS frame; either way the
            # status is in the last headers seen.
            self.headers.update((bytes(k), bytes(v)) for k, v in event.headers)
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, self.stream)
            self.body += event.data
            if len(self.body) > self.max_message_bytes + 5:
                # The caller closes the connection on any error, which ends the stream too.
                raise GrpcError(RESOURCE_EXHAUSTED, f"answer larger than "
                                f"{self.max_message_bytes} bytes (the client's limit)")
        elif isinstance(event, h2.events.StreamReset):
            code = _RESET_STATUS.get(int(event.error_code), INTERNAL)
            error = _Retryable if int(event.error_code) == 0x7 else GrpcError
            raise error(code, f"stream reset by the server ({event.error_code!s})")
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True

    def message(self) -> bytes:
        status = self.headers.get(b":status", b"")
        if status != b"200":
            code = _HTTP_STATUS.get(int(status), UNKNOWN) if status.isdigit() else INTERNAL
            raise GrpcError(code, f"HTTP status {status.decode('ascii', 'replace') or 'none'}")
        grpc_status = self.headers.get(b"grpc-status")
        if grpc_status is None:
            raise GrpcError(INTERNAL, "the answer ended without a grpc-status")
        code = int(grpc_status) if grpc_status.isdigit() else UNKNOWN
        if code != 0:
            details = unquote(self.headers.get(b"grpc-message", b"").decode("ascii", "replace"))
            raise GrpcError(code, details)
        body = bytes(self.body)
        if len(body) < 5:
            raise GrpcError(INTERNAL, f"the answer holds no message ({len(body)} bytes)")
        compressed, length = struct.unpack(">BI", body[:5])
        if compressed:
            # We sent no grpc-accept-encoding, so a compressed message breaks the protocol.
            raise GrpcError(INTERNAL, "the server compressed its answer unasked")
        if length != len(body) - 5:
            raise GrpcError(INTERNAL, f"the answer frames {length} bytes but holds "
                            f"{len(body) - 5} (one message expected)")
        return body[5:]


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise GrpcError(DEADLINE_EXCEEDED, "deadline exceeded")
    return left
