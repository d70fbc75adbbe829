"""A simulated NVML library: the subset of ``pynvml`` the agent calls, driven by scenarios.

It returns pynvml's own ctypes structs and raises pynvml's own ``NVMLError`` subclasses, so
``--gpu-backend sim`` exercises exactly the code path that reads a real GPU. Anything it
does not define (constants, error classes) is pynvml's.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from agent.sim.scenarios import GIB, SCENARIOS, GpuState, Scenario, ScenarioContext

DRIVER_VERSION = "550.90.07"
MEMORY_TOTAL = 80 * GIB
POWER_LIMIT_MW = 700_000
_NO_INSTANCE = 0xFFFFFFFF
_PID_BASE = 10_000


def sim_uuid(hostname: str, index: int, seed: int, kind: str = "GPU") -> str:
    digest = hashlib.sha256(f"{hostname}/{index}/{seed}/{kind}".encode()).hexdigest()
    return f"{kind}-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


@dataclass
class _SimGpu:
    index: int
    scenario: Scenario
    ctx: ScenarioContext
    uuid: str
    pci_bus_id: str
    struct: Any  # keeps the handle's target alive
    handle: Any
    mig_handles: list[Any]
    mig_structs: list[Any]


def _raise(code: int) -> None:
    raise pynvml.NVMLError(code)


class SimulatedNvml:
    """Stands in for the ``pynvml`` module. One instance simulates one node's GPUs."""

    def __init__(self, scenarios: Sequence[str], *, hostname: str = "sim-node", seed: int = 0,
                 model_name: str = "NVIDIA H100 80GB HBM3", lost_after_seconds: float = 20.0,
                 ecc_after_seconds: float = 10.0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 library_present: bool = True) -> None:
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._model = model_name
        self._library_present = library_present
        self._initialized = False
        self._lock = threading.Lock()
        self._gpus: list[_SimGpu] = []
        for index, name in enumerate(scenarios):
            scenario = SCENARIOS[name]
            ctx = ScenarioContext(
                memory_total_bytes=MEMORY_TOTAL, power_limit_watts=POWER_LIMIT_MW / 1000,
                phase=(seed * 7 + index * 1.3) % (2 * math.pi),
                lost_after_seconds=lost_after_seconds, ecc_after_seconds=ecc_after_seconds,
            )
            struct = pynvml.struct_c_nvmlDevice_t()
            mig_structs = [pynvml.struct_c_nvmlDevice_t() for _ in scenario.state(0, ctx).mig]
            self._gpus.append(_SimGpu(
                index=index, scenario=scenario, ctx=ctx,
                uuid=sim_uuid(hostname, index, seed),
                pci_bus_id=f"00000000:{0x18 + index * 0x10:02X}:00.0",
                struct=struct, handle=ctypes.pointer(struct),
                mig_structs=mig_structs, mig_handles=[ctypes.pointer(s) for s in mig_structs],
            ))
        self._by_address = {self._address(g.handle): g for g in self._gpus}
        self._mig_by_address = {
            self._address(h): (g, i) for g in self._gpus for i, h in enumerate(g.mig_handles)
        }
        self._event_sets: dict[int, set[int]] = {}
        self._event_structs: list[Any] = []
        self._event_queue: list[tuple[float, int, int]] = []  # (t, gpu index, xid)
        self._events_until = 0.0

    def __getattr__(self, name: str) -> Any:
        # Constants and error classes are pynvml's own.
        return getattr(pynvml, name)

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _address(handle: Any) -> int:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def gpus(self) -> list[tuple[str, str, bool]]:
        """(uuid, scenario name, allocated) per GPU: what the simulated kubelet allocates."""
        return [(g.uuid, g.scenario.name, g.scenario.allocated) for g in self._gpus]

    def is_lost(self, index: int) -> bool:
        """Whether GPU ``index`` has fallen off the bus by now (the simulated device plugin
        then reports it Unhealthy in its pods' status)."""
        gpu = self._gpus[index]
        return gpu.scenario.state(self.elapsed(), gpu.ctx).lost

    def mig_uuids(self, index: int) -> list[str]:
        gpu = self._gpus[index]
        return [sim_uuid(f"{gpu.uuid}", i, 0, "MIG") for i in range(len(gpu.mig_handles))]

    @property
    def model_name(self) -> str:
        return self._model

    def mig_profile(self, index: int, slot: int) -> str:
        gpu = self._gpus[index]
        return gpu.scenario.state(0, gpu.ctx).mig[slot].profile

    @staticmethod
    def process_pid(index: int, offset: int) -> int:
        """The PID the simulated GPU ``index`` reports for its ``offset``-th process."""
        return _PID_BASE + index * 100 + offset

    def _check_init(self) -> None:
        if not self._initialized:
            _raise(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: Any) -> tuple[_SimGpu, GpuState]:
        self._check_init()
        gpu = self._by_address.get(self._address(handle))
        if gpu is None:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            raise AssertionError  # unreachable, for type checkers
        state = gpu.scenario.state(self.elapsed(), gpu.ctx)
        if state.lost:
            _raise(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu, state

    def _mig(self, handle: Any) -> tuple[_SimGpu, int, GpuState] | None:
        found = self._mig_by_address.get(self._address(handle))
        if found is None:
            return None
        gpu, slot = found
        state = gpu.scenario.state(self.elapsed(), gpu.ctx)
        if state.lost:
            _raise(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu, slot, state

    # -- the pynvml API subset -------------------------------------------------------

    def nvmlInit(self) -> None:
        if not self._library_present:
            _raise(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._initialized = True

    def nvmlShutdown(self) -> None:
        self._initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return DRIVER_VERSION

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check_init()
        if not 0 <= index < len(self._gpus):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpus[index].handle

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        mig = self._mig(handle)
        if mig is not None:
            return self.mig_uuids(mig[0].index)[mig[1]]
        self._check_init()
        gpu = self._by_address.get(self._address(handle))
        if gpu is None:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            raise AssertionError
        return gpu.uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu, _ = self._gpu(handle)
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id[4:].encode()
        return info

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._gpu(handle)[0].index

    def nvmlDeviceGetName(self, handle: Any) -> str:
        mig = self._mig(handle)
        if mig is not None:
            _, slot, state = mig
            return f"{self._model} MIG {state.mig[slot].profile}"
        self._gpu(handle)
        return self._model

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu, _ = self._gpu(handle)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.scenario.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu, state = self._gpu(handle)
        if gpu.scenario.mig:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on real MIG-enabled GPUs
        util = pynvml.c_nvmlUtilization_t()
        util.gpu = round(state.utilization * 100)
        util.memory = round(state.memory_copy_utilization * 100)
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        memory = pynvml.c_nvmlMemory_t()
        mig = self._mig(handle)
        if mig is not None:
            _, slot, state = mig
            memory.total = state.mig[slot].memory_total_bytes
            memory.used = state.mig[slot].memory_used_bytes
        else:
            _, state = self._gpu(handle)
            memory.total = MEMORY_TOTAL
            memory.used = state.memory_used_bytes
        memory.free = memory.total - memory.used
        return memory

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return round(self._gpu(handle)[1].temperature_celsius)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return round(self._gpu(handle)[1].power_watts * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._gpu(handle)
        return POWER_LIMIT_MW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return round(self._gpu(handle)[1].energy_joules * 1000)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        return round(self._gpu(handle)[1].sm_clock_hertz / 1e6)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._gpu(handle)[1].clock_event_mask

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter_type: int) -> int:
        _, state = self._gpu(handle)
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return state.ecc_corrected
        return state.ecc_uncorrected

    def nvmlDeviceGetRemappedRows(self, handle: Any) -> tuple[int, int, int, int]:
        return self._gpu(handle)[1].remapped_rows

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        mig = self._mig(handle)
        if mig is not None:
            gpu, slot, state = mig
            pid_offset, used = state.processes[slot]
            return [pynvml.nvmlFriendlyObject({"pid": self.process_pid(gpu.index, pid_offset),
                                               "usedGpuMemory": used})]
        gpu, state = self._gpu(handle)
        return [pynvml.nvmlFriendlyObject({"pid": self.process_pid(gpu.index, off),
                                           "usedGpuMemory": used})
                for off, used in state.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:
        self._gpu_or_mig(handle)
        return []

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[Any]:
        if self._mig(handle) is not None:
            return []
        gpu, state = self._gpu(handle)
        used = dict(state.processes)
        return [pynvml.nvmlFriendlyObject({"pid": self.process_pid(gpu.index, off),
                                           "usedGpuMemory": used.get(off, 0)})
                for off in state.mps_clients]

    def nvmlDeviceGetProcessUtilization(self, handle: Any, time_stamp: int) -> list[Any]:
        """One sample per process that ran a kernel, stamped now (microseconds, as NVML's
        CPU timestamps): NOT_FOUND when none ran or none is newer than ``time_stamp``."""
        gpu, state = self._gpu(handle)
        if gpu.scenario.mig:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on real MIG-enabled GPUs
        now = int(self._clock() * 1e6)
        loads = state.process_sm
        if loads is None:
            share = state.utilization / len(state.processes) if state.processes else 0.0
            loads = tuple((off, share) for off, _ in state.processes)
        samples = []
        for offset, load in loads:
            percent = round(load * 100)
            if percent <= 0 or now <= time_stamp:
                continue
            sample = pynvml.c_nvmlProcessUtilizationSample_t()
            sample.pid = self.process_pid(gpu.index, offset)
            sample.timeStamp = now
            sample.smUtil = percent
            sample.memUtil = round(load * 60)
            samples.append(sample)
        if not samples:
            _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    def _gpu_or_mig(self, handle: Any) -> None:
        if self._mig(handle) is None:
            self._gpu(handle)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        gpu, _ = self._gpu(handle)
        return 7 if gpu.scenario.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        gpu, _ = self._gpu(handle)
        if index >= len(gpu.mig_handles):
            _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return gpu.mig_handles[index]

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        mig = self._mig(handle)
        if mig is None:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            raise AssertionError
        _, slot, state = mig
        return state.mig[slot].gpu_instance_id

    # -- events ----------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._check_init()
        event_set = pynvml.struct_c_nvmlEventSet_t()
        pointer = ctypes.pointer(event_set)
        with self._lock:
            self._event_sets[self._address(pointer)] = set()
            self._events_until = self.elapsed()
        self._event_structs.append(event_set)  # the pointer does not keep its target alive
        return pointer

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        gpu, _ = self._gpu(handle)
        with self._lock:
            self._event_sets[self._address(event_set)].add(gpu.index)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        with self._lock:
            self._event_sets.pop(self._address(event_set), None)

    def _due_events(self, registered: set[int]) -> None:
        now = self.elapsed()
        for gpu in self._gpus:
            if gpu.index not in registered:
                continue
            for schedule in gpu.scenario.xids(gpu.ctx):
                for t in schedule.between(self._events_until, now):
                    self._event_queue.append((t, gpu.index, schedule.xid))
        self._event_queue.sort()
        self._events_until = now

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        deadline = self._clock() + timeout_ms / 1000
        while True:
            with self._lock:
                registered = self._event_sets.get(self._address(event_set))
                if registered is None:
                    _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
                    raise AssertionError
                self._due_events(registered)
                if self._event_queue:
                    _, index, xid = self._event_queue.pop(0)
                    data = pynvml.c_nvmlEventData_t()
                    data.device = self._gpus[index].handle
                    data.eventType = pynvml.nvmlEventTypeXidCriticalError
                    data.eventData = xid
                    data.gpuInstanceId = _NO_INSTANCE
                    data.computeInstanceId = _NO_INSTANCE
                    return data
                upcoming = [when for gpu in self._gpus if gpu.index in registered
                            for schedule in gpu.scenario.xids(gpu.ctx)
                            if (when := schedule.next_after(self._events_until)) is not None]
            remaining = deadline - self._clock()
            if remaining <= 0:
                _raise(pynvml.NVML_ERROR_TIMEOUT)
            # Sleep until the next scheduled XID, like the real call blocks in the driver,
            # instead of polling.
            until_next = min(upcoming, default=float("inf")) - self.elapsed()
            self._sleep(max(0.001, min(remaining, until_next)))

    nvmlEventSetWait = nvmlEventSetWait_v2
