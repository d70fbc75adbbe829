"""The NVML source driven through patched ``pynvml`` functions.

The patches return pynvml's real ctypes structs and raise pynvml's real NVMLError subclasses
(``pynvml.NVMLError(code)`` becomes e.g. ``NVMLError_GpuIsLost``), so the code under test sees
exactly what it would see from libnvidia-ml.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry

from agent.exporter.collection import CollectionLoops
from agent.node.app import gpu_collector, xid_collector
from agent.node.nvml import NvmlGpuSource
from agent.node.readings import GpuSourceUnavailable
from tests.support.net import wait_until

GIB = 1024**3


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeGpu:
    uuid: str
    util: tuple[int, int] = (87, 41)
    memory: tuple[int, int] = (80 * GIB, 20 * GIB)  # total, used
    temperature: int = 61
    power_mw: int = 412_345
    limit_mw: int = 700_000
    energy_mj: int = 9_876_543
    sm_mhz: int = 1980
    reasons: int = 0x4 | 0x40
    ecc: tuple[int, int] | None = (12, 0)
    rows: tuple[int, int, int, int] = (2, 0, 1, 0)
    mig: list[tuple[int, str, int, int]] = field(default_factory=list)  # gi, profile, total, used
    processes: list[tuple[int, int]] = field(default_factory=lambda: [(4242, 19 * GIB)])
    graphics: list[tuple[int, int]] = field(default_factory=list)
    mps: list[tuple[int, int]] = field(default_factory=list)  # MPS clients
    # NVML's per-process sample buffer: (pid, timestamp in microseconds, SM %)
    samples: list[tuple[int, int, int]] = field(default_factory=list)
    # call name -> NVML error code raised from the nth call on (0 = always)
    fail: dict[str, int] = field(default_factory=dict)
    struct: Any = None
    mig_structs: list[Any] = field(default_factory=list)


class FakeNvml:
    """Installs patched pynvml functions over a list of FakeGpu."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.library_present = True
        self.calls: dict[str, int] = {}
        self.events: list[tuple[int, int]] = []  # (gpu index, xid)
        self.event_wait_error: int | None = None
        self._lock = threading.Lock()
        self.sample_requests: list[int] = []  # the lastSeenTimeStamp of each call
        # Samples that appear between pynvml's size query and its second call (a process
        # that began to run meanwhile), one list per size query.
        self.samples_between_calls: list[list[tuple[int, int, int]]] = []
        for gpu in gpus:
            gpu.struct = pynvml.struct_c_nvmlDevice_t()
            gpu.mig_structs = [pynvml.struct_c_nvmlDevice_t() for _ in gpu.mig]
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        # Per-process utilization is faked one level down, as libnvidia-ml's C function:
        # pynvml's own wrapper (size query, then the array of its ctypes structs, NOT_FOUND
        # raised as NVMLError_NotFound) runs as it does against the driver.
        monkeypatch.setitem(pynvml._nvmlGetFunctionPointer_cache,
                            "nvmlDeviceGetProcessUtilization", self._c_process_utilization)

    def _c_process_utilization(self, handle: Any, array: Any, count_ref: Any,
                               last_seen: Any) -> int:
        """``nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t,
        nvmlProcessUtilizationSample_t *, unsigned int *count, unsigned long long)``."""
        try:
            gpu = self._gpu(handle, "process_utilization")
        except pynvml.NVMLError as exc:
            return int(exc.value)
        if array is None:
            self.sample_requests.append(int(last_seen.value))
        elif self.samples_between_calls:
            gpu.samples.extend(self.samples_between_calls.pop(0))
        newer = [s for s in gpu.samples if s[1] > last_seen.value]
        count = count_ref._obj
        if not newer:
            return int(pynvml.NVML_ERROR_NOT_FOUND)
        if array is None or count.value < len(newer):
            count.value = len(newer)
            return int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, (pid, stamp, sm) in enumerate(newer):
            array[i].pid, array[i].timeStamp, array[i].smUtil = pid, stamp, sm
            array[i].memUtil, array[i].encUtil, array[i].decUtil = sm // 2, 0, 0
        count.value = len(newer)
        return int(pynvml.NVML_SUCCESS)

    # -- plumbing --
    def _gpu(self, handle: Any, call: str) -> FakeGpu:
        address = ctypes.cast(handle, ctypes.c_void_p).value
        for gpu in self.gpus:
            if ctypes.addressof(gpu.struct) == address:
                self.calls[call] = self.calls.get(call, 0) + 1
                code = gpu.fail.get(call)
                if code is not None:
                    raise nvml_error(code)
                if "*" in gpu.fail:
                    raise nvml_error(gpu.fail["*"])
                return gpu
        raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _mig(self, handle: Any) -> tuple[FakeGpu, int] | None:
        address = ctypes.cast(handle, ctypes.c_void_p).value
        for gpu in self.gpus:
            for slot, struct in enumerate(gpu.mig_structs):
                if ctypes.addressof(struct) == address:
                    return gpu, slot
        return None

    # -- the API --
    def nvmlInit(self) -> None:
        if not self.library_present:
            raise nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return ctypes.pointer(self.gpus[index].struct)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        mig = self._mig(handle)
        if mig:
            return f"MIG-{mig[0].uuid[4:]}-{mig[1]}"
        return self._gpu(handle, "uuid").uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        index = self.gpus.index(self._gpu(handle, "pci"))
        info = pynvml.nvmlPciInfo_t()
        info.busId = f"00000000:{index + 7:02X}:00.0".encode()
        return info

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self.gpus.index(self._gpu(handle, "minor")) + 10

    def nvmlDeviceGetName(self, handle: Any) -> str:
        mig = self._mig(handle)
        if mig:
            return f"NVIDIA A100-SXM4-80GB MIG {mig[0].mig[mig[1]][1]}"
        self._gpu(handle, "name")
        return "NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle, "mig_mode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "utilization")
        if gpu.mig:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        util = pynvml.c_nvmlUtilization_t()
        util.gpu, util.memory = gpu.util
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        memory = pynvml.c_nvmlMemory_t()
        mig = self._mig(handle)
        if mig:
            _, _, memory.total, memory.used = mig[0].mig[mig[1]]
        else:
            memory.total, memory.used = self._gpu(handle, "memory").memory
        memory.free = memory.total - memory.used
        return memory

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "temperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu(handle, "power").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._gpu(handle, "power_limit").limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._gpu(handle, "energy").energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._gpu(handle, "clock").sm_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._gpu(handle, "reasons").reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        return self._gpu(handle, "throttle_reasons").reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, kind: int, counter: int) -> int:
        gpu = self._gpu(handle, "ecc")
        assert counter == pynvml.NVML_AGGREGATE_ECC
        if gpu.ecc is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.ecc[0 if kind == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else 1]

    def nvmlDeviceGetRemappedRows(self, handle: Any) -> tuple[int, int, int, int]:
        return self._gpu(handle, "rows").rows

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        mig = self._mig(handle)
        if mig:
            return [pynvml.nvmlFriendlyObject({"pid": 9000 + mig[1], "usedGpuMemory": GIB})]
        gpu = self._gpu(handle, "processes")
        return [pynvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used})
                for pid, used in gpu.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:
        if self._mig(handle):
            return []
        gpu = self._gpu(handle, "graphics")
        return [pynvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used})
                for pid, used in gpu.graphics]

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[Any]:
        if self._mig(handle):
            return []
        gpu = self._gpu(handle, "mps")
        return [pynvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used})
                for pid, used in gpu.mps]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return 7 if self._gpu(handle, "mig_count").mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        gpu = self._gpu(handle, "mig_handle")
        if index >= len(gpu.mig_structs):
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return ctypes.pointer(gpu.mig_structs[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        mig = self._mig(handle)
        assert mig is not None
        return mig[0].mig[mig[1]][0]

    def nvmlEventSetCreate(self) -> Any:
        return ctypes.pointer(pynvml.struct_c_nvmlEventSet_t())

    def nvmlDeviceRegisterEvents(self, handle: Any, types: int, event_set: Any) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError
        self._gpu(handle, "register_events")

    def nvmlEventSetFree(self, event_set: Any) -> None:
        pass

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        with self._lock:
            if self.event_wait_error is not None:
                raise nvml_error(self.event_wait_error)
            pending = self.events.pop(0) if self.events else None
        if pending is None:
            threading.Event().wait(timeout_ms / 1000)
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        data = pynvml.c_nvmlEventData_t()
        data.device = ctypes.pointer(self.gpus[pending[0]].struct)
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = pending[1]
        return data


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return FakeNvml(monkeypatch, [FakeGpu(f"GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd")
                                  for i in range(3)])


@pytest.fixture
def source(fake: FakeNvml) -> Iterator[NvmlGpuSource]:
    src = NvmlGpuSource(lib=pynvml, clock=lambda: 1_700_000_000.0, event_timeout_ms=20)
    yield src
    src.close()


def registry_for(loops: CollectionLoops) -> CollectorRegistry:
    """A registry serving the loops' current snapshot, for get_sample_value."""

    class _Snapshot:
        def collect(self) -> Any:
            return loops.families()

    registry = CollectorRegistry()
    registry.register(_Snapshot())  # type: ignore[arg-type]
    return registry


def registry_of(source: NvmlGpuSource, hostname: str = "node-a") -> CollectorRegistry:
    """What the agent would expose after one GPU collection."""
    loops = CollectionLoops([gpu_collector(source, hostname, 1.0)])
    loops.run_all_once()
    return registry_for(loops)


def labels(fake: FakeNvml, index: int, **extra: str) -> dict[str, str]:
    return {"gpu": str(index), "UUID": fake.gpus[index].uuid,
            "pci_bus_id": f"00000000:{index + 7:02X}:00.0", "device": f"nvidia{index + 10}",
            "modelName": "NVIDIA A100-SXM4-80GB", "hostname": "node-a", **extra}


def test_every_reading_in_base_units(fake: FakeNvml, source: NvmlGpuSource) -> None:
    registry = registry_of(source)
    value = registry.get_sample_value
    lab = labels(fake, 0)
    assert value("steward_gpu_info", {**lab, "driver_version": "550.54.15",
                                      "mig_mode": "disabled"}) == 1
    assert value("steward_gpu_up", lab) == 1
    assert value("steward_gpu_lost", lab) == 0
    assert value("steward_gpu_utilization_ratio", lab) == pytest.approx(0.87)
    assert value("steward_gpu_memory_copy_utilization_ratio", lab) == pytest.approx(0.41)
    assert value("steward_gpu_memory_total_bytes", lab) == 80 * GIB
    assert value("steward_gpu_memory_used_bytes", lab) == 20 * GIB
    assert value("steward_gpu_temperature_celsius", lab) == 61
    assert value("steward_gpu_power_watts", lab) == pytest.approx(412.345)
    assert value("steward_gpu_power_limit_watts", lab) == 700
    assert value("steward_gpu_energy_joules_total", lab) == pytest.approx(9876.543)
    assert value("steward_gpu_sm_clock_hertz", lab) == 1980e6
    assert value("steward_gpu_clock_event_active", {**lab, "reason": "power_cap"}) == 1
    assert value("steward_gpu_clock_event_active", {**lab, "reason": "hw_thermal"}) == 1
    assert value("steward_gpu_clock_event_active", {**lab, "reason": "gpu_idle"}) == 0
    assert value("steward_gpu_ecc_errors_total", {**lab, "type": "corrected"}) == 12
    assert value("steward_gpu_ecc_errors_total", {**lab, "type": "uncorrected"}) == 0
    assert value("steward_gpu_remapped_rows", {**lab, "state": "correctable"}) == 2
    assert value("steward_gpu_remapped_rows", {**lab, "state": "pending"}) == 1
    assert value("steward_collector_up", {"collector": "gpu"}) == 1


def test_not_supported_readings_are_left_out(fake: FakeNvml, source: NvmlGpuSource) -> None:
    fake.gpus[1].ecc = None  # consumer GPUs have no ECC
    registry = registry_of(source)
    assert registry.get_sample_value("steward_gpu_ecc_errors_total",
                                     {**labels(fake, 1), "type": "corrected"}) is None
    assert registry.get_sample_value("steward_gpu_ecc_errors_total",
                                     {**labels(fake, 0), "type": "corrected"}) == 12
    # NOT_SUPPORTED is normal, not an error
    assert registry.get_sample_value("steward_collector_errors_total",
                                     {"collector": "gpu", "error": "not_supported"}) is None


def test_gpu_lost_mid_collection_others_keep_reporting(fake: FakeNvml,
                                                       source: NvmlGpuSource) -> None:
    registry_of(source)  # enumerated while healthy
    # Falls off the bus after utilization was read, before memory.
    fake.gpus[1].fail["memory"] = pynvml.NVML_ERROR_GPU_IS_LOST
    registry = registry_of(source)
    lost = labels(fake, 1)
    assert registry.get_sample_value("steward_gpu_lost", lost) == 1
    assert registry.get_sample_value("steward_gpu_up", lost) == 0
    # no half-read values for the lost GPU
    assert registry.get_sample_value("steward_gpu_utilization_ratio", lost) is None
    for healthy in (0, 2):
        assert registry.get_sample_value("steward_gpu_up", labels(fake, healthy)) == 1
        assert registry.get_sample_value("steward_gpu_utilization_ratio",
                                         labels(fake, healthy)) == pytest.approx(0.87)
    assert registry.get_sample_value("steward_collector_up", {"collector": "gpu"}) == 1
    assert registry.get_sample_value("steward_collector_errors_total",
                                     {"collector": "gpu", "error": "gpu_lost"}) == 1


def test_gpu_gone_from_enumeration_is_reported_lost(fake: FakeNvml,
                                                    source: NvmlGpuSource) -> None:
    loops = CollectionLoops([gpu_collector(source, "node-a", 1.0)])
    loops.run_all_once()
    gone = labels(fake, 2)
    fake.gpus.pop(2)
    loops.run_all_once()
    registry = registry_for(loops)
    assert registry.get_sample_value("steward_gpu_lost", gone) == 1
    assert registry.get_sample_value("steward_gpu_up", gone) == 0
    assert registry.get_sample_value("steward_gpu_up", labels(fake, 0)) == 1


def test_other_field_errors_are_counted_not_fatal(fake: FakeNvml, source: NvmlGpuSource) -> None:
    fake.gpus[0].fail["power"] = pynvml.NVML_ERROR_NO_PERMISSION
    registry = registry_of(source)
    assert registry.get_sample_value("steward_gpu_power_watts", labels(fake, 0)) is None
    assert registry.get_sample_value("steward_gpu_temperature_celsius", labels(fake, 0)) == 61
    assert registry.get_sample_value("steward_collector_errors_total",
                                     {"collector": "gpu", "error": "no_permission"}) == 1


def test_library_missing_then_appears(fake: FakeNvml) -> None:
    now = [0.0]
    fake.library_present = False
    source = NvmlGpuSource(lib=pynvml, monotonic=lambda: now[0], retry_seconds=30,
                           event_timeout_ms=20)
    try:
        with pytest.raises(GpuSourceUnavailable, match="NVML Shared Library Not Found"):
            source.read()
        fake.library_present = True
        now[0] = 10.0  # inside the retry interval: no new nvmlInit attempt
        with pytest.raises(GpuSourceUnavailable):
            source.read()
        now[0] = 31.0
        assert len(source.read()) == 3
    finally:
        source.close()


def test_clock_reasons_fall_back_on_old_drivers(fake: FakeNvml, source: NvmlGpuSource) -> None:
    for gpu in fake.gpus:
        gpu.fail["reasons"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    reading = source.read()[0]
    assert reading.clock_event_mask == 0x44
    assert fake.calls["throttle_reasons"] == 3


def test_mig_instances_are_their_own_series(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(monkeypatch, [FakeGpu("GPU-11111111-2222-3333-4444-555555555555", mig=[
        (1, "3g.40gb", 40 * GIB, 30 * GIB), (9, "1g.10gb", 10 * GIB, GIB)])])
    source = NvmlGpuSource(lib=pynvml, event_timeout_ms=20)
    try:
        registry = registry_of(source)
        base = labels(fake, 0)
        assert registry.get_sample_value("steward_gpu_info", {
            **base, "driver_version": "550.54.15", "mig_mode": "enabled"}) == 1
        # utilization is not available per MIG instance through NVML: left out, not zero
        assert registry.get_sample_value("steward_gpu_utilization_ratio", base) is None
        first = {**base, "GPU_I_ID": "1", "GPU_I_PROFILE": "3g.40gb"}
        assert registry.get_sample_value("steward_gpu_memory_used_bytes", first) == 30 * GIB
        assert registry.get_sample_value("steward_gpu_memory_total_bytes",
                                         {**base, "GPU_I_ID": "9",
                                          "GPU_I_PROFILE": "1g.10gb"}) == 10 * GIB
        readings = source.read()
        assert [r.identity.mig_uuid for r in readings[1:]] == [
            "MIG-11111111-2222-3333-4444-555555555555-0",
            "MIG-11111111-2222-3333-4444-555555555555-1"]
        assert readings[1].processes is not None and readings[1].processes[0].pid == 9000
    finally:
        source.close()


def test_xid_events_counted_per_gpu_and_xid(fake: FakeNvml, source: NvmlGpuSource) -> None:
    source.read()
    fake.events.extend([(0, 79), (2, 13), (2, 13)])
    loops = CollectionLoops([xid_collector(source, "node-a", 1.0)])

    def all_seen() -> bool:
        return sum(s.count for _, xids in source.xid_counts() for s in xids.values()) == 3

    wait_until(all_seen, timeout=5, what="three XID events")
    loops.run_all_once()
    value = registry_for(loops).get_sample_value
    assert value("steward_gpu_xid_errors_total", {**labels(fake, 2), "xid": "13"}) == 2
    assert value("steward_gpu_xid_errors_total", {**labels(fake, 0), "xid": "79"}) == 1
    assert value("steward_gpu_xid_last_timestamp_seconds",
                 {**labels(fake, 0), "xid": "79"}) == 1_700_000_000.0
    assert value("steward_gpu_xid_errors_total", {**labels(fake, 1), "xid": "13"}) is None
    assert value("steward_collector_up", {"collector": "xid_events"}) == 1


def test_broken_event_set_fails_the_xid_collector(fake: FakeNvml,
                                                  source: NvmlGpuSource) -> None:
    source.read()
    fake.event_wait_error = pynvml.NVML_ERROR_UNKNOWN

    def failing() -> bool:
        try:
            source.xid_counts()
        except GpuSourceUnavailable:
            return True
        return False

    wait_until(failing, timeout=5, what="xid collector to notice the broken event set")
    loops = CollectionLoops([xid_collector(source, "node-a", 1.0)])
    loops.run_all_once()
    assert loops.state("xid_events").up is False
    assert loops.state("xid_events").errors == {"xid_events_unavailable": 1}
