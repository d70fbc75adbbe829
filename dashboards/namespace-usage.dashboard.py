"""Namespace / team GPU usage (uid steward-namespace-usage, variable namespace).

Who holds GPUs, how much of them they use, and who holds them idle: the view a team lead
and the GpuIdleAllocated alert link to. Shares are fractions of the physical GPU (a
time-sliced replica, a KAI or HAMi fraction, a MIG slice) and use is each pod's own, so a
tenant of a shared GPU is seen for what it holds and what it does with it.
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
    gpu_share,
    idle_share,
    pod_use,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

NS = 'namespace=~"$namespace"'
SHARE = gpu_share(NS)
ALLOCATED = f"sum by (namespace) ({SHARE})"
USED = f"sum by (namespace) ({pod_use(NS)})"
IDLE = f"sum by (namespace) ({idle_share(NS)})"
SHARING_NOTE = ("A GPU shared by several pods counts as each pod's share of it (a time-sliced "
                "replica 1/replicas, a KAI or HAMi fraction, a MIG slice's compute slices), "
                "so namespaces add up to the fleet.")
IDLE_NOTE = (f"Idle: a pod's own SM use, averaged over the rate interval, under "
             f"{IDLE_UTILIZATION_FLOOR:.0%} of its share.")
USE_NOTE = ("Use is each pod's own: the GPU's utilization for a pod holding it whole, its "
            "processes' per-process samples on a shared GPU (none on MIG).")

# Per pod, its own use over its share, averaged over the dashboard range; the per-pod
# series exist only while the pod holds the GPU, so time before it does not count.
_TENANT_KEY = "namespace, pod, hostname, UUID"
POD_RANGE_UTILIZATION = (
    f"avg by (namespace, pod) (max by ({_TENANT_KEY}) (avg_over_time("
    f"steward_gpu_pod_utilization_ratio{{{NS}}}[$__range])) / on ({_TENANT_KEY}) "
    f"max by ({_TENANT_KEY}) (avg_over_time(steward_gpu_pod_allocated_ratio{{{NS}}}"
    f"[$__range])))"
)
LEAST_USED_PODS = f"bottomk(20, {POD_RANGE_UTILIZATION})"

# Tenants of shared GPUs (not MIG: NVML has no per-instance use), one row per pod and GPU.
TENANT = "namespace, pod, hostname, gpu, UUID"
TENANT_SHARE = (f"max by ({TENANT}, mode) (steward_gpu_pod_allocated_ratio"
                f'{{{NS}, mode!="exclusive", GPU_I_ID=""}})')
TENANT_USE = (f"max by ({TENANT}) (avg_over_time(steward_gpu_pod_utilization_ratio{{{NS}}}"
              f"[$__rate_interval]))")
UNATTRIBUTED = ("sum by (hostname, UUID) (max by (hostname, UUID, reason) "
                "(steward_gpu_unattributed_utilization_ratio))")
SHARED_NOTE = ("Pods holding a share of a shared GPU: time-slicing or MPS replicas, KAI "
               "Scheduler and HAMi fractions. Use is each pod's own, from NVML's "
               "per-process samples; what no pod can be given (a host process, a process "
               "that exited, a pod with no share, no samples) is the GPU's unattributed use.")

totals = Section("Now", [
    stat(title="GPUs allocated", unit="short", width=6, decimals=1,
         description="GPUs allocated to containers in the selected namespaces. " + SHARING_NOTE,
         queries=[Query(f"sum({SHARE})")]),
    stat(title="GPUs used (utilization-weighted)", unit="short", width=6, decimals=1,
         description="Allocated GPUs weighted by their SM utilization: 4 GPUs at 50 % count "
                     "as 2. The GPUs' worth of work actually being done. " + USE_NOTE,
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
                           "gap to the allocated panel is paid-for capacity nobody uses. "
                           + USE_NOTE,
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
          description="The 20 GPU pods with the lowest mean use of their share over the "
                      "selected time range, counted only while they held it, and how much of "
                      "what they hold is idle now. " + IDLE_NOTE,
          labels=["namespace", "pod"],
          columns=[
              Column("Mean utilization (range)", LEAST_USED_PODS, "percentunit"),
              Column("GPUs held now",
                     f"sum by (namespace, pod) ({SHARE}) "
                     f"and on (namespace, pod) ({LEAST_USED_PODS})", "short"),
              Column("Idle GPUs now",
                     f"sum by (namespace, pod) ({idle_share(NS)}) "
                     f"and on (namespace, pod) ({LEAST_USED_PODS})", "short"),
          ]),
    timeseries(title="GPU memory per pod", unit="bytes", width=12, height=10,
               description="GPU memory used by each pod's processes (top 20 per point).",
               queries=[Query(f"topk(20, sum by (namespace, pod) "
                              f"(steward_gpu_pod_memory_used_bytes{{{NS}}}))",
                              "{{namespace}}/{{pod}}")]),
])

shared = Section("Shared GPUs", [
    table(title="Tenants of shared GPUs", width=24, height=9,
          sort_by="Use of its share", sort_desc=False, runbooks=["GpuIdleAllocated"],
          description="Every pod of the selected namespaces that holds a share of a shared "
                      "GPU: its share, how it was given (mode), its own use of the GPU, that "
                      "use as a part of its share, and the GPU's unattributed use (which no "
                      "pod can be given). " + SHARED_NOTE + " " + IDLE_NOTE,
          labels=["namespace", "pod", "hostname", "gpu", "mode"],
          columns=[
              Column("Share of the GPU", TENANT_SHARE, "percentunit"),
              Column("Own use of the GPU",
                     f"{TENANT_USE} * on ({TENANT}) group_left (mode) ({TENANT_SHARE} > bool 0)",
                     "percentunit"),
              Column("Use of its share",
                     f"{TENANT_USE} / on ({TENANT}) group_left (mode) {TENANT_SHARE}",
                     "percentunit"),
              Column("Unattributed use of the GPU",
                     f"{TENANT_SHARE} * 0 + on (hostname, UUID) group_left () {UNATTRIBUTED}",
                     "percentunit"),
          ]),
    timeseries(title="Own use of shared GPUs per pod", unit="percentunit", width=12,
               height=9, max_value=1,
               description="Each tenant's own SM use of the shared GPU it holds a share of, "
                           "0-1 of the whole GPU. " + SHARED_NOTE,
               queries=[Query(f"{TENANT_USE} and on ({TENANT}) {TENANT_SHARE}",
                              "{{namespace}}/{{pod}} ({{hostname}} GPU {{gpu}})")]),
    timeseries(title="Shares of shared GPUs per pod", unit="percentunit", width=12, height=9,
               max_value=1, stacked=True,
               description="Each tenant's share of the shared GPU it holds, stacked per pod: "
                           "what the FinOps report charges it for. " + SHARED_NOTE,
               queries=[Query(TENANT_SHARE, "{{namespace}}/{{pod}} ({{mode}})")]),
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
    sections=[totals, over_time, pods, shared],
)
