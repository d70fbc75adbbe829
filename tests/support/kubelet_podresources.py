"""The kubelet's own PodResources gRPC server (tests/support/kubelet_podresources/main.go, built
by ``scripts/real-k8s.sh build-podresources``) on a fresh unix socket, answering from state
the test sets between calls.

Where ``tests/support/podresources_server.py`` is a grpcio server shaped like the API, this
runs what production runs: the kubelet's ``ListenAndServePodResources`` with its rate limiter
(100 calls/s, burst 10), its listener and its ``List`` / ``GetAllocatableResources``, which
answer one ``ContainerDevices`` per device ID, in random order.

A missing or stale binary fails the test with ``CI=true`` and skips it elsewhere, with the
build command in the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.binaries import in_ci
from tests.support.podresources_server import Pod

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-k8s.sh"
SOURCE = ROOT / "tests" / "support" / "kubelet_podresources" / "main.go"
BUILD_COMMAND = "scripts/real-k8s.sh build-podresources"


def pod_uid(pod: Pod) -> str:
    # The Pod dataclass has no UID; the kubelet keys devices by it, so derive a stable one.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod/{pod.namespace}/{pod.name}"))


def state_document(pods: list[Pod], allocatable: dict[str, list[str]],
                   delay_seconds: float = 0) -> dict[str, Any]:
    return {
        "pods": [
            {"namespace": p.namespace, "name": p.name, "uid": pod_uid(p),
             "containers": [{"name": c.name, "devices": c.devices, "cpu_ids": c.cpu_ids}
                            for c in p.containers]}
            for p in pods
        ],
        "allocatable": allocatable,
        "delay_seconds": delay_seconds,
    }


def require_binary() -> Path:
    """The built server, or fail (CI) / skip (elsewhere) the calling test."""
    out = subprocess.run([str(SCRIPT), "bin-dir"], capture_output=True, text=True, check=True)
    binary = Path(out.stdout.strip()) / "kubelet-podresources"
    problem = None
    if not binary.is_file():
        problem = f"{binary} is missing"
    else:
        # The script stamps the binary with main.go's hash; worktrees share the cache, so a
        # binary built from another main.go must not pass for this one.
        stamp = binary.with_name(binary.name + ".stamp")
        built_from = stamp.read_text().split()[0] if stamp.is_file() else ""
        if built_from != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
            problem = f"{binary} was built from another {SOURCE.relative_to(ROOT)}"
    if problem is not None:
        message = f"kubelet PodResources server: {problem}; run {BUILD_COMMAND}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


class KubeletPodResources:
    """One ``kubelet-podresources`` process; ``restart()`` replaces it on the same socket."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        # Short on purpose: a unix socket path must fit in 108 bytes.
        self.socket_path = str(directory / "kubelet.sock")
        self.state_path = directory / "state.json"
        self.log_path = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.set([], {})

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def set(self, pods: list[Pod], allocatable: dict[str, list[str]],
            delay_seconds: float = 0) -> None:
        """The node the next call sees (the server reads the file on every call)."""
        document = state_document(pods, allocatable, delay_seconds)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document))
        # Atomic: a call in flight reads the old node or the new one, never half a file.
        os.replace(tmp, self.state_path)

    def start(self) -> None:
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--socket", self.socket_path, "--state", str(self.state_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self._wait_listening(self.process)

    def stop(self) -> None:
        """SIGTERM, as a kubelet stopped by systemd gets: the socket file stays behind (the
        kubelet does not remove it; the next one unlinks it before listening)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def open_sockets(self) -> set[str]:
        """The unix sockets the server process holds open (``socket:[inode]``): its listener
        plus one per client connection, read from /proc: how a test sees connection reuse
        from outside the client."""
        sockets = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:
                continue  # closed while listing
            if target.startswith("socket:"):
                sockets.add(target)
        return sockets

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_listening(self, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        # The listener is created under a temporary name and renamed onto the socket path, so
        # a connect() that succeeds reaches the new server, never the stale file of the last.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kubelet-podresources exited with {process.returncode}:\n"
                                   f"{self.log_tail()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.socket_path)
                    return
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"kubelet-podresources not listening after {timeout}s:\n"
                           f"{self.log_tail()}")


@contextmanager
def kubelet_podresources() -> Iterator[KubeletPodResources]:
    binary = require_binary()
    directory = Path(tempfile.mkdtemp(prefix="steward-kpr-"))
    server = KubeletPodResources(binary, directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
