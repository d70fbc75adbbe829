"""GPU readings -> Prometheus metric families, with dcgm-exporter's label keys.

Also owns the GPU inventory: a GPU that was enumerated before and is missing now keeps
being exported with ``steward_gpu_lost 1`` instead of silently vanishing from dashboards.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from agent.node.readings import CLOCK_EVENT_REASONS, GpuIdentity, GpuReading, XidStat

Labels = dict[str, str]


def gpu_labels(identity: GpuIdentity, hostname: str) -> Labels:
    labels = {
        "gpu": str(identity.index),
        "UUID": identity.uuid,
        "pci_bus_id": identity.pci_bus_id,
        "device": identity.device,
        "modelName": identity.model_name,
        "hostname": hostname,
    }
    if identity.gpu_instance_id is not None:
        labels["GPU_I_ID"] = str(identity.gpu_instance_id)
        labels["GPU_I_PROFILE"] = identity.gpu_instance_profile or ""
    return labels


class GpuInventory:
    """Remembers every GPU seen; fills in a lost reading for one that disappeared."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int | None], GpuReading] = {}

    def reconcile(self, readings: list[GpuReading]) -> list[GpuReading]:
        present = {r.identity.key for r in readings}
        out = list(readings)
        for key, last in self._seen.items():
            if key not in present:
                out.append(GpuReading(identity=last.identity, up=False, lost=True,
                                      driver_version=last.driver_version,
                                      mig_mode=last.mig_mode))
        for reading in readings:
            self._seen[reading.identity.key] = reading
        return out


def _family(name: str, doc: str, typ: str = "gauge") -> Metric:
    return Metric(name, doc, typ)


class GpuFamilies:
    """Accumulates samples per family, then yields only the families that got samples."""

    def __init__(self) -> None:
        self.info = _family("steward_gpu_info", "GPU identity; always 1.")
        self.up = _family("steward_gpu_up", "1 when the GPU answered this collection.")
        self.lost = _family("steward_gpu_lost",
                            "1 when the GPU fell off the bus or disappeared since it was seen.")
        self.util = _family("steward_gpu_utilization_ratio",
                            "Share of NVML's sample window in which an SM kernel was running.")
        self.copy_util = _family("steward_gpu_memory_copy_utilization_ratio",
                                 "Share of time the memory controller was busy.")
        self.mem_used = _family("steward_gpu_memory_used_bytes", "Framebuffer memory used.")
        self.mem_total = _family("steward_gpu_memory_total_bytes", "Framebuffer memory size.")
        self.temp = _family("steward_gpu_temperature_celsius", "GPU core temperature.")
        self.power = _family("steward_gpu_power_watts", "Power draw.")
        self.power_limit = _family("steward_gpu_power_limit_watts", "Enforced power limit.")
        self.energy = _family("steward_gpu_energy_joules",
                              "Energy consumed since the driver was loaded.", "counter")
        self.sm_clock = _family("steward_gpu_sm_clock_hertz", "Current SM clock.")
        self.clock_event = _family("steward_gpu_clock_event_active",
                                   "1 while NVML reports that clock-event (throttle) reason.")
        self.ecc = _family("steward_gpu_ecc_errors",
                           "Aggregate ECC error count over the GPU's life.", "counter")
        self.remapped = _family("steward_gpu_remapped_rows",
                                "Row remapper state: rows remapped, pending, failure flag.")

    def add(self, reading: GpuReading, hostname: str) -> None:
        labels = gpu_labels(reading.identity, hostname)
        self.info.add_sample("steward_gpu_info", {
            **labels, "driver_version": reading.driver_version, "mig_mode": reading.mig_mode,
        }, 1.0)
        self.up.add_sample("steward_gpu_up", labels, 1.0 if reading.up else 0.0)
        self.lost.add_sample("steward_gpu_lost", labels, 1.0 if reading.lost else 0.0)
        scalar = (
            (self.util, reading.utilization),
            (self.copy_util, reading.memory_copy_utilization),
            (self.mem_used, reading.memory_used_bytes),
            (self.mem_total, reading.memory_total_bytes),
            (self.temp, reading.temperature_celsius),
            (self.power, reading.power_watts),
            (self.power_limit, reading.power_limit_watts),
            (self.sm_clock, reading.sm_clock_hertz),
        )
        for family, value in scalar:
            if value is not None:
                family.add_sample(family.name, labels, float(value))
        if reading.energy_joules is not None:
            self.energy.add_sample("steward_gpu_energy_joules_total", labels,
                                   reading.energy_joules)
        if reading.clock_event_mask is not None:
            for reason, bit in CLOCK_EVENT_REASONS:
                self.clock_event.add_sample(
                    "steward_gpu_clock_event_active", {**labels, "reason": reason},
                    1.0 if reading.clock_event_mask & bit else 0.0)
        if reading.ecc_errors is not None:
            for kind, count in reading.ecc_errors.items():
                self.ecc.add_sample("steward_gpu_ecc_errors_total", {**labels, "type": kind},
                                    float(count))
        if reading.remapped_rows is not None:
            for state, rows in reading.remapped_rows.items():
                self.remapped.add_sample("steward_gpu_remapped_rows", {**labels, "state": state},
                                         float(rows))

    def families(self) -> list[Metric]:
        return [m for m in vars(self).values() if isinstance(m, Metric) and m.samples]


def build_gpu_families(readings: Iterable[GpuReading], hostname: str) -> list[Metric]:
    families = GpuFamilies()
    for reading in readings:
        families.add(reading, hostname)
    return families.families()


def build_xid_families(counts: Iterable[tuple[GpuIdentity, dict[int, XidStat]]],
                       hostname: str) -> list[Metric]:
    total = Metric("steward_gpu_xid_errors", "XID events seen since the agent started.",
                   "counter")
    last = Metric("steward_gpu_xid_last_timestamp_seconds", "When that XID last happened.",
                  "gauge")
    for identity, xids in counts:
        labels = gpu_labels(identity, hostname)
        for xid, stat in sorted(xids.items()):
            xid_labels = {**labels, "xid": str(xid)}
            total.add_sample("steward_gpu_xid_errors_total", xid_labels, float(stat.count))
            last.add_sample("steward_gpu_xid_last_timestamp_seconds", xid_labels, stat.last_seen)
    return [m for m in (total, last) if m.samples]
