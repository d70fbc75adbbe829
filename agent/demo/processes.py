"""The demo's child processes: started in their own sessions, stopped in reverse order.

Each child gets its own process group so that Ctrl-C reaches the demo alone, which then
stops every child cleanly (SIGTERM, then SIGKILL after a grace period) and prints where
things are, instead of children dying mid-write in whatever order the terminal chose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.localnet import free_port, http_ok, wait_until

__all__ = ["Child", "Children", "free_port"]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str | None = None

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Children:
    """Every process the demo started; ``stop_all`` is safe to call more than once."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              url: str | None = None, ready: str | None = None,
              timeout: float = 30.0) -> Child:
        log = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True, cwd=self.workdir)
        child = Child(name, process, log, url)
        self.children.append(child)
        if ready is not None:
            self.wait_ready(child, ready, timeout=timeout)
        return child

    @staticmethod
    def wait_ready(child: Child, ready: str, *, timeout: float = 30.0) -> None:
        """Until ``ready`` answers 2xx; a child that exits or hangs is an error with the
        end of its log."""
        try:
            wait_until(lambda: child.alive() and http_ok(ready), timeout=timeout,
                       what=f"{child.name} ready at {ready}")
        except TimeoutError as exc:
            tail = child.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{child.name} did not start ({exc}); its log ends:\n{tail}") \
                from None

    def steward(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
                ready: str | None = None, timeout: float = 30.0) -> Child:
        """``steward ARGS`` as a child, with this interpreter (the demo's own install)."""
        return self.start(name, [sys.executable, "-m", "agent.cli", *args], env=env,
                          ready=ready, timeout=timeout)

    def stop_all(self, *, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
