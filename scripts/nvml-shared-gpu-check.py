#!/usr/bin/env python3
"""The per-process path on a real GPU: two processes share GPU 0, and this prints what NVML
returned and what the node agent makes of it.

    .venv/bin/python scripts/nvml-shared-gpu-check.py [--seconds 20] [--json OUT.json]

No CUDA toolkit or framework is needed: each worker loads a spin kernel (PTX, JIT-compiled
by the driver) through libcuda with ctypes and keeps the GPU busy for a share of its time
(60 % and 20 %). The parent reads the GPU through the agent's own NvmlGpuSource every
second, then joins each worker's PID to a pod as the agent would (here a fixed map: two
time-sliced replicas, half the GPU each) and prints each pod's own use and what could not
be attributed. Exits 1 when the GPU has no per-process samples for the workers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPIN_PTX = b"""
.version 6.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 cycles)
{
    .reg .u64 %rd<4>;
    .reg .pred %p;
    ld.param.u64 %rd1, [cycles];
    mov.u64 %rd2, %clock64;
LOOP:
    mov.u64 %rd3, %clock64;
    sub.u64 %rd3, %rd3, %rd2;
    setp.lt.u64 %p, %rd3, %rd1;
    @%p bra LOOP;
    ret;
}
"""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} failed with CUDA error {result}")


def worker(duty: float, seconds: float) -> None:
    """Busy ``duty`` of the time: a ~50 ms kernel, then an idle pause."""
    cuda = ctypes.CDLL("libcuda.so.1")
    _check(cuda.cuInit(0), "cuInit")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    _check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    _check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    _check(cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(SPIN_PTX)),
           "cuModuleLoadData")
    _check(cuda.cuModuleGetFunction(ctypes.byref(function), module, b"spin"),
           "cuModuleGetFunction")
    cycles = ctypes.c_uint64(100_000_000)  # ~50 ms at 2 GHz
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(cycles), ctypes.c_void_p))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        _check(cuda.cuLaunchKernel(function, 1, 1, 1, 1, 1, 1, 0, None, params, None),
               "cuLaunchKernel")
        _check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        busy = time.monotonic() - started
        time.sleep(busy * (1 - duty) / duty)


def main() -> int:
    from agent.node.nvml import NvmlGpuSource
    from agent.node.pods import ContainerInfo, PodInfo
    from agent.node.readings import GpuReading
    from agent.node.shares import PodShare
    from agent.node.tenant_use import tenant_use

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")  # no CUDA state shared with the parent
    workers = {name: context.Process(target=worker, args=(duty, args.seconds + 5), daemon=True)
               for name, duty in (("tenant-a", 0.6), ("tenant-b", 0.2))}
    for process in workers.values():
        process.start()
    pods = {f"uid-{name}": PodInfo(f"uid-{name}", "check", name, "Running", 1,
                                   (ContainerInfo("c", 0, None, None, None),))
            for name in workers}
    uid_of = {process.pid: f"uid-{name}" for name, process in workers.items()}
    source = NvmlGpuSource()
    rounds: list[dict[str, Any]] = []
    reading: GpuReading | None = None
    try:
        time.sleep(3)  # contexts up, kernels running
        dead = [name for name, p in workers.items() if not p.is_alive()]
        if dead:
            print(f"worker(s) {', '.join(dead)} could not run a kernel (libcuda.so.1, GPU 0)",
                  file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(1)
            reading = next(r for r in source.read() if r.identity.index == 0
                           and r.identity.gpu_instance_id is None)
            shares = [PodShare(reading.identity, "check", name, "time_sliced", 0.5)
                      for name in workers]
            use = tenant_use([reading], shares, uid_of.get, pods)
            rounds.append({
                "gpu_utilization": reading.utilization,
                "processes": [(p.pid, p.used_bytes) for p in reading.processes or ()],
                "process_utilization": None if reading.process_utilization is None else
                [(p.pid, p.sm, p.samples) for p in reading.process_utilization],
                "mps": reading.mps,
                "pod_use": {u.pod: u.utilization for u in use.pods},
                "unattributed": {u.reason: u.utilization for u in use.unattributed},
                "errors": list(source.last_errors),
            })
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        source.close()
        for process in workers.values():
            process.terminate()
    if reading is None:
        print("no reading of GPU 0 was taken (--seconds too short?)", file=sys.stderr)
        return 1
    result = {"gpu": reading.identity.model_name, "driver": reading.driver_version,
              "workers": {name: p.pid for name, p in workers.items()}, "rounds": rounds}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    sampled = {pid for r in rounds for pid, _, _ in r["process_utilization"] or ()}
    if not set(uid_of) & sampled:
        print("no per-process sample for either worker", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from agent.node.readings import GpuSourceUnavailable

    try:
        sys.exit(main())
    except GpuSourceUnavailable as exc:
        print(f"nvml-shared-gpu-check: {exc}: run it on a GPU machine", file=sys.stderr)
        sys.exit(1)
