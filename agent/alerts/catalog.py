"""The alert catalog: every alert Steward ships, the single source of all rule outputs.

The Prometheus rules file, the PrometheusRule resource and the Grafana alert rules are all
rendered from ``CATALOG`` (see ``agent.alerts.render``); runbooks are checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.alerts.owners import (
    NODE_REMEDIATION_ANNOTATION,
    NODE_REMEDIATION_TEMPLATE,
    RecordingRule,
    recording_rules,
    with_gpu_owners,
    with_pod_owners,
)
from agent.alerts.xid import XID_TABLE, XidAction, XidInfo, critical_xids, xid_regex

SEVERITIES: Final = ("critical", "warning", "info")

GROUP_GPU_HARDWARE: Final = "steward-gpu-hardware"
GROUP_WORKLOADS: Final = "steward-workloads"
GROUP_PIPELINES: Final = "steward-pipelines"
GROUP_SELF: Final = "steward-self"

# Label added to StewardNotifierDeliveryFailing so that Alertmanager can route it around the
# Steward notifier: the notifier is what is broken, so it must not be the one to deliver it.
BYPASS_NOTIFIER_LABELS: Final[Mapping[str, str]] = {"routing": "bypass-notifier"}


@dataclass(frozen=True)
class Alert:
    """One alerting rule. ``description`` uses Prometheus templating ($labels, $value)."""

    name: str
    group: str
    severity: str
    expr: str
    for_duration: str
    summary: str
    description: str
    dashboard_uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # Besides summary, description, runbook_url and dashboard_uid (agent.alerts.render).
    annotations: Mapping[str, str] = field(default_factory=dict)
    # Carries the workloads on the failed GPU and their team (agent.alerts.owners): its
    # runbook has an "If you own the workload" section, and the notifier tells the team.
    owners: bool = False


# What the on-call engineer needs to find a GPU: the node, the index nvidia-smi shows, the
# UUID that survives re-enumeration, the PCI address the kernel log prints, the model.
GPU_BY: Final = "hostname, gpu, UUID, pci_bus_id, modelName"
_GPU_WHERE: Final = (
    "GPU {{ $labels.gpu }} ({{ $labels.UUID }}, {{ $labels.modelName }}) "
    "on node {{ $labels.hostname }}"
)
_GPU_WHERE_PCI: Final = (
    "GPU {{ $labels.gpu }} ({{ $labels.UUID }}, {{ $labels.modelName }}, "
    "PCI {{ $labels.pci_bus_id }}) on node {{ $labels.hostname }}"
)

_CONTROLLER_SCRAPED: Final = 'up{job="steward-controller"}'
_GPU_COPY: Final = ("gpu", "pci_bus_id", "modelName")
# The workload named in a GPU fault's description, when the GPU had a tenant.
_TENANT: Final = (
    "{{ with $labels.workload }} It was running {{ $labels.namespace }}/{{ . }} "
    "({{ $labels.workload_kind }}, pod {{ $labels.pod }}, team {{ $labels.team }})."
    "{{ else }} No workload was on it.{{ end }}"
)
_REMEDIATION: Final = {NODE_REMEDIATION_ANNOTATION: NODE_REMEDIATION_TEMPLATE}
THERMAL_REASONS: Final = ("sw_thermal", "hw_thermal")


def _increased_or_new(selector: str, *, by: str, window: str,
                      guard_on: str, guard: str) -> str:
    """PromQL: the counter ``selector`` went up within ``window``, per ``by``.

    ``increase()`` needs two samples, so a counter child born at 1 (the first XID, the first
    failed run) is invisible to it. The second arm catches such a child: it is non-zero now
    and did not exist ``window`` ago. ``guard`` (data that existed ``window`` ago) keeps the
    second arm quiet right after Prometheus itself starts, when every series looks new.
    """
    return (
        f"(\n"
        f"  sum by ({by}) (\n"
        f"    increase({selector}[{window}])\n"
        f"  ) > 0\n"
        f")\n"
        f"or\n"
        f"(\n"
        f"  (\n"
        f"    sum by ({by}) ({selector}) > 0\n"
        f"    unless\n"
        f"    sum by ({by}) ({selector} offset {window})\n"
        f"  )\n"
        f"  and on ({guard_on})\n"
        f"  ({guard} offset {window})\n"
        f")"
    )


def _with_action_label(expr: str, infos: tuple[XidInfo, ...]) -> str:
    """Wrap ``expr`` so that each result carries ``action`` (XidAction value) by its xid."""
    wrapped = expr
    for action in XidAction:
        xids = tuple(info.xid for info in infos if info.action is action)
        if xids:
            wrapped = (
                f"label_replace(\n{_indent(wrapped)},\n"
                f'  "action", "{action.value}", "xid", "{xid_regex(xids)}"\n)'
            )
    return wrapped


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _xid_meaning_template(infos: tuple[XidInfo, ...]) -> str:
    branches = "".join(
        f'{{{{ {"if" if index == 0 else "else if"} eq $labels.xid "{info.xid}" }}}}'
        f"{info.meaning}"
        for index, info in enumerate(infos)
    )
    return branches + "{{ else }}not in Steward's XID table{{ end }}"


def _xid_action_template(infos: tuple[XidInfo, ...]) -> str:
    actions = [action for action in XidAction if any(i.action is action for i in infos)]
    branches = "".join(
        f'{{{{ {"if" if index == 0 else "else if"} eq $labels.action "{action.value}" }}}}'
        f"{action.text}"
        for index, action in enumerate(actions)
    )
    return branches + "{{ else }}see NVIDIA's XID catalog{{ end }}"


_CRITICAL_XIDS: Final = tuple(info for info in XID_TABLE if info.action.critical)
_OTHER_XIDS: Final = tuple(info for info in XID_TABLE if not info.action.critical)
_CRITICAL_XID_REGEX: Final = xid_regex(critical_xids())


_GPU_ALERTS: Final = (
    Alert(
        name="GpuLost",
        group=GROUP_GPU_HARDWARE,
        severity="critical",
        expr=with_gpu_owners(f"max by ({GPU_BY}) (steward_gpu_lost) == 1", copy=_GPU_COPY),
        for_duration="1m",
        summary="A GPU fell off the bus or disappeared.",
        description=(
            f"{_GPU_WHERE_PCI} is lost: NVML reports it fell off the bus, or it is no longer "
            "enumerated. Every workload on it has failed. Cordon and drain the node, then "
            "reboot it (NVIDIA's action for XID 79); RMA the GPU if it is lost again."
            + _TENANT
        ),
        dashboard_uid="steward-gpu-node",
        annotations=_REMEDIATION,
        owners=True,
    ),
    Alert(
        name="GpuXidCritical",
        group=GROUP_GPU_HARDWARE,
        severity="critical",
        expr=with_gpu_owners(
            _with_action_label(
                _increased_or_new(
                    f'steward_gpu_xid_errors_total{{xid=~"{_CRITICAL_XID_REGEX}"}}',
                    by=f"{GPU_BY}, xid", window="10m",
                    guard_on="hostname, UUID", guard="steward_gpu_up",
                ),
                _CRITICAL_XIDS,
            ),
            copy=(*_GPU_COPY, "action"),
            split=("xid", tuple(str(xid) for xid in critical_xids())),
        ),
        for_duration="1m",
        summary="A GPU reported an XID that needs a GPU reset, a node reboot or an RMA.",
        description=(
            "XID {{ $labels.xid }} ("
            + _xid_meaning_template(_CRITICAL_XIDS)
            + f") on {_GPU_WHERE_PCI}. NVIDIA's recommended action: "
            + _xid_action_template(_CRITICAL_XIDS)
            + ". The GPU is not usable until then; the runbook's XID table has the details."
            + _TENANT
        ),
        dashboard_uid="steward-gpu-node",
        annotations=_REMEDIATION,
        owners=True,
    ),
    Alert(
        name="GpuXidErrors",
        group=GROUP_GPU_HARDWARE,
        severity="warning",
        expr=_with_action_label(
            f"sum by ({GPU_BY}, xid) (\n"
            f'  increase(steward_gpu_xid_errors_total{{xid!~"{_CRITICAL_XID_REGEX}"}}[10m])\n'
            f") >= 5",
            _OTHER_XIDS,
        ),
        for_duration="5m",
        summary="A GPU keeps reporting XID errors.",
        description=(
            'XID {{ $labels.xid }} ('
            + _xid_meaning_template(_OTHER_XIDS)
            + ') was reported {{ $value | printf "%.0f" }} times in 10 minutes on '
            + _GPU_WHERE
            + ". NVIDIA's recommended action: "
            + _xid_action_template(_OTHER_XIDS)
            + ". XIDs such as 13, 31 and 43 are usually caused by the application, not the "
            "hardware: look at the workload on this GPU first."
        ),
        dashboard_uid="steward-gpu-node",
    ),
    Alert(
        name="GpuEccUncorrectable",
        group=GROUP_GPU_HARDWARE,
        severity="critical",
        expr=with_gpu_owners(
            f"sum by ({GPU_BY}) (\n"
            f'  increase(steward_gpu_ecc_errors_total{{type="uncorrected"}}[10m])\n'
            f") > 0",
            copy=_GPU_COPY,
        ),
        for_duration="1m",
        summary="A GPU reported uncorrectable ECC memory errors.",
        description=(
            f"{_GPU_WHERE_PCI} reported new uncorrectable ECC errors in the last 10 minutes. "
            "Jobs on it may have computed on corrupted memory: restart them from a checkpoint. "
            "Check the XIDs (48, 94, 95) and row remapping: a pending remap needs a GPU reset, "
            "a failed one an RMA."
            + _TENANT
        ),
        dashboard_uid="steward-gpu-node",
        annotations=_REMEDIATION,
        owners=True,
    ),
    Alert(
        name="GpuRowRemapFailure",
        group=GROUP_GPU_HARDWARE,
        severity="critical",
        expr=with_gpu_owners(
            f'max by ({GPU_BY}) (steward_gpu_remapped_rows{{state="failure"}}) > 0',
            copy=_GPU_COPY),
        for_duration="5m",
        summary="GPU memory row remapping failed; the GPU needs an RMA.",
        description=(
            f"Row remapping failed on {_GPU_WHERE_PCI}: a failing memory row could not be "
            "replaced by a spare. This meets NVIDIA's RMA criteria: drain the node and RMA "
            "the GPU."
            + _TENANT
        ),
        dashboard_uid="steward-gpu-node",
        annotations=_REMEDIATION,
        owners=True,
    ),
    Alert(
        name="GpuTemperatureHigh",
        group=GROUP_GPU_HARDWARE,
        severity="warning",
        expr=f"max by ({GPU_BY}) (steward_gpu_temperature_celsius) > 85",
        for_duration="10m",
        summary="A GPU has been running hot for 10 minutes.",
        description=(
            f"{_GPU_WHERE} has been above 85 °C for 10 minutes "
            '(now {{ $value | printf "%.0f" }} °C). Expect thermal throttling; check the '
            "node's fans, airflow and inlet temperature."
        ),
        dashboard_uid="steward-gpu-node",
    ),
    Alert(
        name="GpuThermalThrottling",
        group=GROUP_GPU_HARDWARE,
        severity="warning",
        expr=with_gpu_owners(
            f"max by ({GPU_BY}, reason) (\n"
            f'  steward_gpu_clock_event_active{{reason=~"{"|".join(THERMAL_REASONS)}"}}\n'
            f") == 1",
            copy=_GPU_COPY, split=("reason", THERMAL_REASONS),
        ),
        for_duration="10m",
        summary="A GPU's clocks are thermally throttled.",
        description=(
            f"{_GPU_WHERE} has held its clocks down for a thermal reason "
            "({{ $labels.reason }}) for 10 minutes, so jobs on it run slower. hw_thermal "
            "means the hardware slowdown temperature was reached: check the cooling now."
            + _TENANT
        ),
        dashboard_uid="steward-gpu-node",
        annotations=_REMEDIATION,
        owners=True,
    ),
    Alert(
        name="GpuMemoryNearlyFull",
        group=GROUP_GPU_HARDWARE,
        severity="warning",
        expr=(
            f"max by ({GPU_BY}, GPU_I_ID, GPU_I_PROFILE) (\n"
            f"  steward_gpu_memory_used_bytes / steward_gpu_memory_total_bytes\n"
            f") > 0.95"
        ),
        for_duration="30m",
        summary="A GPU's memory has been nearly full for 30 minutes.",
        description=(
            f"{_GPU_WHERE}{{{{ with $labels.GPU_I_ID }}}} (MIG instance {{{{ . }}}}){{{{ end }}}} "
            "has used {{ $value | humanizePercentage }} of its memory for 30 minutes. Caching "
            "allocators (PyTorch, JAX/XLA preallocation) keep freed memory reserved, so this is "
            "often normal for one training job; act when jobs on it fail with out-of-memory "
            "errors or the GPU is shared."
        ),
        dashboard_uid="steward-gpu-node",
    ),
)

_WORKLOAD_ALERTS: Final = (
    Alert(
        name="GpuIdleAllocated",
        group=GROUP_WORKLOADS,
        severity="warning",
        # Utilization is per physical GPU, allocation per container: the join keeps the
        # container's labels, and the value is the GPU's peak utilization in the window.
        expr=(
            "(\n"
            "  max by (hostname, UUID) (max_over_time(steward_gpu_utilization_ratio[1h])) < 0.01\n"
            ")\n"
            "* on (hostname, UUID) group_right ()\n"
            "max by (hostname, gpu, UUID, modelName, GPU_I_ID, GPU_I_PROFILE, namespace, pod, "
            "container) (\n"
            "  steward_gpu_allocation == 1\n"
            ")"
        ),
        for_duration="1h",
        summary="An allocated GPU has been idle for 2 hours.",
        description=(
            f"{_GPU_WHERE} is allocated to pod {{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} "
            "(container {{ $labels.container }}) but its utilization stayed below 1% for "
            "2 hours (peak in the last hour: {{ $value | humanizePercentage }}). Ask the owner "
            "to release it; the idle-gpus hygiene job reclaims it otherwise."
        ),
        dashboard_uid="steward-namespace-usage",
    ),
    Alert(
        name="PodCrashLooping",
        group=GROUP_WORKLOADS,
        severity="warning",
        # The waiting reason flips between CrashLoopBackOff and running on every restart;
        # max_over_time keeps the alert from resetting its `for` each time.
        expr=(
            "max by (namespace, pod, container, hostname) (\n"
            '  max_over_time(steward_container_waiting{reason="CrashLoopBackOff"}[5m])\n'
            ") >= 1"
        ),
        for_duration="15m",
        summary="A container is crash looping.",
        description=(
            "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} "
            "on node {{ $labels.hostname }} has been in CrashLoopBackOff for 15 minutes. Read "
            "the logs of its previous run (kubectl logs --previous) and its last termination "
            "reason."
        ),
        dashboard_uid="steward-pod-health",
    ),
    Alert(
        name="PodOomKilled",
        group=GROUP_WORKLOADS,
        severity="warning",
        # A timestamp, not a counter: it also catches a container's first OOM kill, and an
        # old kill seen when the agent starts is not "recent".
        expr=(
            "time() - max by (namespace, pod, container, hostname) (\n"
            '  steward_container_last_terminated_timestamp_seconds{reason="OOMKilled"}\n'
            ") < 600"
        ),
        for_duration="1m",
        summary="A container was OOM-killed.",
        description=(
            "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} "
            "on node {{ $labels.hostname }} was OOM-killed {{ $value | humanizeDuration }} ago. "
            "It exceeded its memory limit (host memory, not GPU memory): raise the limit or "
            "shrink what it holds in memory (data loader workers, caches)."
        ),
        dashboard_uid="steward-pod-health",
    ),
    Alert(
        name="GpuPodPendingTooLong",
        group=GROUP_WORKLOADS,
        severity="warning",
        expr=(
            "time() - max by (namespace, pod) (steward_pod_pending_since_timestamp_seconds) "
            "> 1800"
        ),
        for_duration="5m",
        summary="A pod requesting GPUs has been pending for over 30 minutes.",
        description=(
            "Pod {{ $labels.namespace }}/{{ $labels.pod }} requests GPUs and has been pending "
            "for {{ $value | humanizeDuration }}. Its events give the scheduler's reason "
            "(not enough nvidia.com/gpu, taints, node selectors); check whether idle pods hold "
            "the GPUs it needs."
        ),
        dashboard_uid="steward-pod-health",
    ),
    Alert(
        name="PodDeviceUnhealthy",
        group=GROUP_WORKLOADS,
        severity="warning",
        # Kubernetes' own word on the devices a running pod holds (KEP-4680): the device
        # plugin marked one Unhealthy. Counted per resource; the pod's owners joined.
        expr=with_pod_owners(
            "max by (hostname, namespace, pod, container, resource) (\n"
            '  steward_pod_device_health{health="Unhealthy"}\n'
            ") > 0\n"
            "and on (hostname, namespace, pod)\n"
            'max by (hostname, namespace, pod) (steward_pod_phase{phase="Running"})'
        ),
        for_duration="2m",
        summary="A running pod holds a device that Kubernetes reports Unhealthy.",
        description=(
            "Kubernetes reports {{ $value }} {{ $labels.resource }} device(s) of container "
            "{{ $labels.container }} in running pod {{ $labels.namespace }}/{{ $labels.pod }} "
            "on node {{ $labels.hostname }} as Unhealthy (pod status, "
            "allocatedResourcesStatus). The workload ({{ $labels.workload_kind }} "
            "{{ $labels.workload }}, team {{ $labels.team }}) is running on a failed device: "
            "expect it to fail or hang; the GPU alerts of this node say what broke."
        ),
        dashboard_uid="steward-pod-health",
        annotations=_REMEDIATION,
        owners=True,
    ),
)

_PIPELINE_ALERTS: Final = (
    Alert(
        name="PipelineRunFailed",
        group=GROUP_PIPELINES,
        severity="warning",
        expr=_increased_or_new(
            'steward_pipeline_runs_total{result="failed"}',
            by="namespace, pipeline, kind", window="30m",
            guard_on="", guard=_CONTROLLER_SCRAPED,
        ),
        for_duration="1m",
        summary="A pipeline run failed.",
        description=(
            "A run of {{ $labels.kind }} pipeline {{ $labels.namespace }}/{{ $labels.pipeline }} "
            "failed in the last 30 minutes. Look at the failed run's pods, their logs and "
            "termination reasons."
        ),
        dashboard_uid="steward-pipelines",
    ),
    Alert(
        name="PipelineStale",
        group=GROUP_PIPELINES,
        severity="warning",
        # A plain Job runs once: only scheduled pipelines can be late.
        expr=(
            "time() - max by (namespace, pipeline, kind) (\n"
            '  steward_pipeline_last_success_timestamp_seconds{kind!="Job"}\n'
            ") > 26 * 3600"
        ),
        for_duration="5m",
        summary="A scheduled pipeline has not succeeded for over 26 hours.",
        description=(
            "{{ $labels.kind }} pipeline {{ $labels.namespace }}/{{ $labels.pipeline }} last "
            "succeeded {{ $value | humanizeDuration }} ago. What it produces is stale: check "
            "whether its schedule is suspended, its runs fail or they never start."
        ),
        dashboard_uid="steward-pipelines",
    ),
    Alert(
        name="PipelineRunTooLong",
        group=GROUP_PIPELINES,
        severity="warning",
        expr=(
            "time() - max by (namespace, pipeline, kind) (\n"
            "  steward_pipeline_running_since_timestamp_seconds\n"
            ") > 6 * 3600"
        ),
        for_duration="5m",
        summary="A pipeline run has been running for over 6 hours.",
        description=(
            "The current run of {{ $labels.kind }} pipeline "
            "{{ $labels.namespace }}/{{ $labels.pipeline }} has been running for "
            "{{ $value | humanizeDuration }}. It may be stuck: check its pods for hangs "
            "(NCCL timeouts, locks, pods that never got scheduled)."
        ),
        dashboard_uid="steward-pipelines",
    ),
)

_SELF_ALERTS: Final = (
    Alert(
        name="StewardAgentDown",
        group=GROUP_SELF,
        severity="critical",
        expr='up{job=~"steward-node|steward-controller|steward-notifier"} == 0',
        for_duration="5m",
        summary="A Steward component cannot be scraped.",
        description=(
            "Prometheus has failed to scrape {{ $labels.job }} target {{ $labels.instance }}"
            "{{ with $labels.hostname }} on node {{ . }}{{ end }} for 5 minutes. Steward's "
            "alerts for everything this target watches are blind until it is back."
        ),
        dashboard_uid="steward-self",
    ),
    Alert(
        name="StewardCollectorFailing",
        group=GROUP_SELF,
        severity="warning",
        expr='steward_collector_up{collector!="attribution"} == 0',
        for_duration="10m",
        summary="A Steward collector keeps failing.",
        description=(
            "Collector {{ $labels.collector }} of {{ $labels.job }} ({{ $labels.instance }}"
            "{{ with $labels.hostname }}, node {{ . }}{{ end }}) has failed every run for "
            "10 minutes; the metrics it feeds are stale or missing. "
            "steward_collector_errors_total and the pod's logs name the error."
        ),
        dashboard_uid="steward-self",
    ),
    Alert(
        name="StewardGpuAttributionFailing",
        group=GROUP_SELF,
        severity="warning",
        expr='steward_collector_up{collector="attribution"} == 0',
        for_duration="10m",
        summary="Steward cannot map GPUs to pods on a node.",
        description=(
            "GPU-to-pod attribution has failed for 10 minutes on node {{ $labels.hostname }} "
            "({{ $labels.instance }}): the node agent cannot read the kubelet PodResources API. "
            "steward_gpu_allocation is missing for this node, so GpuIdleAllocated and the "
            "per-team FinOps costs do not see its GPUs."
        ),
        dashboard_uid="steward-self",
    ),
    Alert(
        name="StewardHygieneJobFailing",
        group=GROUP_SELF,
        severity="warning",
        expr=(
            "(\n"
            + _indent(_increased_or_new(
                'steward_hygiene_runs_total{result="failed"}',
                by="hygiene_job", window="6h",
                guard_on="", guard=_CONTROLLER_SCRAPED,
            ))
            + "\n)\n"
            "unless on (hygiene_job)\n"
            "(\n"
            '  sum by (hygiene_job) (increase(steward_hygiene_runs_total{result="succeeded"}[1h]))'
            " > 0\n"
            ")"
        ),
        for_duration="1m",
        summary="A Steward hygiene job is failing.",
        description=(
            "Hygiene job {{ $labels.hygiene_job }} has failed in the last 6 hours and has not "
            "succeeded in the last hour, so nothing is being reclaimed. The controller's logs "
            "and the audit log name the error."
        ),
        dashboard_uid="steward-hygiene",
    ),
    Alert(
        name="StewardHygieneBlastRadiusTripped",
        group=GROUP_SELF,
        severity="warning",
        expr=_increased_or_new(
            'steward_hygiene_runs_total{result="blast_radius_tripped"}',
            by="hygiene_job", window="1h",
            guard_on="", guard=_CONTROLLER_SCRAPED,
        ),
        for_duration="1m",
        summary="A hygiene run exceeded its blast-radius caps and acted on nothing.",
        description=(
            "A run of hygiene job {{ $labels.hygiene_job }} found more candidates than its caps "
            "allow (actions or percent of candidates per run), so it stopped and acted on "
            "nothing. Review the run's plan: something changed cluster-wide (a mislabelled "
            "namespace, a broken metric), or the caps are too low."
        ),
        dashboard_uid="steward-hygiene",
    ),
    Alert(
        name="StewardNotifierDeliveryFailing",
        group=GROUP_SELF,
        severity="critical",
        expr=(
            "(\n"
            "  (\n"
            "    min by (job, instance) (min_over_time(steward_notifier_outbox_depth[10m])) > 0\n"
            "  )\n"
            "  and on (job, instance)\n"
            "  (\n"
            "    sum by (job, instance) (\n"
            '      increase(steward_notifier_slack_messages_total{result="error"}[10m])\n'
            "    ) > 0\n"
            "  )\n"
            ")\n"
            "or\n"
            "(\n"
            "  sum by (job, instance) (increase(steward_notifier_dead_letters_total[1h])) > 0\n"
            ")"
        ),
        for_duration="5m",
        summary="Steward's notifier cannot deliver alerts to Slack.",
        description=(
            "Notifier {{ $labels.instance }} is not delivering alerts to Slack: its Slack "
            "calls keep failing while its outbox has not emptied for 15 minutes, or it gave "
            "up on alert groups in the last hour and posted a plain notice instead (dead "
            "letters: steward notifier dead-letters). On-call is missing Steward's Slack "
            "alerts. Alertmanager routes this alert (routing=bypass-notifier) to a receiver "
            "other than the Steward notifier."
        ),
        dashboard_uid="steward-self",
        labels=BYPASS_NOTIFIER_LABELS,
    ),
    Alert(
        name="StewardStateStoreRecreated",
        group=GROUP_SELF,
        severity="warning",
        # Per job, across pods: a new pod on the same store exports the same time; a pod
        # that starts on a new, empty store (a lost volume, an emptied database) does not.
        expr=(
            "changes(\n"
            "  (max without (instance, pod) "
            "(steward_state_store_created_timestamp_seconds))[1h:1m]\n"
            ") > 0"
        ),
        for_duration="1m",
        summary="A Steward component started over on a new, empty state store.",
        description=(
            "{{ $labels.job }}{{ with $labels.namespace }} in namespace {{ . }}{{ end }} now "
            "runs on a state store created in the last hour, replacing the one it had: what "
            "the old store held is gone unless it is restored from a backup (for the notifier, "
            "alerts acknowledged but not yet in Slack; for the controller, hygiene marks, "
            "restore records and the audit log)."
        ),
        dashboard_uid="steward-self",
    ),
)

CATALOG: Final[tuple[Alert, ...]] = (
    *_GPU_ALERTS, *_WORKLOAD_ALERTS, *_PIPELINE_ALERTS, *_SELF_ALERTS,
)
# The ownership joins the alerts above use, each evaluated first in its alerts' group.
RECORDING_RULES: Final[tuple[RecordingRule, ...]] = recording_rules(
    gpu_group=GROUP_GPU_HARDWARE, pod_group=GROUP_WORKLOADS)


def alerts_by_group(alerts: Sequence[Alert] = CATALOG) -> dict[str, list[Alert]]:
    """Alerts per group, groups and alerts in catalog order."""
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        groups.setdefault(alert.group, []).append(alert)
    return groups
