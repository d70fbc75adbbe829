"""The NVML GPU source: reads every GPU (and MIG instance) through ``nvidia-ml-py``.

The library is injected (``lib=pynvml`` by default) so that the simulated cluster and the
tests drive this very code with a fake NVML. NVML is initialised once and re-initialised
only after it failed; XID events are read on a background thread that blocks in
``nvmlEventSetWait`` and keeps a count and last-seen time per GPU and XID.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.node.readings import (
    GpuIdentity,
    GpuReading,
    GpuSourceUnavailable,
    ProcessMemory,
    ProcessUtilization,
    XidStat,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_MIG_PROFILE_RE = re.compile(r"MIG (\S+)$")
_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")


class _GpuLost(Exception):
    """NVML answered GPU_IS_LOST for this device: stop reading it this round."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _handle_address(handle: Any) -> int:
    """NVML device handles are opaque pointers; events name the device by the same pointer."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def error_kind(exc: BaseException) -> str:
    """``NVMLError_NoPermission`` -> ``no_permission``: a bounded label value."""
    name = type(exc).__name__
    if name.startswith("NVMLError_"):
        return _CAMEL_RE.sub("_", name[len("NVMLError_"):]).lower()
    return "nvml_error"


@dataclass
class _Device:
    handle: Any
    identity: GpuIdentity


class NvmlGpuSource:
    """GPU readings from NVML. Call ``read`` from one thread (the GPU collection loop)."""

    def __init__(self, *, lib: Any = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 retry_seconds: float = 60.0, event_timeout_ms: int = 500,
                 simulated: bool = False) -> None:
        if lib is None:
            import pynvml

            lib = pynvml
        self._lib = lib
        # A simulated library has no driver: saying "NVML initialised, driver 550.90.07"
        # would tell an operator reading the log that real GPUs answered.
        self._simulated = simulated
        self._clock = clock
        self._monotonic = monotonic
        self._retry_seconds = retry_seconds
        self._event_timeout_ms = event_timeout_ms
        self._initialized = False
        self._init_lock = threading.Lock()
        self._next_init = 0.0
        self._init_error = "NVML not initialised yet"
        self._driver_version = ""
        self._devices: list[_Device] = []
        self._by_address: dict[int, GpuIdentity] = {}
        self._xids: dict[str, dict[int, XidStat]] = {}
        self._xid_lock = threading.Lock()
        self._xid_logged: dict[tuple[str, int], float] = {}
        self._lost: set[str] = set()
        # Per GPU, the newest per-process utilization sample seen (NVML's own microsecond
        # timestamps): the next call asks only for samples after it.
        self._last_sample: dict[str, int] = {}
        self._event_error: str | None = "XID event thread not started"
        self._stop = threading.Event()
        self._event_thread: threading.Thread | None = None
        self.last_errors: list[str] = []

    # -- lifecycle -------------------------------------------------------------------

    def _ensure_initialized(self) -> None:
        # Both collection threads (GPU readings, XID counts) may be first to need NVML.
        with self._init_lock:
            if not self._initialized:
                self._initialize()

    def _initialize(self) -> None:
        now = self._monotonic()
        if now < self._next_init:
            raise GpuSourceUnavailable(self._init_error, reported=True)
        try:
            self._lib.nvmlInit()
            self._driver_version = _text(self._lib.nvmlSystemGetDriverVersion())
        except self._lib.NVMLError as exc:
            self._next_init = now + self._retry_seconds
            first = self._init_error == "NVML not initialised yet"
            self._init_error = (
                f"NVML unavailable ({exc}); no GPU can be read on this node, "
                f"retrying every {self._retry_seconds:g}s"
            )
            if first:
                # One clear line, not one per retry: a node without the driver is common
                # in mixed pools and must not flood the log or crash-loop the pod.
                log.error(self._init_error, extra={"error": error_kind(exc)})
            raise GpuSourceUnavailable(self._init_error, reported=True) from exc
        if self._simulated:
            log.debug("simulated GPUs ready (no GPU driver is read)")
        else:
            log.info("NVML initialised", extra={"driver_version": self._driver_version})
        self._enumerate()
        self._initialized = True

    def _enumerate(self) -> None:
        lib = self._lib
        devices: list[_Device] = []
        for index in range(lib.nvmlDeviceGetCount()):
            try:
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                identity = GpuIdentity(
                    index=index,
                    uuid=_text(lib.nvmlDeviceGetUUID(handle)),
                    pci_bus_id=_text(lib.nvmlDeviceGetPciInfo(handle).busId),
                    device=f"nvidia{lib.nvmlDeviceGetMinorNumber(handle)}",
                    model_name=_text(lib.nvmlDeviceGetName(handle)),
                )
            except lib.NVMLError as exc:
                # A GPU that is already lost cannot even be named; the collector's
                # inventory reports it as lost if it was seen before.
                log.warning("cannot enumerate GPU", extra={"gpu": index, "error": error_kind(exc)})
                continue
            devices.append(_Device(handle, identity))
        self._devices = devices
        self._by_address = {_handle_address(d.handle): d.identity for d in devices}
        self._restart_event_thread()

    def close(self) -> None:
        self._stop_event_thread()
        if self._initialized:
            with contextlib.suppress(self._lib.NVMLError):
                self._lib.nvmlShutdown()
            self._initialized = False

    # -- XID events ------------------------------------------------------------------

    def _restart_event_thread(self) -> None:
        self._stop_event_thread()
        event_set = self._register_events(self._devices)
        if event_set is None:
            return
        self._stop.clear()
        self._event_thread = threading.Thread(
            target=self._wait_for_events, args=(event_set,), name="nvml-xid-events", daemon=True)
        self._event_thread.start()

    def _stop_event_thread(self) -> None:
        self._stop.set()
        if self._event_thread is not None:
            self._event_thread.join(timeout=self._event_timeout_ms / 1000 + 2)
            self._event_thread = None

    def _register_events(self, devices: list[_Device]) -> Any:
        """Create the event set and register every GPU; None (and why) when impossible."""
        lib = self._lib
        try:
            event_set = lib.nvmlEventSetCreate()
        except lib.NVMLError as exc:
            self._event_error = f"cannot create NVML event set: {exc}"
            log.error(self._event_error)
            return None
        registered = 0
        for dev in devices:
            try:
                lib.nvmlDeviceRegisterEvents(dev.handle, lib.nvmlEventTypeXidCriticalError,
                                             event_set)
                registered += 1
            except lib.NVMLError as exc:
                log.warning("XID events not available for GPU",
                            extra={"gpu": dev.identity.index, "error": error_kind(exc)})
        self._event_error = None if registered or not devices else "no GPU accepts XID events"
        return event_set

    def _wait_for_events(self, event_set: Any) -> None:
        lib = self._lib
        try:
            while not self._stop.is_set():
                try:
                    data = lib.nvmlEventSetWait_v2(event_set, self._event_timeout_ms)
                except lib.NVMLError as exc:
                    if exc.value == lib.NVML_ERROR_TIMEOUT:
                        continue
                    self._event_error = f"nvmlEventSetWait failed: {exc}"
                    # Back off instead of spinning when the event set is broken.
                    self._stop.wait(1.0)
                    continue
                self._event_error = None
                if data.eventType & lib.nvmlEventTypeXidCriticalError:
                    self._record_xid(_handle_address(data.device), int(data.eventData))
        finally:
            with contextlib.suppress(lib.NVMLError):
                lib.nvmlEventSetFree(event_set)

    def _record_xid(self, address: int, xid: int) -> None:
        identity = self._by_address.get(address)
        if identity is None:
            log.warning("XID event for an unknown device", extra={"xid": xid})
            return
        now = self._clock()
        with self._xid_lock:
            per_gpu = self._xids.setdefault(identity.uuid, {})
            previous = per_gpu.get(xid)
            count = (previous.count if previous else 0) + 1
            per_gpu[xid] = XidStat(count=count, last_seen=now)
            # An XID storm must not flood the log: the first of each kind, then one a minute.
            key = (identity.uuid, xid)
            if now - self._xid_logged.get(key, float("-inf")) < 60.0:
                return
            self._xid_logged[key] = now
        log.warning("GPU XID error", extra={"gpu": identity.index, "UUID": identity.uuid,
                                            "xid": xid, "count": count})

    def xid_counts(self) -> list[tuple[GpuIdentity, dict[int, XidStat]]]:
        """XIDs seen since start, per GPU; raises when the event thread cannot run."""
        self._ensure_initialized()
        if self._event_error is not None:
            raise GpuSourceUnavailable(self._event_error)
        if self._event_thread is None or not self._event_thread.is_alive():
            raise GpuSourceUnavailable("XID event thread is not running")
        with self._xid_lock:
            return [(d.identity, dict(self._xids.get(d.identity.uuid, {})))
                    for d in self._devices]

    # -- readings --------------------------------------------------------------------

    def read(self) -> list[GpuReading]:
        self._ensure_initialized()
        lib = self._lib
        try:
            count = lib.nvmlDeviceGetCount()
        except lib.NVMLError as exc:
            raise GpuSourceUnavailable(f"nvmlDeviceGetCount failed: {exc}") from exc
        if count != len(self._devices):
            log.warning("GPU count changed, re-enumerating",
                        extra={"was": len(self._devices), "now": count})
            self._enumerate()
        errors: list[str] = []
        readings: list[GpuReading] = []
        for dev in self._devices:
            readings.extend(self._read_device(dev, errors))
        self.last_errors = errors
        return readings

    def _field(self, errors: list[str], call: Callable[..., T], *args: Any) -> T | None:
        """One NVML call: None when unsupported, raises _GpuLost, records other errors."""
        lib = self._lib
        try:
            return call(*args)
        except lib.NVMLError as exc:
            if exc.value == lib.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost from exc
            if exc.value not in (lib.NVML_ERROR_NOT_SUPPORTED, lib.NVML_ERROR_FUNCTION_NOT_FOUND):
                errors.append(error_kind(exc))
            return None

    def _read_device(self, dev: _Device, errors: list[str]) -> list[GpuReading]:
        lib, h = self._lib, dev.handle
        try:
            mig = self._field(errors, lib.nvmlDeviceGetMigMode, h)
            mig_enabled = bool(mig and mig[0] == lib.NVML_DEVICE_MIG_ENABLE)
            util = self._field(errors, lib.nvmlDeviceGetUtilizationRates, h)
            memory = self._field(errors, lib.nvmlDeviceGetMemoryInfo, h)
            processes, mps = (None, False) if mig_enabled else self._processes(errors, h)
            reading = GpuReading(
                identity=dev.identity,
                up=True,
                driver_version=self._driver_version,
                mig_mode="unsupported" if mig is None else ("enabled" if mig_enabled
                                                            else "disabled"),
                utilization=None if util is None else util.gpu / 100.0,
                memory_copy_utilization=None if util is None else util.memory / 100.0,
                memory_used_bytes=None if memory is None else int(memory.used),
                memory_total_bytes=None if memory is None else int(memory.total),
                temperature_celsius=self._scaled(
                    errors, lib.nvmlDeviceGetTemperature, 1.0, h, lib.NVML_TEMPERATURE_GPU),
                power_watts=self._scaled(errors, lib.nvmlDeviceGetPowerUsage, 1e-3, h),
                power_limit_watts=self._scaled(
                    errors, lib.nvmlDeviceGetEnforcedPowerLimit, 1e-3, h),
                energy_joules=self._scaled(
                    errors, lib.nvmlDeviceGetTotalEnergyConsumption, 1e-3, h),
                sm_clock_hertz=self._scaled(
                    errors, lib.nvmlDeviceGetClockInfo, 1e6, h, lib.NVML_CLOCK_SM),
                clock_event_mask=self._clock_events(errors, h),
                ecc_errors=self._ecc(errors, h),
                remapped_rows=self._remapped_rows(errors, h),
                processes=None if mig_enabled else processes,
                process_utilization=None if mig_enabled
                else self._process_utilization(errors, h, dev.identity.uuid),
                mps=mps,
            )
            if not mig_enabled:
                return [reading]
            return [reading, *self._read_mig(dev, errors)]
        except _GpuLost:
            if dev.identity.uuid not in self._lost:  # log the transition, not every round
                self._lost.add(dev.identity.uuid)
                log.error("GPU is lost (fell off the bus)",
                          extra={"gpu": dev.identity.index, "UUID": dev.identity.uuid})
            return [GpuReading(identity=dev.identity, up=False, lost=True,
                               driver_version=self._driver_version)]

    def _scaled(self, errors: list[str], call: Callable[..., int], factor: float,
                *args: Any) -> float | None:
        value = self._field(errors, call, *args)
        return None if value is None else float(value) * factor

    def _clock_events(self, errors: list[str], h: Any) -> int | None:
        lib = self._lib
        try:
            return int(lib.nvmlDeviceGetCurrentClocksEventReasons(h))
        except lib.NVMLError as exc:
            # Drivers before 535 only have the older name for the same bit mask.
            if exc.value != lib.NVML_ERROR_FUNCTION_NOT_FOUND:
                return self._field(errors, self._raise, exc)
        mask = self._field(errors, lib.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        return None if mask is None else int(mask)

    @staticmethod
    def _raise(exc: BaseException) -> int:
        raise exc

    def _ecc(self, errors: list[str], h: Any) -> dict[str, int] | None:
        lib = self._lib
        out: dict[str, int] = {}
        for name, kind in (("corrected", lib.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                           ("uncorrected", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            value = self._field(errors, lib.nvmlDeviceGetTotalEccErrors, h, kind,
                                lib.NVML_AGGREGATE_ECC)
            if value is None:
                return None
            out[name] = int(value)
        return out

    def _remapped_rows(self, errors: list[str], h: Any) -> dict[str, int] | None:
        rows = self._field(errors, self._lib.nvmlDeviceGetRemappedRows, h)
        if rows is None:
            return None
        correctable, uncorrectable, pending, failure = rows
        return {"correctable": int(correctable), "uncorrectable": int(uncorrectable),
                "pending": int(pending), "failure": int(failure)}

    def _processes(self, errors: list[str], h: Any
                   ) -> tuple[tuple[ProcessMemory, ...] | None, bool]:
        """(every process holding memory on the GPU, whether MPS clients run on it).

        Compute, graphics and MPS client lists: under MPS the compute list holds only the
        MPS server, and its clients are the tenants.
        """
        lib = self._lib
        procs = self._field(errors, lib.nvmlDeviceGetComputeRunningProcesses, h)
        if procs is None:
            return None, False
        graphics = self._field(errors, lib.nvmlDeviceGetGraphicsRunningProcesses, h)
        mps = self._field(errors, lib.nvmlDeviceGetMPSComputeRunningProcesses, h)
        used: dict[int, int] = {}
        for listed in (procs, graphics or (), mps or ()):
            for p in listed:
                # A process in two lists (compute and graphics) holds one allocation.
                used[int(p.pid)] = max(used.get(int(p.pid), 0), int(p.usedGpuMemory or 0))
        return tuple(ProcessMemory(pid=pid, used_bytes=b) for pid, b in used.items()), bool(mps)

    def _samples_since(self, h: Any, since: int) -> Any:
        lib = self._lib
        try:
            return lib.nvmlDeviceGetProcessUtilization(h, since)
        except lib.NVMLError as exc:
            if exc.value != lib.NVML_ERROR_INSUFFICIENT_SIZE:
                raise
            # pynvml sizes its array by a first call: a process that began to be sampled
            # between its two calls makes the second one too small. Ask once more.
            return lib.nvmlDeviceGetProcessUtilization(h, since)

    def _process_utilization(self, errors: list[str], h: Any,
                             uuid: str) -> tuple[ProcessUtilization, ...] | None:
        """Each process's mean SM use over the samples NVML took since the previous call.

        NVML keeps a short buffer of per-process samples and answers NOT_FOUND when it holds
        none newer than the timestamp asked for: no process ran a kernel since (``()``).
        The first call asks for the whole buffer (timestamp 0).
        """
        lib = self._lib
        try:
            samples = self._samples_since(h, self._last_sample.get(uuid, 0))
        except lib.NVMLError as exc:
            if exc.value == lib.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost from exc
            if exc.value == lib.NVML_ERROR_NOT_FOUND:
                return ()
            if exc.value not in (lib.NVML_ERROR_NOT_SUPPORTED, lib.NVML_ERROR_FUNCTION_NOT_FOUND):
                errors.append(error_kind(exc))
            return None
        per_pid: dict[int, list[int]] = {}
        newest = self._last_sample.get(uuid, 0)
        for sample in samples:
            per_pid.setdefault(int(sample.pid), []).append(int(sample.smUtil))
            newest = max(newest, int(sample.timeStamp))
        self._last_sample[uuid] = newest
        return tuple(ProcessUtilization(pid=pid, sm=min(1.0, max(0.0, sum(sm) / len(sm) / 100)),
                                        samples=len(sm))
                     for pid, sm in sorted(per_pid.items()))

    def _read_mig(self, dev: _Device, errors: list[str]) -> list[GpuReading]:
        lib, h = self._lib, dev.handle
        count = self._field(errors, lib.nvmlDeviceGetMaxMigDeviceCount, h) or 0
        readings: list[GpuReading] = []
        for slot in range(count):
            try:
                mig_handle = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except lib.NVMLError as exc:
                if exc.value == lib.NVML_ERROR_GPU_IS_LOST:
                    raise _GpuLost from exc
                continue  # NOT_FOUND: an empty MIG slot
            name = _text(self._field(errors, lib.nvmlDeviceGetName, mig_handle) or "")
            profile = _MIG_PROFILE_RE.search(name)
            gi_id = self._field(errors, lib.nvmlDeviceGetGpuInstanceId, mig_handle)
            mig_uuid = self._field(errors, lib.nvmlDeviceGetUUID, mig_handle)
            memory = self._field(errors, lib.nvmlDeviceGetMemoryInfo, mig_handle)
            identity = GpuIdentity(
                index=dev.identity.index, uuid=dev.identity.uuid,
                pci_bus_id=dev.identity.pci_bus_id, device=dev.identity.device,
                model_name=dev.identity.model_name,
                gpu_instance_id=int(gi_id) if gi_id is not None else slot,
                gpu_instance_profile=profile.group(1) if profile else "unknown",
                mig_uuid=_text(mig_uuid) if mig_uuid is not None else None,
            )
            readings.append(GpuReading(
                identity=identity, up=True, driver_version=self._driver_version,
                mig_mode="enabled",
                memory_used_bytes=None if memory is None else int(memory.used),
                memory_total_bytes=None if memory is None else int(memory.total),
                processes=self._processes(errors, mig_handle)[0],
            ))
        return readings
