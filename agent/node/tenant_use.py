"""Use per pod on shared GPUs: NVML's per-process samples, joined to pods through cgroups.

``steward_gpu_pod_utilization_ratio{GPU labels, namespace, pod}`` is the pod's own SM use
of the physical GPU, 0-1 of the whole GPU:

- a GPU held whole by one pod (``exclusive``): everything the GPU did is that pod's, so its
  use is the GPU's utilization (``steward_gpu_utilization_ratio``);
- a shared GPU (time-sliced, MPS, fractions, or several holders): the sum over the pod's
  processes of their mean SM share in NVML's samples since the previous collection. NVML
  samples every process that ran a kernel in that time, so a holder with no sample used
  nothing (0); when NVML has no sample at all (NVML_ERROR_NOT_FOUND) while the GPU itself
  was idle, every holder used nothing.

What cannot be attributed is never guessed: it is exported as
``steward_gpu_unattributed_utilization_ratio{GPU labels, reason}`` and no holder gets it.
Reasons: ``no_samples`` (NVML has no per-process samples, or cannot give them, while the
GPU was busy: the GPU's whole utilization, and no holder of that GPU gets a use series),
``unknown_process`` (a PID in no pod of this node: a host process, or one that exited
between NVML's answer and the cgroup lookup), ``pod_without_share`` (a process of a pod
that holds no share of this GPU). PIDs never become labels. MIG instances have no
per-instance utilization in NVML: no use series.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client.metrics_core import Metric

from agent.node.gpu_metrics import gpu_labels
from agent.node.pods import PodInfo
from agent.node.readings import GpuIdentity, GpuReading
from agent.node.shares import PodShare

Reason = Literal["no_samples", "unknown_process", "pod_without_share"]
REASONS: Final[tuple[Reason, ...]] = ("no_samples", "unknown_process", "pod_without_share")
_WHOLE: Final = 1 - 1e-9


@dataclass(frozen=True)
class PodUse:
    identity: GpuIdentity
    namespace: str
    pod: str
    utilization: float


@dataclass(frozen=True)
class Unattributed:
    identity: GpuIdentity
    reason: Reason
    utilization: float


@dataclass
class UseResult:
    pods: list[PodUse]
    unattributed: list[Unattributed]


def tenant_use(readings: Sequence[GpuReading], shares: Iterable[PodShare],
               pod_uid_for_pid: Callable[[int], str | None],
               pods_by_uid: dict[str, PodInfo]) -> UseResult:
    """Per pod and GPU, the pod's own use; per shared GPU, what no holder can be given."""
    holders: dict[str, dict[tuple[str, str], PodShare]] = defaultdict(dict)
    for share in shares:
        if share.identity.gpu_instance_id is None:
            holders[share.identity.uuid][(share.namespace, share.pod)] = share
    result = UseResult([], [])
    for reading in readings:
        identity = reading.identity
        if identity.gpu_instance_id is not None or not reading.up or reading.mig_mode == "enabled":
            continue
        held = holders.get(identity.uuid, {})
        if len(held) == 1:
            only = next(iter(held.values()))
            if only.mode == "exclusive" and only.ratio >= _WHOLE:
                if reading.utilization is not None:
                    result.pods.append(PodUse(identity, only.namespace, only.pod,
                                              reading.utilization))
                continue
        _shared(reading, held, pod_uid_for_pid, pods_by_uid, result)
    return result


def _shared(reading: GpuReading, held: dict[tuple[str, str], PodShare],
            pod_uid_for_pid: Callable[[int], str | None], pods_by_uid: dict[str, PodInfo],
            result: UseResult) -> None:
    identity = reading.identity
    samples = reading.process_utilization
    gpu = reading.utilization
    lost: dict[Reason, float] = dict.fromkeys(REASONS, 0.0)
    if samples is None or (not samples and (gpu is None or gpu > 0)):
        # NVML cannot say who used the GPU: all of its use is unattributed.
        if gpu is None:
            return
        lost["no_samples"] = gpu
    else:
        use = dict.fromkeys(held, 0.0)
        for sample in samples:
            uid = pod_uid_for_pid(sample.pid)
            pod = pods_by_uid.get(uid) if uid else None
            if pod is None:
                lost["unknown_process"] += sample.sm
            elif (pod.namespace, pod.name) in use:
                use[(pod.namespace, pod.name)] += sample.sm
            else:
                lost["pod_without_share"] += sample.sm
        for (namespace, name), value in sorted(use.items()):
            result.pods.append(PodUse(identity, namespace, name, min(1.0, value)))
    result.unattributed.extend(Unattributed(identity, reason, min(1.0, value))
                               for reason, value in lost.items())


def build_use_families(use: UseResult, hostname: str) -> list[Metric]:
    pods = Metric("steward_gpu_pod_utilization_ratio",
                  "The pod's own SM use of that GPU, 0-1 of the whole GPU: the GPU's "
                  "utilization when the pod holds it whole, else its processes' per-process "
                  "samples.", "gauge")
    for item in use.pods:
        pods.add_sample(pods.name, {**gpu_labels(item.identity, hostname),
                                    "namespace": item.namespace, "pod": item.pod},
                        item.utilization)
    lost = Metric("steward_gpu_unattributed_utilization_ratio",
                  "SM use of a shared (or unallocated) GPU that no pod holding a share of it "
                  "can be given, by reason: no_samples, unknown_process, pod_without_share.",
                  "gauge")
    for missing in use.unattributed:
        lost.add_sample(lost.name, {**gpu_labels(missing.identity, hostname),
                                    "reason": missing.reason}, missing.utilization)
    return [m for m in (pods, lost) if m.samples]
