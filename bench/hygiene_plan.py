"""Plan computation of the idle-GPU job for 2,000 GPUs on 250 nodes, against the bare reads it
needs: the same PromQL and the same Kubernetes reads, issued by bare clients in the same run.

Run: ``.venv/bin/python bench/hygiene_plan.py [--nodes 250] [--gpus-per-node 8] [--runs 9]
[--kube stand-in|real]``

A real Prometheus serves a TSDB backfilled with ``promtool tsdb create-blocks-from
openmetrics``: 2 h 30 min of history at a 60 s step for every GPU (utilization, power, up,
lost) and its allocation to a pod, so the job's real 2 h window (plus 10 min grace) is
covered at the configured ``scrape_interval`` of 60 s. One GPU in ten is idle (its pod is a
one-replica Deployment), one in twenty bursty (busy for 2 minutes an hour ago), the rest busy,
in 20 namespaces. The Kubernetes API is either the in-repo stand-in, in a child process (its
JSON serving must not share this process's interpreter), or (``--kube real``) a real
kube-apiserver on etcd started by ``scripts/real-k8s.sh`` (no controller-manager: nothing
touches the objects). A real server stamps ``creationTimestamp`` itself, so on that lane the
history ends three hours after the objects are made (the job's clock is set there).

Reported, each the median of ``--runs``:

- reference: the reads the plan must make, by bare clients (``requests`` for PromQL, the
  Kubernetes client with raw JSON), overlapped as far as their dependencies allow: the
  instant queries at once; as soon as the allocations and the peaks are in, the raw samples
  of the GPUs that look idle (4 at a time) beside the Kubernetes reads of their namespaces
  (namespace GETs and pod lists, then the owners' kinds, 4 at a time);
- plan: a full dry run of the engine (``HygieneEngine.run(apply=False)``): the same reads,
  the join and policy, the plan recorded in SQLite;
- the ratio plan / reference (target <= 1.2), and the HTTP calls of each kind each made,
  counted on the client side: they must be the same.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def fleet_objects(gpus: int, gpus_per_node: int) -> list[list[dict[str, Any]]]:
    """Every Deployment, ReplicaSet and pod of the fleet, in three waves (owners first)."""
    container = {"name": "main", "image": "pytorch:2",
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    deployments, replicasets, pods = [], [], []
    for index in range(gpus):
        namespace, name = pod_of(index, gpus_per_node)
        pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": name, "namespace": namespace,
                                            "labels": {"app": name}},
                               "spec": {"containers": [container]}}
        if gpu_kind(index) == "idle":
            selector = {"matchLabels": {"app": name}}
            template = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}
            deployments.append({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                "spec": {"replicas": 1, "selector": selector, "template": template}})
            replicasets.append({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-7c9d", "namespace": namespace,
                             "labels": {"app": name},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "name": name, "uid": "",
                                                  "controller": True}]},
                "spec": {"replicas": 1, "selector": selector, "template": template}})
            pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1",
                                                   "kind": "ReplicaSet", "name": f"{name}-7c9d",
                                                   "uid": "", "controller": True}]
        pods.append(pod)
    return [deployments, replicasets, pods]


def populate_real(kubeconfig: str, gpus: int, gpus_per_node: int) -> None:
    """The fleet on a real API server (admin), owners first so pods carry their uids;
    pods set Running through ``/status``. Several creates in flight: setup is not measured."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config

    api = config.new_client_from_config(kubeconfig)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for n in range(NAMESPACES):
        namespace = f"team-{n:02d}"
        core.create_namespace({"metadata": {"name": namespace}})
        # No controller-manager: the ServiceAccount admission needs the default one made.
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    uids: dict[tuple[str, str, str], str] = {}
    deployments, replicasets, pods = fleet_objects(gpus, gpus_per_node)

    def create(obj: dict[str, Any]) -> None:
        m = obj["metadata"]
        for ref in m.get("ownerReferences", []):
            ref["uid"] = uids[(ref["kind"], m["namespace"], ref["name"])]
        if obj["kind"] == "Deployment":
            made = apps.create_namespaced_deployment(m["namespace"], obj)
        elif obj["kind"] == "ReplicaSet":
            made = apps.create_namespaced_replica_set(m["namespace"], obj)
        else:
            made = core.create_namespaced_pod(m["namespace"], obj)
            core.patch_namespaced_pod_status(m["name"], m["namespace"],
                                             {"status": {"phase": "Running"}})
        uids[(obj["kind"], m["namespace"], m["name"])] = made.metadata.uid

    with ThreadPoolExecutor(8) as pool:
        for wave in (deployments, replicasets, pods):
            list(pool.map(create, wave))
    api.close()


class Calls:
    """HTTP calls of each kind, counted on the client side (any thread)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def take(self) -> Counter[str]:
        with self._lock:
            out, self.counts = self.counts, Counter()
        return out

    def install(self) -> None:
        """Count every Prometheus query (``requests``) and Kubernetes call (urllib3 through
        the Kubernetes client's REST layer)."""
        import requests
        from kubernetes.client import rest

        calls = self
        send = requests.Session.request

        def counted_send(session: Any, method: str, url: str, *a: Any, **kw: Any) -> Any:
            expr = str((kw.get("data") or {}).get("query", ""))
            calls.add("PromQL raw samples" if expr.endswith("]") else "PromQL instant")
            return send(session, method, url, *a, **kw)

        request = rest.RESTClientObject.request

        def counted_request(rest_client: Any, method: str, url: str, *a: Any, **kw: Any) -> Any:
            path = url.split("?", 1)[0].split("://", 1)[-1].split("/", 1)[-1]
            parts = path.split("/")
            resource = parts[-1] if len(parts) % 2 == (1 if parts[0] == "api" else 0) \
                else f"{parts[-2]} (one)"
            calls.add(f"Kubernetes {method} {resource}")
            return request(rest_client, method, url, *a, **kw)

        requests.Session.request = counted_send  # type: ignore[method-assign]
        rest.RESTClientObject.request = counted_request  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    # Nine rounds: one round of either side takes ~0.4 s on 2 cores shared with Prometheus
    # and the API server, and single rounds scatter by +-30 %; the median of three did too.
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--kube", choices=("stand-in", "real"), default="stand-in")
    args = parser.parse_args()
    gpus = args.nodes * args.gpus_per_node
    workdir = Path(tempfile.mkdtemp(prefix="steward-bench-hygiene-"))
    real = args.kube == "real"
    # On a real server objects are born now: the evidence then ends 3 h later.
    end = (int(time.time()) // STEP * STEP) + (3 * 3600 if real else 0)

    started = time.monotonic()
    lines = write_openmetrics(workdir / "history.om", gpus, args.gpus_per_node, end)
    tsdb = workdir / "tsdb"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                    str(workdir / "history.om"), str(tsdb)], check=True)
    (workdir / "history.om").unlink()
    print(f"backfilled {lines} samples ({gpus} GPUs x 5 series) in "
          f"{time.monotonic() - started:.1f}s")

    child: Any = None
    stop: Any = None
    kube_dir = workdir / "kube"
    if real:
        kube_dir.mkdir()
        env = {**os.environ, "STEWARD_K8S_CONTROLLER_MANAGER": "0"}
        subprocess.run([str(ROOT / "scripts" / "real-k8s.sh"), "up", str(kube_dir)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        kubeconfig = str(kube_dir / "admin.kubeconfig")
        started = time.monotonic()
        populate_real(kubeconfig, gpus, args.gpus_per_node)
        print(f"real kube-apiserver: {gpus} pods and their owners made in "
              f"{time.monotonic() - started:.1f}s")
    else:
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        kubeconfig = str(workdir / "kubeconfig")
        child = context.Process(target=serve_kube, args=(gpus, args.gpus_per_node, end,
                                                         kubeconfig, ready, stop))
        child.start()
    prometheus, url = start_prometheus(tsdb, workdir)
    try:
        if child is not None and not ready.wait(300):
            raise SystemExit("the Kubernetes API stand-in did not start")
        run(args, url, kubeconfig, workdir, gpus, end)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        if child is not None:
            stop.set()
            child.join(30)
        if real:
            subprocess.run([str(ROOT / "scripts" / "real-k8s.sh"), "down", str(kube_dir)],
                           check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, url: str, kubeconfig: str, workdir: Path, gpus: int,
        end: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from kubernetes import client

    from agent.clients.kubernetes.api import api_client

    config = StewardConfig.model_validate({
        "prometheus": {"url": url},
        "kubernetes": {"kubeconfig": kubeconfig},
        "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
        "hygiene": {"idle_gpus": {"power_idle_watts": 100, "scrape_interval": f"{STEP}s"}},
    })
    calls = Calls()
    calls.install()
    runtime = HygieneRuntime(config, api_client=api_client(config.kubernetes, "hygiene"),
                             clock=lambda: float(end))
    engine = runtime.engine("idle-gpus")
    job: Any = engine.job
    idle = [i for i in range(gpus) if gpu_kind(i) == "idle"]
    instant = job.queries()
    coverage = job.coverage_queries(f"GPU-{i:08d}-0000-4000-8000-000000000000" for i in idle)
    namespaces = sorted({pod_of(i, args.gpus_per_node)[0] for i in idle})
    session = requests.Session()
    bare_api = api_client(config.kubernetes, "hygiene")
    core, apps = client.CoreV1Api(bare_api), client.AppsV1Api(bare_api)
    lists = {"Pod": core.list_namespaced_pod, "ReplicaSet": apps.list_namespaced_replica_set,
             "Deployment": apps.list_namespaced_deployment}

    def promql(expr: str) -> Any:
        answer = session.post(f"{url}/api/v1/query", data={"query": expr, "time": str(end)},
                              timeout=60)
        answer.raise_for_status()
        return answer.json()

    def kube_list(kind: str, namespace: str) -> int:
        items, token = 0, None
        while True:
            page = json.loads(lists[kind](namespace, limit=500, _continue=token,
                                          _preload_content=False).data)
            items += len(page["items"])
            token = page["metadata"].get("continue")
            if not token:
                return items

    def kube_reads(pool: ThreadPoolExecutor) -> None:
        """Namespaces and their pods, then the pods' owners, then theirs: each kind is
        known only from the objects one step down."""
        first = [pool.submit(lambda n: json.loads(core.read_namespace(
            n, _preload_content=False).data), n) for n in namespaces]
        first += [pool.submit(kube_list, "Pod", n) for n in namespaces]
        for wave in (first, [pool.submit(kube_list, "ReplicaSet", n) for n in namespaces],
                     [pool.submit(kube_list, "Deployment", n) for n in namespaces]):
            for future in wave:
                future.result()

    def bare() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(instant)) as pool, ThreadPoolExecutor(4) as prom_pool, \
                ThreadPoolExecutor(4) as kube_pool, ThreadPoolExecutor(1) as background:
            answers = {name: pool.submit(promql, expr) for name, expr in instant.items()}
            # Which GPUs look idle needs the allocations and the peaks, nothing else.
            answers["allocation"].result()
            answers["peak_utilization"].result()
            kube = background.submit(kube_reads, kube_pool)
            raw = list(prom_pool.map(promql, coverage))
            kube.result()
            for answer in answers.values():
                answer.result()
        assert raw
        return time.perf_counter() - t0

    # Where a plan's time goes: the evidence (PromQL, with the lists running beside the raw
    # samples), the workload decisions (waiting for the lists, then the policy), the rest.
    spent = {"evidence": 0.0, "workloads": 0.0}

    def timed(part: str, method: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                spent[part] += time.perf_counter() - t0
        return wrapper

    job.evidence = timed("evidence", job.evidence)
    job.decide_workloads = timed("workloads", job.decide_workloads)
    bare(), engine.run(apply=False)  # warm every path
    references, plans, reference_calls, plan_calls = [], [], Counter[str](), Counter[str]()
    parts: list[dict[str, float]] = []
    cpu: dict[str, list[float]] = {"reference": [], "plan": []}
    outcome = None
    for _ in range(args.runs):
        calls.take()
        c0 = time.process_time()
        references.append(bare())
        cpu["reference"].append(time.process_time() - c0)
        reference_calls = calls.take()
        spent["evidence"] = spent["workloads"] = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        outcome = engine.run(apply=False)
        plans.append(time.perf_counter() - t0)
        cpu["plan"].append(time.process_time() - c0)
        parts.append(dict(spent))
        plan_calls = calls.take()
    assert outcome is not None and outcome.plan is not None, outcome
    reference, plan = statistics.median(references), statistics.median(plans)
    candidates = len(outcome.plan.candidates)
    print(f"GPUs {gpus} on {args.nodes} nodes, Kubernetes API: {args.kube}; candidates "
          f"{candidates} (expected {len(idle)}), skipped {len(outcome.plan.skipped)}")
    print("runs (s): reference " + " ".join(f"{t:.3f}" for t in references) + "; plan "
          + " ".join(f"{t:.3f}" for t in plans) + "; ratio "
          + " ".join(f"{p / r:.2f}" for p, r in zip(plans, references, strict=True)))
    print(f"reference (bare reads, overlapped): {reference * 1000:.1f} ms")
    print(f"plan (engine dry run):              {plan * 1000:.1f} ms")
    evidence = statistics.median(p["evidence"] for p in parts)
    workloads = statistics.median(p["workloads"] for p in parts)
    print(f"  of which evidence {evidence * 1000:.1f} ms, workload decisions {workloads * 1000:.1f}"
          f" ms, the rest (join, judging, plan in SQLite) "
          f"{(plan - evidence - workloads) * 1000:.1f} ms")
    print(f"CPU of this process (all threads): reference "
          f"{statistics.median(cpu['reference']) * 1000:.0f} ms, plan "
          f"{statistics.median(cpu['plan']) * 1000:.0f} ms")
    print("HTTP calls        kind: reference / plan")
    for kind in sorted(set(reference_calls) | set(plan_calls)):
        print(f"  {kind:40} {reference_calls[kind]:5} / {plan_calls[kind]}")
    print(f"calls: reference {sum(reference_calls.values())}, plan {sum(plan_calls.values())}")
    print(f"ratio plan / bare reads: {plan / reference:.2f}x (median of {args.runs})")
    if candidates != len(idle):
        raise SystemExit("the plan did not find every idle GPU's workload")


if __name__ == "__main__":
    main()
