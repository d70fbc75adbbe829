"""Plan computation of the idle-GPU job for 2,000 GPUs on 250 nodes, against the bare PromQL.

Run: ``.venv/bin/python bench/hygiene_plan.py [--nodes 250] [--gpus-per-node 8] [--runs 5]``

A real Prometheus serves a TSDB backfilled with ``promtool tsdb create-blocks-from
openmetrics``: 2 h 30 min of history at a 60 s step for every GPU (utilization, power, up,
lost) and its allocation to a pod, so the job's real 2 h window (plus 10 min grace) is
covered at the configured ``scrape_interval`` of 60 s. One GPU
in ten is idle (its pod is a one-replica Deployment), one in twenty bursty (busy for 2
minutes an hour ago), the rest busy. The Kubernetes API stand-in runs in a child process
(its JSON serving must not share this process's interpreter) with every pod, ReplicaSet and
Deployment, 20 namespaces.

Reported, each the median of ``--runs``:

- reference: the job's own PromQL queries (``IdleGpusJob.queries()``, then the raw samples
  of the GPUs that look idle, ``coverage_queries``), sent bare through the same Prometheus
  client (``agent.clients.prometheus``, answers not interpreted) at the same evaluation
  time: the cost of the evidence itself;
- plan: a full dry run of the engine (``HygieneEngine.run(apply=False)``): the same queries,
  the join and policy, the Kubernetes lookups of the idle pods, the plan recorded in SQLite;
- the ratio plan / reference, and the split of the plan's time: PromQL, Kubernetes, rest;
- the same Kubernetes reads made bare (one after another), and plan / (both references):
  the job also needs the API for the idle pods' age, owners and exemptions, and the
  stand-in's per-object cost (Python deep copies) is far above a real API server's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.clients.prometheus import PrometheusClient  # noqa: E402
from agent.config import StewardConfig  # noqa: E402
from agent.controller.hygiene.runner import HygieneRuntime  # noqa: E402
from tests.support.net import free_port, http_ok, wait_until  # noqa: E402

STEP = 60
HISTORY = 150 * 60  # 2 h 30 min: window 2 h + grace 10 min + room for the coverage check
NAMESPACES = 20
MODEL = "NVIDIA H100 80GB HBM3"


def gpu_kind(index: int) -> str:
    if index % 10 == 0:
        return "idle"
    if index % 20 == 5:
        return "bursty"
    return "busy"


def gpu_labels(index: int, gpus_per_node: int) -> str:
    node, gpu = divmod(index, gpus_per_node)
    return (f'UUID="GPU-{index:08d}-0000-4000-8000-000000000000",gpu="{gpu}",'
            f'hostname="gpu-node-{node:03d}",modelName="{MODEL}"')


def pod_of(index: int, gpus_per_node: int = 8) -> tuple[str, str]:
    """One namespace per node modulo 20: every namespace holds idle and busy pods."""
    return f"team-{index // gpus_per_node % NAMESPACES:02d}", f"w-{index:05d}"


def write_openmetrics(path: Path, gpus: int, gpus_per_node: int, end: int) -> int:
    """Series-major OpenMetrics (each family contiguous, each series in time order)."""
    times = list(range(end - HISTORY, end + 1, STEP))
    lines = 0
    with path.open("w", encoding="utf-8") as out:
        out.write("# TYPE steward_gpu_utilization_ratio gauge\n")
        for index in range(gpus):
            labels = gpu_labels(index, gpus_per_node)
            kind = gpu_kind(index)
            for t in times:
                if kind == "idle":
                    value = 0.0
                elif kind == "bursty":
                    value = 0.9 if end - 3660 <= t < end - 3540 else 0.0
                else:
                    value = 0.5 + (index % 7) / 20
                out.write(f"steward_gpu_utilization_ratio{{{labels}}} {value} {t}\n")
                lines += 1
        out.write("# TYPE steward_gpu_power_watts gauge\n")
        for index in range(gpus):
            labels = gpu_labels(index, gpus_per_node)
            watts = 72.0 if gpu_kind(index) != "busy" else 550.0
            for t in times:
                out.write(f"steward_gpu_power_watts{{{labels}}} {watts} {t}\n")
                lines += 1
        for name, value in (("steward_gpu_up", 1), ("steward_gpu_lost", 0)):
            out.write(f"# TYPE {name} gauge\n")
            for index in range(gpus):
                labels = gpu_labels(index, gpus_per_node)
                for t in times:
                    out.write(f"{name}{{{labels}}} {value} {t}\n")
                    lines += 1
        out.write("# TYPE steward_gpu_allocation gauge\n")
        for index in range(gpus):
            namespace, pod = pod_of(index, gpus_per_node)
            labels = (f'{gpu_labels(index, gpus_per_node)},container="main",'
                      f'namespace="{namespace}",pod="{pod}"')
            for t in times:
                out.write(f"steward_gpu_allocation{{{labels}}} 1 {t}\n")
                lines += 1
        out.write("# EOF\n")
    return lines


def serve_kube(gpus: int, gpus_per_node: int, end: int, kubeconfig: str, ready: Any,
               stop: Any) -> None:
    """Child process: the API stand-in with every pod and owner."""
    from datetime import UTC, datetime

    from agent.sim.kube_api import KubeApiServer

    created = datetime.fromtimestamp(end - 3 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    server = KubeApiServer(namespaces=("default", "steward"))
    container = {"name": "main", "image": "pytorch:2",
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    for index in range(gpus):
        namespace, name = pod_of(index, gpus_per_node)
        meta: dict[str, Any] = {"name": name, "namespace": namespace,
                                "creationTimestamp": created, "labels": {"app": name}}
        if gpu_kind(index) == "idle":
            selector = {"matchLabels": {"app": name}}
            template = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}
            deployment = server.create({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                             "creationTimestamp": created},
                "spec": {"replicas": 1, "selector": selector, "template": template}})
            replicaset = server.create({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-7c9d", "namespace": namespace,
                             "labels": {"app": name}, "creationTimestamp": created,
                             "ownerReferences": [{
                                 "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                 "uid": deployment["metadata"]["uid"], "controller": True}]},
                "spec": {"replicas": 1, "selector": selector, "template": template}})
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                        "name": f"{name}-7c9d", "controller": True,
                                        "uid": replicaset["metadata"]["uid"]}]
        server.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                       "spec": {"containers": [container]}, "status": {"phase": "Running"}})
    server.start()
    server.kubeconfig(kubeconfig)
    ready.set()
    stop.wait()
    server.stop()


def start_prometheus(tsdb: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"},
                                      "scrape_configs": []}), encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/-/ready"), timeout=60, what="prometheus ready")
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    gpus = args.nodes * args.gpus_per_node
    workdir = Path(tempfile.mkdtemp(prefix="steward-bench-hygiene-"))
    end = int(time.time()) // STEP * STEP

    started = time.monotonic()
    lines = write_openmetrics(workdir / "history.om", gpus, args.gpus_per_node, end)
    tsdb = workdir / "tsdb"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                    str(workdir / "history.om"), str(tsdb)], check=True)
    (workdir / "history.om").unlink()
    print(f"backfilled {lines} samples ({gpus} GPUs x 5 series) in "
          f"{time.monotonic() - started:.1f}s")

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    kubeconfig = str(workdir / "kubeconfig")
    child = context.Process(target=serve_kube, args=(gpus, args.gpus_per_node, end, kubeconfig,
                                                            ready, stop))
    child.start()
    prometheus, url = start_prometheus(tsdb, workdir)
    try:
        if not ready.wait(300):
            raise SystemExit("the Kubernetes API stand-in did not start")
        config = StewardConfig.model_validate({
            "prometheus": {"url": url},
            "kubernetes": {"kubeconfig": kubeconfig},
            "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
            "hygiene": {"idle_gpus": {"power_idle_watts": 100, "scrape_interval": f"{STEP}s"}},
        })
        from agent.clients.kubernetes.api import api_client

        runtime = HygieneRuntime(config, api_client=api_client(config.kubernetes),
                                 clock=lambda: float(end))
        engine = runtime.engine("idle-gpus")
        job: Any = engine.job
        idle_uuids = [f"GPU-{i:08d}-0000-4000-8000-000000000000" for i in range(gpus)
                      if gpu_kind(i) == "idle"]
        queries = [*job.queries().values(), *job.coverage_queries(idle_uuids)]
        client = PrometheusClient(url, timeout=60)

        def bare() -> float:
            """The same queries through the same client, answers not interpreted."""
            t0 = time.perf_counter()
            for expr in queries:
                client.query(expr, at=float(end))
            return time.perf_counter() - t0

        # Wiring the job's clients up to time: what each part of one plan costs.
        spent = {"promql": 0.0, "kubernetes": 0.0}
        evidence, decide_workloads = job.evidence, job.decide_workloads

        def timed_evidence(at: float) -> Any:
            t0 = time.perf_counter()
            try:
                return evidence(at)
            finally:
                spent["promql"] += time.perf_counter() - t0

        def timed_workloads(*a: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return decide_workloads(*a)
            finally:
                spent["kubernetes"] += time.perf_counter() - t0

        job.evidence, job.decide_workloads = timed_evidence, timed_workloads
        from agent.controller.hygiene.idle_gpus.workloads import KubeWorkloads

        workloads = KubeWorkloads(api_client(config.kubernetes))
        namespaces = sorted({pod_of(i, args.gpus_per_node)[0] for i in range(gpus)
                             if gpu_kind(i) == "idle"})

        def bare_kube() -> float:
            """The same reads the job makes, one after another, nothing else."""
            t0 = time.perf_counter()
            for namespace in namespaces:
                workloads.namespace(namespace)
                for kind in ("Pod", "ReplicaSet", "Deployment"):
                    workloads.list(kind, namespace)
            return time.perf_counter() - t0

        bare(), bare_kube(), engine.run(apply=False)  # warm every path
        references, kube_references, plans, parts = [], [], [], []
        outcome = None
        for _ in range(args.runs):
            references.append(bare())
            kube_references.append(bare_kube())
            spent["promql"] = spent["kubernetes"] = 0.0
            t0 = time.perf_counter()
            outcome = engine.run(apply=False)
            plans.append(time.perf_counter() - t0)
            parts.append(dict(spent))
        assert outcome is not None and outcome.plan is not None, outcome
        reference, plan = statistics.median(references), statistics.median(plans)
        kube_reference = statistics.median(kube_references)
        promql = statistics.median(p["promql"] for p in parts)
        kube = statistics.median(p["kubernetes"] for p in parts)
        candidates = len(outcome.plan.candidates)
        print(f"GPUs {gpus} on {args.nodes} nodes; candidates {candidates} "
              f"(expected {gpus // 10}), skipped {len(outcome.plan.skipped)}")
        print(f"reference (bare PromQL, {len(queries)} queries): {reference * 1000:.1f} ms")
        print(f"plan (engine dry run):                  {plan * 1000:.1f} ms")
        print(f"  of which PromQL + parsing {promql * 1000:.1f} ms, Kubernetes lookups "
              f"{kube * 1000:.1f} ms, the rest (join, policy, plan, SQLite) "
              f"{(plan - promql - kube) * 1000:.1f} ms")
        print(f"bare Kubernetes reads of the same objects ({len(namespaces)} namespaces x 4): "
              f"{kube_reference * 1000:.1f} ms")
        print(f"ratio plan / bare PromQL: {plan / reference:.2f}x")
        print(f"ratio plan without its Kubernetes lookups / bare PromQL: "
              f"{(plan - kube) / reference:.2f}x")
        print(f"ratio plan / (bare PromQL + bare Kubernetes reads): "
              f"{plan / (reference + kube_reference):.2f}x")
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        stop.set()
        child.join(30)


if __name__ == "__main__":
    main()
