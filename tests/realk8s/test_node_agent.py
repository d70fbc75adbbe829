"""``steward node`` against a real API server, with the node ServiceAccount's own token (the
chart's RBAC): its own node's pods only, crash loops and OOM kills from real pod status,
deletion with a grace period, a reconnect without a relist, an API server restart, and a
410 after an etcd compaction."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client

from agent.clients.kubernetes.api import timestamp, user_agent
from tests.helm.chart import NAMESPACE, RELEASE, render
from tests.realk8s import workloads as w
from tests.realk8s.cluster import RealCluster, TcpProxy, service_account_user
from tests.realk8s.rbac import apply_chart_rbac
from tests.support.binaries import require_binary
from tests.support.net import metric_value, wait_until
from tests.support.steward import StewardProcess, start_node

NS = "na-ml"
MINE, OTHER = "na-gpu-1", "na-gpu-2"
NODE_USER = service_account_user(NAMESPACE, f"{RELEASE}-node")


@dataclass
class Agent:
    process: StewardProcess
    proxy: TcpProxy
    started: int  # where the audit log ended when it started

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.process.url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def value(self, name: str, **labels: str) -> float | None:
        return metric_value(self.metrics(), name, **labels)

    def pods_up(self) -> bool:
        return self.value("steward_collector_up", collector="pods") == 1


@pytest.fixture(scope="module")
def agent(real_k8s: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    helm = require_binary("helm")
    apply_chart_rbac(real_k8s, render(helm))
    real_k8s.namespace(NS)
    for node in (MINE, OTHER):
        real_k8s.node(node)
    workdir = tmp_path_factory.mktemp("node-agent")
    proxy = TcpProxy(real_k8s.port)
    token = real_k8s.token(NAMESPACE, f"{RELEASE}-node")
    kubeconfig = real_k8s.write_kubeconfig(workdir / "node.kubeconfig", token, port=proxy.port)
    started = real_k8s.audit_mark()
    process = start_node(workdir, env={"KUBECONFIG": str(kubeconfig), "NODE_NAME": MINE},
                         config="node: {collect_interval_seconds: 0.2}\n")
    try:
        yield Agent(process, proxy, started)
    finally:
        process.stop()
        proxy.close()


def core(cluster: RealCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.admin)


def container_status(*, waiting: str | None = None, restarts: int = 0,
                     terminated: str | None = None, finished: str | None = None
                     ) -> dict[str, object]:
    status: dict[str, object] = {
        "name": "main", "image": "registry.example/app:1", "imageID": "", "ready": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": waiting}} if waiting else
        {"running": {"startedAt": "2026-11-22T10:00:00Z"}}}
    if terminated:
        status["lastState"] = {"terminated": {"reason": terminated, "exitCode": 137,
                                              "startedAt": "2026-11-22T09:00:00Z",
                                              "finishedAt": finished}}
    return status


def set_status(cluster: RealCluster, name: str, *, phase: str = "Running",
               **container: object) -> None:
    core(cluster).patch_namespaced_pod_status(name, NS, {"status": {
        "phase": phase, "containerStatuses": [container_status(**container)]}})  # type: ignore[arg-type]


def test_own_node_only_with_real_status(real_k8s: RealCluster, agent: Agent) -> None:
    w.create(real_k8s.admin, w.pod("crashy", NS, node=MINE, gpus=1))
    w.create(real_k8s.admin, w.pod("oomed", NS, node=MINE))
    w.create(real_k8s.admin, w.pod("elsewhere", NS, node=OTHER, gpus=1))
    set_status(real_k8s, "crashy", waiting="CrashLoopBackOff", restarts=5)
    finished = "2026-11-22T09:59:30Z"
    set_status(real_k8s, "oomed", terminated="OOMKilled", finished=finished, restarts=1)

    wait_until(lambda: agent.value("steward_container_waiting", pod="crashy",
                                   reason="CrashLoopBackOff") == 1, timeout=15,
               what="crash loop exported")
    assert agent.value("steward_container_restarts", pod="crashy") == 5
    assert agent.value("steward_pod_gpu_requested", pod="crashy") == 1
    wait_until(lambda: agent.value("steward_container_last_terminated_timestamp_seconds",
                                   pod="oomed", reason="OOMKilled") == timestamp(finished),
               timeout=15, what="OOM kill exported")
    assert agent.value("steward_pod_phase", pod="elsewhere") is None
    assert agent.pods_up()
    # It asked for its own node's pods only, with its own token and name (since it started:
    # a watch is audited when it ends).
    requests = real_k8s.audit(since=agent.started, user=NODE_USER)
    assert requests and all(e.resource == "pods" and "fieldSelector=spec.nodeName%3D" + MINE
                            in e.uri for e in requests)
    assert {e.user_agent for e in requests} == {user_agent("node")}
    assert all(e.code == 200 for e in requests)


def test_deletion_with_grace_is_exported_until_the_pod_is_gone(real_k8s: RealCluster,
                                                               agent: Agent) -> None:
    w.create(real_k8s.admin, w.pod("draining", NS, node=MINE, gpus=2))
    set_status(real_k8s, "draining")
    wait_until(lambda: agent.value("steward_pod_phase", pod="draining", phase="Running") == 1,
               timeout=15, what="running pod")
    # No kubelet here: a graceful delete only sets deletionTimestamp (now + grace), and the
    # pod stays Terminating, phase Running, GPUs held.
    core(real_k8s).delete_namespaced_pod("draining", NS, grace_period_seconds=120)
    pod = core(real_k8s).read_namespaced_pod("draining", NS)
    assert pod.metadata.deletion_timestamp is not None
    wait_until(lambda: agent.value("steward_pod_deletion_timestamp_seconds",
                                   pod="draining") == pod.metadata.deletion_timestamp.timestamp(),
               timeout=15, what="deletion timestamp exported")
    assert agent.value("steward_pod_phase", pod="draining", phase="Running") == 1
    assert pod.metadata.deletion_timestamp.timestamp() > datetime.now(UTC).timestamp() + 60
    core(real_k8s).delete_namespaced_pod("draining", NS, grace_period_seconds=0)
    wait_until(lambda: agent.value("steward_pod_phase", pod="draining") is None, timeout=15,
               what="deleted pod gone")
    assert agent.value("steward_pod_deletion_timestamp_seconds", pod="draining") is None


def test_reconnect_without_relist_is_healthy_at_once(real_k8s: RealCluster,
                                                     agent: Agent) -> None:
    """The bug: after a reconnect that resumes the watch (no relist), collector_up stayed 0
    until the next event or bookmark, and a real server sends bookmarks minutes apart."""
    w.create(real_k8s.admin, w.pod("steady", NS, node=MINE))
    wait_until(lambda: agent.value("steward_pod_phase", pod="steady") == 1, timeout=15,
               what="pod seen")
    mark = real_k8s.audit_mark()
    assert agent.proxy.cut() >= 1
    wait_until(lambda: "Connection" in agent.process.log() or not agent.pods_up(), timeout=10,
               what="the cut noticed")
    started = time.monotonic()
    wait_until(agent.pods_up, timeout=15, what="healthy after the reconnect")
    recovered = time.monotonic() - started
    assert recovered < 10, recovered
    after = real_k8s.audit(since=mark, user=NODE_USER)
    # Resumed: a watch from its resourceVersion, no new list.
    assert [e.verb for e in after if e.verb == "list"] == []
    assert any(e.verb == "watch" and "resourceVersion=" in e.uri for e in after)


def test_api_server_restart(real_k8s: RealCluster, agent: Agent) -> None:
    w.create(real_k8s.admin, w.pod("before-restart", NS, node=MINE))
    wait_until(lambda: agent.value("steward_pod_phase", pod="before-restart") == 1,
               timeout=15, what="pod seen")
    real_k8s.restart_apiserver()
    w.create(real_k8s.admin, w.pod("after-restart", NS, node=MINE))
    wait_until(lambda: agent.value("steward_pod_phase", pod="after-restart") == 1,
               timeout=60, what="pod created after the restart")
    wait_until(agent.pods_up, timeout=15, what="healthy after the restart")
    assert agent.value("steward_pod_phase", pod="before-restart") == 1


def test_410_after_an_etcd_compaction_relists(real_k8s: RealCluster, agent: Agent) -> None:
    w.create(real_k8s.admin, w.pod("doomed", NS, node=MINE))
    wait_until(lambda: agent.value("steward_pod_phase", pod="doomed") == 1, timeout=15,
               what="pod seen")
    mark = real_k8s.audit_mark()
    os.kill(agent.process.process.pid, signal.SIGSTOP)  # frozen at its resourceVersion
    # Its watch connection is cut too: a stopped process still receives into its socket
    # buffer, and events buffered there would carry it past the compaction on resume.
    agent.proxy.cut()
    try:
        core(real_k8s).delete_namespaced_pod("doomed", NS, grace_period_seconds=0)
        w.create(real_k8s.admin, w.pod("born-while-frozen", NS, node=MINE))
        real_k8s.compact_etcd()
        # A fresh watch cache starts after the compaction: the agent's resourceVersion is
        # too old for it and for etcd.
        real_k8s.restart_apiserver()
    finally:
        os.kill(agent.process.process.pid, signal.SIGCONT)
    wait_until(lambda: agent.value("steward_pod_phase", pod="born-while-frozen") == 1
               and agent.value("steward_pod_phase", pod="doomed") is None,
               timeout=60, what="relisted after 410")
    wait_until(agent.pods_up, timeout=15, what="healthy after the relist")
    after = real_k8s.audit(since=mark, user=NODE_USER)
    assert any(e.verb == "list" for e in after), "no relist"
    assert "410" in agent.process.log() or "Gone" in agent.process.log() or any(
        e.code == 410 for e in after)


def node_rss_bytes(agent: Agent) -> int:
    import psutil

    return int(psutil.Process(agent.process.process.pid).memory_info().rss)


def test_memory_request_covers_the_measured_steady_state(real_k8s: RealCluster,
                                                          agent: Agent) -> None:
    """The chart's memory request for the node agent must cover what it uses with a
    cluster: a node's worth of pods (110) watched, collected every 0.2 s."""
    import yaml

    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "helm" / "steward"
                             / "values.yaml").read_text(encoding="utf-8"))
    request = values["node"]["resources"]["requests"]["memory"]
    assert request.endswith("Mi")
    request_bytes = int(request[:-2]) * 1024 * 1024
    for i in range(110):
        w.create(real_k8s.admin, w.pod(f"load-{i}", NS, node=MINE, gpus=i % 2))
    wait_until(lambda: agent.value("steward_pod_phase", pod="load-109") is not None,
               timeout=60, what="all pods seen")
    samples = []
    for _ in range(20):
        samples.append(node_rss_bytes(agent))
        time.sleep(0.5)
    steady = max(samples)
    print(f"node agent RSS with 110 pods on a real API server: max {steady / 2**20:.1f} MiB "
          f"over 10 s; request {request}")
    assert steady < request_bytes * 0.9, (steady / 2**20, request)
