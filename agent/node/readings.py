"""What a GPU source reports: one immutable reading per GPU (or MIG instance) per collection.

``None`` in a field means the device does not support that reading (NVML's NOT_SUPPORTED);
the collector then leaves the series out rather than exporting a made-up zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# NVML's clock-event (throttle) reason bits, named as the SPEC's `reason` label values.
CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("clocks_setting", 0x2),
    ("power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal", 0x20),
    ("hw_thermal", 0x40),
    ("hw_power_brake", 0x80),
    ("display_clocks", 0x100),
)


@dataclass(frozen=True)
class GpuIdentity:
    """The dcgm-exporter label values of one GPU or MIG instance."""

    index: int
    uuid: str
    pci_bus_id: str
    device: str  # nvidiaN, from the minor number
    model_name: str
    gpu_instance_id: int | None = None  # MIG only
    gpu_instance_profile: str | None = None  # MIG only, e.g. "1g.10gb"
    # The MIG device's own UUID (MIG-...), which device plugins hand to pods; not a label.
    mig_uuid: str | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.uuid, self.gpu_instance_id)


@dataclass(frozen=True)
class XidStat:
    count: int
    last_seen: float  # unix seconds


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class ProcessUtilization:
    """One process's SM use of a GPU since the previous collection (NVML's per-process
    samples), 0-1 of the whole GPU: the mean of the samples NVML kept for it."""

    pid: int
    sm: float
    samples: int


@dataclass(frozen=True)
class GpuReading:
    identity: GpuIdentity
    up: bool
    lost: bool = False
    driver_version: str = ""
    mig_mode: str = "disabled"  # enabled | disabled | unsupported
    utilization: float | None = None
    memory_copy_utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    sm_clock_hertz: float | None = None
    clock_event_mask: int | None = None
    ecc_errors: dict[str, int] | None = None  # corrected / uncorrected
    remapped_rows: dict[str, int] | None = None  # correctable / uncorrectable / pending / failure
    processes: tuple[ProcessMemory, ...] | None = None
    # Per-process SM use since the previous collection: () when NVML had no sample for any
    # process (NVML_ERROR_NOT_FOUND), None when it cannot say (not supported, an error).
    process_utilization: tuple[ProcessUtilization, ...] | None = None
    # True while NVML lists MPS client processes on this GPU (an MPS server shares it).
    mps: bool = False


class GpuSourceUnavailable(Exception):
    """The whole source is down (NVML library or driver missing): no GPU can be read.

    ``reported``: the source already logged this condition once, so the collectors that
    hit it again must not each log it too (a node without the driver logs one line).
    """

    def __init__(self, message: str, *, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


class GpuSource(Protocol):
    """A source of GPU readings. ``read`` is called from the collection loop only."""

    def read(self) -> list[GpuReading]:
        """Readings of every GPU; raises GpuSourceUnavailable when none can be read."""
        ...

    def close(self) -> None: ...
