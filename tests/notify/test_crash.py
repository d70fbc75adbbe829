"""The notifier as its own process, killed with SIGKILL and started again: nothing lost,
nothing posted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import TOKEN
from tests.notify.payloads import alert, post, webhook
from tests.support.net import free_port, http_ok, metric_value, wait_until
from tests.support.steward import StewardProcess

pytestmark = pytest.mark.integration
AM_TOKEN = "alertmanager-to-notifier"


def start_notifier(workdir: Path, stub: SlackStub, started: list[StewardProcess],
                   **sections: dict[str, Any]) -> StewardProcess:
    """``steward notifier`` in a subprocess; ``sections`` add to its config file."""
    config = workdir / "notifier.yaml"
    data: dict[str, Any] = {
        "slack": {"api_url": stub.api_url, "default_channel": "#alerts",
                  "routes": [{"match": {"severity": "critical"}, "channel": "#oncall"}]},
        "notifier": {"channel_pacing_seconds": 0.0},
        "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    log_path = workdir / f"notifier-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "notifier", "--config", str(config),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log_path.open("wb"),
        env={**os.environ, "SLACK_BOT_TOKEN": TOKEN, "STEWARD_NOTIFIER_AUTH_TOKEN": AM_TOKEN})
    notifier = StewardProcess(process, port, log_path)
    started.append(notifier)
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{notifier.url}/readyz"),
                   timeout=30, what="notifier ready")
    except TimeoutError:
        raise AssertionError(f"notifier did not start:\n{notifier.log()[-3000:]}") from None
    return notifier


def depth(notifier: StewardProcess) -> float | None:
    with urllib.request.urlopen(f"{notifier.url}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), "steward_notifier_outbox_depth")


def kill(notifier: StewardProcess) -> None:
    notifier.process.send_signal(signal.SIGKILL)
    notifier.process.wait(10)


def test_killed_with_a_full_outbox_loses_nothing(tmp_path: Path, stub: SlackStub,
                                                 processes: list[StewardProcess]) -> None:
    down = stub.fail("status", status=503)
    first = start_notifier(tmp_path, stub, processes)
    for g in range(3):
        key = f"group-{g}"
        assert post(first.url, webhook([alert("A", hostname=f"n{g}")], group_key=key),
                    token=AM_TOKEN)[0] == 200
        assert post(first.url, webhook([alert("A", hostname=f"n{g}"),
                                        alert("B", hostname=f"n{g}")], group_key=key),
                    token=AM_TOKEN)[0] == 200
    stub.wait_for(lambda: down.hits > 0, timeout=10, what="a failed delivery attempt")
    assert depth(first) == 6
    kill(first)
    stub.clear_faults()

    second = start_notifier(tmp_path, stub, processes)
    stub.wait_for(lambda: depth(second) == 0, timeout=20, what="outbox drained")
    roots = stub.roots("#oncall")
    assert len(roots) == 3
    for root in roots:
        assert "*A*" in str(root.posted_blocks) and "*B*" in str(root.posted_blocks)
    assert second.stop() == 0  # SIGTERM: a clean exit
    assert '"msg": "notifier stopping"' in second.log()


def test_killed_between_slack_accepting_and_the_outbox_recording(
        tmp_path: Path, stub: SlackStub, processes: list[StewardProcess]) -> None:
    hold = stub.fail("hold", methods=["chat.postMessage"], times=1)
    first = start_notifier(tmp_path, stub, processes)
    lost = alert("GpuLost", hostname="gpu-node-1")
    assert post(first.url, webhook([lost]), token=AM_TOKEN)[0] == 200
    hold.wait_held()  # Slack has the message; the notifier is waiting for the answer
    assert post(first.url, webhook([lost, alert("Second", hostname="gpu-node-1")]),
                token=AM_TOKEN)[0] == 200
    kill(first)
    hold.release()
    assert len(stub.roots()) == 1

    second = start_notifier(tmp_path, stub, processes)
    stub.wait_for(lambda: depth(second) == 0, timeout=20, what="outbox drained")
    (root,) = stub.roots()  # found by its metadata, not posted again
    assert stub.calls("conversations.history")
    (reply,) = stub.replies(root)
    assert "Second" in reply.text
    assert len(root.updates) == 1 and "Second" in str(root.blocks)


def test_bad_config_is_one_line_and_exit_two(tmp_path: Path) -> None:
    config = tmp_path / "notifier.yaml"
    config.write_text(yaml.safe_dump({"state": {"url": f"sqlite:///{tmp_path / 's.db'}"}}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLACK_BOT_TOKEN", "STEWARD_NOTIFIER_AUTH_TOKEN")}
    result = subprocess.run([sys.executable, "-m", "agent.cli", "notifier", "--config",
                             str(config)], capture_output=True, text=True, timeout=30,
                            env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "steward: config error: slack.token: not set (set SLACK_BOT_TOKEN or slack.token_file)",
        "steward: config error: slack.default_channel: required by the notifier (alerts no "
        "route matches go there)",
        "steward: config error: notifier.auth_token_file: not set; the notifier does not run "
        "without a bearer token (set notifier.auth_token_file or STEWARD_NOTIFIER_AUTH_TOKEN, "
        "or notifier.allow_unauthenticated: true to accept anyone's webhooks)",
    ]
