"""The simulated node's pods: the kubelet's PodResources answer, the pod list, PID cgroups.

Built from the simulated GPUs so that the two agree: each allocated GPU scenario gets the
kind of workload that produces it (a training job on a busy GPU, a forgotten notebook on
the idle one, a crash-looping trainer on the XID storm, two inference replicas time-slicing
the hot GPU, one pod per MIG slice; four tenants time-slicing a GPU, KAI Scheduler
fractions behind their reservation pod, a HAMi pod), plus a pending pod and optional filler
pods for benchmarks. They feed the same collectors the real sources do.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent.node.attribution import DeviceIndex
from agent.node.device_health import HEALTHY, UNHEALTHY, DeviceHealth
from agent.node.nvml import NvmlGpuSource
from agent.node.podresources.client import ContainerDevices
from agent.node.pods import ContainerInfo, PodInfo
from agent.node.shares import PodShare, compute_shares
from agent.sim.nvml import SimulatedNvml
from agent.sim.world import WORKLOAD_KINDS

GPU_RESOURCE = "nvidia.com/gpu"
_NAMESPACE_UUID = uuid.UUID("5f1b7a0e-3c4d-4e5f-8a9b-0c1d2e3f4a5b")


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    container: str
    replicas: int = 1  # >1: time-slicing replicas sharing the GPU
    waiting_reason: str | None = None
    restarts: int = 0
    terminated_reason: str | None = None
    terminated_ago: float | None = None  # seconds before the simulation started


WORKLOADS: dict[str, Workload] = {
    "training": Workload("ml-research", "train-llama", "trainer"),
    "idle_allocated": Workload("data-science", "jupyter-alice", "notebook"),
    "bursty": Workload("inference", "chat-api", "server"),
    "lost": Workload("ml-research", "train-resnet", "trainer"),
    "xid_storm": Workload("ml-research", "finetune-crashloop", "trainer",
                          waiting_reason="CrashLoopBackOff", restarts=7,
                          terminated_reason="Error", terminated_ago=40.0),
    "ecc_errors": Workload("ml-research", "eval-bert", "evaluator"),
    "thermal_throttling": Workload("inference", "llm-server", "server", replicas=2,
                                   restarts=1, terminated_reason="OOMKilled",
                                   terminated_ago=90.0),
}
# A GPU time-sliced by two teams' workloads (one replica each): one owner notice per team.
SHARED_WORKLOADS: dict[str, tuple[Workload, ...]] = {
    "lost_shared": (Workload("inference", "embed-batch", "worker"),
                    Workload("data-science", "feature-backfill", "worker")),
}
MIG_WORKLOADS = (
    Workload("inference", "embedder", "server"),
    Workload("data-science", "jupyter-bob", "notebook"),
    Workload("inference", "reranker", "server"),
)
HAMI_CORES, HAMI_MEMORY_MIB = 30, 24576
KAI_FRACTION, KAI_MEMORY_MIB = "0.5", "20480"


@dataclass(frozen=True)
class Tenant:
    """One pod sharing a GPU: how it got its share, and its process (pid offset)."""

    work: Workload
    how: Literal["replica", "kai_fraction", "kai_memory", "hami"]
    offset: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    resources: dict[str, int] = field(default_factory=dict, hash=False)


# The shared scenarios' tenants, in the order of their processes (agent.sim.scenarios).
TENANTS: dict[str, tuple[Tenant, ...]] = {
    "time_sliced": (
        Tenant(Workload("inference", "llm-serve", "server"), "replica", 0),
        Tenant(Workload("inference", "embed-api", "server"), "replica", 1),
        Tenant(Workload("data-science", "jupyter-carol", "notebook"), "replica", 2),
        Tenant(Workload("ml-research", "eval-nightly", "evaluator"), "replica", 3),
    ),
    "kai_fraction": (
        Tenant(Workload("ml-research", "tune-lora", "trainer"), "kai_fraction", 0,
               annotations={"gpu-fraction": KAI_FRACTION}),
        Tenant(Workload("data-science", "jupyter-dave", "notebook"), "kai_memory", 1,
               annotations={"gpu-memory": KAI_MEMORY_MIB}),
    ),
    "hami": (
        Tenant(Workload("inference", "rerank-hami", "server"), "hami", 0,
               resources={"nvidia.com/gpu": 1, "nvidia.com/gpucores": HAMI_CORES,
                          "nvidia.com/gpumem": HAMI_MEMORY_MIB}),
    ),
}
HAMI_SPLIT = 10  # HAMi's device plugin advertises each GPU ten times (deviceSplitCount)


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE_UUID, "/".join(parts)))


class SimulatedPods:
    """PodSource, DeviceSource and PID->pod lookup for one simulated node."""

    def __init__(self, nvml: SimulatedNvml, hostname: str, *, extra_pods: int = 0,
                 churn_seconds: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._hostname = hostname
        self._nvml = nvml
        # pod uid -> (GPU index, device ID, container): the device health the simulated
        # device plugin reports in pod status (Unhealthy once the GPU is lost).
        self._held: dict[str, tuple[int, str, str]] = {}
        self._extra = extra_pods
        self._churn = churn_seconds
        self._clock = clock
        self._start = clock()
        self._pods: list[PodInfo] = []
        self._devices: list[ContainerDevices] = []
        self._pid_to_uid: dict[int, str] = {}
        self._allocatable: list[str] = []
        for index, (gpu_uuid, scenario, allocated) in enumerate(nvml.gpus()):
            if scenario == "mig":
                self._allocatable += nvml.mig_uuids(index)
            elif scenario in TENANTS:
                self._shared(nvml, index, gpu_uuid, scenario)
                continue
            else:
                work = WORKLOADS.get(scenario)
                replicas = work.replicas if work is not None else 1
                self._allocatable += [gpu_uuid] if replicas == 1 else \
                    [f"{gpu_uuid}::{i}" for i in range(replicas)]
            if not allocated:
                continue
            if scenario == "mig":
                for slot, (mig_uuid, work) in enumerate(zip(nvml.mig_uuids(index),
                                                            MIG_WORKLOADS, strict=False)):
                    pod = self._add_pod(work, f"{work.name}-{index}")
                    profile = nvml.mig_profile(index, slot)
                    self._devices.append(ContainerDevices(
                        pod.namespace, pod.name, work.container, f"nvidia.com/mig-{profile}",
                        (mig_uuid,)))
                    self._pid_to_uid[nvml.process_pid(index, slot)] = pod.uid
                continue
            if scenario in SHARED_WORKLOADS:
                for replica, work in enumerate(SHARED_WORKLOADS[scenario]):
                    self._allocate(work, f"{work.name}-{index}", index,
                                   f"{gpu_uuid}::{replica}", nvml.process_pid(index, replica))
                continue
            work = WORKLOADS.get(scenario, Workload("default", scenario.replace("_", "-"), "main"))
            for replica in range(work.replicas):
                name = f"{work.name}-{index}" if work.replicas == 1 else \
                    f"{work.name}-{index}-{replica}"
                device_id = gpu_uuid if work.replicas == 1 else f"{gpu_uuid}::{replica}"
                self._allocate(work, name, index, device_id, nvml.process_pid(index, replica))
        # Scheduled but stuck: the image cannot be pulled, so no GPU was handed out yet.
        pending = Workload("ml-research", "train-gpt-pending", "trainer",
                           waiting_reason="ImagePullBackOff")
        self._pods.append(self._pod_info(pending, "train-gpt-pending", phase="Pending"))

    def _allocate(self, work: Workload, name: str, index: int, device_id: str,
                  pid: int) -> None:
        pod = self._add_pod(work, name)
        self._held[pod.uid] = (index, device_id, work.container)
        self._devices.append(ContainerDevices(pod.namespace, pod.name, work.container,
                                              GPU_RESOURCE, (device_id,)))
        self._pid_to_uid[pid] = pod.uid

    def _pod_info(self, work: Workload, name: str, *, phase: str = "Running",
                  gpus: int = 1, labels: dict[str, str] | None = None,
                  annotations: dict[str, str] | None = None,
                  resources: dict[str, int] | None = None) -> PodInfo:
        terminated_at = None if work.terminated_ago is None else self._start - work.terminated_ago
        # Named as agent.sim.world creates their owners in the API stand-in.
        kind = WORKLOAD_KINDS.get(work.name, ("Deployment", "", {}))[0]
        return PodInfo(
            uid=_uid(self._hostname, work.namespace, name), namespace=work.namespace,
            name=name, phase=phase, gpus_requested=gpus, created_at=self._start - 3600,
            containers=(ContainerInfo(
                name=work.container, restarts=work.restarts, waiting_reason=work.waiting_reason,
                last_terminated_reason=work.terminated_reason,
                last_terminated_at=terminated_at),),
            workload_kind=kind, workload=f"{work.name}-{self._hostname}",
            labels=dict(labels or {}), annotations=dict(annotations or {}),
            gpu_resources=dict(resources or ({GPU_RESOURCE: gpus} if gpus else {})))

    def _add_pod(self, work: Workload, name: str, *, gpus: int = 1,
                 labels: dict[str, str] | None = None,
                 annotations: dict[str, str] | None = None,
                 resources: dict[str, int] | None = None) -> PodInfo:
        pod = self._pod_info(work, name, gpus=gpus, labels=labels, annotations=annotations,
                             resources=resources)
        self._pods.append(pod)
        return pod

    def _shared(self, nvml: SimulatedNvml, index: int, gpu_uuid: str, scenario: str) -> None:
        """The tenants of a shared scenario, and what the kubelet and the scheduler say of
        them: replica IDs for time-slicing, a reservation pod for KAI, HAMi's annotation."""
        tenants = TENANTS[scenario]
        group = _uid(self._hostname, "kai-group", str(index))
        if scenario == "time_sliced":
            self._allocatable += [f"{gpu_uuid}::{i}" for i in range(len(tenants))]
        elif scenario == "hami":
            self._allocatable += [f"{gpu_uuid}::{i}" for i in range(HAMI_SPLIT)]
        else:
            self._allocatable.append(gpu_uuid)
            reservation = Workload("kai-resource-reservation",
                                   f"gpu-reservation-{group[:16].replace('-', '')}",
                                   "resource-reservation")
            pod = self._add_pod(reservation, reservation.name,
                                labels={"app": "kai-resource-reservation",
                                        "runai-gpu-group": group},
                                annotations={"run.ai/reserve_for_gpu_index": gpu_uuid})
            self._devices.append(ContainerDevices(pod.namespace, pod.name,
                                                  reservation.container, GPU_RESOURCE,
                                                  (gpu_uuid,)))
        for replica, tenant in enumerate(tenants):
            work = tenant.work
            name = f"{work.name}-{index}"
            if tenant.how == "replica":
                pod = self._add_pod(work, name)
                self._devices.append(ContainerDevices(pod.namespace, pod.name, work.container,
                                                      GPU_RESOURCE, (f"{gpu_uuid}::{replica}",)))
            elif tenant.how == "hami":
                allocated = f"{gpu_uuid},NVIDIA,{HAMI_MEMORY_MIB},{HAMI_CORES}:;"
                pod = self._add_pod(work, name, resources=tenant.resources, annotations={
                    "hami.io/vgpu-devices-allocated": allocated})
                # HAMi hands the kubelet one of its own split IDs, not the GPU it chose.
                self._devices.append(ContainerDevices(pod.namespace, pod.name, work.container,
                                                      GPU_RESOURCE, (f"{gpu_uuid}::7",)))
            else:  # KAI: no device of its own; its GPU group names the reservation's GPU
                pod = self._add_pod(work, name, gpus=0, annotations=tenant.annotations,
                                    labels={"runai-gpu-group": group})
            self._pid_to_uid[nvml.process_pid(index, tenant.offset)] = pod.uid

    def _filler(self) -> list[PodInfo]:
        """CPU-only pods; with churn, replaced by new ones (new names) every period."""
        generation = 0
        if self._churn:
            generation = int((self._clock() - self._start) // self._churn)
        return [PodInfo(uid=_uid(self._hostname, "batch", str(generation), str(i)),
                        namespace="batch", name=f"etl-{generation}-{i}", phase="Running",
                        gpus_requested=0, created_at=self._start,
                        containers=(ContainerInfo("etl", 0, None, None, None),))
                for i in range(self._extra)]

    # -- PodSource --
    def pods(self) -> list[PodInfo]:
        return [*(self._with_health(p) for p in self._pods), *self._filler()]

    def _with_health(self, pod: PodInfo) -> PodInfo:
        held = self._held.get(pod.uid)
        if held is None:
            return pod
        index, device_id, container = held
        health = UNHEALTHY if self._nvml.is_lost(index) else HEALTHY
        return dataclasses.replace(pod, device_health=(
            DeviceHealth(container, GPU_RESOURCE, device_id, health),))

    def health(self) -> str | None:
        return None

    # -- DeviceSource --
    def list_devices(self) -> list[ContainerDevices]:
        return list(self._devices)

    def allocatable_devices(self) -> list[str]:
        return list(self._allocatable)

    # -- cgroup lookup --
    def pod_uid_for_pid(self, pid: int) -> str | None:
        return self._pid_to_uid.get(pid)


def simulated_shares(nvml: SimulatedNvml, pods: SimulatedPods) -> list[PodShare]:
    """What the node agent would export as each pod's share of the simulated GPUs."""
    source = NvmlGpuSource(lib=nvml, simulated=True)
    try:
        readings = source.read()
    finally:
        source.close()
    return compute_shares(pods.list_devices(), pods.allocatable_devices(), readings,
                          pods.pods(), DeviceIndex(readings)).shares
