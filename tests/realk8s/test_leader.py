"""Leader election of two real ``steward controller`` processes on a real API server, each
with the controller ServiceAccount's token (the chart's RBAC): one leads; a conflicting
writer takes the Lease and both stand down; kill -9 the leader and the other takes over
within the lease. Every Lease write the server got is accepted (MicroTime with six fraction
digits), and says who sent it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agent.clients.kubernetes.api import micro_time, user_agent
from tests.helm.chart import NAMESPACE, RELEASE, render
from tests.realk8s.cluster import RealCluster, service_account_user
from tests.realk8s.rbac import apply_chart_rbac
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, metric_value, wait_until

LEASE, RENEW, RETRY = 3, 2, 0.3
LEASE_NAME = f"{RELEASE}-controller"
CONTROLLER = service_account_user(NAMESPACE, f"{RELEASE}-controller")


def leading(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return metric_value(response.read().decode(), "steward_controller_leader") == 1
    except OSError:
        return False


@pytest.fixture
def controllers(real_k8s: RealCluster, tmp_path: Path
                ) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    apply_chart_rbac(real_k8s, render(require_binary("helm")))
    try:
        client.CoordinationV1Api(real_k8s.admin).delete_namespaced_lease(LEASE_NAME, NAMESPACE)
    except ApiException as exc:
        if exc.status != 404:
            raise
    token = real_k8s.token(NAMESPACE, f"{RELEASE}-controller")
    kubeconfig = real_k8s.write_kubeconfig(tmp_path / "controller.kubeconfig", token)
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"controller: {{lease_namespace: {NAMESPACE}, lease_name: {LEASE_NAME}, "
        f"lease_duration_seconds: {LEASE}, renew_deadline_seconds: {RENEW}, "
        f"retry_period_seconds: {RETRY}, collect_interval_seconds: 0.5}}\n"
        f"hygiene: {{idle_gpus: {{enabled: false}}}}\n", encoding="utf-8")
    processes: dict[int, subprocess.Popen[bytes]] = {}
    for name in ("ctl-a", "ctl-b"):
        port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name,
               "STEWARD_CONTROLLER__LISTEN": f"127.0.0.1:{port}",
               "STEWARD_STATE__URL": f"sqlite:///{tmp_path / name}.db"}
        processes[port] = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "controller", "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("wb"))
    try:
        for port in processes:
            wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"),  # type: ignore[misc]
                       timeout=30, what="controller ready")
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def take_lease(cluster: RealCluster, holder: str) -> None:
    leases = client.CoordinationV1Api(cluster.admin)
    lease = leases.read_namespaced_lease(LEASE_NAME, NAMESPACE)
    lease.spec.holder_identity = holder
    lease.spec.lease_duration_seconds = LEASE
    lease.spec.renew_time = micro_time(datetime.now(UTC))
    lease.spec.acquire_time = micro_time(lease.spec.acquire_time or datetime.now(UTC))
    leases.replace_namespaced_lease(LEASE_NAME, NAMESPACE, lease)


def test_conflicting_writer_and_kill_9(real_k8s: RealCluster,
                                       controllers: dict[int, subprocess.Popen[bytes]]) -> None:
    mark = real_k8s.audit_mark()
    ports = list(controllers)
    wait_until(lambda: sum(leading(p) for p in ports) == 1, timeout=15,
               what="exactly one leader")

    # A conflicting writer takes the Lease and keeps renewing it: both stand down, within
    # the renew deadline, and neither leads while it holds it.
    deadline = time.monotonic() + RENEW + 6
    stood_down_at = None
    while time.monotonic() < deadline:
        try:
            take_lease(real_k8s, "intruder")
        except ApiException as exc:
            assert exc.status == 409  # a controller's write got in between: take it again
            continue
        if stood_down_at is None and not any(leading(p) for p in ports):
            stood_down_at = time.monotonic()
        time.sleep(0.5)
    assert stood_down_at is not None, "a controller kept leading against the intruder"
    assert not any(leading(p) for p in ports)

    # The intruder stops: one takes over after the lease expires by its own clock.
    wait_until(lambda: sum(leading(p) for p in ports) == 1, timeout=LEASE + 10,
               what="a leader after the intruder left")
    leader = next(p for p in ports if leading(p))
    follower = next(p for p in ports if p != leader)
    controllers[leader].send_signal(signal.SIGKILL)  # no release
    killed = time.monotonic()
    wait_until(lambda: leading(follower), timeout=LEASE + 10, what="takeover after kill -9")
    assert time.monotonic() - killed <= LEASE + 2 * RETRY + 2.0

    lease = client.CoordinationV1Api(real_k8s.admin).read_namespaced_lease(LEASE_NAME,
                                                                           NAMESPACE)
    assert lease.spec.holder_identity in {"ctl-a", "ctl-b"}
    writes = [e for e in real_k8s.audit(since=mark, user=CONTROLLER)
              if e.resource == "leases" and e.verb in ("create", "update")]
    assert writes, "no Lease writes audited"
    # Accepted, or lost to a concurrent writer (409); never refused (400/403/422).
    assert {e.code for e in writes} <= {200, 201, 409}
    assert {e.user_agent for e in writes} == {user_agent("controller")}
