"""Peak memory of the node agent with a cluster configured, against the same agent in
simulated mode without one, measured in the same run.

Run: ``.venv/bin/python bench/node_memory.py [--pods 110] [--window 20] [--runs 3]``

Both agents run ``steward node --gpu-backend sim`` (8 simulated GPUs) with the same number
of pods on their node: the reference gets them (and their devices) from the simulation;
the agent under test lists and watches them through the Kubernetes API (the in-repo API
stand-in on a real socket, holding ``--pods`` pods on this node and as many on another
node, with pods created and deleted on this node during the window so the watch works),
and asks a real gRPC PodResources server on a unix socket for their devices, as it asks
the kubelet in production. Each is sampled
after it is ready and its pods are exported, then for ``--window`` seconds.

Reported per run and as the median: peak RSS (VmHWM) of each, the ratio cluster /
reference, and the absolute peak with a cluster. Target: <= 60 MiB with a cluster.
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.clients.kubernetes import objects  # noqa: E402
from agent.localnet import stop_process  # noqa: E402
from agent.sim.kube_api import KubeApiServer  # noqa: E402
from tests.support.net import free_port, http_ok, metric_value, wait_until  # noqa: E402
from tests.support.podresources_server import (  # noqa: E402
    Container,
    Pod,
    PodResourcesServer,
)

NODE = "bench-node"
TARGET_MIB = 60.0
SIM_GPU_PODS = 12  # the simulation's own pods on its 8 GPUs; fillers make up --pods


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def exported_pods(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return sum(1 for line in body.splitlines() if line.startswith("steward_pod_phase{"))


def start_agent(workdir: Path, config: dict[str, object], env: dict[str, str]
                ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    path = workdir / f"node-{port}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "node", "--config", str(path), "--gpu-backend",
         "sim", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(workdir / f"node-{port}.log").open("wb"),
        env={**os.environ, **env, "NODE_NAME": NODE})
    wait_until(lambda: process.poll() is None and http_ok(f"http://127.0.0.1:{port}/readyz"),
               timeout=60, what="agent ready")
    return process, port


def memory_mib(pid: int) -> tuple[float, float]:
    """(peak RSS, RSS now) of the process, MiB."""
    return status_kib(pid, "VmHWM") / 1024, status_kib(pid, "VmRSS") / 1024


def gpu_pod(name: str, node: str, gpus: int) -> dict[str, object]:
    return objects.pod(name, "ml", node=node, containers=[objects.container("img", gpus=gpus)],
                       status={"phase": "Running", "containerStatuses": [{
                           "name": "main", "restartCount": 0, "ready": True, "image": "img",
                           "imageID": "", "state": {"running": {
                               "startedAt": "2026-12-03T10:00:00Z"}}}]})


def one_run(workdir: Path, pods: int, window: float) -> dict[str, float]:
    reference, ref_port = start_agent(
        workdir, {"node": {"collect_interval_seconds": 1.0,
                           "sim": {"extra_pods": max(0, pods - SIM_GPU_PODS)}}}, {})
    try:
        wait_until(lambda: exported_pods(ref_port) >= pods, timeout=30, what="reference pods")
        time.sleep(window)
        ref_peak, ref_end = memory_mib(reference.pid)
    finally:
        stop_process(reference)

    with KubeApiServer(bookmark_interval=5.0, namespaces=("default", "ml")) as kube, \
            PodResourcesServer() as kubelet:
        kubelet.pods = [Pod("ml", f"p-{i}", [Container("main", {
            "nvidia.com/gpu": [f"GPU-{i % 8:08d}-0000-0000-0000-000000000000"]})])
            for i in range(0, pods, 2)]
        for i in range(pods):
            kube.create(gpu_pod(f"p-{i}", NODE, i % 2))
            kube.create(gpu_pod(f"elsewhere-{i}", "other-node", 1))
        kubeconfig = kube.kubeconfig(workdir / "bench.kubeconfig")
        agent, port = start_agent(
            workdir, {"node": {"collect_interval_seconds": 1.0,
                               "pod_resources_socket": str(kubelet.socket_path)}},
            {"KUBECONFIG": str(kubeconfig)})
        try:
            wait_until(lambda: exported_pods(port) >= pods, timeout=60, what="pods listed")
            # The watch at work: pods come and go on this node during the window.
            deadline = time.monotonic() + window
            churned = 0
            while time.monotonic() < deadline:
                name = f"churn-{churned}"
                kube.create(gpu_pod(name, NODE, 1))
                time.sleep(0.25)
                kube.delete("v1", "Pod", "ml", name)
                churned += 1
                time.sleep(0.25)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body = r.read().decode()
            assert metric_value(body, "steward_collector_up", collector="pods") == 1, \
                "the pod watch is not healthy"
            assert kubelet.calls["List"] > 0, "the kubelet's PodResources were never asked"
            assert metric_value(body, "steward_collector_up", collector="attribution") == 1, \
                "the PodResources answers were not read"
            cluster_peak, cluster_end = memory_mib(agent.pid)
        finally:
            stop_process(agent)
    return {"reference_peak_mib": ref_peak, "reference_end_mib": ref_end,
            "cluster_peak_mib": cluster_peak, "cluster_end_mib": cluster_end,
            "ratio_peak": cluster_peak / ref_peak, "pods_churned": float(churned)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=110, help="pods on the node (default: "
                        "the kubelet's default maximum, 110)")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="steward-node-memory-"))
    runs = []
    for i in range(args.runs):
        figures = one_run(workdir, args.pods, args.window)
        runs.append(figures)
        print(f"run {i + 1}: reference (sim, no cluster) peak "
              f"{figures['reference_peak_mib']:.1f} MiB; with a cluster peak "
              f"{figures['cluster_peak_mib']:.1f} MiB (end {figures['cluster_end_mib']:.1f}); "
              f"ratio {figures['ratio_peak']:.3f}x; {int(figures['pods_churned'])} pods "
              "churned")
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"node agent, 8 simulated GPUs, {args.pods} pods on its node, {args.window:g} s "
          f"window, {args.runs} runs (median): reference {median['reference_peak_mib']:.1f} "
          f"MiB, with a cluster {median['cluster_peak_mib']:.1f} MiB, ratio "
          f"{median['ratio_peak']:.3f}x (target <= {TARGET_MIB:g} MiB with a cluster)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": median}, indent=2),
                             encoding="utf-8")
    ok = all(r["cluster_peak_mib"] <= TARGET_MIB for r in runs)
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
