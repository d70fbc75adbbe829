"""GPU fleet overview (uid steward-gpu-fleet): the first look at every GPU node.

How many GPUs there are and answer, how busy and how full they are, how many are allocated
and idle, which run hot or throttle, XID and ECC events, and one row per node.
"""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    IDLE_UTILIZATION_FLOOR,
    OK_BELOW_ONE,
    ORANGE,
    RED,
    Column,
    Query,
    Section,
    allocated_gpus,
    bargauge,
    gpu_idle,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

H = 'hostname=~"$hostname"'
# Whole GPUs only: MIG instances repeat the metric with GPU_I_ID set.
WHOLE = f'{H}, GPU_I_ID=""'

GPUS = f"count(steward_gpu_info{{{H}}})"
ALLOCATED = f"count({allocated_gpus(H)}) or vector(0)"
IDLE_ALLOCATED = f"sum({allocated_gpus(H)} * on (hostname, UUID) {gpu_idle()}) or vector(0)"
MEMORY_SHARE = (f"sum(steward_gpu_memory_used_bytes{{{WHOLE}}}) "
                f"/ sum(steward_gpu_memory_total_bytes{{{WHOLE}}})")
THROTTLE_REASONS = "sw_thermal|hw_thermal|hw_slowdown|hw_power_brake|power_cap"
IDLE_NOTE = (f"A GPU is idle when its SM utilization, averaged over the rate interval, is "
             f"under {IDLE_UTILIZATION_FLOOR:.0%}.")

overview = Section("Fleet", [
    stat(title="GPU nodes", unit="short", width=3,
         description="Nodes with at least one GPU reported by a Steward node agent.",
         queries=[Query(f"count(count by (hostname) (steward_gpu_info{{{H}}}))")]),
    stat(title="GPUs", unit="short", width=3,
         description="GPUs the node agents see (one steward_gpu_info series per GPU).",
         queries=[Query(GPUS)]),
    stat(title="GPUs answering", unit="short", width=3,
         description="GPUs that answered NVML in the agent's last collection "
                     "(steward_gpu_up). Fewer than 'GPUs' means some GPUs did not answer.",
         queries=[Query(f"sum(steward_gpu_up{{{WHOLE}}})")]),
    stat(title="GPUs lost", unit="short", width=3, thresholds=OK_BELOW_ONE,
         runbooks=["GpuLost"],
         description="GPUs NVML reports as lost (fell off the bus) or that disappeared since "
                     "the agent saw them. Any value above 0 pages (GpuLost).",
         queries=[Query(f"sum(steward_gpu_lost{{{WHOLE}}}) or vector(0)")]),
    stat(title="Fleet SM utilization", unit="percentunit", width=3, decimals=1,
         description="Mean SM busy share over all selected GPUs, now.",
         queries=[Query(f"avg(steward_gpu_utilization_ratio{{{WHOLE}}})")]),
    stat(title="GPU memory used", unit="percentunit", width=3, decimals=1,
         runbooks=["GpuMemoryNearlyFull"],
         description="Framebuffer used over framebuffer total, summed over the selected GPUs. "
                     "Caching allocators (PyTorch, TensorFlow, JAX) hold memory they are not "
                     "using, so a high share is not by itself a problem.",
         queries=[Query(MEMORY_SHARE)]),
    stat(title="GPUs allocated", unit="short", width=3,
         description="Distinct GPUs allocated to a container (kubelet PodResources API), "
                     "however many containers share one.",
         queries=[Query(ALLOCATED)]),
    stat(title="Allocated GPUs idle", unit="short", width=3,
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["GpuIdleAllocated"],
         description="Allocated GPUs that are doing nothing now. " + IDLE_NOTE
                     + " GpuIdleAllocated fires when this lasts hours.",
         queries=[Query(IDLE_ALLOCATED)]),
])

utilization = Section("Utilization and allocation", [
    timeseries(title="Fleet SM utilization and memory used", unit="percentunit",
               max_value=1, runbooks=["GpuMemoryNearlyFull"],
               description="Mean and 90th percentile SM utilization over the selected GPUs, "
                           "and the fleet's framebuffer used share. Memory held by caching "
                           "allocators counts as used.",
               queries=[
                   Query(f"avg(steward_gpu_utilization_ratio{{{WHOLE}}})", "SM mean"),
                   Query(f"quantile(0.9, steward_gpu_utilization_ratio{{{WHOLE}}})", "SM p90"),
                   Query(MEMORY_SHARE, "memory used"),
               ]),
    timeseries(title="Allocated vs idle allocated GPUs", unit="short",
               runbooks=["GpuIdleAllocated"],
               description="All GPUs, the GPUs allocated to containers, and the allocated GPUs "
                           "that are idle. " + IDLE_NOTE,
               queries=[
                   Query(GPUS, "GPUs"),
                   Query(ALLOCATED, "allocated"),
                   Query(IDLE_ALLOCATED, "allocated and idle"),
               ]),
    bargauge(title="GPUs by model", unit="short", width=8,
             description="GPU count per model (modelName as NVML reports it).",
             queries=[Query(f"count by (modelName) (steward_gpu_info{{{H}}})",
                            "{{modelName}}")]),
    timeseries(title="SM utilization by model", unit="percentunit", width=16, max_value=1,
               description="Mean SM utilization per GPU model.",
               queries=[Query(
                   f"avg by (modelName) (steward_gpu_utilization_ratio{{{WHOLE}}})",
                   "{{modelName}}")]),
])

health = Section("Health", [
    bargauge(title="Hottest GPUs", unit="celsius", width=8, max_value=100,
             thresholds=((GREEN, None), (ORANGE, 80.0), (RED, 85.0)),
             runbooks=["GpuTemperatureHigh"],
             description="The ten hottest GPUs now. GpuTemperatureHigh fires on a GPU that "
                         "stays over its threshold (85 C by default) for minutes.",
             queries=[Query(
                 f"topk(10, max by (hostname, gpu) "
                 f"(steward_gpu_temperature_celsius{{{WHOLE}}}))",
                 "{{hostname}} GPU {{gpu}}")]),
    timeseries(title="GPUs throttling, by reason", unit="short", width=12, stacked=True,
               runbooks=["GpuThermalThrottling"],
               description="GPUs whose clocks are held down, by NVML clock event reason. "
                           "Thermal reasons (sw_thermal, hw_thermal) sustained raise "
                           "GpuThermalThrottling; power_cap under heavy load is normal.",
               queries=[Query(
                   f"sum by (reason) (steward_gpu_clock_event_active"
                   f'{{{WHOLE}, reason=~"{THROTTLE_REASONS}"}})',
                   "{{reason}}")]),
    stat(title="Row remap failures", unit="short", width=4, height=8,
         thresholds=OK_BELOW_ONE, runbooks=["GpuRowRemapFailure"],
         description="GPUs whose memory row remapping failed: the GPU needs a reset and, "
                     "if it repeats, an RMA (GpuRowRemapFailure).",
         queries=[Query(
             f'count(steward_gpu_remapped_rows{{{WHOLE}, state="failure"}} > 0) '
             f"or vector(0)")]),
    timeseries(title="XID events", unit="short", bars=True,
               runbooks=["GpuXidCritical", "GpuXidErrors"],
               description="XID errors reported by the driver per node and XID, per rate "
                           "interval. XIDs such as 48, 79, 94, 95 call for a reset or a drain "
                           "(GpuXidCritical); 13, 31, 43 are usually the application's "
                           "(GpuXidErrors when they repeat). The first event of a new "
                           "XID has no earlier sample to increase from: the node "
                           "dashboard's 'XIDs seen' table lists it.",
               queries=[Query(
                   f"sum by (hostname, xid) "
                   f"(increase(steward_gpu_xid_errors_total{{{H}}}[$__rate_interval]))",
                   "{{hostname}} XID {{xid}}")]),
    timeseries(title="ECC errors", unit="short", bars=True,
               runbooks=["GpuEccUncorrectable"],
               description="Aggregate ECC errors per node and type, per rate interval. Any "
                           "uncorrected error pages (GpuEccUncorrectable); corrected errors "
                           "are worth watching only when they climb.",
               queries=[Query(
                   f"sum by (hostname, type) "
                   f"(increase(steward_gpu_ecc_errors_total{{{WHOLE}}}[$__rate_interval]))",
                   "{{hostname}} {{type}}")]),
])

per_node = Section("Nodes", [
    table(
        title="Per-node summary",
        description="One row per node: click a hostname for the node's GPU detail. "
                    "Utilization and memory are now; idle uses the rate interval. "
                    + IDLE_NOTE,
        labels=["hostname"],
        drilldowns={"hostname": "steward-gpu-node"},
        sort_by="SM utilization",
        sort_desc=False,
        runbooks=["GpuLost", "GpuMemoryNearlyFull", "GpuTemperatureHigh", "GpuIdleAllocated"],
        height=10,
        columns=[
            Column("GPUs", f"count by (hostname) (steward_gpu_info{{{H}}})", "short"),
            Column("Answering", f"sum by (hostname) (steward_gpu_up{{{WHOLE}}})", "short"),
            Column("Lost", f"sum by (hostname) (steward_gpu_lost{{{WHOLE}}})", "short"),
            Column("SM utilization",
                   f"avg by (hostname) (steward_gpu_utilization_ratio{{{WHOLE}}})",
                   "percentunit"),
            Column("Memory used",
                   f"sum by (hostname) (steward_gpu_memory_used_bytes{{{WHOLE}}}) "
                   f"/ sum by (hostname) (steward_gpu_memory_total_bytes{{{WHOLE}}})",
                   "percentunit"),
            Column("Allocated", f"count by (hostname) ({allocated_gpus(H)})", "short"),
            Column("Allocated idle",
                   f"sum by (hostname) ({allocated_gpus(H)} * on (hostname, UUID) "
                   f"{gpu_idle()})", "short"),
            Column("Hottest",
                   f"max by (hostname) (steward_gpu_temperature_celsius{{{WHOLE}}})",
                   "celsius"),
            Column("Power",
                   f"sum by (hostname) (steward_gpu_power_watts{{{WHOLE}}})", "watt"),
        ],
    ),
])

dashboard = steward_dashboard(
    uid="steward-gpu-fleet",
    title="Steward / GPU fleet",
    description="GPU fleet overview: capacity, health, utilization, allocation and idle GPUs "
                "across every node running the Steward node agent.",
    tags=["gpu"],
    variables=[query_variable("hostname", label="Node", metric="steward_gpu_info",
                              multi=True, include_all=True)],
    sections=[overview, utilization, health, per_node],
)
