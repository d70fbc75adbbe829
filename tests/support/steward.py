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


def start_node(workdir: Path, *, config: str = "", env: dict[str, str] | None = None,
               args: tuple[str, ...] = ("--gpu-backend", "sim")) -> StewardProcess:
    """``steward node`` on a free port; returns once /readyz answers 200."""
    port = free_port()
    config_path = workdir / f"node-{port}.yaml"
    config_path.write_text(config, encoding="utf-8")
    log_path = workdir / f"node-{port}.log"
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "node", "--config", str(config_path),
         "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.DEVNULL, stderr=log_path.open("wb"), env=full_env,
    )
    node = StewardProcess(process, port, log_path)
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{node.url}/readyz"),
                   timeout=30, what="steward node ready")
    except TimeoutError:
        node.stop()
        raise AssertionError(f"steward node did not get ready:\n{node.log()[-3000:]}") from None
    return node
