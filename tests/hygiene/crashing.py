"""Running ``steward hygiene`` in a child process and killing it: at a named crash point
(``crash_driver``), or from outside while a server's reply to it is held (``holding_proxy``).
Shared by the crash tests of the three jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from agent.sim.kube_api import KubeApiServer
from tests.support.holding_proxy import Hold

ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STEWARD_") and k != "KUBECONFIG"}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", **(extra or {})})
    return env


def kubeconfig(kube: KubeApiServer, path: Path, *, server: str | None = None) -> Path:
    """A kubeconfig for the stand-in, or for a proxy in front of it (``server``)."""
    kube.kubeconfig(path)
    if server is not None:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["clusters"][0]["cluster"]["server"] = server
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_config(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def steward(*args: str, log: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI, to the end."""
    with log.open("a", encoding="utf-8") as stderr:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                              env=child_env(), stdout=subprocess.PIPE, stderr=stderr,
                              text=True, timeout=timeout, check=False)


def killed_at(point: str, config: Path, *command: str, log: Path) -> int:
    """The hygiene command, SIGKILLed by its own engine at ``point``; its exit code."""
    with log.open("a", encoding="utf-8") as stderr:
        process = subprocess.run(
            [sys.executable, "-m", "tests.hygiene.crash_driver", point, str(config), *command],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr, timeout=120,
            check=False)
    return process.returncode


def killed_while_held(hold: Hold, *args: str, log: Path) -> None:
    """The real CLI, SIGKILLed once the server has answered ``hold``'s request and before
    the reply reaches it; then the held reply is dropped."""
    with log.open("a", encoding="utf-8") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                                   env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            hold.wait_held(90)
            process.send_signal(signal.SIGKILL)
            assert process.wait(30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            hold.released.set()
