"""Servers on this machine: a free port, an HTTP probe, polling until something holds,
stopping one.

For the simulated cluster, the demo and the tests, which start real servers on 127.0.0.1 and
must wait for them without fixed sleeps.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05,
               what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(process: subprocess.Popen[Any], *, grace: float = 10.0) -> int:
    """Stop a server: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds.
    Returns its exit code; a process that already exited is left as it is."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
