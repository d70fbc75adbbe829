"""Two real ``steward controller`` processes against the API stand-in: one leads; kill it
(SIGKILL, no release) and the other takes over within the lease duration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.sim.kube_api import KubeApiServer
from tests.support.net import free_port, http_ok, metric_value, wait_until

LEASE, RENEW, RETRY = 3, 2, 0.3


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def leading(port: int) -> bool:
    try:
        return metric_value(metrics(port), "steward_controller_leader") == 1
    except OSError:
        return False


@pytest.mark.integration
def test_one_leader_and_failover_after_sigkill(kube: KubeApiServer, tmp_path: Path) -> None:
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"controller: {{lease_namespace: steward, lease_duration_seconds: {LEASE}, "
        f"renew_deadline_seconds: {RENEW}, retry_period_seconds: {RETRY}, "
        f"collect_interval_seconds: 0.5}}\nstate: {{url: 'sqlite:///{tmp_path / 's.db'}'}}\n",
        encoding="utf-8")
    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for name in ("ctl-a", "ctl-b"):
            port = free_port()
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name}
            processes[port] = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "controller", "--config", str(config)],
                env={**env, "STEWARD_CONTROLLER__LISTEN": f"127.0.0.1:{port}"},
                stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("wb"))
        for port in processes:
            wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"),  # type: ignore[misc]
                       timeout=30, what="controller ready")
        wait_until(lambda: sum(leading(p) for p in processes) == 1, timeout=15,
                   what="exactly one leader")
        leader = next(p for p in processes if leading(p))
        follower = next(p for p in processes if p != leader)
        # The leader runs the cluster collectors; the follower does not, and says nothing
        # about them (no failing collector_up on followers).
        wait_until(lambda: metric_value(metrics(leader), "steward_collector_up",
                                        collector="pipelines") == 1, timeout=10,
                   what="pipelines collector on the leader")
        assert metric_value(metrics(follower), "steward_collector_up",
                            collector="pipelines") is None
        processes[leader].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: leading(follower), timeout=LEASE + 5, what="takeover")
        # Expiry counts from the follower's last observed renewal (<= one retry before
        # the kill), plus one retry period to notice.
        assert time.monotonic() - killed <= LEASE + 2 * RETRY + 1.0
        wait_until(lambda: metric_value(metrics(follower), "steward_collector_up",
                                        collector="pipelines") == 1, timeout=10,
                   what="pipelines collector on the new leader")
        lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] in {"ctl-a", "ctl-b"}
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)
    # the survivor released the lease on SIGTERM
    lease = kube.get("coordination.k8s.io/v1", "Lease", "steward", "steward-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] in ("", None)
