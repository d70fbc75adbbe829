"""Which pods hold GPUs: the one set of GPU resource names, and the predicate every component
shares (the node's pod metrics, the controller's pending GPU pods, the idle-GPU job).

The NVIDIA device plugin advertises whole GPUs as ``nvidia.com/gpu``, time-sliced or
MPS-shared GPUs renamed by it as ``nvidia.com/gpu.shared``, and MIG slices (mixed strategy)
as ``nvidia.com/mig-<profile>`` (``.shared`` too). Other ``nvidia.com/`` resources (the
network operator's NICs, RDMA devices) are not GPUs, nor are HAMi's ``nvidia.com/gpumem``
(MiB) and ``nvidia.com/gpucores`` (percent of a GPU), which share the ``nvidia.com/gpu``
prefix but are amounts of a GPU the pod's ``nvidia.com/gpu`` already counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

GPU_RESOURCE_PREFIXES: Final = ("nvidia.com/gpu", "nvidia.com/mig-")
# KAI Scheduler's reservation pods (``gpu-reservation-*`` in ``kai-resource-reservation``, or
# Run:ai's older ``runai-reservation``) hold a whole GPU for its fractional pods: they hold
# GPUs but use none, and are never a GPU's user (no share, no charge, never judged idle).
KAI_RESERVATION_NAMESPACES: Final = frozenset({"kai-resource-reservation", "runai-reservation"})
KAI_RESERVATION_PREFIX: Final = "gpu-reservation"


def is_gpu_resource(name: str) -> bool:
    return (name == "nvidia.com/gpu" or name.startswith(("nvidia.com/gpu.", "nvidia.com/mig-")))


def is_reservation_pod(namespace: str, name: str) -> bool:
    """KAI Scheduler's reservation pod: it holds a whole GPU for fractional pods."""
    return namespace in KAI_RESERVATION_NAMESPACES and name.startswith(KAI_RESERVATION_PREFIX)


def container_gpus(limits: Mapping[str, Any] | None, requests: Mapping[str, Any] | None) -> int:
    """GPUs and MIG slices one container asks for. Limits are what the device plugin
    allocates (the API makes requests equal them for GPUs); requests count only without."""
    quantities = limits or requests or {}
    total = 0
    for name, quantity in quantities.items():
        if is_gpu_resource(str(name)):
            try:
                total += int(str(quantity))
            except ValueError:
                continue
    return total


def pod_gpus(pod: Any) -> int:
    """GPUs of a pod as the official client's model (``V1Pod``) has it."""
    total = 0
    for container in (pod.spec.containers or []) if pod.spec else []:
        resources = container.resources
        if resources is not None:
            total += container_gpus(resources.limits, resources.requests)
    return total


def pod_json_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs of a pod as the API's JSON has it (raw reads, the simulator, tests)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        total += container_gpus(resources.get("limits"), resources.get("requests"))
    return total
