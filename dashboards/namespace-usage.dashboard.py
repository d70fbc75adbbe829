"""Namespace / team GPU usage (uid steward-namespace-usage, variable namespace).

Who holds GPUs, how much of them they use, and who holds them idle: the view a team lead
and the GpuIdleAllocated alert link to.
"""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    IDLE_UTILIZATION_FLOOR,
    ORANGE,
    RED,
    Column,
    Query,
    Section,
    gpu_idle,
    gpu_share,
    gpu_utilization,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

NS = 'namespace=~"$namespace"'
SHARE = gpu_share(NS)
ALLOCATED = f"sum by (namespace) ({SHARE})"
USED = f"sum by (namespace) ({SHARE} * on (hostname, UUID) group_left () {gpu_utilization()})"
IDLE = f"sum by (namespace) ({SHARE} * on (hostname, UUID) group_left () {gpu_idle()})"
SHARING_NOTE = ("A GPU shared by several pods (time-slicing) counts as an equal fraction to "
                "each, so namespaces add up to the fleet.")
IDLE_NOTE = (f"Idle: SM utilization, averaged over the rate interval, under "
             f"{IDLE_UTILIZATION_FLOOR:.0%}.")

# Per pod and GPU, the GPU's utilization while the pod held it, averaged over the dashboard
# range: a subquery, so that time before the pod got the GPU does not count.
POD_RANGE_UTILIZATION = (
    "avg by (namespace, pod) (avg_over_time(("
    f"max by (namespace, pod, hostname, UUID) (steward_gpu_allocation{{{NS}}})"
    " * on (hostname, UUID) group_left () "
    "max by (hostname, UUID) (steward_gpu_utilization_ratio))[$__range:$__interval]))"
)
LEAST_USED_PODS = f"bottomk(20, {POD_RANGE_UTILIZATION})"

totals = Section("Now", [
    stat(title="GPUs allocated", unit="short", width=6, decimals=1,
         description="GPUs allocated to containers in the selected namespaces. " + SHARING_NOTE,
         queries=[Query(f"sum({SHARE})")]),
    stat(title="GPUs used (utilization-weighted)", unit="short", width=6, decimals=1,
         description="Allocated GPUs weighted by their SM utilization: 4 GPUs at 50 % count "
                     "as 2. The GPUs' worth of work actually being done.",
         queries=[Query(f"sum({USED})")]),
    stat(title="Efficiency", unit="percentunit", width=6, decimals=1,
         thresholds=((RED, None), (ORANGE, 0.3), (GREEN, 0.6)),
         description="Utilization-weighted GPUs over allocated GPUs for the selected "
                     "namespaces.",
         queries=[Query(f"sum({USED}) / sum({ALLOCATED})")]),
    stat(title="Allocated GPUs idle", unit="short", width=6, decimals=1,
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["GpuIdleAllocated"],
         description="Allocated GPUs doing nothing now. " + IDLE_NOTE
                     + " GpuIdleAllocated fires when it lasts hours.",
         queries=[Query(f"sum({IDLE})")]),
])

over_time = Section("By namespace", [
    timeseries(title="Allocated GPUs by namespace", unit="short", stacked=True,
               description="GPUs allocated to containers, per namespace. " + SHARING_NOTE,
               queries=[Query(ALLOCATED, "{{namespace}}")]),
    timeseries(title="Utilization-weighted GPUs by namespace", unit="short", stacked=True,
               description="Allocated GPUs weighted by SM utilization, per namespace: the "
                           "gap to the allocated panel is paid-for capacity nobody uses.",
               queries=[Query(USED, "{{namespace}}")]),
    timeseries(title="Idle allocated GPUs by namespace", unit="short", stacked=True,
               runbooks=["GpuIdleAllocated"],
               description="Allocated GPUs that are idle, per namespace. " + IDLE_NOTE,
               queries=[Query(IDLE, "{{namespace}}")]),
    timeseries(title="Efficiency by namespace", unit="percentunit", max_value=1,
               description="Utilization-weighted GPUs over allocated GPUs, per namespace.",
               queries=[Query(f"{USED} / {ALLOCATED}", "{{namespace}}")]),
])

pods = Section("Pods", [
    table(title="Least used GPU pods", width=12, height=10,
          sort_by="Mean utilization (range)", sort_desc=False,
          runbooks=["GpuIdleAllocated"],
          description="The 20 GPU pods with the lowest mean SM utilization over the selected "
                      "time range, counted only while they held the GPU, and how many of "
                      "their GPUs are idle now. " + IDLE_NOTE,
          labels=["namespace", "pod"],
          columns=[
              Column("Mean utilization (range)", LEAST_USED_PODS, "percentunit"),
              Column("GPUs held now",
                     f"sum by (namespace, pod) ({SHARE}) "
                     f"and on (namespace, pod) ({LEAST_USED_PODS})", "short"),
              Column("Idle GPUs now",
                     f"sum by (namespace, pod) ({SHARE} * on (hostname, UUID) group_left () "
                     f"{gpu_idle()}) and on (namespace, pod) ({LEAST_USED_PODS})", "short"),
          ]),
    timeseries(title="GPU memory per pod", unit="bytes", width=12, height=10,
               description="GPU memory used by each pod's processes (top 20 per point).",
               queries=[Query(f"topk(20, sum by (namespace, pod) "
                              f"(steward_gpu_pod_memory_used_bytes{{{NS}}}))",
                              "{{namespace}}/{{pod}}")]),
])

dashboard = steward_dashboard(
    uid="steward-namespace-usage",
    title="Steward / Namespace GPU usage",
    description="GPU allocation, utilization-weighted use and idle allocated GPUs per "
                "namespace (team), and the pods holding GPUs they barely use.",
    tags=["gpu", "usage"],
    time_from="now-24h",
    variables=[query_variable("namespace", label="Namespace", metric="steward_gpu_allocation",
                              multi=True, include_all=True)],
    sections=[totals, over_time, pods],
)
