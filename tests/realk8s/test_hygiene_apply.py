"""The idle-GPU job in apply mode on a real API server: ``steward hygiene run idle-gpus
--apply`` (the real CLI, in a child process) with the controller's own chart-rendered token
(the chart's apply-mode RBAC, as rendered), a real Prometheus over a backfilled history that
makes exactly the intended GPUs idle, and the API server's audit log as the evidence.

The cluster: Deployments whose ReplicaSets and pods are made by the real
kube-controller-manager (an idle one, a busy one, an exempt one, one with a busy and an idle
replica), bare pods with ``pod_action: delete``. No kubelet: the test sets the pods' status,
and a pod deleted with a grace period stays Terminating until it is force-deleted, as on a
node whose kubelet has not yet confirmed. The evidence window is seconds long
(``WINDOW``/``GRACE``, one-second samples): the pods the server created are older than it
once the test has waited that long, and ``mark_hours: 0`` lets the second run sweep.

Proven here: marks in the state store and Events on the objects; the sweep writes replicas
through ``/scale`` and nothing else; the bare pod is deleted with a uid precondition, and a
pod replaced under the same name (between the runs, or between the read and the delete) is
not; busy, exempt and mixed workloads are left alone; restore with an admin kubeconfig, the
controller's token refused a pod create (exit 1, record kept), a pod still Terminating
refused (exit 1, record kept) until it is gone; a SIGKILL after the server scaled the
Deployment and before the reply was read (a TLS proxy holds it) is recorded by the rerun and
restored; and from the audit log, the controller's token got no 403 for anything it needed
and wrote nothing but ``/scale``, pod deletions and Events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from agent.clients.kubernetes.api import timestamp, user_agent
from agent.clients.kubernetes.objects import GPU_RESOURCE
from agent.controller.hygiene.audit import COMPONENT
from agent.controller.hygiene.idle_gpus.job import RESTORED_FROM
from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
from agent.controller.hygiene.store import HygieneStore
from agent.state import open_store
from tests.helm.chart import NAMESPACE, RELEASE, Rendered, render
from tests.hygiene.crashing import ROOT, child_env, killed_while_held
from tests.realk8s import workloads as w
from tests.realk8s.cluster import AuditEvent, RealCluster, service_account_user
from tests.realk8s.rbac import apply_chart_rbac
from tests.support.binaries import require_binary
from tests.support.holding_proxy import HoldingProxy
from tests.support.net import wait_until
from tests.support.prometheus import BackfillSeries, Prometheus, openmetrics, start_prometheus

NS, CRASH_NS = "hy-ml", "hy-crash"
NODE = "hy-gpu-1"
WINDOW, GRACE, SCRAPE = "5s", "1s", "1s"
SPAN = 6.0  # WINDOW + GRACE, in seconds
IDLE_UTIL, BUSY_UTIL = 0.002, 0.85
CONTROLLER = service_account_user(NAMESPACE, f"{RELEASE}-controller")
JOB = "idle-gpus"

# Deployment name -> (namespace, replicas, labels, utilization of each replica's GPU)
DEPLOYMENTS: dict[str, tuple[str, int, dict[str, str], tuple[float, ...]]] = {
    "idle-train": (NS, 2, {}, (IDLE_UTIL, IDLE_UTIL)),
    "busy-serve": (NS, 1, {}, (BUSY_UTIL,)),
    "exempt-dev": (NS, 1, {"steward.io/exempt": "true"}, (IDLE_UTIL,)),
    "mixed-eval": (NS, 2, {}, (IDLE_UTIL, BUSY_UTIL)),
    "crash-train": (CRASH_NS, 1, {}, (IDLE_UTIL,)),
}
BARE_IDLE, BARE_REPLACED, BARE_RACED = "bare-idle", "bare-replaced", "bare-raced"
BARE = (BARE_IDLE, BARE_REPLACED, BARE_RACED)
LEFT_ALONE = ("busy-serve", "exempt-dev", "mixed-eval")
IDLE_DEPLOYMENT = f"{NS}/Deployment/idle-train"
CRASH_DEPLOYMENT = f"{CRASH_NS}/Deployment/crash-train"


# --------------------------------------------------------------------------- the stand


@dataclass
class Stand:
    cluster: RealCluster
    prometheus: Prometheus
    proxy: HoldingProxy
    configs: dict[str, Path]  # "<main|crash>-<controller|proxied|admin>" -> steward.yaml
    stores: dict[str, HygieneStore]  # main, crash
    started: int  # where the audit log ended before the first run
    pods: dict[str, list[str]]  # Deployment -> the names of its pods (first replica first)
    initial: dict[str, dict[str, Any]]  # Deployment -> as it was before any run
    uids: dict[str, str]  # pod name -> uid before any run (and "<name>:new" once replaced)

    def steward(self, *args: str, config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_cli(*args, config=self.configs[config]), cwd=ROOT,
                              env=child_env(), capture_output=True, text=True, timeout=120,
                              check=False)

    def apply_run(self, config: str) -> subprocess.CompletedProcess[str]:
        return self.steward("hygiene", "run", JOB, "--apply", "--output", "json",
                            config=config)

    def restore(self, resource: str, *, config: str) -> subprocess.CompletedProcess[str]:
        return self.steward("hygiene", "restore", JOB, resource, config=config)


def _cli(*args: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args, "--config", str(config)]


def gpu_deployment(name: str) -> dict[str, Any]:
    namespace, replicas, labels, _ = DEPLOYMENTS[name]
    body = w.deployment(name, namespace, replicas=replicas, image="registry.example/ml/train:1")
    body["metadata"]["labels"] = {"team": "ml", **labels}
    spec = body["spec"]["template"]["spec"]
    spec["nodeName"] = NODE  # no scheduler: bound as the scheduler would
    spec["containers"][0]["resources"] = {"limits": {GPU_RESOURCE: "1"},
                                          "requests": {GPU_RESOURCE: "1"}}
    return body


def set_running(core: client.CoreV1Api, name: str, namespace: str) -> None:
    """Play the kubelet: the pod runs."""
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "containerStatuses": [{
            "name": "main", "image": "registry.example/ml/train:1", "imageID": "",
            "ready": True, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})


def replace_pod(cluster: RealCluster, name: str) -> str:
    """Someone deletes the pod and creates another under its name; the new pod's uid."""
    w.recreate_pod(cluster.admin, w.pod(name, NS, node=NODE, gpus=1))
    core = client.CoreV1Api(cluster.admin)
    set_running(core, name, NS)
    return str(core.read_namespaced_pod(name, NS).metadata.uid)


def history(gpus: list[tuple[str, str, float]], *, now: float) -> list[BackfillSeries]:
    """One GPU per pod, sampled every second from five minutes before ``now`` to fifteen
    after: every run of this module, whenever it starts, sees a complete window."""
    times = [float(t) for t in range(int(now) - 300, int(now) + 900)]
    out: list[BackfillSeries] = []
    for index, (namespace, pod, utilization) in enumerate(gpus):
        labels = {"UUID": f"GPU-{index:08d}-7e57-4000-8000-0000000hy{index:03d}",
                  "gpu": str(index), "hostname": NODE, "modelName": "NVIDIA A100-SXM4-80GB"}
        out += [BackfillSeries("steward_gpu_lost", labels, [(t, 0.0) for t in times]),
                BackfillSeries("steward_gpu_up", labels, [(t, 1.0) for t in times]),
                BackfillSeries("steward_gpu_utilization_ratio", labels,
                               [(t, utilization) for t in times]),
                BackfillSeries("steward_gpu_allocation",
                               {**labels, "namespace": namespace, "pod": pod, "container": "main"},
                               [(t, 1.0) for t in times])]
    return out


def write_config(path: Path, rendered: Rendered, *, prometheus: str, kubeconfig: Path,
                 state: Path, exempt_namespace: str) -> Path:
    """The chart's rendered steward.yaml, with this stand's servers and seconds-long windows."""
    raw = rendered.config()
    raw["state"] = {"url": f"sqlite:///{state}"}
    raw["prometheus"] = {"url": prometheus, "timeout_seconds": 5}
    raw["kubernetes"] = {"kubeconfig": str(kubeconfig)}
    raw["controller"] = {**raw["controller"], "lease_namespace": NAMESPACE,
                         "identity": "hy-controller-0"}
    raw["hygiene"]["idle_gpus"] = {
        **raw["hygiene"]["idle_gpus"], "window": WINDOW, "grace": GRACE,
        "scrape_interval": SCRAPE, "mark_hours": 0, "max_percent": 100, "max_actions": 10,
        # The crash test's namespace and the main one are each other's bystanders.
        "exempt_namespaces": [exempt_namespace]}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def raw_deployment(cluster: RealCluster, name: str) -> dict[str, Any]:
    namespace = DEPLOYMENTS[name][0]
    response = client.AppsV1Api(cluster.admin).read_namespaced_deployment(
        name, namespace, _preload_content=False)
    data: dict[str, Any] = json.loads(response.data)
    return data


def pod_or_none(cluster: RealCluster, name: str, namespace: str = NS) -> Any:
    try:
        return client.CoreV1Api(cluster.admin).read_namespaced_pod(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.fixture(scope="module")
def stand(real_k8s: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    cluster = real_k8s
    workdir = tmp_path_factory.mktemp("hygiene-apply")
    for namespace in (NS, CRASH_NS):
        cluster.namespace(namespace)
    cluster.node(NODE)
    core = client.CoreV1Api(cluster.admin)
    for name in DEPLOYMENTS:
        w.create(cluster.admin, gpu_deployment(name))
    for name in BARE:
        w.create(cluster.admin, w.pod(name, NS, node=NODE, gpus=1))
    # While the pods age past the window: the chart's apply-mode RBAC, as rendered.
    rendered = render(require_binary("helm"), "default", sets={
        "controller.apply": "true", "hygiene.idleGpus.apply": "true",
        "hygiene.idleGpus.podAction": "delete"})
    apply_chart_rbac(cluster, rendered)
    # The ReplicaSet controller makes the pods; the test plays the kubelet.
    pods: dict[str, list[str]] = {}
    for name, (namespace, replicas, _, _) in DEPLOYMENTS.items():
        wait_until(lambda n=name, ns=namespace, r=replicas: len(core.list_namespaced_pod(
            ns, label_selector=f"app={n}").items) == r, timeout=60,
            what=f"the pods of Deployment {name}")
        found = core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
        pods[name] = sorted(p.metadata.name for p in found)
    everything = [(DEPLOYMENTS[d][0], p) for d, names in pods.items() for p in names] + \
        [(NS, p) for p in BARE]
    for namespace, name in everything:
        set_running(core, name, namespace)
    uids = {name: str(core.read_namespaced_pod(name, namespace).metadata.uid)
            for namespace, name in everything}
    created = max(timestamp(core.read_namespaced_pod(name, namespace).metadata
                            .creation_timestamp) or 0.0 for namespace, name in everything)
    # Deployments settled (the revision annotation written): their state before any run.
    wait_until(lambda: all("deployment.kubernetes.io/revision" in (raw_deployment(
        cluster, d)["metadata"].get("annotations") or {}) for d in DEPLOYMENTS), timeout=30,
        what="the Deployment controller's revision annotations")
    initial = {name: raw_deployment(cluster, name) for name in DEPLOYMENTS}

    gpus = [(DEPLOYMENTS[d][0], pod, DEPLOYMENTS[d][3][i])
            for d, names in pods.items() for i, pod in enumerate(names)]
    gpus += [(NS, pod, IDLE_UTIL) for pod in BARE]
    with ExitStack() as cleanup:
        cleanup.callback(tidy_up, cluster)
        prometheus = start_prometheus([], backfill=openmetrics(history(gpus, now=time.time())))
        cleanup.callback(prometheus.stop)
        pki = cluster.dir / "pki"
        proxy = HoldingProxy(cluster.server, ca=str(cluster.ca),
                             certificate=str(pki / "apiserver.crt"),
                             key=str(pki / "apiserver.key"))
        cleanup.callback(proxy.stop)
        token = cluster.token(NAMESPACE, f"{RELEASE}-controller")
        kubeconfigs = {
            "controller": cluster.write_kubeconfig(workdir / "controller.kubeconfig", token),
            "proxied": cluster.write_kubeconfig(workdir / "proxied.kubeconfig", token,
                                                port=proxy.port),
            "admin": cluster.kubeconfig,
        }
        configs, stores = {}, {}
        for flow, bystander in (("main", CRASH_NS), ("crash", NS)):
            state = workdir / f"{flow}-state.db"
            for who, kubeconfig in kubeconfigs.items():
                configs[f"{flow}-{who}"] = write_config(
                    workdir / f"{flow}-{who}.yaml", rendered, prometheus=prometheus.url,
                    kubeconfig=kubeconfig, state=state, exempt_namespace=bystander)
            stores[flow] = HygieneStore(open_store(f"sqlite:///{state}", tables=[HYGIENE_TABLES]))
            cleanup.callback(stores[flow].engine.dispose)
        # Older than the window, by the server's own creationTimestamp (the CLI's clock).
        time.sleep(max(0.0, created + SPAN + 0.5 - time.time()))
        yield Stand(cluster=cluster, prometheus=prometheus, proxy=proxy, configs=configs,
                    stores=stores, started=cluster.audit_mark(), pods=pods, initial=initial,
                    uids=uids)


def tidy_up(cluster: RealCluster) -> None:
    """Leave nothing the other modules' cluster-wide reads would count: the restored bare
    pod is an unbound GPU pod (a pending GPU pod to the controller's collector). The
    Deployments go too; their pods, bound to a node with no kubelet, stay Terminating, as
    any pod of a deleted workload on a lost node would. The namespaces stay: deleting them
    makes the controller-manager's controllers collect 403s for a while (creating in a
    terminating namespace), which other modules would see in the audit log."""
    core, apps = client.CoreV1Api(cluster.admin), client.AppsV1Api(cluster.admin)
    for namespace in (NS, CRASH_NS):
        for deployment in apps.list_namespaced_deployment(namespace).items:
            apps.delete_namespaced_deployment(deployment.metadata.name, namespace)
        for pod in core.list_namespaced_pod(namespace).items:
            if not pod.spec.node_name:
                core.delete_namespaced_pod(pod.metadata.name, namespace,
                                           grace_period_seconds=0)


def events(cluster: RealCluster, namespace: str, *, kind: str, name: str) -> dict[str, str]:
    """reason -> message of Steward's Events on one object, as anyone reading the API sees
    them (the Deployment controller posts its own)."""
    found = client.CoreV1Api(cluster.admin).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    return {e.reason: e.message for e in found.items if e.source.component == COMPONENT}


def plan(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), f"no plan printed; stderr:\n{result.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def error_line(stderr: str) -> str:
    """The one line a failed command says (the rest of stderr is JSON log lines)."""
    plain = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("steward: "), stderr[-3000:]
    return plain[0]


def act_entry(store: HygieneStore, resource: str) -> dict[str, Any] | None:
    found = [e for e in store.audit_entries(JOB)
             if e["resource"] == resource and str(e["key"]).endswith("|act")]
    assert len(found) <= 1, found
    return found[0] if found else None


def marks_of(store: HygieneStore, resource: str) -> list[dict[str, Any]]:
    return [m for m in store.marks(JOB) if m["resource"] == resource]


def controller_requests(stand: Stand, *, since: int | None = None) -> list[AuditEvent]:
    return stand.cluster.audit(since=stand.started if since is None else since,
                               user=CONTROLLER)


def writes(requests: list[AuditEvent]) -> list[AuditEvent]:
    return [e for e in requests if e.verb not in ("get", "list", "watch")]


# --------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def marked(stand: Stand) -> dict[str, Any]:
    """The first apply run: marks, nothing acted on."""
    result = stand.apply_run("main-controller")
    assert result.returncode == 0, result.stderr[-3000:]
    return plan(result)


@pytest.fixture(scope="module")
def swept(stand: Stand, marked: dict[str, Any]) -> dict[str, Any]:
    """The second apply run, past the deadline (``mark_hours: 0``), through the TLS proxy:
    ``bare-replaced`` was replaced before it, ``bare-raced`` is replaced while the run
    holds its read of the pod (the proxy keeps the server's reply until then), so the
    delete that follows carries the old uid."""
    stand.uids["bare-replaced:new"] = replace_pod(stand.cluster, BARE_REPLACED)
    stand.initial["idle-train:before-sweep"] = raw_deployment(stand.cluster, "idle-train")
    hold = stand.proxy.hold("GET", rf"/namespaces/{NS}/pods/{BARE_RACED}(\?|$)", deliver=True)
    process = subprocess.Popen(
        _cli("hygiene", "run", JOB, "--apply", "--output", "json",
             config=stand.configs["main-proxied"]),
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hold.wait_held(90)
        stand.uids["bare-raced:new"] = replace_pod(stand.cluster, BARE_RACED)
    finally:
        hold.released.set()
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    return plan(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))


# --------------------------------------------------------------------------- marking


def test_the_first_run_marks_exactly_the_idle_gpus(stand: Stand, marked: dict[str, Any]) -> None:
    candidates = {c["resource"]: c for c in marked["candidates"]}
    assert set(candidates) == {IDLE_DEPLOYMENT, *(f"{NS}/{p}" for p in BARE)}
    assert candidates[IDLE_DEPLOYMENT]["action"] == "scale_to_zero"
    assert candidates[IDLE_DEPLOYMENT]["evidence"]["replicas"] == 2
    assert marked["reclaimable"] == {"gpus": 5}
    for pod in BARE:
        assert candidates[f"{NS}/{pod}"]["action"] == "delete"
        assert candidates[f"{NS}/{pod}"]["evidence"]["uid"] == stand.uids[pod]
    skipped = {s["resource"]: s["reason"] for s in marked["skipped"]}
    busy, exempt = stand.pods["busy-serve"][0], stand.pods["exempt-dev"][0]
    assert skipped[f"{NS}/{busy}"].startswith("in use: peak utilization 85.0%")
    assert skipped[f"{NS}/{exempt}"] == "exempt: steward.io/exempt=true on Deployment exempt-dev"
    idle_replica, busy_replica = stand.pods["mixed-eval"]
    assert skipped[f"{NS}/{busy_replica}"].startswith("in use")
    assert skipped[f"{NS}/{idle_replica}"].startswith(
        f"Deployment mixed-eval also runs {NS}/{busy_replica}, which is not idle")
    assert skipped[CRASH_DEPLOYMENT].startswith(f"exempt: namespace {CRASH_NS}")

    # Marks live in the state store ...
    store = stand.stores["main"]
    assert {m["resource"]: m["state"] for m in store.marks(JOB)} == {
        r: "active" for r in candidates}
    assert all(m["notified_at"] is not None for m in store.marks(JOB))
    # ... and are announced with Events on the objects, seen through the API.
    assert events(stand.cluster, NS, kind="Deployment", name="idle-train")[
        "HygieneMarked"].startswith("marked: scale_to_zero after ")
    for pod in BARE:
        assert events(stand.cluster, NS, kind="Pod", name=pod)["HygieneMarked"].startswith(
            "marked: delete after ")
    # A mark writes nothing to a workload or a pod: Events only.
    assert {(e.resource, e.verb) for e in writes(controller_requests(stand))} == {
        ("events", "create")}


# --------------------------------------------------------------------------- sweeping


def test_the_sweep_scales_through_scale_only(stand: Stand, swept: dict[str, Any]) -> None:
    before = stand.initial["idle-train:before-sweep"]
    after = raw_deployment(stand.cluster, "idle-train")
    assert after["spec"]["replicas"] == 0 and before["spec"]["replicas"] == 2
    # Nothing but replicas changed: the pod template, the selector, the strategy, every
    # label and annotation, the object itself.
    assert {**after["spec"], "replicas": 2} == before["spec"]
    for key in ("uid", "labels", "annotations", "name", "namespace", "creationTimestamp"):
        assert after["metadata"].get(key) == before["metadata"].get(key), key
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    scale_writes = [e for e in writes(controller_requests(stand))
                    if e.resource.startswith("deployments")]
    assert [(e.resource, e.verb, e.name, e.code) for e in scale_writes] == [
        ("deployments/scale", "update", "idle-train", 200)]

    store = stand.stores["main"]
    (mark,) = marks_of(store, IDLE_DEPLOYMENT)
    assert mark["state"] == "swept"
    entry = act_entry(store, IDLE_DEPLOYMENT)
    assert entry is not None and entry["status"] == "done"
    (record,) = [r for r in store.restore_candidates(JOB) if r.resource == IDLE_DEPLOYMENT]
    assert record.record["replicas"] == 2 and record.record["uid"] == before["metadata"]["uid"]
    assert "HygieneScaledToZero" in events(stand.cluster, NS, kind="Deployment",
                                           name="idle-train")
    # The real Deployment and ReplicaSet controllers stop its pods.
    core = client.CoreV1Api(stand.cluster.admin)
    wait_until(lambda: all(p.metadata.deletion_timestamp is not None for p in
                           core.list_namespaced_pod(NS, label_selector="app=idle-train").items),
               timeout=30, what="the idle Deployment's pods terminating")


def test_the_bare_pod_is_deleted_with_its_uid_precondition(stand: Stand,
                                                           swept: dict[str, Any]) -> None:
    pod = pod_or_none(stand.cluster, BARE_IDLE)
    # Graceful deletion, and no kubelet to confirm it: Terminating, the same object.
    assert pod is not None and pod.metadata.deletion_timestamp is not None
    assert pod.metadata.uid == stand.uids[BARE_IDLE]
    deletes = [(e.name, e.code) for e in writes(controller_requests(stand))
               if e.resource == "pods"]
    assert (BARE_IDLE, 200) in deletes
    entry = act_entry(stand.stores["main"], f"{NS}/{BARE_IDLE}")
    assert entry is not None and entry["status"] == "done"
    assert "HygieneDeleted" in events(stand.cluster, NS, kind="Pod", name=BARE_IDLE)


def test_a_pod_replaced_under_its_name_is_not_deleted(stand: Stand,
                                                      swept: dict[str, Any]) -> None:
    store = stand.stores["main"]
    for name in (BARE_REPLACED, BARE_RACED):
        pod = pod_or_none(stand.cluster, name)
        assert pod is not None and pod.metadata.uid == stand.uids[f"{name}:new"], name
        assert pod.metadata.deletion_timestamp is None, f"{name} was deleted"
        # Its mark is lifted; a new one, if any, is the new pod's.
        first = min(marks_of(store, f"{NS}/{name}"), key=lambda m: m["marked_at"])
        assert first["state"] == "lifted", first
    deletes = [(e.name, e.code) for e in writes(controller_requests(stand))
               if e.resource == "pods"]
    # Replaced between the runs: never asked. Replaced between the read and the delete:
    # the server refused the delete's uid precondition.
    assert [d for d in deletes if d[0] == BARE_REPLACED] == []
    assert [d for d in deletes if d[0] == BARE_RACED] == [(BARE_RACED, 409)]
    raced = act_entry(store, f"{NS}/{BARE_RACED}")
    assert raced is not None and raced["status"] == "released", raced
    assert "HygieneDeleted" not in events(stand.cluster, NS, kind="Pod", name=BARE_RACED)


def test_busy_exempt_and_mixed_workloads_are_left_alone(stand: Stand,
                                                        swept: dict[str, Any]) -> None:
    core = client.CoreV1Api(stand.cluster.admin)
    for name in LEFT_ALONE:
        before, after = stand.initial[name], raw_deployment(stand.cluster, name)
        assert after["spec"] == before["spec"], name
        assert after["metadata"]["generation"] == before["metadata"]["generation"], name
        assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
        for pod in stand.pods[name]:
            now = core.read_namespaced_pod(pod, NS)
            assert now.metadata.uid == stand.uids[pod] and now.metadata.deletion_timestamp \
                is None, pod
            assert events(stand.cluster, NS, kind="Pod", name=pod) == {}, pod
        assert events(stand.cluster, NS, kind="Deployment", name=name) == {}, name
    touched = {e.name for e in writes(controller_requests(stand)) if e.resource != "events"}
    bystanders = set(LEFT_ALONE) | {p for n in LEFT_ALONE for p in stand.pods[n]}
    assert touched & bystanders == set()


# --------------------------------------------------------------------------- restoring


def test_restore_scales_the_deployment_back(stand: Stand, swept: dict[str, Any]) -> None:
    result = stand.restore(IDLE_DEPLOYMENT, config="main-admin")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"restored {IDLE_DEPLOYMENT}: Deployment {NS}/idle-train "
                                     "scaled back to 2 replicas")
    after = raw_deployment(stand.cluster, "idle-train")
    assert after["spec"]["replicas"] == 2
    assert {**after["spec"], "replicas": 0} == {
        **stand.initial["idle-train:before-sweep"]["spec"], "replicas": 0}
    core = client.CoreV1Api(stand.cluster.admin)
    wait_until(lambda: sum(1 for p in core.list_namespaced_pod(
        NS, label_selector="app=idle-train").items if p.metadata.deletion_timestamp is None)
        == 2, timeout=30, what="the ReplicaSet controller's new pods")
    assert "HygieneRestored" in events(stand.cluster, NS, kind="Deployment", name="idle-train")
    again = stand.restore(f"{NS}/idle-train", config="main-admin")
    assert again.returncode == 2, again.stderr


def test_restore_of_the_deleted_pod(stand: Stand, swept: dict[str, Any]) -> None:
    resource = f"{NS}/{BARE_IDLE}"
    store = stand.stores["main"]

    def kept() -> bool:
        return any(r.resource == resource for r in store.restore_candidates(JOB))

    # Still Terminating (no kubelet has confirmed the graceful deletion): refused, kept.
    early = stand.restore(resource, config="main-admin")
    assert early.returncode == 1, early.stderr
    line = error_line(early.stderr)
    assert "is still terminating" in line and "retry in" in line, line
    assert kept()

    # The kubelet's part: the deletion is finalised.
    client.CoreV1Api(stand.cluster.admin).delete_namespaced_pod(BARE_IDLE, NS,
                                                                grace_period_seconds=0)
    wait_until(lambda: pod_or_none(stand.cluster, BARE_IDLE) is None, timeout=30,
               what="the pod gone")

    # The controller's token may not create pods (it would run as any ServiceAccount):
    # the restore says so in one line, exit 1, and keeps the record.
    mark = stand.cluster.audit_mark()
    refused = stand.restore(resource, config="main-controller")
    assert refused.returncode == 1, refused.stderr
    line = error_line(refused.stderr)
    assert "403" in line and "Forbidden" in line, line
    assert kept() and pod_or_none(stand.cluster, BARE_IDLE) is None
    assert [(e.resource, e.verb, e.code) for e in writes(controller_requests(stand, since=mark))
            if e.resource == "pods"] == [("pods", "create", 403)]

    # A person's credentials: recreated, read back, the record consumed.
    restored = stand.restore(resource, config="main-admin")
    assert restored.returncode == 0, restored.stderr
    pod = pod_or_none(stand.cluster, BARE_IDLE)
    assert pod is not None and pod.metadata.deletion_timestamp is None
    assert pod.metadata.uid != stand.uids[BARE_IDLE]
    assert restored.stdout.strip() == (f"restored {resource}: pod {resource} recreated "
                                       f"(uid {pod.metadata.uid})")
    assert (pod.metadata.annotations or {}).get(RESTORED_FROM)
    assert pod.spec.containers[0].resources.limits == {GPU_RESOURCE: "1"}
    assert not kept()
    assert stand.restore(resource, config="main-admin").returncode == 2


# --------------------------------------------------------------------------- a crash


def test_killed_between_the_scale_and_its_record(stand: Stand, tmp_path: Path) -> None:
    """SIGKILL after the API server scaled the Deployment, before the CLI read the reply:
    the rerun finds it done and records it (once, no second write), restore brings it
    back."""
    store = stand.stores["crash"]
    first = stand.apply_run("crash-controller")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [m["state"] for m in marks_of(store, CRASH_DEPLOYMENT)] == ["active"]

    hold = stand.proxy.hold("PUT", rf"/namespaces/{CRASH_NS}/deployments/crash-train/scale$")
    killed_while_held(hold, "hygiene", "run", JOB, "--apply", "--config",
                      str(stand.configs["crash-proxied"]), log=tmp_path / "killed.log")
    assert hold.status == 200
    # The server acted; the store has the claim and nothing more.
    assert raw_deployment(stand.cluster, "crash-train")["spec"]["replicas"] == 0
    claimed = act_entry(store, CRASH_DEPLOYMENT)
    assert claimed is not None and claimed["status"] == "started"

    rerun = stand.apply_run("crash-controller")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    entry = act_entry(store, CRASH_DEPLOYMENT)
    assert entry is not None and entry["status"] == "done"
    assert "found done after a run died" in str(entry["detail"])
    assert [m["state"] for m in marks_of(store, CRASH_DEPLOYMENT)] == ["swept"]
    assert "HygieneScaledToZero" in events(stand.cluster, CRASH_NS, kind="Deployment",
                                           name="crash-train")
    scale_writes = [(e.verb, e.code) for e in writes(controller_requests(stand))
                    if e.resource == "deployments/scale" and e.name == "crash-train"]
    assert scale_writes == [("update", 200)], "scaled more than once"

    restored = stand.restore(f"{CRASH_NS}/crash-train", config="crash-admin")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert raw_deployment(stand.cluster, "crash-train")["spec"]["replicas"] == 1


# --------------------------------------------------------------------------- the audit log


def test_the_controller_token_needed_nothing_more_and_wrote_nothing_else(stand: Stand) -> None:
    """Every request the controller's token made in this module: no 403 but the pod create
    a restore tried with it; writes only to ``/scale``, pod deletions and Events."""
    requests = controller_requests(stand)
    assert requests, "the controller's token made no request"
    assert {e.user_agent for e in requests} == {user_agent("hygiene")}
    refused = [(e.resource, e.verb, e.namespace) for e in requests if e.code in (401, 403)]
    assert set(refused) <= {("pods", "create", NS)}, refused
    written = {(e.group, e.resource, e.verb) for e in writes(requests)}
    assert written <= {("apps", "deployments/scale", "update"),
                       ("apps", "deployments/scale", "patch"),
                       ("", "pods", "delete"), ("", "pods", "create"),
                       ("", "events", "create"), ("", "events", "patch")}, written
    # The only pod create is the refused one: nothing but deletions reached a pod.
    assert all(e.code == 403 for e in writes(requests) if e.verb == "create"
               and e.resource == "pods")
    # Workloads and pods were never patched or updated, only their /scale subresource.
    assert not [e for e in writes(requests) if e.resource in (
        "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "pods")
        and e.verb in ("patch", "update")]
