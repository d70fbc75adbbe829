"""Pipeline health, cluster-wide, on the leader only: CronJobs, standalone Jobs, Argo Workflows.

A pipeline is a CronJob (its Jobs are its runs), a Job without a CronJob owner (grouped by
its ``steward.io/pipeline`` label, else its name), or an Argo ``Workflow`` (grouped by its
``workflowTemplateRef``, its ``steward.io/pipeline`` label, its CronWorkflow, else its
generateName). Argo's CRD may be absent, or not granted (``pipelines.argo=false``): then
Workflows are skipped, told apart by discovery (an unauthorised list of an unknown group is
403, not 404), and logged once.

Run counts are cumulative over what this process has seen complete; the last success and
last duration survive a Job being garbage-collected because they are remembered here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.api import paged, served_resources, timestamp
from agent.clients.kubernetes.calls import CustomObjectListing, JobListing
from agent.exporter.collection import Collector, CollectorFailed, CollectResult

log = logging.getLogger(__name__)
PIPELINE_LABEL = "steward.io/pipeline"
ARGO_GROUP, ARGO_VERSION, ARGO_PLURAL = "argoproj.io", "v1alpha1", "workflows"


@dataclass(frozen=True)
class Run:
    """One run of a pipeline, whatever kind produced it."""

    uid: str
    namespace: str
    pipeline: str
    kind: str  # CronJob | Job | Workflow
    result: str | None  # succeeded | failed | None while running
    started: float | None
    finished: float | None


def _condition(job: Any, kind: str) -> Any:
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def run_of_job(job: Any) -> Run:
    meta = job.metadata
    owner = next((o for o in meta.owner_references or [] if o.kind == "CronJob"), None)
    if owner is not None:
        pipeline, kind = owner.name, "CronJob"
    else:
        pipeline, kind = (meta.labels or {}).get(PIPELINE_LABEL, meta.name), "Job"
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    result = "succeeded" if complete else "failed" if failed else None
    finished = None
    if complete is not None:
        finished = timestamp(job.status.completion_time) or timestamp(complete.last_transition_time)
    elif failed is not None:
        finished = timestamp(failed.last_transition_time)
    return Run(uid=meta.uid, namespace=meta.namespace, pipeline=pipeline, kind=kind,
               result=result, started=timestamp(job.status.start_time) if job.status else None,
               finished=finished)


def run_of_workflow(workflow: dict[str, Any]) -> Run:
    meta = workflow.get("metadata", {})
    spec, status = workflow.get("spec", {}), workflow.get("status", {}) or {}
    labels = meta.get("labels") or {}
    pipeline = ((spec.get("workflowTemplateRef") or {}).get("name")
                or labels.get(PIPELINE_LABEL)
                or labels.get("workflows.argoproj.io/cron-workflow")
                or (meta.get("generateName") or "").rstrip("-")
                or meta.get("name", "unknown"))
    phase = status.get("phase")
    result = {"Succeeded": "succeeded", "Failed": "failed", "Error": "failed"}.get(phase or "")
    return Run(uid=meta.get("uid", ""), namespace=meta.get("namespace", ""), pipeline=pipeline,
               kind="Workflow", result=result, started=timestamp(status.get("startedAt")),
               finished=timestamp(status.get("finishedAt")) if result else None)


class PipelineTracker:
    """Remembers runs across collections; turns what the API shows into pipeline metrics."""

    def __init__(self) -> None:
        self._counted: set[str] = set()
        self._runs: dict[tuple[str, str, str, str], int] = {}
        self._last_success: dict[tuple[str, str, str], float] = {}
        self._last_finished: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._running_since: dict[tuple[str, str, str], float] = {}

    def observe(self, runs: Iterable[Run], cron_last_success: dict[tuple[str, str], float]
                ) -> None:
        running: dict[tuple[str, str, str], float] = {}
        for run in runs:
            key = (run.namespace, run.pipeline, run.kind)
            if run.result is None:
                if run.started is not None:
                    running[key] = min(running.get(key, run.started), run.started)
                continue
            if run.uid not in self._counted:
                self._counted.add(run.uid)
                count_key = (*key, run.result)
                self._runs[count_key] = self._runs.get(count_key, 0) + 1
            if run.finished is None:
                continue
            if run.result == "succeeded":
                self._last_success[key] = max(self._last_success.get(key, 0.0), run.finished)
            previous = self._last_finished.get(key)
            if run.started is not None and (previous is None or run.finished > previous[0]):
                self._last_finished[key] = (run.finished, run.finished - run.started)
        for (namespace, cronjob), when in cron_last_success.items():
            key = (namespace, cronjob, "CronJob")
            self._last_success[key] = max(self._last_success.get(key, 0.0), when)
        self._running_since = running

    def families(self) -> list[Metric]:
        runs = Metric("steward_pipeline_runs", "Pipeline runs seen completing, by result.",
                      "counter")
        success = Metric("steward_pipeline_last_success_timestamp_seconds",
                         "When the pipeline last succeeded.", "gauge")
        duration = Metric("steward_pipeline_last_duration_seconds",
                          "How long the pipeline's most recent finished run took.", "gauge")
        running = Metric("steward_pipeline_running_since_timestamp_seconds",
                         "Start of the run in progress.", "gauge")

        def labels(key: tuple[str, str, str]) -> dict[str, str]:
            return {"namespace": key[0], "pipeline": key[1], "kind": key[2]}

        for (namespace, pipeline, kind, result), count in sorted(self._runs.items()):
            runs.add_sample("steward_pipeline_runs_total",
                            {**labels((namespace, pipeline, kind)), "result": result},
                            float(count))
        for key, when in sorted(self._last_success.items()):
            success.add_sample(success.name, labels(key), when)
        for key, (_, seconds) in sorted(self._last_finished.items()):
            duration.add_sample(duration.name, labels(key), seconds)
        for key, started in sorted(self._running_since.items()):
            running.add_sample(running.name, labels(key), started)
        return [m for m in (runs, success, duration, running) if m.samples]


class _Argo:
    """Whether to list Argo Workflows: only where discovery shows them, and never again
    after a 403 (the chart grants them only with ``pipelines.argo``; a restart looks again).
    Discovery is asked again every ``rediscover_seconds`` while Argo is absent, so that
    installing it later needs no restart."""

    def __init__(self, custom_api: CustomObjectListing, *, rediscover_seconds: float,
                 monotonic: Callable[[], float]) -> None:
        self._custom = custom_api
        self._rediscover = rediscover_seconds
        self._monotonic = monotonic
        self._checked_at: float | None = None
        self._served = False
        self._forbidden = False

    def runs(self) -> list[Run]:
        from kubernetes.client.exceptions import ApiException

        if self._forbidden:
            return []
        now = self._monotonic()
        if self._checked_at is None or (not self._served
                                        and now - self._checked_at >= self._rediscover):
            first = self._checked_at is None
            self._served = ARGO_PLURAL in served_resources(
                self._custom.api_client, ARGO_GROUP, ARGO_VERSION)
            self._checked_at = now
            if first and not self._served:
                log.info("Argo Workflows not installed; pipelines are CronJobs and Jobs")
        if not self._served:
            return []
        try:
            return [run_of_workflow(w) for w in paged(
                self._custom.list_cluster_custom_object, group=ARGO_GROUP,
                version=ARGO_VERSION, plural=ARGO_PLURAL)]
        except ApiException as exc:
            if exc.status == 403:
                # Installed but not granted: the operator's choice (pipelines.argo=false).
                self._forbidden = True
                log.warning("Argo Workflows are installed but the controller may not list "
                            "them (HTTP 403); pipelines are CronJobs and Jobs: set "
                            "pipelines.argo=true in the chart to include Workflows")
                return []
            if exc.status == 404:  # the CRD went away between discovery and the list
                self._served = False
                return []
            raise


def pipelines_collector(batch_api: JobListing, custom_api: CustomObjectListing,
                        interval: float, *,
                        rediscover_seconds: float = 600.0,
                        monotonic: Callable[[], float] = time.monotonic) -> Collector:
    tracker = PipelineTracker()
    argo = _Argo(custom_api, rediscover_seconds=rediscover_seconds, monotonic=monotonic)

    def collect() -> CollectResult:
        from kubernetes.client.exceptions import ApiException

        try:
            runs = [run_of_job(job) for job in paged(batch_api.list_job_for_all_namespaces)]
            cron_success = {}
            for cron in paged(batch_api.list_cron_job_for_all_namespaces):
                when = timestamp(cron.status.last_successful_time) if cron.status else None
                if when is not None:
                    cron_success[(cron.metadata.namespace, cron.metadata.name)] = when
            runs.extend(argo.runs())
        except ApiException as exc:
            raise CollectorFailed(f"api_{exc.status}", f"listing pipelines: {exc.reason}") \
                from exc
        tracker.observe(runs, cron_success)
        return CollectResult(tracker.families())

    return Collector("pipelines", collect, interval)
