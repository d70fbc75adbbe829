"""Allocation as a fraction: the share of each physical GPU each pod was given, and how.

``steward_gpu_pod_allocated_ratio{GPU labels, namespace, pod, mode}`` is the pod's share of
the physical GPU, 0-1. Per mode:

- ``exclusive``: a whole GPU from the device plugin (``nvidia.com/gpu``): 1.
- ``mig``: a MIG instance: its compute slices over the GPU's (``3g.40gb`` = 3/7 of an
  H100, see :mod:`agent.mig`), so the instances of a full layout add up to 1. A profile with
  no slice count falls back to the instance's memory over the GPU's.
- ``time_sliced`` / ``mps``: a replica of the NVIDIA device plugin's sharing
  (``GPU-uuid::N``): 1/replicas, the replicas counted from the kubelet's allocatable devices
  (``GetAllocatableResources``). ``mps`` when NVML lists MPS clients on the GPU.
- ``fraction``: KAI Scheduler (``gpu-fraction: 0.25``, or ``gpu-memory: <MiB>`` over the
  GPU's memory), on the GPU its reservation pod holds; HAMi (``hami.io/vgpu-devices-
  allocated``: per device its memory in MiB and cores in percent): the larger of the cores
  and the memory share, the part of the GPU nobody else can be given (a pod with neither
  limit gets the whole GPU).

The kubelet's answer wins: a pod that holds devices in the PodResources API is charged for
those, whatever its annotations say; annotations only place pods the kubelet gave no device
of their own (KAI fractions), or whose device IDs HAMi overrides. KAI's reservation pods
(``gpu-reservation-*`` in ``kai-resource-reservation`` or the older ``runai-reservation``)
hold a GPU for the fractions and are never charged as users. Annotations are untrusted
text: a value that does not parse, or is out of range, places nothing and is counted as an
error. Where the shares of one GPU add up to more than 1 (HAMi memory oversubscription),
they are scaled down to add up to 1, so that charges never exceed the GPU's cost.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.gpus import is_reservation_pod
from agent.mig import gpu_fraction
from agent.node.gpu_metrics import gpu_labels
from agent.node.podresources.client import ContainerDevices
from agent.node.pods import PodInfo
from agent.node.readings import GpuIdentity, GpuReading

log = logging.getLogger(__name__)

Mode = Literal["exclusive", "mig", "time_sliced", "fraction", "mps"]
MODES: Final[tuple[Mode, ...]] = ("exclusive", "mig", "time_sliced", "fraction", "mps")

KAI_FRACTION: Final = "gpu-fraction"
KAI_MEMORY: Final = "gpu-memory"
KAI_GROUP: Final = "runai-gpu-group"  # a multi-device fraction: runai-gpu-group/<group>
HAMI_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
MIB: Final = 1 << 20
_DONE_PHASES: Final = frozenset({"Succeeded", "Failed"})
_EPSILON: Final = 1e-9


class DeviceResolver(Protocol):
    """Device-plugin device ID -> the GPU or MIG instance NVML reported (attribution's
    ``DeviceIndex``)."""

    def resolve(self, device_id: str) -> GpuIdentity | None: ...


@dataclass(frozen=True)
class PodShare:
    identity: GpuIdentity  # the GPU, or the MIG instance (its labels carry GPU_I_ID)
    namespace: str
    pod: str
    mode: Mode
    ratio: float  # of the physical GPU


@dataclass
class ShareResult:
    shares: list[PodShare]
    errors: list[str]  # bounded reasons, one per problem (the collector's error counter)


def kai_groups(labels: dict[str, str]) -> list[str]:
    """The GPU groups a KAI pod belongs to (one per device it shares)."""
    groups = [labels[KAI_GROUP]] if labels.get(KAI_GROUP) else []
    prefix = KAI_GROUP + "/"
    groups += sorted(key[len(prefix):] for key in labels if key.startswith(prefix)
                     and len(key) > len(prefix))
    return list(dict.fromkeys(groups))


def mig_share(identity: GpuIdentity, *, instance_memory: int | None,
              gpu_memory: int | None) -> float | None:
    fraction = gpu_fraction(identity.model_name, identity.gpu_instance_profile or "")
    if fraction is not None:
        return fraction
    if instance_memory and gpu_memory:
        return min(1.0, instance_memory / gpu_memory)
    return None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class HamiDevice:
    uuid: str
    memory_mib: int
    cores: int  # percent of the GPU's SMs; 0: no limit


def parse_hami(text: str) -> list[HamiDevice] | None:
    """``GPU-uuid,NVIDIA,3000,30:;`` (containers split by ``;``, devices by ``:``, fields
    uuid, type, memory MiB, cores %); None when malformed."""
    devices: list[HamiDevice] = []
    for container in text.split(";"):
        for entry in container.split(":"):
            if not entry.strip():
                continue
            fields = entry.split(",")
            if len(fields) < 4:
                return None
            try:
                memory, cores = int(fields[2]), int(fields[3])
            except ValueError:
                return None
            if memory < 0 or not 0 <= cores <= 100 or not fields[0].startswith("GPU-"):
                return None
            devices.append(HamiDevice(fields[0].strip(), memory, cores))
    return devices


class _Builder:
    def __init__(self, readings: Sequence[GpuReading], resolver: DeviceResolver) -> None:
        self.resolver = resolver
        self.physical: dict[str, GpuReading] = {
            r.identity.uuid: r for r in readings if r.identity.gpu_instance_id is None}
        self.instances: dict[tuple[str, int | None], GpuReading] = {
            r.identity.key: r for r in readings}
        self.ratios: dict[tuple[tuple[str, int | None], str, str, Mode], float] = \
            defaultdict(float)
        self.identities: dict[tuple[str, int | None], GpuIdentity] = {}
        self.errors: list[str] = []

    def add(self, identity: GpuIdentity, namespace: str, pod: str, mode: Mode,
            ratio: float) -> None:
        self.identities[identity.key] = identity
        self.ratios[(identity.key, namespace, pod, mode)] += ratio

    def memory_of(self, uuid: str) -> int | None:
        reading = self.physical.get(uuid)
        return reading.memory_total_bytes if reading is not None else None

    def result(self) -> list[PodShare]:
        per_gpu: dict[str, float] = defaultdict(float)
        for (key, _, _, _), ratio in self.ratios.items():
            per_gpu[key[0]] += ratio
        shares = []
        for (key, namespace, pod, mode), ratio in sorted(
                self.ratios.items(), key=lambda kv: (kv[0][0][0], kv[0][0][1] or -1,
                                                     kv[0][1], kv[0][2], kv[0][3])):
            total = per_gpu[key[0]]
            scaled = ratio / total if total > 1 + _EPSILON else ratio
            shares.append(PodShare(self.identities[key], namespace, pod, mode, scaled))
        for uuid, total in per_gpu.items():
            if total > 1 + _EPSILON:
                self.errors.append("oversubscribed")
                log.debug("GPU shares add up to more than 1: scaled down",
                          extra={"UUID": uuid, "total": round(total, 6)})
        return shares


def compute_shares(devices: Sequence[ContainerDevices], allocatable: Sequence[str] | None,
                   readings: Sequence[GpuReading], pods: Iterable[PodInfo] | None,
                   resolver: DeviceResolver) -> ShareResult:
    """Each pod's share of each GPU of this node (see the module doc).

    ``allocatable``: the kubelet's allocatable device IDs (None when it could not be asked:
    replicas cannot be counted, so time-sliced shares are left out, with an error).
    ``pods``: the node's pods from the API (None without a pod cache: KAI fractions and
    HAMi assignments, which live in pod metadata, cannot be placed).
    """
    build = _Builder(readings, resolver)
    by_name = {(p.namespace, p.name): p for p in pods} if pods is not None else {}
    replicas = _replica_counts(allocatable, resolver) if allocatable is not None else None
    reserved: dict[str, GpuIdentity] = {}  # KAI group -> the GPU its reservation pod holds
    held: set[tuple[str, str]] = set()  # pods the kubelet gave devices of their own
    for entry in devices:
        key = (entry.namespace, entry.pod)
        info = by_name.get(key)
        if info is not None and HAMI_ALLOCATED in info.annotations:
            continue  # HAMi hands the kubelet IDs of its own; its annotation says where
        resolved = [(i, build.resolver.resolve(i)) for i in entry.device_ids]
        if is_reservation_pod(*key):
            groups = kai_groups(info.labels) if info is not None else []
            for _, identity in resolved:
                if identity is not None and identity.gpu_instance_id is None:
                    for group in groups:
                        reserved[group] = identity
            continue
        for device_id, identity in resolved:
            if identity is None:
                continue  # counted by the attribution collector (unmatched_device)
            held.add(key)
            _add_device(build, entry, device_id, identity, replicas)
    if pods is not None:
        for info in by_name.values():
            if (info.namespace, info.name) in held or info.phase in _DONE_PHASES \
                    or is_reservation_pod(info.namespace, info.name):
                continue
            if HAMI_ALLOCATED in info.annotations:
                _add_hami(build, info)
            elif KAI_FRACTION in info.annotations or KAI_MEMORY in info.annotations:
                _add_kai(build, info, reserved)
    shares = build.result()
    return ShareResult(shares, build.errors)


def _replica_counts(allocatable: Sequence[str], resolver: DeviceResolver) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for device_id in allocatable:
        if "::" not in device_id:
            continue
        identity = resolver.resolve(device_id)
        if identity is not None:
            counts[_unit(identity)] += 1
    return counts


def _unit(identity: GpuIdentity) -> str:
    return f"{identity.uuid}/{identity.gpu_instance_id}"


def _add_device(build: _Builder, entry: ContainerDevices, device_id: str,
                identity: GpuIdentity, replicas: dict[str, int] | None) -> None:
    if "::" in device_id:
        count = replicas.get(_unit(identity)) if replicas is not None else None
        if not count:
            build.errors.append("replicas_unknown")
            return
        whole = 1.0
        if identity.gpu_instance_id is not None:  # a time-sliced MIG instance
            whole = _mig_ratio(build, identity) or 0.0
        reading = build.physical.get(identity.uuid)
        mode: Mode = "mps" if reading is not None and reading.mps else "time_sliced"
        if whole:
            build.add(identity, entry.namespace, entry.pod, mode, whole / count)
        return
    if identity.gpu_instance_id is not None:
        ratio = _mig_ratio(build, identity)
        if ratio is None:
            build.errors.append("mig_profile_unknown")
            return
        build.add(identity, entry.namespace, entry.pod, "mig", ratio)
        return
    build.add(identity, entry.namespace, entry.pod, "exclusive", 1.0)


def _mig_ratio(build: _Builder, identity: GpuIdentity) -> float | None:
    instance = build.instances.get(identity.key)
    return mig_share(identity, instance_memory=instance.memory_total_bytes if instance else None,
                     gpu_memory=build.memory_of(identity.uuid))


def _invalid(build: _Builder, info: PodInfo, why: str) -> None:
    build.errors.append("invalid_share_annotation")
    log.debug("GPU share annotation ignored",
              extra={"namespace": info.namespace, "pod": info.name, "reason": why})


def _add_kai(build: _Builder, info: PodInfo, reserved: dict[str, GpuIdentity]) -> None:
    groups = kai_groups(info.labels)
    if not groups:
        return  # not bound yet: KAI labels the pod with its GPU group when it binds it
    fraction = _number(info.annotations.get(KAI_FRACTION))
    memory = _number(info.annotations.get(KAI_MEMORY))
    if KAI_FRACTION in info.annotations and (fraction is None or not 0 < fraction <= 1):
        _invalid(build, info, f"{KAI_FRACTION} must be a number in (0, 1]")
        return
    if fraction is None and (memory is None or memory <= 0):
        _invalid(build, info, f"{KAI_MEMORY} must be a positive number of MiB")
        return
    for group in groups:
        identity = reserved.get(group)
        if identity is None:
            build.errors.append("reservation_not_found")
            continue
        if fraction is not None:
            ratio = fraction
        else:
            total = build.memory_of(identity.uuid)
            if not total:
                build.errors.append("gpu_memory_unknown")
                continue
            assert memory is not None
            ratio = min(1.0, memory * MIB / total)
        build.add(identity, info.namespace, info.name, "fraction", ratio)


def _add_hami(build: _Builder, info: PodInfo) -> None:
    devices = parse_hami(info.annotations[HAMI_ALLOCATED])
    if devices is None:
        _invalid(build, info, f"{HAMI_ALLOCATED} is not uuid,type,memory,cores entries")
        return
    for device in devices:
        identity = build.resolver.resolve(device.uuid)
        if identity is None or identity.gpu_instance_id is not None:
            build.errors.append("unmatched_device")
            continue
        total = build.memory_of(identity.uuid)
        memory = device.memory_mib * MIB / total if total else 0.0
        ratio = max(device.cores / 100, memory)
        build.add(identity, info.namespace, info.name, "fraction",
                  min(1.0, ratio) if ratio > 0 else 1.0)


def build_share_families(shares: Iterable[PodShare], hostname: str) -> list[Metric]:
    family = Metric("steward_gpu_pod_allocated_ratio",
                    "The pod's share of that physical GPU (0-1), by how it was given: "
                    "exclusive, mig, time_sliced, fraction (KAI, HAMi), mps.", "gauge")
    for share in shares:
        family.add_sample(family.name, {**gpu_labels(share.identity, hostname),
                                        "namespace": share.namespace, "pod": share.pod,
                                        "mode": share.mode}, share.ratio)
    return [family] if family.samples else []
