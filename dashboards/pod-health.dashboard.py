"""Pod health (uid steward-pod-health, variable namespace): phases, restarts, waiting
reasons, OOM kills and GPU pods stuck pending; where the pod alerts link to."""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    OK_BELOW_ONE,
    ORANGE,
    Column,
    Query,
    Section,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

NS = 'namespace=~"$namespace"'
OOM = f'steward_container_last_terminated_timestamp_seconds{{{NS}, reason="OOMKilled"}}'
PENDING = f"steward_pod_pending_since_timestamp_seconds{{{NS}}}"
WARN_FROM_ONE = ((GREEN, None), (ORANGE, 1.0))
NODE_SCOPE = ("Pods come from the node agents, which watch the pods scheduled on their own "
              "(GPU) node.")

summary = Section("Now", [
    stat(title="Running pods", unit="short",
         description="Pods in phase Running. " + NODE_SCOPE,
         queries=[Query(f'sum(steward_pod_phase{{{NS}, phase="Running"}}) or vector(0)')]),
    stat(title="Failed pods", unit="short", thresholds=WARN_FROM_ONE,
         description="Pods in phase Failed that still exist. " + NODE_SCOPE,
         queries=[Query(f'sum(steward_pod_phase{{{NS}, phase="Failed"}}) or vector(0)')]),
    stat(title="Terminating pods", unit="short", thresholds=WARN_FROM_ONE,
         description="Pods being deleted (a deletionTimestamp is set) that still exist: they "
                     "keep their phase, and their GPUs, until their containers stop. "
                     + NODE_SCOPE,
         queries=[Query(f"count(steward_pod_deletion_timestamp_seconds{{{NS}}}) "
                        f"or vector(0)")]),
    stat(title="Containers crash-looping", unit="short", thresholds=OK_BELOW_ONE,
         runbooks=["PodCrashLooping"],
         description="Containers waiting in CrashLoopBackOff now (PodCrashLooping).",
         queries=[Query(f'count(steward_container_waiting{{{NS}, reason="CrashLoopBackOff"}}'
                        f" == 1) or vector(0)")]),
    stat(title="Containers not pulling their image", unit="short", thresholds=WARN_FROM_ONE,
         runbooks=["PodCrashLooping"],
         description="Containers waiting in ImagePullBackOff or ErrImagePull now: a wrong "
                     "image name or tag, or missing registry credentials.",
         queries=[Query(f"count(steward_container_waiting{{{NS}, "
                        f'reason=~"ImagePullBackOff|ErrImagePull"}} == 1) or vector(0)')]),
    stat(title="Containers OOM-killed in range", unit="short", thresholds=WARN_FROM_ONE,
         runbooks=["PodOomKilled"],
         description="Containers whose last termination was an OOM kill within the selected "
                     "time range (PodOomKilled).",
         queries=[Query(f"count(time() - {OOM} < $__range_s) or vector(0)")]),
    stat(title="GPU pods pending", unit="short", thresholds=WARN_FROM_ONE,
         runbooks=["GpuPodPendingTooLong"],
         description="Pods requesting GPUs that the scheduler has not placed yet (controller, "
                     "whole cluster). GpuPodPendingTooLong fires after 30 min by default.",
         queries=[Query(f"count({PENDING}) or vector(0)")]),
])

phases = Section("Phases and restarts", [
    timeseries(title="Pods by phase", unit="short", stacked=True,
               description="Pods per phase. " + NODE_SCOPE,
               queries=[Query(f"sum by (phase) (steward_pod_phase{{{NS}}})", "{{phase}}")]),
    timeseries(title="Container restarts by namespace", unit="short", bars=True,
               runbooks=["PodCrashLooping"],
               description="Container restarts per namespace, per rate interval (increase of "
                           "the restartCount of each container).",
               queries=[Query(f"sum by (namespace) (increase(steward_container_restarts"
                              f"{{{NS}}}[$__rate_interval]))", "{{namespace}}")]),
    table(title="Most restarted containers", width=12, sort_by="Restarts in range",
          runbooks=["PodCrashLooping"],
          description="The 20 containers that restarted most within the selected time range, "
                      "and their restartCount now.",
          labels=["namespace", "pod", "container"],
          columns=[
              Column("Restarts in range",
                     f"topk(20, sum by (namespace, pod, container) (increase("
                     f"steward_container_restarts{{{NS}}}[$__range])))", "short"),
              Column("Restart count",
                     f"max by (namespace, pod, container) (steward_container_restarts{{{NS}}})"
                     f" and on (namespace, pod, container) topk(20, sum by "
                     f"(namespace, pod, container) (increase(steward_container_restarts"
                     f"{{{NS}}}[$__range])))", "short"),
          ]),
    timeseries(title="Waiting containers by reason", unit="short", width=12, stacked=True,
               runbooks=["PodCrashLooping"],
               description="Containers in the waiting state, by reason (CrashLoopBackOff, "
                           "ImagePullBackOff, ContainerCreating, ...).",
               queries=[Query(f"sum by (reason) (steward_container_waiting{{{NS}}})",
                              "{{reason}}")]),
])

problems = Section("Problems", [
    table(title="Waiting containers", width=12, show_values=False,
          runbooks=["PodCrashLooping"],
          description="Every container waiting now, with the reason and the node.",
          labels=["namespace", "pod", "container", "reason", "hostname"],
          columns=[Column("Waiting", f"steward_container_waiting{{{NS}}} == 1", "short")]),
    table(title="Last OOM kills", width=12, sort_by="Last OOM kill",
          runbooks=["PodOomKilled"],
          description="Containers whose last termination was OOMKilled, most recent first: "
                      "the memory limit (or the node's memory) is too small for the job.",
          labels=["namespace", "pod", "container"],
          columns=[Column("Last OOM kill",
                          f"max by (namespace, pod, container) ({OOM}) * 1000",
                          "dateTimeFromNow")]),
    table(title="Pending GPU pods", width=12, sort_by="Pending for",
          runbooks=["GpuPodPendingTooLong"],
          description="GPU pods not yet scheduled and for how long: not enough free GPUs of "
                      "the requested kind, or a selector / taint nothing matches.",
          labels=["namespace", "pod"],
          columns=[Column("Pending for",
                          f"time() - max by (namespace, pod) ({PENDING})", "s")]),
    timeseries(title="Pending GPU pods by namespace", unit="short", stacked=True,
               runbooks=["GpuPodPendingTooLong"],
               description="GPU pods waiting for the scheduler, per namespace.",
               queries=[Query(f"count by (namespace) ({PENDING})", "{{namespace}}")]),
])

dashboard = steward_dashboard(
    uid="steward-pod-health",
    title="Steward / Pod health",
    description="Pod phases, container restarts and waiting reasons, OOM kills and GPU pods "
                "stuck pending, per namespace.",
    tags=["pods"],
    variables=[query_variable("namespace", label="Namespace", metric="steward_pod_phase",
                              multi=True, include_all=True)],
    sections=[summary, phases, problems],
)
