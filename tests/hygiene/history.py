"""The GPU fleet's Prometheus history for the idle-GPU tests, backfilled with promtool.

Every series is sampled every ``SCRAPE`` seconds from four hours before ``at`` to an hour
after it, so a query at ``at`` (the tests' injected clock) or at any wall-clock moment of a
test session (the CLI subprocesses) sees the same complete past, and the cases below hold
exactly: no scrape timing, no load on the machine changes a verdict.

Nodes a and b are the simulated GPU nodes the other tests name (a bursty GPU, an idle one,
a training one and a MIG GPU with three slices on a; four free and six idle GPUs on b).
Node c holds one case per way the evidence can be incomplete, and one fully idle GPU.
Node d holds shared GPUs, whose tenants export their share and their own use as the node
agent does: a busy GPU time-sliced by four (one tenant idle, one with a hole in its own
use), a KAI GPU (the reservation pod holds it; one fraction idle), a busy GPU whose
unattributed use might be its idle tenant's, and a GPU idle as a whole with two tenants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.support.prometheus import BackfillSeries

SCRAPE = 30  # seconds between samples, the config's hygiene.idle_gpus.scrape_interval
WINDOW, GRACE = "2h", "5m"
SPAN = 2 * 3600 + 5 * 60
BEFORE, AFTER = 4 * 3600, 3600  # history around ``at``
MINUTE = 60
MODEL = "NVIDIA A100-SXM4-80GB"
IDLE, BUSY = 0.002, 0.85  # utilization ratios: under and far over the 1 % floor

# (namespace, pod) on node c, by case
GAP_MID_WINDOW = ("evidence", "gap-mid-window-0")
STOPPED_REPORTING = ("evidence", "stopped-reporting-0")
GPU_LOST = ("evidence", "gpu-lost-0")
ALLOCATION_GAP = ("evidence", "allocation-gap-0")
YOUNG_ALLOCATION = ("evidence", "young-0")
FULLY_IDLE = ("evidence", "fully-idle-0")

Utilization = Callable[[float], float | None]  # seconds before ``at`` -> value, or no sample


@dataclass(frozen=True)
class Tenant:
    """A pod's share of a shared GPU and its own use; ``device``: it holds a device in the
    PodResources API (``steward_gpu_allocation``), as KAI fractions do not."""

    namespace: str
    pod: str
    share: float
    mode: str
    use: Utilization
    device: bool = True


@dataclass(frozen=True)
class Gpu:
    node: str
    index: int
    utilization: Utilization | None  # None: no series at all (a MIG GPU)
    pods: tuple[tuple[str, str, str | None], ...] = ()  # (namespace, pod, MIG instance)
    lost_since: float | None = None  # seconds before ``at``
    allocated: Callable[[float], bool] = lambda ago: True
    power: float = 72.0
    tenants: tuple[Tenant, ...] = ()
    unattributed: Utilization = lambda ago: 0.0

    @property
    def uuid(self) -> str:
        return f"GPU-{self.node}{self.index:03d}-7e57-4000-8000-00000000a100"

    @property
    def labels(self) -> dict[str, str]:
        return {"UUID": self.uuid, "gpu": str(self.index), "hostname": f"gpu-node-{self.node}",
                "modelName": MODEL, "device": f"nvidia{self.index}",
                "pci_bus_id": f"00000000:{self.index + 0x10:02X}:00.0"}


def _flat(value: float) -> Utilization:
    return lambda ago: value


def _bursty(ago: float) -> float:
    return 0.6 if 60 * MINUTE <= ago < 65 * MINUTE else IDLE


def _hole(start: float, end: float) -> Utilization:
    """Idle, with no sample between ``start`` and ``end`` minutes ago."""
    return lambda ago: None if end * MINUTE <= ago < start * MINUTE else IDLE


def fleet() -> list[Gpu]:
    ds = "data-science"
    gpus = [
        Gpu("a", 0, _bursty, (("inference", "chat-api-0", None),)),
        Gpu("a", 1, _flat(IDLE), ((ds, "jupyter-alice-1", None),)),
        Gpu("a", 2, _flat(BUSY), (("ml-research", "train-llama-2", None),), power=300.0),
        Gpu("a", 3, None, (("inference", "embedder-3", "1"), ("inference", "reranker-3", "13"),
                           (ds, "jupyter-bob-3", "5"))),
        *[Gpu("b", i, _flat(IDLE)) for i in range(4)],
        *[Gpu("b", i, _flat(IDLE), ((ds, f"jupyter-alice-{i}", None),)) for i in range(4, 10)],
        # A 40-minute hole inside the window (issue 13, defect 2).
        Gpu("c", 0, _hole(80, 40), ((*GAP_MID_WINDOW, None),)),
        # Utilization stopped 25 minutes ago; the allocation kept reporting (defect 1).
        Gpu("c", 1, lambda ago: None if ago < 25 * MINUTE else IDLE,
            ((*STOPPED_REPORTING, None),)),
        # Fell off the bus 10 minutes ago: lost, not up, no utilization since.
        Gpu("c", 2, lambda ago: None if ago < 10 * MINUTE else IDLE, ((*GPU_LOST, None),),
            lost_since=10 * MINUTE),
        # The allocation series has a 20-minute hole; utilization is complete.
        Gpu("c", 3, _flat(IDLE), ((*ALLOCATION_GAP, None),),
            allocated=lambda ago: not 50 * MINUTE <= ago < 70 * MINUTE),
        # Allocated to its pod only 30 minutes ago.
        Gpu("c", 4, _flat(IDLE), ((*YOUNG_ALLOCATION, None),),
            allocated=lambda ago: ago < 30 * MINUTE),
        Gpu("c", 5, _flat(IDLE), ((*FULLY_IDLE, None),)),
        *shared(),
    ]
    return gpus


def _sum(tenants: tuple[Tenant, ...]) -> Utilization:
    def total(ago: float) -> float:
        return sum(u for t in tenants if (u := t.use(ago)) is not None)
    return total


def shared() -> list[Gpu]:
    ds = "data-science"
    sliced = (Tenant("inference", "llm-serve-0", 0.25, "time_sliced", _flat(0.2)),
              Tenant(ds, "nb-quiet-0", 0.25, "time_sliced", _flat(0.0)),
              # 0.1 % of the GPU (0.4 % of its share), but no own-use sample for 30 minutes.
              Tenant("shared", "trickle-0", 0.25, "time_sliced", _hole(70, 40)),
              Tenant("shared", "busy-batch-0", 0.25, "time_sliced", _flat(0.3)))
    kai = (Tenant("ml-research", "tune-lora-0", 0.5, "fraction", _flat(0.3), device=False),
           Tenant(ds, "kai-nb-0", 0.25, "fraction", _flat(0.0), device=False))
    murky = (Tenant("shared", "busy-2-0", 0.5, "time_sliced", _flat(0.3)),
             Tenant("shared", "maybe-idle-0", 0.5, "time_sliced", _flat(0.0)))
    sleepy = (Tenant("inference", "sleepy-a-0", 0.5, "time_sliced", _flat(0.001)),
              Tenant("inference", "sleepy-b-0", 0.5, "time_sliced", _flat(0.001)))
    return [
        Gpu("d", 0, _sum(sliced), tenants=sliced),
        # The reservation pod holds the device; the fractions hold their shares.
        Gpu("d", 1, _sum(kai), (("kai-resource-reservation", "gpu-reservation-d1", None),),
            tenants=kai),
        # 5 % of the GPU's use, for 10 minutes, could not be given to any pod.
        Gpu("d", 2, _sum(murky), tenants=murky,
            unattributed=lambda ago: 0.05 if 30 * MINUTE <= ago < 40 * MINUTE else 0.0),
        Gpu("d", 3, _sum(sleepy), tenants=sleepy),
    ]


def series(at: float) -> list[BackfillSeries]:
    """Every sample of every GPU series around ``at`` (aligned to the scrape interval)."""
    times = [float(t) for t in range(int(at) - BEFORE, int(at) + AFTER + 1, SCRAPE)]
    out: list[BackfillSeries] = []
    for gpu in fleet():
        labels = gpu.labels
        lost = [(t, 1.0 if gpu.lost_since is not None and at - t <= gpu.lost_since else 0.0)
                for t in times]
        out.append(BackfillSeries("steward_gpu_lost", labels, lost))
        out.append(BackfillSeries("steward_gpu_up", labels,
                                  [(t, 1.0 - value) for t, value in lost]))
        if gpu.utilization is not None:
            utilization = [(t, v) for t in times if (v := gpu.utilization(at - t)) is not None]
            out.append(BackfillSeries("steward_gpu_utilization_ratio", labels, utilization))
            power = gpu.power if gpu.utilization is not _bursty else 72.0
            out.append(BackfillSeries("steward_gpu_power_watts", labels,
                                      [(t, power) for t, _ in utilization]))
        for namespace, pod, mig in gpu.pods:
            allocation = {**labels, "namespace": namespace, "pod": pod, "container": "main"}
            if mig is not None:
                allocation["GPU_I_ID"] = mig
                allocation["GPU_I_PROFILE"] = "1g.10gb"
            out.append(BackfillSeries("steward_gpu_allocation", allocation,
                                      [(t, 1.0) for t in times if gpu.allocated(at - t)]))
        for tenant in gpu.tenants:
            pod_labels = {**labels, "namespace": tenant.namespace, "pod": tenant.pod}
            if tenant.device:
                out.append(BackfillSeries("steward_gpu_allocation",
                                          {**pod_labels, "container": "main"},
                                          [(t, 1.0) for t in times]))
            out.append(BackfillSeries("steward_gpu_pod_allocated_ratio",
                                      {**pod_labels, "mode": tenant.mode},
                                      [(t, tenant.share) for t in times]))
            out.append(BackfillSeries("steward_gpu_pod_utilization_ratio", pod_labels,
                                      [(t, v) for t in times
                                       if (v := tenant.use(at - t)) is not None]))
        if gpu.tenants:
            for reason in ("no_samples", "unknown_process", "pod_without_share"):
                lost = gpu.unattributed if reason == "unknown_process" else _flat(0.0)
                out.append(BackfillSeries("steward_gpu_unattributed_utilization_ratio",
                                          {**labels, "reason": reason},
                                          [(t, lost(at - t) or 0.0) for t in times]))
    return out
