"""A click is never lost: committed before the 200, carried out after a SIGKILL."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from agent.clients.alertmanager import AlertmanagerClient
from agent.sim.slack_stub import SlackStub
from tests.notify import test_crash
from tests.notify.clicks import SECRET, button_values, click_body, post_click, signed_headers
from tests.notify.payloads import alert, post, webhook
from tests.notify.test_crash import AM_TOKEN
from tests.support.alertmanager import start_alertmanager, webhook_receiver
from tests.support.net import free_port, wait_until
from tests.support.steward import StewardProcess

pytestmark = pytest.mark.integration


def start_notifier(workdir: Path, stub: SlackStub, am_api: str,
                   started: list[StewardProcess]) -> StewardProcess:
    secret_file = workdir / "signing-secret"
    secret_file.write_text(SECRET)
    return test_crash.start_notifier(
        workdir, stub, started, slack={"signing_secret_file": str(secret_file)},
        alertmanager={"url": "http://alertmanager.example", "api_url": am_api})


def attempts(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT attempts FROM notifier_slack_actions").fetchall()
    return int(rows[0][0]) if rows else -1


def test_a_click_survives_sigkill(tmp_path: Path, stub: SlackStub,
                                  processes: list[StewardProcess]) -> None:
    alertmanager = start_alertmanager({"route": {"receiver": "none"},
                                       "receivers": [webhook_receiver("none", "http://x/")]})
    try:
        am = AlertmanagerClient(alertmanager.url)
        # Alertmanager unreachable at first: the click is taken and kept, not carried out.
        first = start_notifier(tmp_path, stub, f"http://127.0.0.1:{free_port()}", processes)
        assert post(first.url, webhook([alert("GpuLost", hostname="gpu-node-1")]),
                    token=AM_TOKEN)[0] == 200
        stub.wait_for(lambda: bool(stub.roots()), timeout=15)
        root = stub.roots()[0]
        ack = next(v for v in button_values(root).values() if v.get("a") == "ack")
        body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
        headers = signed_headers(body)
        assert post_click(first.url, body, headers) == 200
        wait_until(lambda: attempts(tmp_path / "state.db") >= 1, timeout=15,
                   what="a failed attempt")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        assert am.silences() == []

        second = start_notifier(tmp_path, stub, alertmanager.url, processes)
        wait_until(lambda: bool(am.silences()), timeout=30, what="the silence")
        [silence] = am.silences()
        assert silence.exact_labels()["alertname"] == "GpuLost"
        assert silence.created_by == "alice (Slack U0ALICE)"
        stub.wait_for(lambda: any("acknowledged by" in r.text for r in stub.replies(root)),
                      timeout=15)
        # The replay guard outlived the process too.
        assert post_click(second.url, body, headers) == 401
        assert len([r for r in stub.replies(root) if "acknowledged by" in r.text]) == 1
        assert len(am.silences()) == 1
    finally:
        alertmanager.stop()
