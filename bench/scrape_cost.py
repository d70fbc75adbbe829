"""Scrape cost of one node agent with 8 simulated GPUs, against the prometheus-client floor.

Run: ``.venv/bin/python bench/scrape_cost.py [--scrapes 2000] [--window 60]``, and for a
busy node ``--pods 110 --churn-seconds 5`` (issue 3: 110 pods, CPU-only filler pods replaced
with new ones every 5 s; the series count must not grow with the churn).

The floor is ``prometheus_client.generate_latest()`` on a pre-filled registry (real Gauge and
Counter objects) holding exactly the series the agent served, measured in this same run:
no exporter built on prometheus-client can serve those series for less. Reported:

- scrape p50/p99: wall time of ``GET /metrics`` over a kept-alive connection, with the
  headers Prometheus 2.x sends (OpenMetrics preferred, gzip), and with plain text; ratio
  to the floor's p50/p99. Target <= 1.5x.
- CPU-seconds per minute of the agent process at a 15 s scrape interval (its collection
  loops run meanwhile at their default 10 s interval); ratio to the floor's CPU for the
  same minute. That floor is the simplest correct work for it: one answer per scrape (4 a
  minute) as prometheus-client's own handler gives it to Prometheus' headers (OpenMetrics,
  gzip, its process metrics collected: the agent serves them too), plus, per collection
  cycle (6 a minute), the same reads of the same simulated sources the collectors make
  (GPUs, XID counts, the devices of pods and the allocatable ones, the pods, the pod of
  each GPU process) and one ``set()``/``inc()`` of every
  series on the pre-filled registry. (Rendering alone is not the floor: an exporter must
  read its sources to have anything to serve.) Target <= 3x.
- peak RSS of the agent process (VmHWM). Target <= 80 MiB.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.net import free_port, http_ok, wait_until  # noqa: E402

COLLECT_INTERVAL = 10.0  # the node's default collect_interval_seconds
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


SeriesUpdate = tuple[Any, float]


def prefilled_registry(text: str) -> tuple[CollectorRegistry, int]:
    registry, updates = prefilled_registry_with_updates(text)
    return registry, len(updates)


def prefilled_registry_with_updates(text: str) -> tuple[CollectorRegistry, list[SeriesUpdate]]:
    """A registry of real Gauge/Counter objects with the same series as ``text``, and each
    series' child with its value (to update them all, as a collection cycle would)."""
    registry = CollectorRegistry()
    updates: list[SeriesUpdate] = []
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        label_names = sorted({k for s in family.samples for k in s.labels})
        if family.type == "counter":
            metric: Counter | Gauge = Counter(family.name, family.documentation, label_names,
                                              registry=registry)
        else:
            metric = Gauge(family.name, family.documentation, label_names, registry=registry)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            child = metric.labels(**{k: sample.labels.get(k, "") for k in label_names}) \
                if label_names else metric
            if isinstance(child, Counter):
                child.inc(sample.value)
            else:
                child.set(sample.value)
            updates.append((child, sample.value))
    return registry, updates


def time_collection_floor(config_path: Path, updates: list[SeriesUpdate], cycles: int,
                          node_name: str) -> float:
    """CPU seconds of one collection cycle done the simplest way: the collectors' reads of
    the same simulated sources, then one update of every series."""
    from agent.config import load_config
    from agent.sim.node import simulated_sources

    # The agent's own config file and node name: the same simulated GPUs and pods.
    os.environ["NODE_NAME"] = node_name
    config = load_config(config_path)
    sources = simulated_sources(config)
    assert sources.pods is not None
    try:
        cpu0 = time.process_time()
        for _ in range(cycles):
            readings = sources.gpus.read()
            sources.gpus.xid_counts()
            sources.devices.list_devices()
            sources.devices.allocatable_devices()
            sources.pods.pods()
            for reading in readings:  # whose each GPU process is (its cgroup)
                for process in reading.processes or ():
                    sources.pod_uid_for_pid(process.pid)
            for child, value in updates:
                if isinstance(child, Counter):
                    child.inc(0.0 * value)
                else:
                    child.set(value)
        return (time.process_time() - cpu0) / cycles
    finally:
        for close in sources.closers:
            close()


def time_negotiated_floor(registry: CollectorRegistry, n: int) -> float:
    """CPU seconds of one answer to Prometheus' headers the way prometheus-client's own
    handler makes it (``choose_encoder`` then ``gzip.compress``), process metrics included."""
    encoder, _ = choose_encoder(PROMETHEUS_ACCEPT)
    ProcessCollector(registry=registry)
    cpu0 = time.process_time()
    for _ in range(n):
        gzip.compress(encoder(registry))
    return (time.process_time() - cpu0) / n


def time_floor(registry: CollectorRegistry, n: int) -> list[float]:
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        generate_latest(registry)
        walls.append(time.perf_counter() - t0)
    return walls


def time_scrapes(port: int, n: int, headers: dict[str, str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        response.read()
        walls.append(time.perf_counter() - t0)
        assert response.status == 200
    conn.close()
    return walls


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of the process, in nanoseconds from the scheduler
    (``/proc/PID/task/*/schedstat``): ``cpu_times()`` counts 10 ms ticks, and a minute of
    the agent is about ten of them."""
    total = 0
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds of the CPU-per-minute measurement (4 scrapes a minute)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--cycles", type=int, default=200,
                        help="collection cycles timed for the floor")
    parser.add_argument("--pods", type=int, default=0,
                        help="total pods on the simulated node (filler pods are added)")
    parser.add_argument("--churn-seconds", type=float, default=None,
                        help="replace the filler pods with new ones this often")
    parser.add_argument("--gpu-backend", choices=("sim", "nvml"), default="sim",
                        help="nvml measures the real GPUs of this machine instead")
    args = parser.parse_args()

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="steward-bench-"))
    config = workdir / "node.yaml"
    # Defaults: 8 GPUs, their 12 GPU pods, 10 s collection. Fillers make up --pods.
    gpu_pods = 13
    sim = {"extra_pods": max(0, args.pods - gpu_pods)}
    if args.churn_seconds:
        sim["pod_churn_seconds"] = args.churn_seconds
    config.write_text(json.dumps({"node": {"sim": sim}}) + "\n", encoding="utf-8")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "node", "--config", str(config), "--gpu-backend",
         args.gpu_backend, "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(workdir / "node.log").open("wb"),
        env={**os.environ, "NODE_NAME": "bench-node"})
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=30,
                   what="agent ready")
        proc = psutil.Process(agent.pid)

        # CPU per minute at a 15 s scrape interval: scrape on schedule, read the agent's CPU.
        # First, while only this "Prometheus" has asked: the latency runs below ask for plain
        # text too, and the agent keeps rendering every format asked in the last 10 minutes.
        interval = 15.0
        cpu_start, started = cpu_seconds(proc), time.monotonic()
        scrapes = 0
        while time.monotonic() - started < args.window:
            time_scrapes(port, 1, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
            scrapes += 1
            time.sleep(max(0.0, started + scrapes * interval - time.monotonic()))
        elapsed = time.monotonic() - started
        agent_cpu_per_min = (cpu_seconds(proc) - cpu_start) / elapsed * 60

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        registry, updates = prefilled_registry_with_updates(body)
        series = len(updates)
        pods = len({(s.labels["namespace"], s.labels["pod"])
                    for f in text_string_to_metric_families(body) if f.name == "steward_pod_phase"
                    for s in f.samples})

        floor_walls = time_floor(registry, args.scrapes)
        floor_cycle_cpu = time_collection_floor(config, updates, args.cycles, "bench-node")
        # Last: it adds the process metrics to the registry.
        floor_answer_cpu = time_negotiated_floor(registry, args.scrapes)
        prom_walls = time_scrapes(port, args.scrapes, {"Accept": PROMETHEUS_ACCEPT,
                                                       "Accept-Encoding": "gzip"})
        text_walls = time_scrapes(port, args.scrapes, {})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        series_after = prefilled_registry(conn.getresponse().read().decode())[1]
        conn.close()
        render_floor_per_min = floor_answer_cpu * 60 / interval
        collection_floor_per_min = floor_cycle_cpu * 60 / COLLECT_INTERVAL
        floor_cpu_per_min = render_floor_per_min + collection_floor_per_min
        rss = peak_rss_bytes(agent.pid)
    finally:
        agent.terminate()
        agent.wait(10)

    f50, f99 = percentile(floor_walls, 0.5), percentile(floor_walls, 0.99)
    figures = {
        "series": series,
        "series_after_latency_runs": series_after,
        "pods": pods,
        "floor_generate_latest_p50_ms": f50 * 1e3,
        "floor_generate_latest_p99_ms": f99 * 1e3,
        "scrape_prometheus_headers_p50_ms": percentile(prom_walls, 0.5) * 1e3,
        "scrape_prometheus_headers_p99_ms": percentile(prom_walls, 0.99) * 1e3,
        "scrape_text_p50_ms": percentile(text_walls, 0.5) * 1e3,
        "scrape_text_p99_ms": percentile(text_walls, 0.99) * 1e3,
        "ratio_scrape_p50": percentile(prom_walls, 0.5) / f50,
        "ratio_scrape_p99": percentile(prom_walls, 0.99) / f99,
        "ratio_text_scrape_p50": percentile(text_walls, 0.5) / f50,
        "ratio_text_scrape_p99": percentile(text_walls, 0.99) / f99,
        "agent_cpu_seconds_per_minute": agent_cpu_per_min,
        "floor_cpu_seconds_per_minute": floor_cpu_per_min,
        "floor_render_cpu_seconds_per_minute": render_floor_per_min,
        "floor_collection_cpu_seconds_per_minute": collection_floor_per_min,
        "ratio_cpu_per_minute_to_render_only": agent_cpu_per_min / render_floor_per_min,
        "ratio_cpu_per_minute": agent_cpu_per_min / floor_cpu_per_min,
        "peak_rss_mib": rss / 2**20,
        "window_seconds": elapsed,
        "mean_scrape_ms_statistics": statistics.fmean(prom_walls) * 1e3,
    }
    gpus = "8 simulated GPUs" if args.gpu_backend == "sim" else "this machine's GPUs (NVML)"
    print(f"node agent, {gpus}, {pods} pods, {series} series, {args.scrapes} scrapes each")
    print(f"floor  generate_latest()       p50 {f50 * 1e3:7.3f} ms   p99 {f99 * 1e3:7.3f} ms")
    print(f"scrape Prometheus headers      p50 {figures['scrape_prometheus_headers_p50_ms']:7.3f}"
          f" ms   p99 {figures['scrape_prometheus_headers_p99_ms']:7.3f} ms   "
          f"ratio p50 {figures['ratio_scrape_p50']:.2f}x  p99 {figures['ratio_scrape_p99']:.2f}x"
          "  (target <= 1.5x)")
    print(f"scrape plain text              p50 {figures['scrape_text_p50_ms']:7.3f}"
          f" ms   p99 {figures['scrape_text_p99_ms']:7.3f} ms   "
          f"ratio p50 {figures['ratio_text_scrape_p50']:.2f}x  p99 "
          f"{figures['ratio_text_scrape_p99']:.2f}x")
    print(f"CPU per minute (15 s scrapes, {elapsed:.0f} s window): agent "
          f"{agent_cpu_per_min:.4f} s  floor {floor_cpu_per_min:.4f} s (renders "
          f"{render_floor_per_min:.4f} + collection {collection_floor_per_min:.4f})  "
          f"ratio {figures['ratio_cpu_per_minute']:.2f}x (target <= 3x; to the renders "
          f"alone {figures['ratio_cpu_per_minute_to_render_only']:.1f}x)")
    print(f"peak RSS of the agent: {figures['peak_rss_mib']:.1f} MiB (target <= 80 MiB)")
    churn = f"with pods replaced every {args.churn_seconds:g} s" if args.churn_seconds else ""
    print(f"series: {series} after the {elapsed:.0f} s CPU window, {series_after} after the "
          f"latency runs {churn}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    ok = figures["ratio_scrape_p50"] <= 1.5 and figures["ratio_scrape_p99"] <= 1.5 and \
        figures["ratio_cpu_per_minute"] <= 3 and figures["peak_rss_mib"] <= 80 and \
        series_after <= series
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
