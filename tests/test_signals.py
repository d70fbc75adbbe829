"""SIGTERM ends every long-running command (node, controller, notifier, demo) within a
bounded time: cleanly when it can, by the stop deadline when something hangs, at once on a
second signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from agent.signals import stop_on_signals
from agent.sim.kube_api import KubeApiServer
from agent.sim.slack_stub import SlackStub
from tests.notify.payloads import alert, post, webhook
from tests.support.net import free_port, wait_until
from tests.support.steward import start_steward

# A clean stop (no external call in flight) takes about a second; the bound leaves room on
# a loaded machine while staying well under the 20 s deadline.
CLEAN_STOP_SECONDS = 10
AUTH = "webhook-secret"


def run_script(body: str, *, send: int = 1, wait: float = 10
               ) -> tuple[int, float, str]:
    """A Python process that calls ``stop_on_signals`` and then ignores the stop event;
    SIGTERM ``send`` times once it is ready. (exit code, seconds after the first, stderr)."""
    script = textwrap.dedent("""
        import logging, sys, threading, time
        from agent.log import configure_logging
        from agent.signals import stop_on_signals
        configure_logging()
        stop = threading.Event()
    """) + textwrap.dedent(body) + textwrap.dedent("""
        print("ready", flush=True)
        time.sleep(120)  # a stop that never finishes
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    started = time.monotonic()
    for _ in range(send):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    _, stderr = process.communicate(timeout=wait)
    return process.returncode, time.monotonic() - started, stderr


def test_a_stop_that_hangs_ends_at_the_deadline() -> None:
    code, seconds, stderr = run_script("stop_on_signals(stop, grace=1.0)\n")
    assert code == 1
    assert 0.9 < seconds < 4
    assert "exiting without a clean stop: still running 1 s after SIGTERM" in stderr


def test_a_second_signal_ends_it_at_once() -> None:
    code, seconds, stderr = run_script("stop_on_signals(stop, grace=60)\n", send=2)
    assert code == 1 and seconds < 3
    assert "exiting without a clean stop: a second SIGTERM" in stderr


def test_cleanup_runs_before_a_forced_exit() -> None:
    code, _, stderr = run_script(
        "stop_on_signals(stop, grace=0.5, on_overdue=lambda: print('killed the children',"
        " file=sys.stderr, flush=True))\n")
    assert code == 1 and "killed the children" in stderr


def test_signals_set_the_stop_event() -> None:
    stop = threading.Event()
    exits: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert stop_on_signals(stop, grace=0.3, exit_now=exits.append)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(stop.is_set, timeout=2, what="stop set")
        wait_until(lambda: exits == [1], timeout=2, what="the deadline")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(stop_on_signals(threading.Event())))
    thread.start()
    thread.join()
    assert result == [False]


# -- every long-running command, as a process ----------------------------------------------

@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub(tokens=("xoxb-test",)) as slack:
        yield slack


def command(name: str, workdir: Path, port: int, *, stub: SlackStub,
            kube: KubeApiServer) -> tuple[list[str], dict[str, str]]:
    state = {"url": f"sqlite:///{workdir / 'state.db'}"}
    if name == "node":
        return ["node", "--gpu-backend", "sim", "--listen", f"127.0.0.1:{port}"], \
            {"KUBECONFIG": ""}
    if name == "controller":
        config = workdir / "controller.yaml"
        config.write_text(yaml.safe_dump({
            "state": state, "controller": {"lease_namespace": "steward",
                                           "listen": f"127.0.0.1:{port}"},
            "kubernetes": {"kubeconfig": str(kube.kubeconfig(workdir / "kubeconfig"))}}))
        return ["controller", "--config", str(config)], {}
    config = workdir / "notifier.yaml"
    token = workdir / "auth-token"
    token.write_text(AUTH, encoding="utf-8")
    config.write_text(yaml.safe_dump({
        "state": state, "slack": {"api_url": stub.api_url, "default_channel": "#alerts"},
        "notifier": {"channel_pacing_seconds": 0.0, "auth_token_file": str(token)}}))
    return ["notifier", "--config", str(config), "--listen", f"127.0.0.1:{port}"], \
        {"SLACK_BOT_TOKEN": "xoxb-test"}


def start(name: str, workdir: Path, *, stub: SlackStub, kube: KubeApiServer,
          ready: bool = True) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    args, env = command(name, workdir, port, stub=stub, kube=kube)
    started = start_steward(workdir, name, args, port=port, env=env, ready=ready)
    return started.process, port, started.log_path


def stopped_within(process: subprocess.Popen[bytes], seconds: float) -> float:
    started = time.monotonic()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running {seconds} s after SIGTERM") from None
    return time.monotonic() - started


@pytest.mark.integration
@pytest.mark.parametrize("name", ["node", "controller", "notifier"])
def test_sigterm_stops_each_command_cleanly(name: str, tmp_path: Path, stub: SlackStub,
                                            kube: KubeApiServer) -> None:
    process, _, log = start(name, tmp_path, stub=stub, kube=kube)
    process.send_signal(signal.SIGTERM)
    stopped_within(process, CLEAN_STOP_SECONDS)
    assert process.returncode == 0, log.read_text()[-2000:]
    assert '"msg": "stopping", "signal": "SIGTERM"' in log.read_text()


@pytest.mark.integration
@pytest.mark.parametrize("name", ["node", "controller", "notifier"])
@pytest.mark.parametrize("delay", [0.2, 0.5, 1.0])
def test_sigterm_during_start_up_still_ends_it(name: str, delay: float, tmp_path: Path,
                                                stub: SlackStub, kube: KubeApiServer) -> None:
    process, _, log = start(name, tmp_path, stub=stub, kube=kube, ready=False)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    stopped_within(process, CLEAN_STOP_SECONDS)
    # Before the handlers exist the default action ends it (-15); after, a clean 0.
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]


@pytest.mark.integration
def test_notifier_stuck_in_a_slack_call_stops_within_the_bound(
        tmp_path: Path, stub: SlackStub, kube: KubeApiServer) -> None:
    hold = stub.fail("hold", methods=["chat.postMessage"])
    process, port, log = start("notifier", tmp_path, stub=stub, kube=kube)
    try:
        assert post(f"http://127.0.0.1:{port}", webhook([alert("GpuLost")]), token=AUTH)[0] == 200
        hold.wait_held(10)  # Slack has the call and does not answer
        process.send_signal(signal.SIGTERM)
        # The Slack client's own timeout (10 s) ends the call, or the 20 s deadline does.
        seconds = stopped_within(process, 25)
        assert seconds < 21, log.read_text()[-2000:]
    finally:
        hold.release()


@pytest.mark.integration
def test_a_second_sigterm_ends_a_stuck_notifier_at_once(tmp_path: Path, stub: SlackStub,
                                                        kube: KubeApiServer) -> None:
    hold = stub.fail("hold", methods=["chat.postMessage"])
    process, port, log = start("notifier", tmp_path, stub=stub, kube=kube)
    try:
        assert post(f"http://127.0.0.1:{port}", webhook([alert("GpuLost")]), token=AUTH)[0] == 200
        hold.wait_held(10)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert stopped_within(process, 3) < 3
        assert process.returncode == 1
        assert "exiting without a clean stop: a second SIGTERM" in log.read_text()
    finally:
        hold.release()


@pytest.mark.integration
def test_sigterm_stops_the_demo_and_every_child(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "KUBECONFIG")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "300",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env)
    assert demo.stdout is not None
    # With Prometheus the demo watches for its alerts (without, it reports what it cannot
    # show and ends at once): stopped while watching, every child is up.
    for line in demo.stdout:
        if line.startswith("== Watching"):
            break
    else:
        pytest.fail("the demo ended without watching: are prometheus and "
                    "prometheus-alertmanager installed (scripts/install-test-deps.sh)?")
    children = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(out)]
    assert len(children) >= 4  # two nodes, the notifier, the controller
    started = time.monotonic()
    demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=60)
    assert time.monotonic() - started < 20
    assert demo.returncode == 130
    assert "== Stopping" in rest
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
