"""Steward's own processes started by tests: the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.localnet import stop_process
from tests.support.net import free_port, http_ok, wait_until


@dataclass
class StewardProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


def start_steward(workdir: Path, name: str, args: list[str], *, port: int,
                  env: dict[str, str] | None = None, ready: bool = True) -> StewardProcess:
    """``steward ARGS`` in a subprocess, its stderr in ``workdir/NAME-PORT.log``; returns
    once ``/readyz`` on ``port`` answers 200 (at once with ``ready=False``)."""
    log_path = workdir / f"{name}-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args],
        stdout=subprocess.DEVNULL, stderr=log_path.open("wb"),
        env={**os.environ, **(env or {})},
    )
    started = StewardProcess(process, port, log_path)
    if not ready:
        return started
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{started.url}/readyz"),
                   timeout=30, what=f"steward {name} ready")
    except TimeoutError:
        started.stop()
        raise AssertionError(f"steward {name} did not get ready:\n"
                             f"{started.log()[-3000:]}") from None
    return started


def start_node(workdir: Path, *, config: str = "", env: dict[str, str] | None = None,
               args: tuple[str, ...] = ("--gpu-backend", "sim")) -> StewardProcess:
    """``steward node`` on a free port; returns once /readyz answers 200."""
    port = free_port()
    config_path = workdir / f"node-{port}.yaml"
    config_path.write_text(config, encoding="utf-8")
    return start_steward(workdir, "node", ["node", "--config", str(config_path),
                                           "--listen", f"127.0.0.1:{port}", *args],
                         port=port, env=env)
