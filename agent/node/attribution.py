"""GPU -> pod attribution: which container holds which GPU, and whose processes use its memory.

Allocations come from the kubelet PodResources API (device IDs as the device plugin
reported them) matched to the GPUs NVML enumerated: by GPU UUID, MIG device UUID, the
legacy ``MIG-GPU-<uuid>/<gi>/<ci>`` form, a device index, or a time-slicing replica
(``<id>::<n>``). Per-pod memory on shared GPUs comes from NVML's process list, each PID
mapped to its pod through its cgroup. Anything that cannot be matched is counted under a
named error rather than dropped silently: empty pod labels with no hint why are the most
common complaint about dcgm-exporter.

The same collection computes each pod's share of each GPU (:mod:`agent.node.shares`) and
its own use of shared GPUs (:mod:`agent.node.tenant_use`): one List() per collection.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import Metric

from agent.exporter.collection import Collector, CollectorFailed, CollectResult
from agent.node.gpu_metrics import gpu_labels
from agent.node.podresources.client import ContainerDevices, PodResourcesError
from agent.node.pods import PodInfo
from agent.node.readings import GpuIdentity, GpuReading
from agent.node.shares import build_share_families, compute_shares
from agent.node.tenant_use import build_use_families, tenant_use

log = logging.getLogger(__name__)
_LEGACY_MIG_RE = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")


class DeviceSource(Protocol):
    def list_devices(self) -> list[ContainerDevices]: ...

    def allocatable_devices(self) -> list[str]: ...


class LatestReadings:
    """The GPU collector's last readings, shared with the attribution collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: list[GpuReading] | None = None
        self._first = threading.Event()

    def set(self, readings: list[GpuReading]) -> None:
        with self._lock:
            self._readings = readings
        self._first.set()

    def get(self, *, wait: float = 0.0) -> list[GpuReading] | None:
        """The last readings; waits up to ``wait`` seconds for the first ones."""
        if wait:
            self._first.wait(wait)
        with self._lock:
            return self._readings


@dataclass(frozen=True)
class Allocation:
    identity: GpuIdentity
    namespace: str
    pod: str
    container: str


class DeviceIndex:
    """Resolves a device plugin's device ID to the GPU or MIG instance NVML reported."""

    def __init__(self, readings: Iterable[GpuReading]) -> None:
        self._by_id: dict[str, GpuIdentity] = {}
        self._mig_by_gi: dict[tuple[str, int], GpuIdentity] = {}
        for reading in readings:
            ident = reading.identity
            if ident.gpu_instance_id is None:
                self._by_id[ident.uuid] = ident
                self._by_id[str(ident.index)] = ident
            else:
                if ident.mig_uuid:
                    self._by_id[ident.mig_uuid] = ident
                self._mig_by_gi[(ident.uuid, ident.gpu_instance_id)] = ident

    def resolve(self, device_id: str) -> GpuIdentity | None:
        base = device_id.split("::", 1)[0]  # time-slicing replica: GPU-uuid::3
        found = self._by_id.get(base)
        if found is not None:
            return found
        legacy = _LEGACY_MIG_RE.match(base)
        if legacy:
            return self._mig_by_gi.get((legacy.group(1), int(legacy.group(2))))
        return None


def match_allocations(devices: Sequence[ContainerDevices], readings: Sequence[GpuReading]
                      ) -> tuple[list[Allocation], list[str]]:
    """(allocations, device IDs that match no GPU on this node)."""
    index = DeviceIndex(readings)
    allocations: dict[tuple[tuple[str, int | None], str, str, str], Allocation] = {}
    unmatched: list[str] = []
    for entry in devices:
        for device_id in entry.device_ids:
            identity = index.resolve(device_id)
            if identity is None:
                unmatched.append(device_id)
                continue
            key = (identity.key, entry.namespace, entry.pod, entry.container)
            allocations[key] = Allocation(identity, entry.namespace, entry.pod, entry.container)
    return list(allocations.values()), unmatched


def pod_memory(readings: Sequence[GpuReading], pod_uid_for_pid: Callable[[int], str | None],
               pods_by_uid: dict[str, PodInfo]
               ) -> tuple[dict[tuple[GpuIdentity, str, str], int], int]:
    """GPU memory per (GPU, namespace, pod), and how many processes could not be placed."""
    usage: dict[tuple[GpuIdentity, str, str], int] = {}
    unplaced = 0
    for reading in readings:
        for process in reading.processes or ():
            uid = pod_uid_for_pid(process.pid)
            pod = pods_by_uid.get(uid) if uid else None
            if pod is None:
                unplaced += 1
                continue
            key = (reading.identity, pod.namespace, pod.name)
            usage[key] = usage.get(key, 0) + process.used_bytes
    return usage, unplaced


def build_attribution_families(allocations: Iterable[Allocation],
                               memory: dict[tuple[GpuIdentity, str, str], int] | None,
                               hostname: str) -> list[Metric]:
    allocation = Metric("steward_gpu_allocation",
                        "1: this GPU (or MIG instance) is allocated to that container.", "gauge")
    for item in sorted(allocations, key=lambda a: (a.identity.index,
                                                    a.identity.gpu_instance_id or -1,
                                                    a.namespace, a.pod, a.container)):
        allocation.add_sample("steward_gpu_allocation", {
            **gpu_labels(item.identity, hostname), "namespace": item.namespace,
            "pod": item.pod, "container": item.container}, 1.0)
    families = [allocation]
    if memory is not None:
        used = Metric("steward_gpu_pod_memory_used_bytes",
                      "GPU memory used by that pod's processes on this GPU.", "gauge")
        for (identity, namespace, pod), value in sorted(
                memory.items(), key=lambda kv: (kv[0][0].index, kv[0][1], kv[0][2])):
            used.add_sample("steward_gpu_pod_memory_used_bytes", {
                **gpu_labels(identity, hostname), "namespace": namespace, "pod": pod},
                float(value))
        families.append(used)
    return [m for m in families if m.samples]


def attribution_collector(devices: DeviceSource, latest: LatestReadings, hostname: str,
                          interval: float, *,
                          pod_uid_for_pid: Callable[[int], str | None] | None = None,
                          pods: Callable[[], list[PodInfo]] | None = None) -> Collector:
    """The ``attribution`` collector. Without ``pods`` (no pod cache), per-pod memory is
    left out: a PID's cgroup names a pod UID, and only the API maps UIDs to names."""
    logged_unmatched: set[str] = set()
    logged_allocatable: set[str] = set()

    def collect() -> CollectResult:
        # Both loops start together; the first GPU collection is usually milliseconds away.
        readings = latest.get(wait=min(interval, 30.0))
        if readings is None:
            # The gpu collector's own failure (or NVML's) is what the log must say, once.
            raise CollectorFailed("gpu_readings_unavailable",
                                  "no GPU readings yet: the gpu collector has not succeeded",
                                  reported=True)
        try:
            listed = devices.list_devices()
        except PodResourcesError as exc:
            raise CollectorFailed(exc.reason, str(exc)) from exc
        allocations, unmatched = match_allocations(listed, readings)
        errors = ["unmatched_device"] * len(unmatched)
        for device_id in set(unmatched) - logged_unmatched:
            logged_unmatched.add(device_id)
            log.warning("device ID from the kubelet matches no GPU NVML reports on this node",
                        extra={"device_id": device_id})
        memory = None
        listed_pods = pods() if pods is not None else None
        by_uid = {p.uid: p for p in listed_pods} if listed_pods is not None else None
        if by_uid is not None and pod_uid_for_pid is not None:
            # Host processes (persistenced, a debugging nvidia-smi) are normal: not errors.
            memory, _ = pod_memory(readings, pod_uid_for_pid, by_uid)
        families = build_attribution_families(allocations, memory, hostname)
        try:
            allocatable: list[str] | None = devices.allocatable_devices()
        except PodResourcesError as exc:
            # Whole GPUs, MIG and fractions are still known; only replicas are not.
            allocatable = None
            errors.append("allocatable_unavailable")
            if exc.reason not in logged_allocatable:
                logged_allocatable.add(exc.reason)
                log.warning("kubelet allocatable devices unavailable: time-sliced GPU shares "
                            "cannot be computed", extra={"detail": str(exc)})
        shares = compute_shares(listed, allocatable, readings, listed_pods, DeviceIndex(readings))
        errors.extend(shares.errors)
        families += build_share_families(shares.shares, hostname)
        if by_uid is not None and pod_uid_for_pid is not None:
            use = tenant_use(readings, shares.shares, pod_uid_for_pid, by_uid)
            families += build_use_families(use, hostname)
        return CollectResult(families, errors)

    return Collector("attribution", collect, interval)
