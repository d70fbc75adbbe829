"""State loss is loud, end to end: ``steward notifier``, ``steward hygiene run`` and
``steward controller`` with a store that was deleted, truncated or lost its write-ahead log
refuse to start with one line naming the store and ``--accept-empty-state``; with the flag
they start on an empty store and say so; a first start just works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.controller.hygiene import crashpoints
from agent.sim.kube_api import KubeApiServer
from agent.sim.slack_stub import SlackStub
from agent.state import CREATED_METRIC
from tests.notify.payloads import alert, post, webhook
from tests.support.net import free_port, metric_value
from tests.support.steward import StewardProcess, start_steward

pytestmark = pytest.mark.integration

SLACK_TOKEN = "xoxb-test"
AUTH = "webhook-secret"
LOSSES = ("deleted", "truncated", "wal-removed")


def lose(db: Path, how: str) -> None:
    wal = db.with_name(db.name + "-wal")
    assert wal.exists(), "the killed process left its write-ahead log"
    if how == "deleted":
        for path in (db, wal, db.with_name(db.name + "-shm")):
            path.unlink(missing_ok=True)
    elif how == "truncated":
        os.truncate(db, 0)
    else:
        wal.unlink()


def refused(result: subprocess.CompletedProcess[str], db: Path, how: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback, no log noise
    line = lines[0]
    assert line.startswith(f"steward: state store {db} was lost: ")
    assert {"deleted": "the database file is missing",
            "truncated": "the database file is empty",
            "wal-removed": "its write-ahead log state.db-wal is missing"}[how] in line
    assert "--accept-empty-state" in line


def steward(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


# -- the notifier ------------------------------------------------------------------------

@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub(tokens=(SLACK_TOKEN,)) as slack:
        yield slack


def notifier_config(workdir: Path, stub: SlackStub) -> Path:
    token = workdir / "auth-token"
    token.write_text(AUTH, encoding="utf-8")
    path = workdir / "notifier.yaml"
    path.write_text(yaml.safe_dump({
        "slack": {"api_url": stub.api_url, "default_channel": "#alerts"},
        "notifier": {"channel_pacing_seconds": 0.0, "auth_token_file": str(token)},
        "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
    }), encoding="utf-8")
    return path


def notifier_args(workdir: Path, stub: SlackStub, port: int, *extra: str) -> list[str]:
    return ["notifier", "--config", str(notifier_config(workdir, stub)),
            "--listen", f"127.0.0.1:{port}", *extra]


def start_notifier(workdir: Path, stub: SlackStub, started: list[StewardProcess],
                   *extra: str) -> StewardProcess:
    port = free_port()
    notifier = start_steward(workdir, "notifier", notifier_args(workdir, stub, port, *extra),
                             port=port, env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
    started.append(notifier)
    return notifier


def scrape(notifier: StewardProcess, name: str) -> float | None:
    with urllib.request.urlopen(f"{notifier.url}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), name)


@pytest.mark.parametrize("how", LOSSES)
def test_notifier_refuses_a_store_that_lost_acknowledged_webhooks(
        tmp_path: Path, stub: SlackStub, processes: list[StewardProcess], how: str) -> None:
    stub.fail("status", status=503)  # Slack down: acknowledged webhooks wait in the outbox
    first = start_notifier(tmp_path, stub, processes)  # a first start just works
    created = scrape(first, CREATED_METRIC)
    assert created is not None
    for n in range(5):
        status, _ = post(first.url, webhook([alert("GpuLost", hostname=f"node-{n}")],
                                            group_key=f"g{n}"), token=AUTH)
        assert status == 200
    assert scrape(first, "steward_notifier_outbox_depth") == 5
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    db = tmp_path / "state.db"
    lose(db, how)

    result = steward(*notifier_args(tmp_path, stub, free_port()),
                     env={"SLACK_BOT_TOKEN": SLACK_TOKEN})
    refused(result, db, how)

    second = start_notifier(tmp_path, stub, processes, "--accept-empty-state")
    assert '"msg": "state store loss accepted (--accept-empty-state)' in second.log()
    assert '"level": "error"' in second.log()
    assert scrape(second, "steward_notifier_outbox_depth") == 0
    after = scrape(second, CREATED_METRIC)
    if how == "wal-removed":
        assert after == created  # the database itself survived: the same store, older
    else:
        assert after is not None and after > created  # what the alert watches
    assert second.stop() == 0, second.log()[-3000:]
    # Accepted once: the next start is an ordinary one.
    third = start_notifier(tmp_path, stub, processes)
    assert "loss accepted" not in third.log()


# -- the hygiene store -------------------------------------------------------------------

def hygiene_config(workdir: Path, kube: KubeApiServer) -> Path:
    path = workdir / "steward.yaml"
    path.write_text(yaml.safe_dump({
        "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
        "kubernetes": {"kubeconfig": str(kube.kubeconfig(workdir / "kubeconfig"))},
        "controller": {"lease_namespace": "steward"},
    }), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", LOSSES)
def test_hygiene_run_refuses_a_store_that_lost_its_runs(tmp_path: Path, kube: KubeApiServer,
                                                       how: str) -> None:
    config = hygiene_config(tmp_path, kube)
    run = ("hygiene", "run", "stale-images", "--config", str(config), "--output", "json")
    first = steward(*run)
    assert first.returncode == 0, first.stderr  # a first start just works
    # Killed as a node dies, once the run is in the store (the crash driver injects the
    # checkpoint; product code never reads one from the environment).
    killed = subprocess.run([sys.executable, "-m", "tests.hygiene.crash_driver",
                             crashpoints.RUN_FINISHED, str(config), "plan", "stale-images"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL
    db = tmp_path / "state.db"
    lose(db, how)

    refused(steward(*run), db, how)
    restore = steward("hygiene", "restore", "stale-images", "r/x@sha256:0",
                      "--config", str(config))
    refused(restore, db, how)

    accepted = steward(*run, "--accept-empty-state")
    assert accepted.returncode == 0, accepted.stderr
    assert "state store loss accepted" in accepted.stderr
    assert steward(*run).returncode == 0


# -- the controller ----------------------------------------------------------------------

def test_controller_refuses_a_deleted_store(tmp_path: Path, kube: KubeApiServer) -> None:
    config = hygiene_config(tmp_path, kube)
    db = tmp_path / "state.db"

    def start(*extra: str) -> StewardProcess:
        port = free_port()
        return start_steward(tmp_path, "controller",
                             ["controller", "--config", str(config), *extra], port=port,
                             env={"STEWARD_CONTROLLER__LISTEN": f"127.0.0.1:{port}"})

    first = start()
    with urllib.request.urlopen(f"{first.url}/metrics", timeout=5) as response:
        created = metric_value(response.read().decode(), CREATED_METRIC)
    assert created is not None and db.exists()  # opened at start, not at the first job
    assert first.stop() == 0, first.log()[-3000:]
    db.unlink()

    result = steward("controller", "--config", str(config),
                     env={"STEWARD_CONTROLLER__LISTEN": f"127.0.0.1:{free_port()}"})
    refused(result, db, "deleted")

    second = start("--accept-empty-state")
    try:
        assert "state store loss accepted" in second.log()
    finally:
        assert second.stop() == 0, second.log()[-3000:]
