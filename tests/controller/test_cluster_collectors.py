"""Pipelines and pending GPU pods, cluster-wide, against the API stand-in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from agent.clients.kubernetes import objects
from agent.controller.pending import pending_pods_collector
from agent.controller.pipelines import pipelines_collector
from agent.exporter.collection import CollectionLoops
from agent.sim.kube_api import KubeApiServer
from tests.support.kube import KubeStandIns

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def iso(delta_minutes: float) -> str:
    return (NOW + timedelta(minutes=delta_minutes)).isoformat().replace("+00:00", "Z")


def job(name: str, *, namespace: str = "ml", cron: str | None = None, result: str | None,
        started: float = -30, finished: float = -10, labels: dict[str, str] | None = None
        ) -> dict[str, Any]:
    # As the Job controller writes them (and a real API server insists on): the interim
    # condition first, then the terminal one.
    conditions = []
    if result == "succeeded":
        conditions += [{"type": t, "status": "True", "lastTransitionTime": iso(finished)}
                       for t in ("SuccessCriteriaMet", "Complete")]
    elif result == "failed":
        conditions += [{"type": t, "status": "True", "lastTransitionTime": iso(finished)}
                       for t in ("FailureTarget", "Failed")]
    status: dict[str, Any] = {"startTime": iso(started), "conditions": conditions}
    if result == "succeeded":
        status["completionTime"] = iso(finished)
    else:
        status["active"] = 1 if result is None else 0
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if cron:
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cron,
                                    "uid": f"uid-{cron}", "controller": True}]
    template = {"spec": {"restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "img"}]}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"template": template}, "status": status}


def cronjob(name: str, last_success: float | None) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "m", "image": "i"}]}}}}},
            "status": {"lastSuccessfulTime": iso(last_success)} if last_success else {}}


def workflow(name: str, *, template: str | None = None, phase: str,
             started: float = -20, finished: float = -5) -> dict[str, Any]:
    spec: dict[str, Any] = {"workflowTemplateRef": {"name": template}} if template else {
        "entrypoint": "main"}
    status: dict[str, Any] = {"phase": phase, "startedAt": iso(started)}
    if phase != "Running":
        status["finishedAt"] = iso(finished)
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": "ml", "generateName": "adhoc-"},
            "spec": spec, "status": status}


def collect(loops: CollectionLoops) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    loops.run_all_once()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items()))): s.value
            for m in loops.families() for s in m.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_pipelines_by_kind_and_result(kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.create(cronjob("nightly-etl", last_success=-24 * 60))
    kube.create(job("nightly-etl-1", cron="nightly-etl", result="succeeded", started=-70,
                    finished=-60))
    kube.create(job("nightly-etl-2", cron="nightly-etl", result="failed", finished=-5))
    kube.create(job("nightly-etl-3", cron="nightly-etl", result=None, started=-3))
    kube.create(job("train-abc12", result="succeeded", started=-40, finished=-10,
                    labels={"steward.io/pipeline": "train"}))
    kube.create(workflow("wf-1", template="feature-build", phase="Succeeded"))
    kube.create(workflow("wf-2", template="feature-build", phase="Error"))
    kube.create(workflow("adhoc-xyz", phase="Running", started=-2))
    loops = CollectionLoops([pipelines_collector(client.BatchV1Api(api_client),
                                                 client.CustomObjectsApi(api_client), 30)])
    samples = collect(loops)
    cron = {"namespace": "ml", "pipeline": "nightly-etl", "kind": "CronJob"}
    runs = "steward_pipeline_runs_total"
    assert value(samples, runs, **cron, result="succeeded") == 1
    assert value(samples, runs, **cron, result="failed") == 1
    assert value(samples, "steward_pipeline_last_success_timestamp_seconds", **cron) == \
        (NOW - timedelta(minutes=60)).timestamp()
    assert value(samples, "steward_pipeline_last_duration_seconds", **cron) == 25 * 60
    assert value(samples, "steward_pipeline_running_since_timestamp_seconds", **cron) == \
        (NOW - timedelta(minutes=3)).timestamp()
    train = {"namespace": "ml", "pipeline": "train", "kind": "Job"}
    assert value(samples, runs, **train, result="succeeded") == 1
    wf = {"namespace": "ml", "pipeline": "feature-build", "kind": "Workflow"}
    assert value(samples, runs, **wf, result="succeeded") == 1
    assert value(samples, runs, **wf, result="failed") == 1
    assert value(samples, "steward_pipeline_running_since_timestamp_seconds",
                 namespace="ml", pipeline="adhoc", kind="Workflow") is not None
    assert value(samples, "steward_collector_up", collector="pipelines") == 1

    # Runs are counted once; a new failure increments; a finished run stops "running".
    kube.apply(job("nightly-etl-3", cron="nightly-etl", result="failed", finished=-1))
    again = collect(loops)
    assert value(again, runs, **cron, result="failed") == 2
    assert value(again, runs, **cron, result="succeeded") == 1
    assert value(again, "steward_pipeline_running_since_timestamp_seconds", **cron) is None
    # A garbage-collected Job does not make the pipeline forget its last success.
    kube.delete("batch/v1", "Job", "ml", "nightly-etl-1")
    assert value(collect(loops), "steward_pipeline_last_success_timestamp_seconds", **cron) \
        == (NOW - timedelta(minutes=60)).timestamp()


def test_argo_absent_is_skipped_cleanly(make_kube: KubeStandIns) -> None:
    clock = [0.0]
    no_argo = make_kube(crds=(), namespaces=("ml",))
    no_argo.create(job("j", result="succeeded", labels={"steward.io/pipeline": "p"}))
    api = make_kube.api_client(no_argo)
    loops = CollectionLoops([pipelines_collector(
        client.BatchV1Api(api), client.CustomObjectsApi(api), 30,
        rediscover_seconds=600, monotonic=lambda: clock[0])])
    samples = collect(loops)
    collect(loops)
    assert value(samples, "steward_collector_up", collector="pipelines") == 1
    assert value(samples, "steward_pipeline_runs_total", namespace="ml", pipeline="p",
                 kind="Job", result="succeeded") == 1
    # Discovery asked once, not on every collection; no list of an absent group.
    assert [r.path for r in no_argo.request_log(path_regex="argoproj")] == [
        "/apis/argoproj.io/v1alpha1"]
    # Argo installed later: seen at the next discovery, without a restart.
    no_argo.set_group_enabled("argoproj.io", True)
    no_argo.create(workflow("wf-late", template="late", phase="Succeeded"))
    clock[0] = 601
    later = collect(loops)
    assert value(later, "steward_pipeline_runs_total", namespace="ml", pipeline="late",
                     kind="Workflow", result="succeeded") == 1


def test_argo_not_granted_is_not_an_error_and_is_asked_once(make_kube: KubeStandIns) -> None:
    """pipelines.argo=false: a real server answers a list of a group it does not know with
    403 (authorization runs before routing). Where Argo is absent nothing is listed; where
    it is installed but not granted, one 403, logged, and Workflows are skipped."""
    from agent.sim.kube_api import Grant

    grants = [Grant("batch", "jobs", frozenset({"list"})),
              Grant("batch", "cronjobs", frozenset({"list"}))]
    for crds in ((), ("argoproj.io",)):
        kube = make_kube(crds=crds, namespaces=("ml",), grants=grants)
        kube.create(job("j", result="succeeded", labels={"steward.io/pipeline": "p"}))
        api = make_kube.api_client(kube)
        loops = CollectionLoops([pipelines_collector(client.BatchV1Api(api),
                                                     client.CustomObjectsApi(api), 30)])
        samples = collect(loops)
        collect(loops)
        assert value(samples, "steward_collector_up", collector="pipelines") == 1, crds
        assert value(samples, "steward_pipeline_runs_total", namespace="ml", pipeline="p",
                     kind="Job", result="succeeded") == 1
        refused = [r.path for r in kube.request_log() if r.status == 403]
        assert refused == ([] if not crds else ["/apis/argoproj.io/v1alpha1/workflows"])


def test_argo_workflows_are_listed_in_pages(kube: KubeApiServer,
                                            api_client: client.ApiClient) -> None:
    for i in range(5):
        kube.create(workflow(f"wf-{i}", template="paged", phase="Succeeded"))
    loops = CollectionLoops([pipelines_collector(client.BatchV1Api(api_client),
                                                 client.CustomObjectsApi(api_client), 30)])
    with pytest.MonkeyPatch.context() as patch:
        import agent.controller.pipelines as pipelines

        real_paged = pipelines.paged
        patch.setattr(pipelines, "paged", lambda call, **kw: real_paged(call, page_size=2, **kw))
        samples = collect(loops)
    assert value(samples, "steward_pipeline_runs_total", namespace="ml", pipeline="paged",
                 kind="Workflow", result="succeeded") == 5
    lists = [r for r in kube.request_log(method="GET", path_regex=r"/workflows$")]
    assert [r.query.get("limit") for r in lists] == ["2", "2", "2"]
    assert [bool(r.query.get("continue")) for r in lists] == [False, True, True]


def test_api_error_fails_the_collector(kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.inject_fault(path_regex="/jobs", status=500, times=1)
    loops = CollectionLoops([pipelines_collector(client.BatchV1Api(api_client),
                                                 client.CustomObjectsApi(api_client), 30)])
    samples = collect(loops)
    assert value(samples, "steward_collector_up", collector="pipelines") == 0
    assert value(samples, "steward_collector_errors_total", collector="pipelines",
                 error="api_500") == 1


def pod(name: str, *, gpu: bool, node: str | None = None,
        unschedulable_since: float | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if unschedulable_since is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable",
                                 "lastTransitionTime": iso(unschedulable_since)}]
    obj = objects.pod(name, "ml", node=node, status=status,
                      containers=[objects.container("i", name="m", gpus=1 if gpu else 0)])
    obj["metadata"]["creationTimestamp"] = iso(-50)
    return obj


def test_pending_gpu_pods(kube: KubeApiServer, api_client: client.ApiClient) -> None:
    kube.create(pod("waiting-for-gpu", gpu=True, unschedulable_since=-45))
    kube.create(pod("just-created", gpu=True))
    kube.create(pod("cpu-only", gpu=False, unschedulable_since=-45))
    kube.create(pod("scheduled-pulling-image", gpu=True, node="n1"))
    loops = CollectionLoops([pending_pods_collector(client.CoreV1Api(api_client), 30)])
    samples = collect(loops)
    name = "steward_pod_pending_since_timestamp_seconds"
    pending = {dict(labels)["pod"]: v for (n, labels), v in samples.items() if n == name}
    assert pending == {"waiting-for-gpu": (NOW - timedelta(minutes=45)).timestamp(),
                       "just-created": (NOW - timedelta(minutes=50)).timestamp()}
    query = kube.request_log(path_regex="^/api/v1/pods$")[0].query
    assert query["fieldSelector"] == "status.phase=Pending,spec.nodeName="
