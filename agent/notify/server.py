"""The notifier's HTTP endpoint: ``POST /alertmanager``, ``/metrics``, ``/healthz``, ``/readyz``.

A webhook is answered 200 only after it is committed to the outbox. Input a client can get
wrong is a 4xx with a one-line reason (400 malformed, 401 token, 411 no length, 413 too
large, 415 not JSON); a 503 means the store failed and Alertmanager should retry.

Any answer given before a request's body was read closes the connection: on a kept-alive
connection the unread body would otherwise be parsed as the next request (a 401 must not
let an unauthenticated body through as a request of its own).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from prometheus_client import exposition

from agent.exporter.server import BackgroundServer, KeepAliveHandler
from agent.notify.metrics import NotifierMetrics
from agent.notify.outbox import OutboxUnavailable
from agent.notify.webhook import Notification, PayloadError, parse_notification

log = logging.getLogger(__name__)

WEBHOOK_PATH: Final = "/alertmanager"
SLACK_ACTIONS_PATH: Final = "/slack/actions"
# (headers, raw body) -> (status, short answer): agent.notify.actions.SlackActionsEndpoint.
SlackActionHandler = Callable[[dict[str, str], bytes], tuple[int, str]]
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"


class BearerAuth:
    """``Authorization: Bearer <token>``, compared in constant time.

    A token file (a mounted Secret) is re-read when it changes, so rotating the Secret
    needs no restart.
    """

    def __init__(self, *, token: str | None = None, token_file: Path | None = None) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("exactly one of token and token_file")
        self._token = token.encode() if token is not None else b""
        self._file = token_file
        self._mtime: float | None = None
        self._lock = threading.Lock()
        if token_file is not None:
            self._reload()
        if not self._token:
            raise ValueError("the bearer token is empty")

    def _reload(self) -> None:
        assert self._file is not None
        mtime = self._file.stat().st_mtime
        if mtime != self._mtime:
            token = self._file.read_text(encoding="utf-8").strip().encode()
            if token:
                self._token = token
            self._mtime = mtime

    def check(self, header: str | None) -> bool:
        if self._file is not None:
            with self._lock:
                try:
                    self._reload()
                except OSError:
                    log.warning("cannot re-read the auth token file; keeping the old token")
                token = self._token
        else:
            token = self._token
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), token)


class _Handler(KeepAliveHandler):
    timeout = 30  # a client that stops sending mid-body loses its connection, not a thread
    server: NotifierServer
    _body_read = False

    def parse_request(self) -> bool:
        self._body_read = False
        return super().parse_request()

    def _has_body(self) -> bool:
        if self.headers.get("Transfer-Encoding"):
            return True
        try:
            return int(self.headers.get("Content-Length") or 0) != 0
        except ValueError:
            return True

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        if not self._body_read and self._has_body():
            # "Connection: close" also makes the base class end the connection after this.
            headers = {**(headers or {}), "Connection": "close"}
        super()._send(status, body, content_type, headers)

    def _json(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode() + b"\n", _JSON, headers)

    def _reject(self, status: int, reason: str, *, result: str = "rejected",
                headers: dict[str, str] | None = None) -> None:
        self.server.metrics.webhooks.labels(result=result).inc()
        log.info("webhook rejected", extra={"status": status, "reason": reason})
        self._json(status, {"status": "error", "error": reason}, headers)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = exposition.choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.metrics.registry), content_type)
        elif path == "/healthz":
            ok = self.server.healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"delivery loop stopped\n", _TEXT)
        elif path == "/readyz":
            ok = self.server.ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", _TEXT)
        elif path == "/":
            self._send(200, b"steward notifier: POST /alertmanager; /metrics /healthz /readyz\n",
                       _TEXT)
        elif path == WEBHOOK_PATH:
            self._send(405, b"POST only\n", _TEXT, {"Allow": "POST"})
        else:
            self._send(404, b"not found\n", _TEXT)

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self._send(405, b"method not allowed\n", _TEXT, {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == SLACK_ACTIONS_PATH and self.server.slack_actions is not None:
            self._slack_action(self.server.slack_actions)
            return
        if path != WEBHOOK_PATH:
            self._send(404, b"not found\n", _TEXT)
            return
        try:
            self._webhook()
        except Exception:
            # A bug, not the client's fault: say so, keep serving.
            log.exception("webhook handler failed")
            self.close_connection = True
            self._json(500, {"status": "error", "error": "internal error"})

    def _slack_action(self, handle: SlackActionHandler) -> None:
        """Slack's interactivity request: authenticated by its signature (the handler), not
        by the bearer token Alertmanager sends."""
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding") or not 0 <= length <= self.server.max_body_bytes:
            self.close_connection = True
            self._send(400 if length < 0 else 413, b"bad length\n", _TEXT)
            return
        body = self.rfile.read(length)
        self._body_read = True
        try:
            status, answer = handle(dict(self.headers.items()), body)
        except Exception:
            log.exception("Slack action handler failed")
            status, answer = 500, "internal error"
        self._send(status, (answer + "\n").encode() if answer else b"", _TEXT)

    def _webhook(self) -> None:
        server = self.server
        if server.auth is not None and not server.auth.check(self.headers.get("Authorization")):
            self._reject(401, "missing or wrong bearer token", result="unauthorized",
                         headers={"WWW-Authenticate": 'Bearer realm="steward-notifier"'})
            return
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._reject(411, "send the body with a Content-Length, not chunked")
            return
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self.close_connection = True
            self._reject(411, "Content-Length is required")
            return
        try:
            length = int(raw_length)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._reject(400, "invalid Content-Length")
            return
        if length > server.max_body_bytes:
            # The body is never read: drop the connection rather than drain it.
            self.close_connection = True
            self._reject(413, f"body of {length} bytes is over the {server.max_body_bytes} "
                              "byte limit (notifier.max_body_bytes; Alertmanager max_alerts)")
            return
        content_type = self.headers.get("Content-Type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media and media != _JSON and not media.endswith("+json"):
                self.close_connection = True
                self._reject(415, f"Content-Type must be {_JSON}")
                return
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) < length:
            self.close_connection = True
            self._reject(400, "body shorter than Content-Length")
            return
        started = time.perf_counter()
        try:
            notification = parse_notification(body)
        except PayloadError as exc:
            self._reject(400, exc.reason)
            return
        try:
            new_id = server.persist(notification, body)
        except OutboxUnavailable as exc:
            self._reject(503, f"cannot persist the webhook: {exc}", result="unavailable",
                         headers={"Retry-After": "5"})
            return
        server.metrics.webhooks.labels(result="accepted").inc()
        server.metrics.alerts_received.inc(len(notification.alerts))
        server.metrics.ack_seconds.observe(time.perf_counter() - started)
        self._json(200, {"status": "accepted", "id": new_id})


class NotifierServer(BackgroundServer):
    # A short poll: stop() (SIGTERM) waits for the serving loop to notice.
    poll_interval = 0.1
    # Alertmanager opens a connection per aggregation group when many flush at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], *,
                 persist: Callable[[Notification, bytes], int],
                 metrics: NotifierMetrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool], max_body_bytes: int,
                 auth: BearerAuth | None = None,
                 slack_actions: SlackActionHandler | None = None) -> None:
        super().__init__(address, _Handler)
        self.slack_actions = slack_actions
        self.persist = persist
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.max_body_bytes = max_body_bytes
        self.auth = auth


def auth_from(token_file: Path | None, environ: dict[str, str] | os._Environ[str]
              ) -> BearerAuth | None:
    """The bearer token from ``notifier.auth_token_file``, else $STEWARD_NOTIFIER_AUTH_TOKEN."""
    if token_file is not None:
        return BearerAuth(token_file=token_file)
    token = environ.get("STEWARD_NOTIFIER_AUTH_TOKEN")
    return BearerAuth(token=token) if token else None
