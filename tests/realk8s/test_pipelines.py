"""Pipelines and pending GPU pods on a real API server, with the controller's own token: Job
status conditions written by the real Job controller (kube-controller-manager), CronJob
ownership, Argo Workflows listed in pages, and GPU pods the scheduler could not place."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from agent.clients.kubernetes.api import user_agent
from agent.controller.pending import pending_pods_collector
from agent.controller.pipelines import pipelines_collector
from agent.exporter.collection import CollectionLoops
from tests.helm.chart import NAMESPACE, RELEASE, render
from tests.realk8s import workloads as w
from tests.realk8s.cluster import RealCluster, service_account_user
from tests.realk8s.rbac import apply_chart_rbac
from tests.support.binaries import require_binary
from tests.support.net import wait_until

NS = "pl-ml"
NODE = "pl-gpu-1"
CONTROLLER = service_account_user(NAMESPACE, f"{RELEASE}-controller")


@pytest.fixture(scope="module")
def controller_api(real_k8s: RealCluster) -> Iterator[client.ApiClient]:
    apply_chart_rbac(real_k8s, render(require_binary("helm")))
    w.install_argo_crds(real_k8s.admin)
    real_k8s.namespace(NS)
    real_k8s.node(NODE)
    api = real_k8s.client(real_k8s.token(NAMESPACE, f"{RELEASE}-controller"),
                          user_agent("controller"))
    yield api
    api.close()


def samples(loops: CollectionLoops) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    loops.run_all_once()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in loops.families() for s in m.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def finish_job_pod(cluster: RealCluster, job: str, *, succeeded: bool) -> None:
    """Play the kubelet: the Job's pod ends, as its container exits 0 or 1."""
    core = client.CoreV1Api(cluster.admin)
    wait_until(lambda: bool(core.list_namespaced_pod(NS, label_selector=f"job-name={job}").items),
               timeout=30, what=f"the Job controller's pod for {job}")
    (pod,) = core.list_namespaced_pod(NS, label_selector=f"job-name={job}").items
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {"exitCode": 0 if succeeded else 1,
                  "reason": "Completed" if succeeded else "Error",
                  "startedAt": now, "finishedAt": now}
    core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
        "phase": "Succeeded" if succeeded else "Failed",
        "containerStatuses": [{"name": "main", "image": "registry.example/job:1", "imageID": "",
                               "ready": False, "restartCount": 0,
                               "state": {"terminated": terminated}}]}})


def conditions(cluster: RealCluster, job: str) -> set[str]:
    status = client.BatchV1Api(cluster.admin).read_namespaced_job(job, NS).status
    return {c.type for c in status.conditions or [] if c.status == "True"}


def test_jobs_finished_by_the_real_job_controller(real_k8s: RealCluster,
                                                  controller_api: client.ApiClient) -> None:
    batch = client.BatchV1Api(real_k8s.admin)
    labels = {"steward.io/pipeline": "train"}
    for name in ("train-ok", "train-bad", "train-running"):
        w.create(real_k8s.admin, w.job(name, NS, node=NODE, labels=labels, suspend=False))
    cron = batch.create_namespaced_cron_job(NS, {
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {
            "template": w.job("x", NS)["spec"]["template"]}}}})
    owned = w.job("nightly-1", NS, node=NODE, suspend=False)
    owned["metadata"]["ownerReferences"] = [{
        "apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
        "uid": cron.metadata.uid, "controller": True}]
    w.create(real_k8s.admin, owned)

    finish_job_pod(real_k8s, "train-ok", succeeded=True)
    finish_job_pod(real_k8s, "train-bad", succeeded=False)
    finish_job_pod(real_k8s, "nightly-1", succeeded=True)
    wait_until(lambda: conditions(real_k8s, "train-ok") >= {"SuccessCriteriaMet", "Complete"},
               timeout=30, what="Complete from the Job controller")
    wait_until(lambda: conditions(real_k8s, "train-bad") >= {"FailureTarget", "Failed"},
               timeout=30, what="Failed from the Job controller")
    wait_until(lambda: "Complete" in conditions(real_k8s, "nightly-1"), timeout=30,
               what="the CronJob's run complete")
    wait_until(lambda: (batch.read_namespaced_job("train-running", NS).status.active or 0) == 1,
               timeout=30, what="a running Job")

    loops = CollectionLoops([pipelines_collector(client.BatchV1Api(controller_api),
                                                 client.CustomObjectsApi(controller_api), 30)])
    found = samples(loops)
    train = {"namespace": NS, "pipeline": "train", "kind": "Job"}
    assert value(found, "steward_collector_up", collector="pipelines") == 1
    assert value(found, "steward_pipeline_runs_total", **train, result="succeeded") == 1
    assert value(found, "steward_pipeline_runs_total", **train, result="failed") == 1
    assert value(found, "steward_pipeline_running_since_timestamp_seconds", **train) is not None
    ok = batch.read_namespaced_job("train-ok", NS).status
    assert value(found, "steward_pipeline_last_success_timestamp_seconds", **train) == \
        ok.completion_time.timestamp()
    nightly = {"namespace": NS, "pipeline": "nightly", "kind": "CronJob"}
    assert value(found, "steward_pipeline_runs_total", **nightly, result="succeeded") == 1


def test_argo_workflows_listed_in_pages(real_k8s: RealCluster,
                                        controller_api: client.ApiClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    custom = client.CustomObjectsApi(real_k8s.admin)
    for i in range(5):
        custom.create_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "workflows", {
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": f"etl-{i}"},
            "spec": {"workflowTemplateRef": {"name": "etl"}},
            "status": {"phase": "Succeeded" if i else "Failed",
                       "startedAt": "2026-11-22T10:00:00Z",
                       "finishedAt": "2026-11-22T10:05:00Z"}})
    import agent.controller.pipelines as pipelines

    real_paged = pipelines.paged

    def small_pages(call: Any, **kwargs: Any) -> Any:
        return real_paged(call, page_size=2, **kwargs)

    monkeypatch.setattr(pipelines, "paged", small_pages)
    mark = real_k8s.audit_mark()
    loops = CollectionLoops([pipelines_collector(client.BatchV1Api(controller_api),
                                                 client.CustomObjectsApi(controller_api), 30)])
    found = samples(loops)
    etl = {"namespace": NS, "pipeline": "etl", "kind": "Workflow"}
    assert value(found, "steward_pipeline_runs_total", **etl, result="succeeded") == 4
    assert value(found, "steward_pipeline_runs_total", **etl, result="failed") == 1
    lists = [e for e in real_k8s.audit(since=mark, user=CONTROLLER)
             if e.resource == "workflows"]
    assert len(lists) == 3 and all("limit=2" in e.uri for e in lists)
    assert sum("continue=" in e.uri for e in lists) == 2
    assert all(e.code == 200 for e in lists)


def test_pending_gpu_pods(real_k8s: RealCluster, controller_api: client.ApiClient) -> None:
    core = client.CoreV1Api(real_k8s.admin)
    w.create(real_k8s.admin, w.pod("wants-gpus", NS, gpus=8))
    w.create(real_k8s.admin, w.pod("wants-cpu", NS))
    since = "2026-11-22T11:00:00Z"
    for name in ("wants-gpus", "wants-cpu"):
        # What the scheduler writes when no node fits (no scheduler runs here).
        core.patch_namespaced_pod_status(name, NS, {"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            "lastTransitionTime": since}]}})
    loops = CollectionLoops([pending_pods_collector(client.CoreV1Api(controller_api), 30)])
    found = samples(loops)
    assert value(found, "steward_collector_up", collector="pending_pods") == 1
    pending = {k[1]: v for k, v in found.items()
               if k[0] == "steward_pod_pending_since_timestamp_seconds"}
    assert pending == {(("namespace", NS), ("pod", "wants-gpus")):
                       datetime(2026, 11, 22, 11, tzinfo=UTC).timestamp()}
