"""The webhook endpoint: persisted before 200, clear 4xx otherwise, never half-stored."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select

from agent.notify.app import UNAUTHENTICATED_WARNING, build_notifier, config_problems, run_notifier
from agent.notify.group_lock import StoreInUse
from agent.notify.outbox import notifications
from agent.notify.server import BearerAuth
from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import MakeNotifier, notifier_config
from tests.notify.payloads import alert, post, webhook
from tests.support.net import http_ok, metric_value


def stored(state: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{state}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(notifications.c.group_id, notifications.c.payload,
                                            notifications.c.delivered_at)))
    finally:
        engine.dispose()


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_webhook_is_persisted_before_it_is_acknowledged(
        make_notifier: MakeNotifier, stub: SlackStub, tmp_path: Path) -> None:
    stub.fail("status", status=500)  # Slack down: nothing can be delivered
    notifier = make_notifier()
    status, answer = post(notifier.url, webhook([alert(hostname="n1")]))
    assert status == 200 and answer["status"] == "accepted"
    # A fresh connection to the store sees the committed row the moment the 200 arrives.
    rows = stored(tmp_path / "state.db")
    assert len(rows) == 1 and rows[0].delivered_at is None
    assert json.loads(rows[0].payload)["alerts"][0]["labels"]["hostname"] == "n1"


@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b"{nope", {}, 400, "invalid JSON"),
    (json.dumps({"version": "4"}).encode(), {}, 400, "groupKey: required field is missing"),
    (json.dumps(webhook([alert()])).encode(), {"Content-Type": "text/plain"}, 415,
     "Content-Type"),
])
def test_bad_webhooks_get_a_4xx_with_a_reason_and_store_nothing(
        make_notifier: MakeNotifier, tmp_path: Path, body: bytes, headers: dict[str, str],
        status: int, reason: str) -> None:
    notifier = make_notifier()
    got, answer = post(notifier.url, body, headers=headers)
    assert got == status
    assert reason in answer["error"]
    assert stored(tmp_path / "state.db") == []
    metrics = scrape(notifier.url)
    assert metric_value(metrics, "steward_notifier_webhooks_total", result="rejected") == 1


def test_oversized_body_is_refused_unread(make_notifier: MakeNotifier, tmp_path: Path) -> None:
    notifier = make_notifier(notifier={"max_body_bytes": 2048})
    big = webhook([alert(hostname=f"n{i}", description="x" * 200) for i in range(20)])
    status, answer = post(notifier.url, big)
    assert status == 413 and "2048" in answer["error"]
    assert stored(tmp_path / "state.db") == []


def test_length_is_required(make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    status, _ = raw_request(notifier.port, b"POST /alertmanager HTTP/1.1\r\nHost: x\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status == 411
    status, _ = raw_request(notifier.port, b"POST /alertmanager HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411


def test_other_paths_and_methods(make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    assert raw_request(notifier.port, b"GET /alertmanager HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405
    assert raw_request(notifier.port, b"PUT /alertmanager HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 0\r\n\r\n")[0] == 405
    status, _ = raw_request(notifier.port, b"POST /elsewhere HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 2\r\n\r\n{}")
    assert status == 404
    assert http_ok(f"{notifier.url}/healthz") and http_ok(f"{notifier.url}/readyz")


def test_bearer_token(make_notifier: MakeNotifier, tmp_path: Path, stub: SlackStub) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    notifier = make_notifier(notifier={"auth_token_file": str(token_file)})
    payload = webhook([alert()])
    status, answer = post(notifier.url, payload)
    assert status == 401 and "bearer" in answer["error"]
    assert post(notifier.url, payload, token="wrong")[0] == 401
    assert post(notifier.url, payload, token="s3cret-token")[0] == 200
    # a rotated Secret is picked up without a restart
    token_file.write_text("rotated-token")
    stat = token_file.stat()
    os.utime(token_file, (stat.st_atime, stat.st_mtime + 5))
    assert post(notifier.url, payload, token="s3cret-token")[0] == 401
    assert post(notifier.url, payload, token="rotated-token")[0] == 200
    assert len(stored(tmp_path / "state.db")) == 2


def test_bearer_auth_refuses_an_empty_token(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        BearerAuth(token_file=empty)
    auth = BearerAuth(token="abc")
    assert auth.check("Bearer abc") and auth.check("bearer abc")
    assert not auth.check("Basic abc") and not auth.check(None) and not auth.check("Bearer ab")


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_metrics_from_spec(make_notifier: MakeNotifier, stub: SlackStub) -> None:
    stub.fail("status", status=500)
    notifier = make_notifier()
    post(notifier.url, webhook([alert(hostname="a"), alert(hostname="b")]))
    text = scrape(notifier.url)
    assert metric_value(text, "steward_notifier_alerts_received_total") == 2
    assert metric_value(text, "steward_notifier_outbox_depth") == 1
    assert metric_value(text, "steward_notifier_slack_messages_total", result="ok") == 0
    assert metric_value(text, "steward_notifier_slack_messages_total", result="error") is not None
    assert metric_value(text, "steward_notifier_outbox_oldest_age_seconds") is not None
    assert metric_value(text, "steward_notifier_webhook_ack_seconds_count") == 1


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=10), c, max_size=3), max_leaves=8)


@st.composite
def fuzzed_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    payload = webhook([alert(hostname=draw(st.text(max_size=20)),
                             summary=draw(st.text(max_size=50)) or None)])
    if kind == "mutated":
        keys = ["version", "groupKey", "status", "alerts", "groupLabels", "truncatedAlerts",
                "externalURL"]
        payload[draw(st.sampled_from(keys))] = draw(json_values)
        if draw(st.booleans()):
            target = payload["alerts"][0] if isinstance(payload["alerts"], list) and \
                payload["alerts"] and isinstance(payload["alerts"][0], dict) else payload
            target[draw(st.sampled_from(["labels", "startsAt", "endsAt", "status",
                                         "annotations", "fingerprint"]))] = draw(json_values)
    return json.dumps(payload).encode()


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_fuzzed_webhooks_never_get_a_5xx(make_notifier: MakeNotifier, tmp_path: Path,
                                        stub: SlackStub) -> None:
    notifier = make_notifier()
    accepted = 0

    @settings(max_examples=250, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=fuzzed_bodies())
    def check(body: bytes) -> None:
        nonlocal accepted
        status, answer = post(notifier.url, body)
        assert status < 500, (status, answer, body[:200])
        assert status in (200, 400), (status, answer)
        if status == 200:
            accepted += 1
        else:
            assert isinstance(answer, dict) and answer["error"]

    check()
    stub.wait_for(notifier.worker.idle, timeout=30, what="fuzzed deliveries drained")
    assert len(stored(tmp_path / "state.db")) == accepted
    assert notifier.worker.alive()
    # everything accepted reached Slack without being refused for its blocks
    assert not [c for c in stub.calls() if c.response and c.response.get("error")
                == "invalid_blocks"]
    text = scrape(notifier.url)
    assert metric_value(text, "steward_notifier_outbox_depth") == 0


def exchange(port: int, requests: bytes) -> tuple[list[int], bool]:
    """Send ``requests`` on one connection: the statuses answered, and whether the server
    closed the connection (else it sat waiting for more)."""
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(requests)
        sock.settimeout(1.5)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", received)], closed


def test_a_401_never_lets_its_body_through_as_a_request(
        make_notifier: MakeNotifier, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    notifier = make_notifier(notifier={"auth_token_file": str(token_file),
                                       "allow_unauthenticated": False})
    smuggled = json.dumps(webhook([alert("Smuggled")])).encode()
    inner = (b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    outer = (b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: " + str(len(inner)).encode() + b"\r\n\r\n" + inner)
    assert exchange(notifier.port, outer) == ([401], True)
    assert stored(tmp_path / "state.db") == []


@pytest.mark.parametrize("request_line", [b"POST /elsewhere", b"PUT /alertmanager",
                                          b"DELETE /alertmanager", b"GET /metrics"])
def test_every_early_answer_closes_a_connection_with_an_unread_body(
        make_notifier: MakeNotifier, tmp_path: Path, request_line: bytes) -> None:
    notifier = make_notifier()
    smuggled = json.dumps(webhook([alert("Smuggled")])).encode()
    inner = (b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    outer = (request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
             + str(len(inner)).encode() + b"\r\n\r\n" + inner)
    statuses, closed = exchange(notifier.port, outer)
    assert len(statuses) == 1 and statuses[0] in (200, 404, 405) and closed
    assert stored(tmp_path / "state.db") == []


def test_kept_alive_connections_still_work_without_a_body(make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    assert exchange(notifier.port, two) == ([200, 200], False)


def test_no_token_no_notifier(stub: SlackStub, tmp_path: Path) -> None:
    config = notifier_config(stub, tmp_path / "s.db", notifier={"allow_unauthenticated": False})
    with pytest.raises(ValueError, match="no bearer token"):
        build_notifier(config, environ={})
    assert config_problems(config, environ={}) == [
        "notifier.auth_token_file: not set; the notifier does not run without a bearer token "
        "(set notifier.auth_token_file or STEWARD_NOTIFIER_AUTH_TOKEN, or "
        "notifier.allow_unauthenticated: true to accept anyone's webhooks)"]
    assert config_problems(config, environ={"STEWARD_NOTIFIER_AUTH_TOKEN": "t"}) == []
    allowed = notifier_config(stub, tmp_path / "s.db")  # allow_unauthenticated: true
    assert config_problems(allowed, environ={}) == []


def test_unauthenticated_is_a_warning_at_every_start(stub: SlackStub, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    config = notifier_config(stub, tmp_path / "s.db")
    for _ in range(2):
        stop = threading.Event()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agent.notify.app"):
            assert run_notifier(config, stop=stop, on_started=lambda n, s=stop: s.set()) == 0
        # (A first start also logs that a new store was created: agent.state's line.)
        assert [r.getMessage() for r in caplog.records
                if r.name == "agent.notify.app"] == [UNAUTHENTICATED_WARNING]


def test_a_second_notifier_on_the_same_sqlite_file_refuses(
        make_notifier: MakeNotifier, stub: SlackStub, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_notifier()
    config = notifier_config(stub, tmp_path / "state.db")
    with pytest.raises(StoreInUse, match="SQLite holds one notifier"):
        build_notifier(config, environ={})
    assert run_notifier(config) == 1
    # The last line: a handler an earlier test left on a closed stream may complain first.
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"steward: another notifier is using the state store {tmp_path / 'state.db'}")
