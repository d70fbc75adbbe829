"""GPU behaviour scenarios of the simulated cluster, shared by the demo, tests and benchmarks.

Each scenario is a pure function of the seconds since start (and a per-GPU phase), so a
test can compute exactly what the agent must export at any moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import SIM_SCENARIOS

GIB = 1024**3
SM_IDLE_HZ = 345e6


@dataclass(frozen=True)
class MigSlice:
    gpu_instance_id: int
    profile: str
    memory_total_bytes: int
    memory_used_bytes: int


@dataclass(frozen=True)
class GpuState:
    """What NVML would answer about one GPU at one moment."""

    utilization: float  # 0..1
    memory_copy_utilization: float
    memory_used_bytes: int
    temperature_celsius: float
    power_watts: float
    energy_joules: float
    sm_clock_hertz: float
    clock_event_mask: int
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)  # corr, unc, pending, failure
    lost: bool = False
    mig: tuple[MigSlice, ...] = ()
    # Processes holding GPU memory: (pid offset within the node, bytes).
    processes: tuple[tuple[int, int], ...] = ()
    # Each process's SM use, 0-1 of the GPU (NVML's per-process samples); None: the GPU's
    # utilization split evenly among its processes. A process at 0 gets no sample, as
    # NVML samples only processes that ran a kernel.
    process_sm: tuple[tuple[int, float], ...] | None = None
    # MPS clients (pid offsets) NVML lists for the GPU.
    mps_clients: tuple[int, ...] = ()


@dataclass(frozen=True)
class XidSchedule:
    """XID ``xid`` every ``period`` seconds from ``start`` (until ``stop``, if set)."""

    xid: int
    period: float
    start: float = 0.0
    stop: float | None = None

    def next_after(self, t: float) -> float | None:
        """The first event time after ``t``, or None when the schedule is over."""
        k = max(0, math.floor((t - self.start) / self.period) + 1)
        when = self.start + k * self.period
        return None if self.stop is not None and when > self.stop else when

    def between(self, t0: float, t1: float) -> list[float]:
        """Event times in (t0, t1]."""
        if t1 < self.start:
            return []
        first = max(0, math.floor((t0 - self.start) / self.period) + 1)
        times = []
        k = first
        while True:
            t = self.start + k * self.period
            if t > t1 or (self.stop is not None and t > self.stop):
                break
            if t > t0:
                times.append(t)
            k += 1
        return times


@dataclass(frozen=True)
class ScenarioContext:
    memory_total_bytes: int
    power_limit_watts: float
    phase: float  # radians, from the seed and GPU index
    lost_after_seconds: float
    # When the ecc_errors GPU reports its uncorrectable error (XID 48) and row remap failure.
    ecc_after_seconds: float = 10.0


@dataclass(frozen=True)
class Scenario:
    name: str
    state: Callable[[float, ScenarioContext], GpuState]
    xids: Callable[[ScenarioContext], tuple[XidSchedule, ...]] = lambda ctx: ()
    mig: bool = False
    # Whether the simulated cluster allocates this GPU to a pod.
    allocated: bool = True
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def _energy(base_watts: float, amplitude: float, omega: float, t: float, phase: float) -> float:
    """Integral of base + amplitude*sin(omega*t + phase) from 0 to t: never decreases."""
    return base_watts * t + amplitude / omega * (math.cos(phase) - math.cos(omega * t + phase))


def _busy(t: float, ctx: ScenarioContext, *, util: float = 0.93, temp: float = 68.0,
          power: float = 550.0, clock: float = 1980e6, mask: int = 0) -> GpuState:
    omega = 2 * math.pi / 120.0
    wave = math.sin(omega * t + ctx.phase)
    return GpuState(
        utilization=round(min(1.0, util + 0.05 * wave), 4),
        memory_copy_utilization=round(0.55 + 0.1 * wave, 4),
        memory_used_bytes=int(72 * GIB),
        temperature_celsius=round(temp + 3 * wave, 1),
        power_watts=round(power + 40 * wave, 3),
        energy_joules=_energy(power, 40, omega, t, ctx.phase),
        sm_clock_hertz=clock,
        clock_event_mask=mask,
        processes=((0, int(71.5 * GIB)),),
    )


def training(t: float, ctx: ScenarioContext) -> GpuState:
    return _busy(t, ctx)


def idle_allocated(t: float, ctx: ScenarioContext) -> GpuState:
    # A notebook that grabbed a GPU and went to lunch: a CUDA context, no kernels.
    return GpuState(
        utilization=0.0, memory_copy_utilization=0.0, memory_used_bytes=int(1.25 * GIB),
        temperature_celsius=34.0, power_watts=72.0, energy_joules=72.0 * t,
        sm_clock_hertz=SM_IDLE_HZ, clock_event_mask=0x1, processes=((0, int(1.25 * GIB)),),
    )


def idle_free(t: float, ctx: ScenarioContext) -> GpuState:
    return GpuState(
        utilization=0.0, memory_copy_utilization=0.0, memory_used_bytes=0,
        temperature_celsius=31.0, power_watts=65.0, energy_joules=65.0 * t,
        sm_clock_hertz=SM_IDLE_HZ, clock_event_mask=0x1,
    )


BURST_PERIOD, BURST_LENGTH, BURST_WATTS = 300.0, 30.0, 550.0


def bursty(t: float, ctx: ScenarioContext) -> GpuState:
    # Inference with traffic: busy 30 s out of every 5 minutes, idle in between.
    offset = ctx.phase * 10
    busy = (t + offset) % BURST_PERIOD < BURST_LENGTH

    def busy_seconds(x: float) -> float:  # time spent in bursts in [-offset, x - offset)
        full, rest = divmod(x, BURST_PERIOD)
        return full * BURST_LENGTH + min(rest, BURST_LENGTH)

    idle = idle_allocated(t, ctx)
    burst_time = busy_seconds(t + offset) - busy_seconds(offset)
    energy = idle.energy_joules + (BURST_WATTS - idle.power_watts) * burst_time
    if not busy:
        return GpuState(**{**idle.__dict__, "energy_joules": energy})
    return GpuState(**{**_busy(t, ctx).__dict__, "power_watts": BURST_WATTS,
                       "energy_joules": energy})


def lost(t: float, ctx: ScenarioContext) -> GpuState:
    state = _busy(t, ctx)
    if t >= ctx.lost_after_seconds:
        return GpuState(**{**state.__dict__, "lost": True})
    return state


def xid_storm(t: float, ctx: ScenarioContext) -> GpuState:
    return _busy(t, ctx, util=0.6)


def ecc_errors(t: float, ctx: ScenarioContext) -> GpuState:
    base = _busy(t, ctx)
    failed = t >= ctx.ecc_after_seconds
    return GpuState(**{
        **base.__dict__,
        "ecc_corrected": 40 + int(t // 2),
        "ecc_uncorrected": 1 if failed else 0,
        "remapped_rows": (3, 1 if failed else 0, 0, 1 if failed else 0),
    })


def thermal_throttling(t: float, ctx: ScenarioContext) -> GpuState:
    # hw_thermal | sw_thermal: a failed fan or blocked airflow. Two inference replicas
    # time-slice this GPU, so it has two processes.
    state = _busy(t, ctx, util=0.9, temp=91.0, clock=1100e6, mask=0x20 | 0x40)
    return GpuState(**{**state.__dict__, "processes": ((0, 40 * GIB), (1, 30 * GIB))})


# The smallest slice is a notebook that filled its 10 GB (GpuMemoryNearlyFull on a MIG
# instance: the alert names the instance, not the whole GPU).
MIG_LAYOUT = (
    MigSlice(1, "3g.40gb", 40 * GIB, 30 * GIB),
    MigSlice(5, "2g.20gb", 20 * GIB, 12 * GIB),
    MigSlice(13, "1g.10gb", 10 * GIB, int(9.75 * GIB)),
)


def mig(t: float, ctx: ScenarioContext) -> GpuState:
    used = sum(s.memory_used_bytes for s in MIG_LAYOUT)
    return GpuState(
        utilization=0.0, memory_copy_utilization=0.0, memory_used_bytes=used,
        temperature_celsius=52.0, power_watts=240.0, energy_joules=240.0 * t,
        sm_clock_hertz=1755e6, clock_event_mask=0, mig=MIG_LAYOUT,
        processes=tuple((i, s.memory_used_bytes) for i, s in enumerate(MIG_LAYOUT)),
    )


def _tenants(t: float, ctx: ScenarioContext, loads: tuple[float, ...],
             memory_gib: tuple[float, ...]) -> GpuState:
    """A GPU shared by processes with the given SM loads (pid offsets 0, 1, ...)."""
    util = min(1.0, sum(loads))
    base = _busy(t, ctx, util=util, power=120 + 500 * util, temp=40 + 35 * util)
    return GpuState(**{
        **base.__dict__, "utilization": round(util, 4),
        "memory_used_bytes": int(sum(memory_gib) * GIB),
        "processes": tuple((i, int(gib * GIB)) for i, gib in enumerate(memory_gib)),
        "process_sm": tuple(enumerate(loads)),
    })


# Four inference and research tenants time-slicing one GPU (replicas: 4), each with its own
# load: a busy server, a light API, a notebook that holds memory and runs nothing, a
# nightly evaluation at a trickle.
TIME_SLICED_LOADS = (0.45, 0.2, 0.0, 0.05)
TIME_SLICED_MEMORY_GIB = (22.0, 12.0, 3.0, 8.0)
# KAI Scheduler: a LoRA tuning job with gpu-fraction 0.5 at 0.3, and a notebook with
# gpu-memory 20480 MiB (a quarter of 80 GiB) that runs nothing; a quarter stays free.
KAI_LOADS = (0.3, 0.0)
KAI_MEMORY_GIB = (30.0, 4.0)
# HAMi: one reranker with nvidia.com/gpucores 30 and gpumem 24576 MiB, at 0.25.
HAMI_LOADS = (0.25,)
HAMI_MEMORY_GIB = (18.0,)


def time_sliced(t: float, ctx: ScenarioContext) -> GpuState:
    return _tenants(t, ctx, TIME_SLICED_LOADS, TIME_SLICED_MEMORY_GIB)


def kai_fraction(t: float, ctx: ScenarioContext) -> GpuState:
    return _tenants(t, ctx, KAI_LOADS, KAI_MEMORY_GIB)


def hami(t: float, ctx: ScenarioContext) -> GpuState:
    return _tenants(t, ctx, HAMI_LOADS, HAMI_MEMORY_GIB)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("training", training, description="busy training GPU"),
    Scenario("idle_allocated", idle_allocated,
             description="allocated to a pod, no kernels for hours"),
    Scenario("idle_free", idle_free, allocated=False, description="not allocated, idle"),
    Scenario("bursty", bursty, description="inference: 30 s busy every 5 minutes"),
    Scenario("lost", lost,
             xids=lambda ctx: (XidSchedule(79, period=1e9, start=ctx.lost_after_seconds),),
             description="falls off the bus (XID 79, NVML GPU_IS_LOST)"),
    # The same fault on a GPU time-sliced by two teams' workloads, and on one nobody had:
    # an owner notice for each team, none for the GPU without a tenant.
    Scenario("lost_shared", lost,
             xids=lambda ctx: (XidSchedule(79, period=1e9, start=ctx.lost_after_seconds),),
             description="time-sliced by two teams' workloads, falls off the bus (XID 79)"),
    Scenario("lost_free", lost, allocated=False,
             xids=lambda ctx: (XidSchedule(79, period=1e9, start=ctx.lost_after_seconds),),
             description="not allocated, falls off the bus (XID 79)"),
    Scenario("xid_storm", xid_storm,
             xids=lambda ctx: (XidSchedule(13, 5.0), XidSchedule(31, 7.0), XidSchedule(43, 11.0)),
             description="application XIDs 13/31/43 repeating"),
    Scenario("ecc_errors", ecc_errors,
             xids=lambda ctx: (XidSchedule(48, period=1e9, start=ctx.ecc_after_seconds),),
             description="corrected ECC errors climbing, one uncorrectable (XID 48), "
                         "row remap failure"),
    Scenario("thermal_throttling", thermal_throttling,
             description="91 C and thermal clock events"),
    Scenario("mig", mig, mig=True, description="MIG enabled: 3g.40gb, 2g.20gb, 1g.10gb "
                                                     "(the 1g.10gb slice nearly full)"),
    Scenario("time_sliced", time_sliced,
             description="time-sliced by four tenants (replicas 4): loads 45%, 20%, 0%, 5%"),
    Scenario("kai_fraction", kai_fraction,
             description="KAI Scheduler fractions: gpu-fraction 0.5 at 30%, gpu-memory "
                         "20480 MiB idle, a quarter free"),
    Scenario("hami", hami, description="HAMi: one pod with 30% of the cores and 24 GiB, "
                                       "at 25%"),
)}
if set(SCENARIOS) != set(SIM_SCENARIOS):  # config validates names against SIM_SCENARIOS
    raise ImportError(f"agent.config.SIM_SCENARIOS {sorted(SIM_SCENARIOS)} and the simulated "
                      f"scenarios {sorted(SCENARIOS)} differ: name each in both")
