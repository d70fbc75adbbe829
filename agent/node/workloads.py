"""Which workload a pod belongs to, read from the pod alone: the node agent watches pods, not
their owners, and must not need RBAC on ReplicaSets or Jobs to name a pod's owner.

The workload is the pod's controller (``ownerReferences[].controller``), with one step up
the owner chain where the pod itself proves it: a Deployment's ReplicaSet is named
``<deployment>-<pod-template-hash>`` and its pods carry that hash as the label
``pod-template-hash``, so a ReplicaSet whose name ends in the pod's own hash is read as its
Deployment. Anything else stays what the reference says (ReplicaSet, StatefulSet, DaemonSet,
Job, an Argo Workflow, a training operator's job); a pod without a controller is its own
workload (kind ``Pod``). Names are Kubernetes object names: bounded, never free text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prometheus_client.metrics_core import Metric

POD_TEMPLATE_HASH: Final = "pod-template-hash"
BARE_POD: Final = "Pod"


@dataclass(frozen=True)
class WorkloadRef:
    kind: str
    name: str


def _field(ref: Any, name: str) -> Any:
    """A field of an owner reference, from the client's model or from plain JSON."""
    if isinstance(ref, Mapping):
        return ref.get(name)
    return getattr(ref, name, None)


def owning_workload(owner_references: Iterable[Any] | None, labels: Mapping[str, str] | None,
                    pod_name: str) -> WorkloadRef:
    controller = next((ref for ref in owner_references or ()
                       if _field(ref, "controller")), None)
    if controller is None:
        return WorkloadRef(BARE_POD, pod_name)
    kind, name = str(_field(controller, "kind") or ""), str(_field(controller, "name") or "")
    if not kind or not name:
        return WorkloadRef(BARE_POD, pod_name)
    template_hash = (labels or {}).get(POD_TEMPLATE_HASH)
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}") \
            and len(name) > len(template_hash) + 1:
        return WorkloadRef("Deployment", name[: -len(template_hash) - 1])
    return WorkloadRef(kind, name)


class WorkloadPod(Protocol):
    """What the family needs of a pod (``pods.PodInfo``, which imports this module)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def workload_kind(self) -> str: ...
    @property
    def workload(self) -> str: ...


def build_workload_family(pods: Iterable[WorkloadPod], hostname: str) -> Metric:
    """``steward_pod_workload_info``: one series per pod, its owning workload in labels.

    The alert rules join it (through ``steward_gpu_allocation``) to name the workloads on a
    failed GPU."""
    family = Metric("steward_pod_workload_info",
                    "The pod's owning workload (Deployment, StatefulSet, Job, Workflow...); "
                    "always 1.", "gauge")
    for pod in pods:
        family.add_sample(family.name, {
            "namespace": pod.namespace, "pod": pod.name, "hostname": hostname,
            "workload_kind": pod.workload_kind, "workload": pod.workload or pod.name}, 1.0)
    return family
