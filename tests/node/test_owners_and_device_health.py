"""Who owns a pod (from the pod alone) and the health Kubernetes reports for its devices
(KEP-4680 allocatedResourcesStatus), read by the node's pod cache through the official
client from the API stand-in, and exported."""

from __future__ import annotations

from typing import Any

import pytest

from agent.node.device_health import DeviceHealth, device_health
from agent.node.pods import PodCache, build_pod_families
from agent.node.workloads import WorkloadRef, owning_workload
from agent.sim.kube_api import KubeApiServer
from tests.support.net import wait_until


def ref(kind: str, name: str, *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"uid-{name}",
            "controller": controller}


@pytest.mark.parametrize(("refs", "labels", "expected"), [
    # a Deployment's ReplicaSet: its name ends in the pod's own template hash
    ([ref("ReplicaSet", "chat-api-7f9c5d8b4")], {"pod-template-hash": "7f9c5d8b4"},
     WorkloadRef("Deployment", "chat-api")),
    # a bare ReplicaSet (no hash label, or one that does not match): itself
    ([ref("ReplicaSet", "rs-manual")], {}, WorkloadRef("ReplicaSet", "rs-manual")),
    ([ref("ReplicaSet", "chat-api-7f9c5d8b4")], {"pod-template-hash": "other"},
     WorkloadRef("ReplicaSet", "chat-api-7f9c5d8b4")),
    # a hash label equal to the whole name leaves no Deployment name: itself
    ([ref("ReplicaSet", "abc")], {"pod-template-hash": "abc"}, WorkloadRef("ReplicaSet", "abc")),
    ([ref("StatefulSet", "jupyter-alice")], {}, WorkloadRef("StatefulSet", "jupyter-alice")),
    ([ref("Job", "train-llama")], {}, WorkloadRef("Job", "train-llama")),
    ([{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "eval-z9",
       "uid": "u", "controller": True}], {}, WorkloadRef("Workflow", "eval-z9")),
    # owners that do not control it (a garbage-collection owner): a bare pod
    ([ref("ConfigMap", "cm", controller=False)], {}, WorkloadRef("Pod", "the-pod")),
    ([], {}, WorkloadRef("Pod", "the-pod")),
    (None, None, WorkloadRef("Pod", "the-pod")),
])
def test_owning_workload(refs: list[dict[str, Any]] | None, labels: dict[str, str] | None,
                         expected: WorkloadRef) -> None:
    assert owning_workload(refs, labels, "the-pod") == expected


def test_device_health_reads_every_device_and_never_calls_an_odd_value_healthy() -> None:
    statuses = [{"name": "trainer", "allocatedResourcesStatus": [
        {"name": "nvidia.com/gpu", "resources": [
            {"resourceID": "GPU-a", "health": "Healthy"},
            {"resourceID": "GPU-b", "health": "Unhealthy"},
            {"resourceID": "GPU-c", "health": "Degraded"},  # a value a newer server may send
            {"resourceID": "GPU-d"}]}]},
        {"name": "sidecar"}]
    assert device_health(statuses) == (
        DeviceHealth("trainer", "nvidia.com/gpu", "GPU-a", "Healthy"),
        DeviceHealth("trainer", "nvidia.com/gpu", "GPU-b", "Unhealthy"),
        DeviceHealth("trainer", "nvidia.com/gpu", "GPU-c", "Unknown"),
        DeviceHealth("trainer", "nvidia.com/gpu", "GPU-d", "Unknown"))
    assert device_health(None) == ()


def gpu_pod(name: str, *, owner: dict[str, Any] | None = None,
            labels: dict[str, str] | None = None,
            health: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "containerStatuses": [{
        "name": "trainer", "restartCount": 0, "ready": True, "image": "img", "imageID": "",
        "state": {"running": {"startedAt": "2026-11-22T10:00:00Z"}}}]}
    if health is not None:
        status["containerStatuses"][0]["allocatedResourcesStatus"] = [{
            "name": "nvidia.com/gpu",
            "resources": [{"resourceID": rid, "health": h} for rid, h in health]}]
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{
                "name": "trainer", "image": "img",
                "resources": {"limits": {"nvidia.com/gpu": "2"},
                              "requests": {"nvidia.com/gpu": "2"}}}]},
            "status": status}


def samples(cache: PodCache, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for m in build_pod_families(cache.pods(), "n1") for s in m.samples
            if s.name == name}


def test_the_pod_watch_exports_owners_and_device_health(kube: KubeApiServer,
                                                        cache: PodCache) -> None:
    kube.create(gpu_pod("chat-api-7f9c5d8b4-x2x9k",
                        owner=ref("ReplicaSet", "chat-api-7f9c5d8b4"),
                        labels={"pod-template-hash": "7f9c5d8b4"},
                        health=[("GPU-a", "Healthy"), ("GPU-b", "Healthy")]))
    kube.create(gpu_pod("train-0", owner=ref("Job", "train"),
                        health=[("GPU-c", "Healthy"), ("GPU-d", "Healthy")]))
    kube.create(gpu_pod("bare"))
    cache.start()
    wait_until(lambda: len(cache.pods()) == 3, timeout=5, what="the pods listed")
    owners = samples(cache, "steward_pod_workload_info")
    base = (("hostname", "n1"), ("namespace", "ml"))

    def key(pod: str, kind: str, workload: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*base, ("pod", pod), ("workload_kind", kind),
                             ("workload", workload))))

    assert owners == {key("chat-api-7f9c5d8b4-x2x9k", "Deployment", "chat-api"): 1.0,
                      key("train-0", "Job", "train"): 1.0, key("bare", "Pod", "bare"): 1.0}

    def health(pod: str, state: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*base, ("pod", pod), ("container", "trainer"),
                             ("resource", "nvidia.com/gpu"), ("health", state))))

    assert samples(cache, "steward_pod_device_health") == {
        health("chat-api-7f9c5d8b4-x2x9k", "Healthy"): 2.0, health("train-0", "Healthy"): 2.0}

    # The device plugin marks one of the Job's GPUs unhealthy: the kubelet writes it to the
    # pod's status, and the watch brings it.
    kube.apply(gpu_pod("train-0", owner=ref("Job", "train"),
                       health=[("GPU-c", "Healthy"), ("GPU-d", "Unhealthy")]))
    wait_until(lambda: health("train-0", "Unhealthy") in samples(
        cache, "steward_pod_device_health"), timeout=5, what="the Unhealthy device")
    found = samples(cache, "steward_pod_device_health")
    assert found[health("train-0", "Unhealthy")] == 1.0
    assert found[health("train-0", "Healthy")] == 1.0
