"""The Kubernetes objects behind the simulated GPU pods, created in the API stand-in.

The simulated nodes (see ``conftest``) name their pods after the GPU scenarios; these
helpers give each pod the owner chain a real cluster would have (ReplicaSet -> Deployment,
StatefulSet, Job, or none), backdated so that the pods are older than the idle window.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from agent.clients.kubernetes import objects
from agent.clients.kubernetes.objects import JsonObj
from agent.sim.kube_api import KubeApiServer

OLD = 3 * 3600.0  # seconds: older than any window the tests use
NOTEBOOK = {"app.kubernetes.io/component": "notebook"}


def created(ago: float) -> datetime:
    return datetime.fromtimestamp(time.time() - ago, UTC)


def iso(ago: float) -> str:
    return objects.iso_time(created(ago))


def _containers() -> list[JsonObj]:
    return [objects.container("pytorch:2")]


def deployment(kube: KubeApiServer, ns: str, name: str, *, replicas: int = 1,
               labels: dict[str, str] | None = None, ago: float = OLD) -> JsonObj:
    obj = objects.workload("Deployment", name, ns, replicas=replicas,
                           labels={"app": name, **(labels or {})}, containers=_containers(),
                           created=created(ago))
    obj["status"] = {"replicas": replicas}
    return kube.create(obj)


def replicaset(kube: KubeApiServer, owner: JsonObj, *, suffix: str = "5d8c7b") -> JsonObj:
    ns, name = owner["metadata"]["namespace"], owner["metadata"]["name"]
    obj = objects.workload("ReplicaSet", f"{name}-{suffix}", ns,
                           replicas=owner["spec"]["replicas"], labels={"app": name},
                           containers=_containers(), owner=owner, created=created(OLD))
    # The ReplicaSet's pods carry the Deployment's selector, not its own name.
    obj["spec"]["selector"] = {"matchLabels": {"app": name}}
    obj["spec"]["template"]["metadata"]["labels"] = {"app": name}
    return kube.create(obj)


def statefulset(kube: KubeApiServer, ns: str, name: str, *, replicas: int = 1,
                labels: dict[str, str] | None = None) -> JsonObj:
    return kube.create(objects.workload(
        "StatefulSet", name, ns, replicas=replicas, labels={"app": name, **(labels or {})},
        template_labels=labels, containers=_containers(), created=created(OLD)))


def job(kube: KubeApiServer, ns: str, name: str) -> JsonObj:
    obj = objects.workload("Job", name, ns, containers=_containers(), created=created(OLD))
    obj["spec"]["template"]["metadata"] = {}
    return kube.create(obj)


def pod(kube: KubeApiServer, ns: str, name: str, *, owner: JsonObj | None = None,
        labels: dict[str, str] | None = None, ago: float = OLD, gpus: int = 1,
        phase: str = "Running", annotations: dict[str, str] | None = None) -> JsonObj:
    return kube.create(objects.pod(
        name, ns, containers=[objects.container("pytorch:2", gpus=gpus)], node="gpu-node-b",
        labels=labels, annotations=annotations, owner=owner, created=created(ago),
        status={"phase": phase}))


def trainer_dev(kube: KubeApiServer, *, replicas: int = 2,
                labels: dict[str, str] | None = None) -> JsonObj:
    """Deployment data-science/trainer-dev whose only running pod is the idle
    jupyter-alice-5 (the other replicas are not scheduled: no GPU free)."""
    owner = deployment(kube, "data-science", "trainer-dev", replicas=replicas, labels=labels)
    pod(kube, "data-science", "jupyter-alice-5", owner=replicaset(kube, owner))
    return owner


def full_world(kube: KubeApiServer) -> None:
    """Every simulated pod the plan test expects, with its owner."""
    ds = "data-science"
    notebook = statefulset(kube, ds, "jupyter-alice", labels=NOTEBOOK)
    pod(kube, ds, "jupyter-alice-1", owner=notebook, labels=NOTEBOOK)
    shared = deployment(kube, ds, "shared-dev", labels={"steward.io/exempt": "true"})
    pod(kube, ds, "jupyter-alice-4", owner=replicaset(kube, shared))
    trainer_dev(kube)
    pod(kube, ds, "jupyter-alice-6", owner=job(kube, ds, "batch-eval"))
    pod(kube, ds, "jupyter-alice-7")
    pod(kube, ds, "jupyter-alice-8", ago=0)  # young
    mixed = replicaset(kube, deployment(kube, ds, "mixed", replicas=2))
    pod(kube, ds, "jupyter-alice-9", owner=mixed)
    pod(kube, ds, "jupyter-bob-3", owner=mixed)  # a MIG slice: no verdict, blocks "mixed"
    chat = deployment(kube, "inference", "chat-api")
    pod(kube, "inference", "chat-api-0", owner=replicaset(kube, chat))
    pod(kube, "ml-research", "train-llama-2", owner=job(kube, "ml-research", "train-llama"))
    evidence_world(kube)
    shared_world(kube)


def shared_world(kube: KubeApiServer) -> None:
    """Node d's tenants of shared GPUs (``history.shared``)."""
    ds = "data-science"
    notebook = statefulset(kube, ds, "nb-quiet", labels=NOTEBOOK)
    pod(kube, ds, "nb-quiet-0", owner=notebook, labels=NOTEBOOK)
    for ns, name in (("inference", "llm-serve"), ("shared", "trickle"),
                     ("shared", "busy-batch"), ("shared", "busy-2"), ("shared", "maybe-idle")):
        pod(kube, ns, f"{name}-0", owner=replicaset(kube, deployment(kube, ns, name)))
    # KAI: the reservation pod is bare; the fractions request no GPU resource.
    pod(kube, "kai-resource-reservation", "gpu-reservation-d1",
        labels={"runai-gpu-group": "grp-d1"})
    pod(kube, "ml-research", "tune-lora-0", owner=job(kube, "ml-research", "tune-lora"),
        gpus=0, labels={"runai-gpu-group": "grp-d1"}, annotations={"gpu-fraction": "0.5"})
    kai_nb = replicaset(kube, deployment(kube, ds, "kai-nb"))
    pod(kube, ds, "kai-nb-0", owner=kai_nb, gpus=0, labels={"runai-gpu-group": "grp-d1"},
        annotations={"gpu-memory": "20480"})
    # Two replicas of one Deployment share a GPU that is idle as a whole.
    sleepy = replicaset(kube, deployment(kube, "inference", "sleepy", replicas=2))
    pod(kube, "inference", "sleepy-a-0", owner=sleepy)
    pod(kube, "inference", "sleepy-b-0", owner=sleepy)


def evidence_world(kube: KubeApiServer) -> None:
    """Node c's pods (``history``): one Deployment each, as idle as Kubernetes can tell;
    only the evidence in Prometheus tells them apart."""
    for case in ("gap-mid-window", "stopped-reporting", "gpu-lost", "allocation-gap",
                 "young", "fully-idle"):
        ago = 30 * 60.0 if case == "young" else OLD
        owner = deployment(kube, "evidence", case, ago=ago)
        pod(kube, "evidence", f"{case}-0", owner=replicaset(kube, owner), ago=ago)
