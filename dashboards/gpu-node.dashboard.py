"""GPU node detail (uid steward-gpu-node, variables hostname and gpu): one node's GPUs.

Where the GPU alerts link to: per-GPU utilization, memory, temperature, power, clocks and
throttle reasons, XID / ECC / row-remap errors, and which pod holds which GPU.
"""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    OK_BELOW_ONE,
    ORANGE,
    RED,
    Column,
    Query,
    Section,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

N = 'hostname=~"$hostname", gpu=~"$gpu"'
# Whole GPUs only: MIG instances repeat the metric with GPU_I_ID set.
WHOLE = f'{N}, GPU_I_ID=""'
LEGEND = "GPU {{gpu}}"
TEMPERATURE_THRESHOLDS = ((GREEN, None), (ORANGE, 80.0), (RED, 85.0))


def per_gpu(metric: str, *, matchers: str = WHOLE) -> str:
    return f"max by (gpu) ({metric}{{{matchers}}})"


overview = Section("GPUs", [
    stat(title="GPUs", unit="short", width=4,
         description="GPUs on this node (selected by the gpu variable).",
         queries=[Query(f"count(steward_gpu_info{{{N}}})")]),
    stat(title="GPUs answering", unit="short", width=4,
         description="GPUs that answered NVML in the agent's last collection.",
         queries=[Query(f"sum(steward_gpu_up{{{WHOLE}}})")]),
    stat(title="GPUs lost", unit="short", width=4, thresholds=OK_BELOW_ONE,
         runbooks=["GpuLost"],
         description="GPUs NVML reports as lost (fell off the bus) or that vanished since the "
                     "agent first saw them. Pages through GpuLost; the node needs a drain and "
                     "a reboot.",
         queries=[Query(f"sum(steward_gpu_lost{{{WHOLE}}}) or vector(0)")]),
    table(title="GPU inventory", width=12, height=4, show_values=False,
          description="Index, UUID, model, driver and MIG mode of each GPU on the node.",
          labels=["gpu", "UUID", "modelName", "pci_bus_id", "driver_version", "mig_mode"],
          columns=[Column("GPUs", f"steward_gpu_info{{{N}}}", "short")]),
])

utilization = Section("Utilization and memory", [
    timeseries(title="SM utilization", unit="percentunit", max_value=1,
               description="Share of time at least one kernel ran on the SMs, per GPU, over "
                           "NVML's sample window.",
               queries=[Query(per_gpu("steward_gpu_utilization_ratio"), LEGEND)]),
    timeseries(title="Memory controller utilization", unit="percentunit", max_value=1,
               description="Share of time the framebuffer memory was being read or written, "
                           "per GPU. High copy utilization with low SM utilization points at "
                           "a data-bound job.",
               queries=[Query(per_gpu("steward_gpu_memory_copy_utilization_ratio"), LEGEND)]),
    timeseries(title="GPU memory used share", unit="percentunit", max_value=1,
               runbooks=["GpuMemoryNearlyFull"], show_thresholds=True,
               thresholds=((GREEN, None), (ORANGE, 0.95)),
               description="Framebuffer used over total, per GPU. Caching allocators (PyTorch, "
                           "TensorFlow, JAX) keep freed memory reserved, so near 100 % is "
                           "common and only a problem when jobs fail with out-of-memory.",
               queries=[Query(f"{per_gpu('steward_gpu_memory_used_bytes')} "
                              f"/ {per_gpu('steward_gpu_memory_total_bytes')}", LEGEND)]),
    timeseries(title="GPU memory used", unit="bytes", runbooks=["GpuMemoryNearlyFull"],
               description="Framebuffer used per GPU, in bytes, and the largest framebuffer "
                           "total on the node for scale.",
               queries=[Query(per_gpu("steward_gpu_memory_used_bytes"), LEGEND),
                        Query(f"max(steward_gpu_memory_total_bytes{{{WHOLE}}})", "total")]),
])

thermal = Section("Temperature, power and clocks", [
    timeseries(title="Temperature", unit="celsius", runbooks=["GpuTemperatureHigh"],
               show_thresholds=True, thresholds=TEMPERATURE_THRESHOLDS,
               description="GPU core temperature. GpuTemperatureHigh fires when a GPU stays "
                           "over its threshold (85 C by default); clocks drop soon after.",
               queries=[Query(per_gpu("steward_gpu_temperature_celsius"), LEGEND)]),
    timeseries(title="Power draw vs limit", unit="watt",
               description="Power draw per GPU and its enforced power limit. Draw pinned at "
                           "the limit with the power_cap reason active means the GPU is "
                           "power-bound.",
               queries=[Query(per_gpu("steward_gpu_power_watts"), "GPU {{gpu}} draw"),
                        Query(per_gpu("steward_gpu_power_limit_watts"), "GPU {{gpu}} limit")]),
    timeseries(title="SM clock", unit="hertz",
               description="Current SM clock per GPU. Drops under load line up with the clock "
                           "event reasons beside it.",
               queries=[Query(per_gpu("steward_gpu_sm_clock_hertz"), LEGEND)]),
    timeseries(title="Clock event reasons", unit="short", stacked=True,
               runbooks=["GpuThermalThrottling"],
               description="Number of the selected GPUs with each NVML clock event reason "
                           "active. gpu_idle is normal on idle GPUs; sw_thermal / hw_thermal "
                           "sustained raise GpuThermalThrottling; hw_slowdown and "
                           "hw_power_brake point at power delivery or cooling faults.",
               queries=[Query(f"sum by (reason) (steward_gpu_clock_event_active{{{WHOLE}}})",
                              "{{reason}}")]),
])

errors = Section("Errors", [
    timeseries(title="XID events", unit="short", bars=True,
               runbooks=["GpuXidCritical", "GpuXidErrors"],
               description="Driver XID errors per GPU and XID, per rate interval. 48, 63/64, "
                           "74, 79, 92, 94, 95 and friends need a reset, reboot or drain "
                           "(GpuXidCritical names the action); 13, 31, 43 are usually the "
                           "application's own faults (GpuXidErrors when they storm). The first "
                           "event of a new XID shows only in 'XIDs seen'.",
               queries=[Query(f"sum by (gpu, xid) (increase(steward_gpu_xid_errors_total"
                              f"{{{N}}}[$__rate_interval]))", "GPU {{gpu}} XID {{xid}}")]),
    table(title="XIDs seen", width=12, sort_by="Last seen",
          runbooks=["GpuXidCritical", "GpuXidErrors"],
          description="Every XID each GPU reported since its agent started: how many and "
                      "when the last one happened.",
          labels=["gpu", "xid"],
          columns=[
              Column("Last seen", f"max by (gpu, xid) "
                                  f"(steward_gpu_xid_last_timestamp_seconds{{{N}}}) * 1000",
                     "dateTimeFromNow"),
              Column("Events", f"sum by (gpu, xid) (steward_gpu_xid_errors_total{{{N}}})",
                     "short"),
          ]),
    timeseries(title="ECC errors", unit="short", bars=True,
               runbooks=["GpuEccUncorrectable"],
               description="Aggregate ECC errors per GPU and type, per rate interval. An "
                           "uncorrected error pages (GpuEccUncorrectable): the GPU's memory "
                           "returned bad data to a job.",
               queries=[Query(f"sum by (gpu, type) (increase(steward_gpu_ecc_errors_total"
                              f"{{{WHOLE}}}[$__rate_interval]))", "GPU {{gpu}} {{type}}")]),
    table(title="ECC and row remapping", width=12, sort_by="gpu", sort_desc=False,
          runbooks=["GpuEccUncorrectable", "GpuRowRemapFailure"],
          description="Per GPU: aggregate ECC counts since the agent started, and the "
                      "remapped memory rows. Pending remaps apply at the next GPU reset; a "
                      "remap failure (GpuRowRemapFailure) means the GPU should be replaced.",
          labels=["gpu"],
          columns=[
              Column("ECC corrected", 'sum by (gpu) (steward_gpu_ecc_errors_total'
                                      f'{{{WHOLE}, type="corrected"}})', "short"),
              Column("ECC uncorrected", 'sum by (gpu) (steward_gpu_ecc_errors_total'
                                        f'{{{WHOLE}, type="uncorrected"}})', "short"),
              Column("Rows remapped (correctable)",
                     f'max by (gpu) (steward_gpu_remapped_rows{{{WHOLE}, state="correctable"}})',
                     "short"),
              Column("Rows remapped (uncorrectable)",
                     'max by (gpu) (steward_gpu_remapped_rows'
                     f'{{{WHOLE}, state="uncorrectable"}})', "short"),
              Column("Remaps pending",
                     f'max by (gpu) (steward_gpu_remapped_rows{{{WHOLE}, state="pending"}})',
                     "short"),
              Column("Remap failure",
                     f'max by (gpu) (steward_gpu_remapped_rows{{{WHOLE}, state="failure"}})',
                     "short"),
          ]),
])

pods = Section("Pods on the GPUs", [
    table(title="GPU allocation", width=24, sort_by="gpu", sort_desc=False,
          description="Which container holds which GPU (kubelet PodResources API), with the "
                      "GPU's SM utilization now. A GPU listed twice is shared (time-slicing).",
          labels=["gpu", "UUID", "namespace", "pod", "container"],
          columns=[
              Column("SM utilization",
                     f"max by (gpu, UUID, namespace, pod, container) "
                     f"(steward_gpu_allocation{{{N}}} * on (hostname, UUID) group_left () "
                     f"max by (hostname, UUID) "
                     f'(steward_gpu_utilization_ratio{{hostname=~"$hostname"}}))',
                     "percentunit"),
              Column("Allocated", f"max by (gpu, UUID, namespace, pod, container) "
                                  f"(steward_gpu_allocation{{{N}}})", "short"),
          ]),
    timeseries(title="GPU memory per pod", unit="bytes", stacked=True,
               description="GPU memory used by each pod's processes on the selected GPUs; on "
                           "a shared GPU this is how the framebuffer is split.",
               queries=[Query(f"sum by (namespace, pod) "
                              f"(steward_gpu_pod_memory_used_bytes{{{N}}})",
                              "{{namespace}}/{{pod}}")]),
    timeseries(title="MIG instances: memory used", unit="bytes",
               runbooks=["GpuMemoryNearlyFull"],
               description="Memory used per MIG GPU instance (GPU_I_ID, GPU_I_PROFILE). Empty "
                           "when no GPU on the node runs in MIG mode.",
               queries=[Query(f"max by (gpu, GPU_I_ID, GPU_I_PROFILE) "
                              f'(steward_gpu_memory_used_bytes{{{N}, GPU_I_ID!=""}})',
                              "GPU {{gpu}} {{GPU_I_PROFILE}} #{{GPU_I_ID}}")]),
])

dashboard = steward_dashboard(
    uid="steward-gpu-node",
    title="Steward / GPU node",
    description="One GPU node in detail: every GPU's utilization, memory, thermals, power, "
                "clocks, errors, and the pods that hold them. GPU alerts link here.",
    tags=["gpu"],
    variables=[
        query_variable("hostname", label="Node", metric="steward_gpu_info"),
        query_variable("gpu", label="GPU", metric='steward_gpu_info{hostname=~"$hostname"}',
                       multi=True, include_all=True),
    ],
    sections=[overview, utilization, thermal, errors, pods],
)
