"""The Kubernetes objects of the simulated cluster: pipelines in every state, a pending GPU
pod. The demo, the dashboards check and the alert tests load them into the API stand-in,
so the controller's collectors see the same story the node agents tell.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.clients.kubernetes import objects

JsonObj = dict[str, Any]
NAMESPACES = ("ml-research", "data-science", "inference", "batch")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod_template() -> JsonObj:
    return {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "registry.local/ml/etl:1.4.2"}]}}


def job(name: str, *, namespace: str = "ml-research", cron: str | None = None,
        result: str | None, started: datetime, finished: datetime | None = None,
        pipeline: str | None = None) -> JsonObj:
    """A batch/v1 Job in state ``result`` (succeeded, failed, or None for running)."""
    status: JsonObj = {"startTime": _iso(started)}
    if result == "succeeded" and finished is not None:
        status.update(completionTime=_iso(finished), succeeded=1, conditions=[
            {"type": "Complete", "status": "True", "lastTransitionTime": _iso(finished)}])
    elif result == "failed" and finished is not None:
        status.update(failed=1, conditions=[
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "lastTransitionTime": _iso(finished)}])
    else:
        status["active"] = 1
    meta: JsonObj = {"name": name, "namespace": namespace, "labels": {}}
    if pipeline:
        meta["labels"]["steward.io/pipeline"] = pipeline
    if cron:
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cron,
                                    "uid": f"sim-cronjob-{cron}", "controller": True}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"template": _pod_template()}, "status": status}


def cronjob(name: str, *, schedule: str, last_success: datetime | None,
            namespace: str = "ml-research") -> JsonObj:
    status = {"lastSuccessfulTime": _iso(last_success)} if last_success else {}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": _pod_template()}}},
            "status": status}


def workflow(name: str, *, template: str, phase: str, started: datetime,
             finished: datetime | None = None, namespace: str = "ml-research") -> JsonObj:
    status: JsonObj = {"phase": phase, "startedAt": _iso(started)}
    if finished is not None:
        status["finishedAt"] = _iso(finished)
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"workflowTemplateRef": {"name": template}}, "status": status}


def pending_gpu_pod(name: str, *, since: datetime, namespace: str = "ml-research") -> JsonObj:
    return objects.pod(
        name, namespace, created=since - timedelta(seconds=5),
        containers=[objects.container("registry.local/ml/train:2.0", name="trainer", gpus=8)],
        status={"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            "lastTransitionTime": _iso(since)}]})


def cluster_objects(now: datetime | None = None) -> list[JsonObj]:
    """Everything the controller should find: one pipeline per health state."""
    now = now or datetime.now(UTC)

    def hours(n: float) -> datetime:
        return now - timedelta(hours=n)

    return [
        *(objects.namespace(ns, labels={"team": ns.split("-")[0]}) for ns in NAMESPACES),
        # healthy: ran an hour ago
        cronjob("feature-refresh", schedule="0 * * * *", last_success=hours(1)),
        job("feature-refresh-28000", cron="feature-refresh", result="succeeded",
            started=hours(1.1), finished=hours(1)),
        # stale: last success 30 h ago (PipelineStale)
        cronjob("nightly-etl", schedule="0 2 * * *", last_success=hours(30)),
        job("nightly-etl-27999", cron="nightly-etl", result="succeeded", started=hours(30.5),
            finished=hours(30)),
        # running for 7 h (PipelineRunTooLong)
        job("train-sweep-7", pipeline="train-sweep", result=None, started=hours(7)),
        # Argo: a template that succeeds, and one whose run errored
        workflow("feature-build-x1", template="feature-build", phase="Succeeded",
                 started=hours(2), finished=hours(1.5)),
        workflow("eval-suite-z9", template="eval-suite", phase="Running", started=hours(0.2)),
        # a GPU pod nobody can schedule for 45 minutes (GpuPodPendingTooLong)
        pending_gpu_pod("train-gpt-xl-0", since=now - timedelta(minutes=45)),
    ]


def failing_run(now: datetime | None = None) -> JsonObj:
    """A run that fails *after* the controller started, so its counter increases."""
    now = now or datetime.now(UTC)
    return job("feature-refresh-28001", cron="feature-refresh", result="failed",
               started=now - timedelta(minutes=2), finished=now)
