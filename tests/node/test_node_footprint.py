"""The node agent with a cluster configured never loads the official Kubernetes client
(``import kubernetes`` alone is ~60 MiB) nor grpcio: its pod watch is the thin client in
``agent.clients.kubernetes.rest``, its PodResources calls go over ``h2``. Proven on the
real process, not by importing modules here (this test process has loaded ``kubernetes``
already, for the stand-in)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from agent.clients.kubernetes import objects
from agent.localnet import stop_process
from agent.sim.kube_api import KubeApiServer
from tests.support.net import free_port, http_ok, metric_value, wait_until


def imported_modules(importtime_log: str) -> set[str]:
    """Every module ``python -X importtime`` reported loading (it logs each first import,
    at start-up or later, as it happens)."""
    modules = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


@pytest.mark.integration  # a steward node process and the API stand-in
def test_the_node_process_with_a_cluster_never_imports_kubernetes(tmp_path: Path) -> None:
    with KubeApiServer(bookmark_interval=0.2, namespaces=("default", "ml")) as kube:
        kube.create(objects.pod("from-the-api", "ml", node="gpu-node-7",
                                containers=[objects.container("img", gpus=1)],
                                status={"phase": "Running"}))
        port = free_port()
        config = tmp_path / "node.yaml"
        config.write_text("node: {collect_interval_seconds: 0.2}\n", encoding="utf-8")
        log_path = tmp_path / "node.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-X", "importtime", "-m", "agent.cli", "node", "--config",
                 str(config), "--gpu-backend", "sim", "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "KUBECONFIG": str(kube.kubeconfig(tmp_path / "kc")),
                     "NODE_NAME": "gpu-node-7"})
        try:
            url = f"http://127.0.0.1:{port}"

            def watched() -> bool:
                if not http_ok(f"{url}/readyz"):
                    return False
                with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                    body = response.read().decode()
                return (metric_value(body, "steward_pod_phase", pod="from-the-api") == 1
                        and metric_value(body, "steward_collector_up", collector="pods") == 1)

            wait_until(watched, timeout=30, what="the pod listed and watched through the API")
            # A watch that ended and resumed has run every path of the client once more.
            wait_until(lambda: kube.open_watches() == 1, timeout=10, what="watch open")
            kube.drop_watches()
            wait_until(watched, timeout=10, what="the watch resumed")
        finally:
            stop_process(process)
    modules = imported_modules(log_path.read_text(encoding="utf-8", errors="replace"))
    assert "agent.clients.kubernetes.rest" in modules  # the log is the node's imports
    assert "agent.node.pods" in modules
    official = sorted(m for m in modules if m == "kubernetes" or m.startswith("kubernetes."))
    assert official == [], official[:10]
    # Nor its HTTP stack: the thin client speaks http.client.
    assert "urllib3" not in modules
    # Nor grpcio (~14 MiB with the asyncio it loads): PodResources' two unary calls go over
    # h2 (agent.node.podresources.transport).
    assert "grpc" not in modules and "asyncio" not in modules, sorted(
        m for m in modules if m.startswith(("grpc", "asyncio")))[:10]
