"""The fast lane's guard (tests/support/fast_lane.py): what counts as starting a real server,
and that a test doing so fails in the lane whatever catches the error on the way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fast_lane import LANE_VARIABLE, server_started_by

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.mark.parametrize(("argv", "server"), [
    (["/usr/bin/prometheus", "--config.file=p.yml"], "prometheus"),
    (["prometheus-alertmanager", "--config.file=a.yml"], "prometheus-alertmanager"),
    (["/usr/bin/docker-registry", "serve", "c.yml"], "docker-registry"),
    (["/usr/lib/postgresql/16/bin/pg_ctl", "-D", "data", "start"], "pg_ctl"),
    (["etcd", "--name", "x"], "etcd"),
    (["/root/.cache/steward-k8s/bin/kube-apiserver", "--etcd-servers=x"], "kube-apiserver"),
    (["chromium", "--headless"], "chromium"),
    ([PY, "-m", "agent.cli", "notifier", "--config", "n.yaml"], "steward notifier"),
    ([PY, "-m", "agent.cli", "node", "--gpu-backend", "sim"], "steward node"),
    (["/venv/bin/steward", "controller", "--config", "c.yaml"], "steward controller"),
    ([PY, "-m", "agent.cli", "demo", "--no-prometheus"], "steward demo"),
    (["make", "demo"], "make demo"),
])
def test_servers_are_recognised(argv: list[str], server: str) -> None:
    assert server_started_by(argv) == server


def test_a_steward_server_command_waited_out_is_a_one_shot() -> None:
    """``subprocess.run(["steward", "notifier", "--config", "bad.yaml"])`` exits at once on
    the bad config; a Prometheus is a server even so."""
    argv = [PY, "-m", "agent.cli", "notifier", "--config", "bad.yaml"]
    assert server_started_by(argv, waited=True) is None
    assert server_started_by(["prometheus", "--version"], waited=True) == "prometheus"


@pytest.mark.parametrize("argv", [
    ["promtool", "check", "rules", "r.yaml"],
    ["helm", "template", "helm/steward"],
    ["amtool", "check-config", "a.yml"],
    [PY, "-m", "agent.cli", "build", "--check"],
    [PY, "-m", "agent.cli", "hygiene", "run", "idle-gpus"],
    [PY, "-m", "agent.cli", "report", "finops", "--week", "2026-W48"],
    [PY, "-c", "import agent.state"],
    ["make", "lint"],
    [],
])
def test_one_shot_commands_are_allowed(argv: list[str]) -> None:
    assert server_started_by(argv) is None


INNER = '''
import subprocess, sys

import pytest


def test_spawns_a_server_and_swallows_the_error():
    try:
        subprocess.Popen(["prometheus", "--version"])
    except Exception:
        pass


def test_starts_a_steward_server():
    server = subprocess.Popen([sys.executable, "-m", "agent.cli", "notifier", "--help"])
    server.wait()


@pytest.fixture(scope="session")
def moto():
    from agent.sim.moto import running_moto
    with running_moto() as server:
        yield server


def test_starts_moto(moto):
    pass


def test_runs_one_shot_commands():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
    help = subprocess.run([sys.executable, "-m", "agent.cli", "notifier", "--help"],
                          capture_output=True)
    assert help.returncode == 0


@pytest.mark.integration
def test_marked_and_left_out():
    subprocess.Popen(["prometheus", "--version"])
'''


@pytest.mark.slow  # a pytest run in a subprocess for each lane
@pytest.mark.parametrize("lane", ["fast", ""])
def test_the_lane_fails_tests_that_start_servers(tmp_path: Path, lane: str) -> None:
    """The same tests under the guard: in the fast lane the three that start a server fail
    (one through a session fixture, one that caught the error itself) and the others pass;
    outside it the guard is off and nothing is refused."""
    (tmp_path / "test_probe.py").write_text(INNER, encoding="utf-8")
    env = {**os.environ, LANE_VARIABLE: lane}
    # Outside the lane moto would really start: not this test's business.
    only = [] if lane else ["-k", "not moto"]
    result = subprocess.run(
        [PY, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-q", "-p", "no:cacheprovider",
         "-p", "tests.support.fast_lane", "-m", "not integration", *only,
         str(tmp_path / "test_probe.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = result.stdout
    if lane:
        assert result.returncode == 1, out
        for name in ("spawns_a_server_and_swallows_the_error", "starts_a_steward_server",
                     "starts_moto"):
            assert f"::test_{name} - " in out, out
        assert "starts a real server (prometheus)" in out
        assert "starts a real server (steward notifier)" in out
        assert "starts a real server (moto)" in out
        assert "1 passed" in out and "1 deselected" in out, out
    else:
        assert result.returncode == 0, out
        assert "3 passed" in out and "2 deselected" in out, out
