"""One real NVML collection per GPU against ``nvidia-smi --query-gpu``, same number of runs.

Run on a machine with NVIDIA GPUs: ``python bench/nvml_collection.py [--runs 200]``.
Both read the same fields (utilization, memory, temperature, power and limit, SM clock,
clock-event reasons, ECC); the agent's reading goes through ``NvmlGpuSource.read()``, the
exact code the node agent runs. Prints per-collection wall time for each, their ratio, and
the values both saw, so a wrong unit or field shows up next to nvidia-smi's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.node.nvml import NvmlGpuSource  # noqa: E402

SMI_FIELDS = ("index,uuid,pci.bus_id,name,utilization.gpu,utilization.memory,memory.used,"
              "memory.total,temperature.gpu,power.draw,power.limit,clocks.sm,"
              "clocks_event_reasons.active,ecc.errors.corrected.aggregate.total,"
              "ecc.errors.uncorrected.aggregate.total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    t0 = time.perf_counter()
    source = NvmlGpuSource()
    readings = source.read()  # includes nvmlInit and enumeration
    first = time.perf_counter() - t0
    gpus = sum(1 for r in readings if r.identity.gpu_instance_id is None)

    walls = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        readings = source.read()
        walls.append(time.perf_counter() - t0)
    xids = source.xid_counts()
    source.close()

    smi_walls, smi_out = [], ""
    for _ in range(args.runs):
        t0 = time.perf_counter()
        smi_out = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, check=True).stdout
        smi_walls.append(time.perf_counter() - t0)

    ours = statistics.median(walls)
    smi = statistics.median(smi_walls)
    figures = {
        "gpus": gpus, "runs": args.runs,
        "first_collection_incl_init_ms": first * 1e3,
        "steward_collection_median_ms": ours * 1e3,
        "steward_collection_p99_ms": sorted(walls)[int(0.99 * (len(walls) - 1))] * 1e3,
        "steward_per_gpu_median_ms": ours / gpus * 1e3,
        "nvidia_smi_median_ms": smi * 1e3,
        "nvidia_smi_per_gpu_median_ms": smi / gpus * 1e3,
        "ratio_steward_to_nvidia_smi": ours / smi,
    }
    print(f"{gpus} GPU(s), {args.runs} runs each")
    print(f"steward NvmlGpuSource.read(): median {ours * 1e3:.3f} ms "
          f"({ours / gpus * 1e3:.3f} ms per GPU), first incl. nvmlInit {first * 1e3:.1f} ms")
    print(f"nvidia-smi --query-gpu:       median {smi * 1e3:.3f} ms "
          f"({smi / gpus * 1e3:.3f} ms per GPU)")
    print(f"ratio steward / nvidia-smi: {ours / smi:.4f}x")
    print("steward readings:")
    for r in readings:
        print("  ", json.dumps({
            "gpu": r.identity.index, "uuid": r.identity.uuid, "pci": r.identity.pci_bus_id,
            "device": r.identity.device, "model": r.identity.model_name,
            "mig": r.identity.gpu_instance_profile, "up": r.up, "lost": r.lost,
            "driver": r.driver_version, "mig_mode": r.mig_mode, "util": r.utilization,
            "mem_util": r.memory_copy_utilization, "mem_used": r.memory_used_bytes,
            "mem_total": r.memory_total_bytes, "temp": r.temperature_celsius,
            "power_w": r.power_watts, "limit_w": r.power_limit_watts,
            "energy_j": r.energy_joules, "sm_hz": r.sm_clock_hertz,
            "clock_events": r.clock_event_mask, "ecc": r.ecc_errors,
            "rows": r.remapped_rows, "processes": len(r.processes or ())}))
    print("xid counts:", [(i.index, {k: v.count for k, v in x.items()}) for i, x in xids])
    print("nvidia-smi:", smi_out.strip())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
