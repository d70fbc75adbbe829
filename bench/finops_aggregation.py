"""The FinOps report's aggregation over 30 days x 1,000 GPUs at 1-minute steps (43.2 M rows)
from Parquet, against DuckDB running the same aggregation on the same file in the same run.

Run: ``.venv/bin/python bench/finops_aggregation.py [--days 30] [--gpus 1000] [--runs 3]``

The file is what ``agent.finops.parquet`` writes (the exporter's schema, metadata and row
order: one day chunk at a time, series by series), with a synthetic fleet: 800 whole GPUs,
50 time-sliced GPUs with two containers each, 100 MIG instances (no utilization), pods
replaced every 12-60 hours, a fifth of them idle. It is generated once into ``--dir``.

Each side runs in its own fresh Python process, so that its peak RSS is its own:

- ours: ``aggregate_usage`` (pyarrow reads row groups, numpy folds runs, pandas groups);
- DuckDB: one ``GROUP BY`` in SQL computing the same per-(day, namespace, pod, model,
  profile) sums over ``read_parquet`` (all cores).

Both then price and shape the same tables (``price_usage`` + ``build_tables``, included in
both timings) and must agree on every total. Reported: median wall time of each and their
ratio (target <= 2x), peak RSS of each (VmHWM of the process: interpreter and imports
included) and their ratio (target: ours <= 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import peak_rss_bytes  # noqa: E402 - after the path above

IDLE_FLOOR = 0.01
STEP = 60
START = datetime(2026, 10, 1, tzinfo=UTC)
MODELS = {"NVIDIA H100 80GB HBM3": 4.0, "NVIDIA A100-SXM4-80GB": 2.0, "NVIDIA H200": 5.5}
NAMESPACES = 40
TEAMS = {f"ns-{i:02d}": f"team-{i % 9}" for i in range(NAMESPACES - 4)}  # 4 unassigned
GIB = 1 << 30


# --- the file -----------------------------------------------------------------------------


def generate(path: Path, *, days: int, units: int, seed: int = 7) -> int:
    """Write the synthetic fleet; returns the number of rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agent.finops.parquet import META_END, META_GAPS, META_SOURCE, META_START, META_STEP
    from agent.finops.parquet import SCHEMA as FILE_SCHEMA
    from agent.finops.series import iso

    rng = np.random.default_rng(seed)
    whole = units * 8 // 10
    shared_gpus = units // 20  # two rows (containers) each
    mig = units - whole - 2 * shared_gpus
    # Per unit (one row per minute each): GPU, MIG instance, share.
    gpu_of = np.concatenate([np.arange(whole), whole + np.repeat(np.arange(shared_gpus), 2),
                             whole + shared_gpus + np.arange(mig) // 3])
    gpus = int(gpu_of.max()) + 1
    gi = np.concatenate([np.zeros(whole + 2 * shared_gpus, dtype=int),
                         1 + np.arange(mig) % 3])
    profiles = ["", "3g.40gb", "2g.20gb", "2g.20gb"]
    # Shares are fractions of the physical GPU: a replica of two is half, a MIG instance
    # its compute slices (3/7, 2/7, 2/7: 7 of 7 slices).
    share = np.where((gpu_of >= whole) & (gi == 0), 0.5,
                     np.array([1.0, 3 / 7, 2 / 7, 2 / 7])[gi])
    mode_of = np.where(gi > 0, 2, np.where(gpu_of >= whole, 1, 0))
    model_of_gpu = rng.integers(0, len(MODELS), gpus)
    host_of_gpu = np.arange(gpus) // 8
    period = rng.integers(12 * 60, 60 * 60, units)  # minutes a pod lives
    offset = rng.integers(0, 60 * 60, units)
    model_names = list(MODELS)
    hosts = pa.array([f"gpu-node-{h:03d}" for h in range(int(host_of_gpu.max()) + 1)])
    uuids = pa.array([f"GPU-{g:08x}-0000-4000-8000-000000000000" for g in range(gpus)])
    namespaces = pa.array([f"ns-{i:02d}" for i in range(NAMESPACES)])
    unit_rows = np.repeat(np.arange(units), 1440)
    minute = np.tile(np.arange(1440), units)
    metadata = {
        META_STEP: str(STEP).encode(), META_START: iso(START).encode(),
        META_END: iso(START + timedelta(days=days)).encode(), META_GAPS: b"[]",
        META_SOURCE: b"bench/finops_aggregation.py synthetic fleet",
    }
    schema = FILE_SCHEMA.with_metadata(metadata)

    def dictionary(indices: Any, values: Any) -> Any:
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values) \
            .cast(pa.string())

    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd",
                          use_dictionary=["hostname", "uuid", "gpu_i_id", "profile", "model",
                                          "namespace", "pod", "container", "mode"]) as writer:
        for day in range(days):
            t0 = int(START.timestamp()) + day * 86400
            absolute = day * 1440 + minute
            holder = (absolute + offset[unit_rows]) // period[unit_rows]
            # A pod is (unit, holder); it keeps its namespace, idleness and utilization level.
            pod_key = unit_rows.astype(np.int64) * 100_000 + holder
            uniques, pod_index = np.unique(pod_key, return_inverse=True)
            pod_rng = (uniques * 2654435761) % (2**32)
            ns_of_pod = pod_rng % NAMESPACES
            idle_pod = (pod_rng >> 8) % 5 == 0
            level = 0.3 + ((pod_rng >> 12) % 1000) / 1000 * 0.65
            mean = np.where(idle_pod[pod_index], 0.002,
                            np.clip(level[pod_index] + rng.normal(0, 0.03, len(pod_index)),
                                    0.0, 1.0))
            peak = np.where(idle_pod[pod_index], 0.004, np.minimum(mean + 0.05, 1.0))
            is_mig = gi[unit_rows] > 0
            mean = np.where(is_mig, np.nan, mean)
            peak = np.where(is_mig, np.nan, peak)
            pods = pa.array([f"job-{k // 100_000:04d}-{k % 100_000:05d}" for k in uniques])
            gpu_rows = gpu_of[unit_rows]
            columns = {
                "ts": pa.array(t0 + minute * STEP, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
                "hostname": dictionary(host_of_gpu[gpu_rows], hosts),
                "uuid": dictionary(gpu_rows, uuids),
                "gpu_i_id": dictionary(gi[unit_rows], pa.array(["", "1", "2", "3"])),
                "profile": dictionary(gi[unit_rows], pa.array(profiles)),
                "model": dictionary(model_of_gpu[gpu_rows], pa.array(model_names)),
                "namespace": dictionary(ns_of_pod[pod_index], namespaces),
                "pod": dictionary(pod_index, pods),
                "container": dictionary(np.zeros(len(minute), dtype=int), pa.array([""])),
                "mode": dictionary(mode_of[unit_rows],
                                   pa.array(["exclusive", "time_sliced", "mig"])),
                "share": pa.array(share[unit_rows]),
                "util_mean": pa.array(mean, from_pandas=True),  # NaN -> null
                "util_max": pa.array(peak, from_pandas=True),
            }
            writer.write_table(pa.Table.from_pydict(columns, schema=schema),
                               row_group_size=1 << 20)
            rows += len(minute)
    return rows


# --- the two sides ------------------------------------------------------------------------


def _tables(usage: Any) -> dict[str, Any]:
    from agent.finops.aggregate import build_tables, price_usage
    from agent.finops.pricing import PriceTable

    priced = price_usage(usage, PriceTable(MODELS, 0.023))
    tables = build_tables(priced, None, teams=TEAMS)
    return {"totals": tables.totals, "teams": len(tables.teams),
            "namespaces": len(tables.namespaces), "usage_rows": len(usage),
            "top_idle": list(tables.top_idle_workloads["workload"][:3])}


def run_ours(path: Path, days: int) -> dict[str, Any]:
    from agent.finops.aggregate import aggregate_usage
    from agent.finops.parquet import ParquetSource

    t0 = time.perf_counter()
    usage = aggregate_usage(ParquetSource(path), START, START + timedelta(days=days),
                            idle_floor=IDLE_FLOOR)
    result = _tables(usage)
    return {"wall_s": time.perf_counter() - t0, **result}


DUCKDB_SQL = """
SELECT CAST(floor(epoch(ts) / 86400) AS BIGINT) AS day, namespace, pod, model, profile,
       sum(share) * $hours AS alloc_h,
       coalesce(sum(share * util_mean), 0) * $hours AS used_h,
       sum(CASE WHEN util_max < $floor THEN share ELSE 0 END) * $hours AS idle_h,
       sum(CASE WHEN util_mean IS NULL THEN share ELSE 0 END) * $hours AS unmeasured_h
FROM read_parquet($path)
WHERE ts >= $start AND ts < $end
GROUP BY ALL
ORDER BY ALL
"""


def run_duckdb(path: Path, days: int) -> dict[str, Any]:
    import duckdb

    t0 = time.perf_counter()
    connection = duckdb.connect()
    usage = connection.execute(DUCKDB_SQL, {
        "path": str(path), "hours": STEP / 3600, "floor": IDLE_FLOOR,
        "start": START, "end": START + timedelta(days=days)}).df()
    result = _tables(usage)
    threads = connection.execute("SELECT current_setting('threads')").fetchone()
    return {"wall_s": time.perf_counter() - t0, "threads": threads[0] if threads else None,
            "duckdb": duckdb.__version__, **result}


def child(side: str, path: Path, days: int) -> None:
    result = run_ours(path, days) if side == "ours" else run_duckdb(path, days)
    # The child's own peak (bench/memory.py: ru_maxrss would inherit the parent's).
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result, default=str))


def spawn(side: str, path: Path, days: int) -> dict[str, Any]:
    output = subprocess.run([sys.executable, __file__, "--child", side, "--file", str(path),
                             "--days", str(days)], capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"{side} failed ({output.returncode}):\n{output.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=1000, help="rows per minute")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", choices=("ours", "duckdb"))
    parser.add_argument("--file", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.days)
        return 0

    # v2: shares are fractions of the GPU, with a mode column (an older file is not reused).
    path = args.dir / f"steward-finops-bench-v2-{args.days}d-{args.gpus}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        partial = path.with_suffix(".partial")
        rows = generate(partial, days=args.days, units=args.gpus)
        partial.replace(path)
        print(f"generated {rows:,} rows in {time.perf_counter() - t0:.1f} s: {path} "
              f"({path.stat().st_size / 2**20:.0f} MiB)")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "duckdb": []}
    for _ in range(args.runs):
        for side in ("duckdb", "ours"):  # alternate: neither always gets the warm cache
            runs[side].append(spawn(side, path, args.days))
    ours, ref = runs["ours"][-1], runs["duckdb"][-1]
    for key, value in ours["totals"].items():
        other = ref["totals"][key]
        if abs(value - other) > 1e-6 * max(1.0, abs(other)):
            print(f"MISMATCH {key}: ours {value} duckdb {other}")
            return 1
    wall = {side: statistics.median(r["wall_s"] for r in results)
            for side, results in runs.items()}
    rss = {side: max(r["peak_rss_bytes"] for r in results) for side, results in runs.items()}
    rows = args.days * 1440 * args.gpus
    summary = {
        "rows": rows, "runs": args.runs, "cpus": os.cpu_count(),
        "duckdb_version": ref["duckdb"], "duckdb_threads": ref["threads"],
        "ours_wall_s": round(wall["ours"], 3), "duckdb_wall_s": round(wall["duckdb"], 3),
        "wall_ratio": round(wall["ours"] / wall["duckdb"], 2),
        "ours_peak_rss_mib": round(rss["ours"] / 2**20), "duckdb_peak_rss_mib":
            round(rss["duckdb"] / 2**20),
        "rss_ratio": round(rss["ours"] / rss["duckdb"], 2),
        "targets_met": wall["ours"] <= 2 * wall["duckdb"] and rss["ours"] <= 4 * GIB,
        "totals": {k: round(v, 2) for k, v in ours["totals"].items()},
        "usage_rows": ours["usage_rows"],
    }
    print(f"rows            {rows:,} ({args.days} days x {args.gpus} GPU rows x 1-minute steps)")
    print(f"wall (median)   ours {wall['ours']:.2f} s   duckdb {wall['duckdb']:.2f} s   "
          f"ratio {summary['wall_ratio']}x (target <= 2x)")
    print(f"peak RSS        ours {summary['ours_peak_rss_mib']} MiB   duckdb "
          f"{summary['duckdb_peak_rss_mib']} MiB   ratio {summary['rss_ratio']}x "
          f"(target: ours <= 4096 MiB)")
    print(f"duckdb          {ref['duckdb']}, {ref['threads']} threads on {os.cpu_count()} CPUs")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    return 0 if summary["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
