"""Servers on this machine: a free port, an HTTP probe, polling until something holds,
stopping one.

For the simulated cluster, the demo and the tests, which start real servers on 127.0.0.1 and
must wait for them without fixed sleeps.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        with open(_EPHEMERAL_RANGE, encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port no one listens on, for a server started next.

    Taken below the kernel's ephemeral range: a port the kernel handed out (bind to 0) is
    also what it hands to outgoing connections, so between this check and the server's bind
    a client socket could take it ("address already in use", seen in CI). Random, so that
    processes choosing at once rarely meet; each choice is checked by binding it."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(_LOWEST, low) if low > _LOWEST + 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port below the ephemeral range")


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
