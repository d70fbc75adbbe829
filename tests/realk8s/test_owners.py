"""Device health from pod status, the owners of a workload and the node's remediation state,
on a real API server (kube-apiserver 1.36), each component with its chart ServiceAccount's
own token, read by a real Prometheus evaluating the shipped rules.

A Deployment's pod (made by the real ReplicaSet controller, so its owner chain and
``pod-template-hash`` are the real ones) is bound to a node and its status written through
``/status`` with ``allocatedResourcesStatus`` (KEP-4680, ``ResourceHealthStatus``: beta and on
by default in 1.36): one GPU Unhealthy. The node is cordoned and carries NVSentinel's
quarantine annotation; the namespace's team is a label. Expected: the node agent exports
``steward_pod_device_health`` and the pod's workload (the Deployment), the controller the
namespace's team and the node's state, and PodDeviceUnhealthy fires naming the Deployment and
the team, with the node's remediation state, all with read-only requests that got 200.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from agent.demo.servers import rules_without_for
from tests.helm.chart import NAMESPACE, RELEASE, render
from tests.realk8s import workloads as w
from tests.realk8s.cluster import RealCluster, service_account_user
from tests.realk8s.rbac import apply_chart_rbac
from tests.support.alertmanager import RULES
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, metric_value, wait_until
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus
from tests.support.steward import StewardProcess, start_node

NS, NODE = "ow-ml", "ow-gpu-1"
CONTROLLER = service_account_user(NAMESPACE, f"{RELEASE}-controller")
NODE_USER = service_account_user(NAMESPACE, f"{RELEASE}-node")


@dataclass
class Stand:
    node: StewardProcess
    controller: subprocess.Popen[bytes]
    controller_url: str
    prometheus: Prometheus
    pod: str
    started: int

    def node_value(self, name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"{self.node.url}/metrics", timeout=5) as response:
            return metric_value(response.read().decode(), name, **labels)

    def controller_value(self, name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"{self.controller_url}/metrics", timeout=5) as response:
            return metric_value(response.read().decode(), name, **labels)


def core(cluster: RealCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.admin)


def gpu_deployment(name: str) -> dict[str, Any]:
    body = w.deployment(name, NS)
    body["spec"]["template"]["spec"]["containers"][0] = w.container(gpus=1, name="trainer")
    return body


def bind(cluster: RealCluster, pod: str, node: str) -> None:
    """What the scheduler would do (there is none here): the pod's binding subresource."""
    body = client.V1Binding(metadata=client.V1ObjectMeta(name=pod),
                            target=client.V1ObjectReference(kind="Node", name=node))
    # The server answers a Status the generated client cannot read as a V1Binding.
    core(cluster).create_namespaced_pod_binding(pod, NS, body, _preload_content=False)


def device_status(health: str) -> dict[str, Any]:
    return {"status": {"phase": "Running", "containerStatuses": [{
        "name": "trainer", "image": "registry.example/app:1", "imageID": "", "ready": True,
        "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T10:00:00Z"}},
        "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [
            {"resourceID": "GPU-0a1b2c3d-0000-4000-8000-000000000007", "health": health}]}],
    }]}}


@pytest.fixture(scope="module")
def stand(real_k8s: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    apply_chart_rbac(real_k8s, render(require_binary("helm")))
    real_k8s.namespace(NS)
    core(real_k8s).patch_namespace(NS, {"metadata": {"labels": {"team": "research"}}})
    real_k8s.node(NODE)
    workdir = tmp_path_factory.mktemp("owners")
    started = real_k8s.audit_mark()

    # The pod the real ReplicaSet controller makes for a Deployment, bound to the node.
    w.create(real_k8s.admin, gpu_deployment("trainer"))

    def made() -> str | None:
        pods = core(real_k8s).list_namespaced_pod(NS, label_selector="app=trainer").items
        return pods[0].metadata.name if pods else None

    wait_until(lambda: made() is not None, timeout=30, what="the ReplicaSet's pod")
    pod = made()
    assert pod is not None
    bind(real_k8s, pod, NODE)
    core(real_k8s).patch_namespaced_pod_status(pod, NS, device_status("Healthy"))

    node_kubeconfig = real_k8s.write_kubeconfig(
        workdir / "node.kubeconfig", real_k8s.token(NAMESPACE, f"{RELEASE}-node"))
    node = start_node(workdir, env={"KUBECONFIG": str(node_kubeconfig), "NODE_NAME": NODE},
                      config="node: {collect_interval_seconds: 0.2}\n")
    controller_kubeconfig = real_k8s.write_kubeconfig(
        workdir / "controller.kubeconfig", real_k8s.token(NAMESPACE, f"{RELEASE}-controller"))
    port = free_port()
    (workdir / "controller.yaml").write_text(
        f"controller: {{lease_namespace: {NAMESPACE}, collect_interval_seconds: 0.5, "
        f"lease_duration_seconds: 3, renew_deadline_seconds: 2, retry_period_seconds: 0.5}}\n"
        "hygiene: {idle_gpus: {enabled: false}}\n", encoding="utf-8")
    controller = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "controller", "--config",
         str(workdir / "controller.yaml")],
        env={**os.environ, "KUBECONFIG": str(controller_kubeconfig), "POD_NAME": "ow-ctl",
             "STEWARD_CONTROLLER__LISTEN": f"127.0.0.1:{port}",
             "STEWARD_STATE__URL": f"sqlite:///{workdir / 'controller.db'}"},
        stdout=subprocess.DEVNULL, stderr=(workdir / "controller.log").open("wb"))
    controller_url = f"http://127.0.0.1:{port}"
    prometheus: Prometheus | None = None
    try:
        wait_until(lambda: http_ok(f"{controller_url}/readyz"), timeout=30,
                   what="controller ready")
        prometheus = start_prometheus(
            [ScrapeJob("steward-node", [f"127.0.0.1:{node.port}"]),
             ScrapeJob("steward-controller", [f"127.0.0.1:{port}"])],
            rule_files=[rules_without_for(RULES, workdir / "rules.yaml")])
        yield Stand(node, controller, controller_url, prometheus, pod, started)
    finally:
        if prometheus is not None:
            prometheus.stop()
        node.stop()
        controller.terminate()
        controller.wait(15)


def test_allocated_resources_status_is_stored_and_read(real_k8s: RealCluster,
                                                       stand: Stand) -> None:
    # The API server keeps the field (the ResourceHealthStatus gate is on in 1.36): a server
    # with the gate off drops it silently and this fails here, not later.
    stored = core(real_k8s).read_namespaced_pod(stand.pod, NS)
    (status,) = stored.status.container_statuses
    (resource,) = status.allocated_resources_status
    assert resource.name == "nvidia.com/gpu"
    assert [r.health for r in resource.resources] == ["Healthy"]

    labels = {"namespace": NS, "pod": stand.pod, "container": "trainer",
              "resource": "nvidia.com/gpu"}
    wait_until(lambda: stand.node_value("steward_pod_device_health", **labels,
                                        health="Healthy") == 1, timeout=20,
               what="Healthy device exported")
    # The owner, from the pod alone: the real ReplicaSet's name ends in the pod's hash.
    assert stand.node_value("steward_pod_workload_info", namespace=NS, pod=stand.pod,
                            workload_kind="Deployment", workload="trainer") == 1

    # The device plugin marks the GPU unhealthy; the kubelet writes it through /status.
    core(real_k8s).patch_namespaced_pod_status(stand.pod, NS, device_status("Unhealthy"))
    wait_until(lambda: stand.node_value("steward_pod_device_health", **labels,
                                        health="Unhealthy") == 1, timeout=20,
               what="Unhealthy device exported")
    assert stand.node_value("steward_pod_device_health", **labels, health="Healthy") is None


def test_the_alert_names_the_workload_its_team_and_the_nodes_quarantine(
        real_k8s: RealCluster, stand: Stand) -> None:
    # NVSentinel quarantines the node: a cordon and its annotation (here, by the admin).
    core(real_k8s).patch_node(NODE, {"spec": {"unschedulable": True}, "metadata": {
        "annotations": {"quarantineHealthEvent": '[{"checkName":"GpuXidError"}]'}}})
    core(real_k8s).patch_namespaced_pod_status(stand.pod, NS, device_status("Unhealthy"))
    wait_until(lambda: stand.controller_value("steward_node_cordoned", hostname=NODE) == 1,
               timeout=20, what="the cordon read by the controller")
    assert stand.controller_value("steward_node_quarantined", hostname=NODE,
                                  by="nvsentinel") == 1
    assert stand.controller_value("steward_namespace_team_info", namespace=NS,
                                  team="research") == 1

    def fired() -> list[dict[str, Any]]:
        return [a for a in stand.prometheus.alerts()
                if a["labels"].get("alertname") == "PodDeviceUnhealthy"
                and a["state"] == "firing"
                and a["annotations"].get("node_remediation", "").startswith("cordoned")]

    wait_until(lambda: bool(fired()), timeout=60, what="PodDeviceUnhealthy firing")
    (alert,) = fired()
    assert {k: alert["labels"][k] for k in ("namespace", "pod", "container", "resource",
                                            "workload_kind", "workload", "team", "hostname")} \
        == {"namespace": NS, "pod": stand.pod, "container": "trainer",
            "resource": "nvidia.com/gpu", "workload_kind": "Deployment",
            "workload": "trainer", "team": "research", "hostname": NODE}
    assert alert["annotations"]["node_remediation"] == "cordoned; quarantined by nvsentinel"

    # Both components read, with their own tokens, and nothing was refused or written.
    events = real_k8s.audit(since=stand.started)
    controller = [e for e in events if e.user == CONTROLLER]
    node = [e for e in events if e.user == NODE_USER]
    assert any(e.resource == "nodes" and e.verb == "list" for e in controller)
    assert any(e.resource == "namespaces" and e.verb == "list" for e in controller)
    # The one error allowed: the leader's first read of its own Lease, before it creates it.
    own_lease = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{RELEASE}-controller"
    errors = [(e.user, e.verb, e.uri, e.code) for e in controller + node if e.code >= 400]
    assert all(code == 404 and verb == "get" and uri == own_lease
               for _, verb, uri, code in errors), errors
    assert {e.verb for e in controller if e.resource in ("nodes", "namespaces", "pods")} \
        <= {"list", "get", "watch"}
    assert not [e for e in node if e.resource == "nodes"]
