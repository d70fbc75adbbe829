"""Who was on a failed GPU: the PromQL that joins a GPU fault to the workloads on that GPU and
their team, and to what a remediation tool has done to the node.

Three series meet here: ``steward_gpu_allocation`` (node agent: GPU -> namespace, pod),
``steward_pod_workload_info`` (node agent: pod -> owning workload, from the pods it
watches) and ``steward_namespace_team_info`` (controller leader: namespace -> team, the
FinOps report's mapping). Two recording rules, each evaluated first in the alert group that
uses it, make the joins once:

- ``steward:pod_owners``: one series per pod (``hostname, namespace, pod, workload_kind,
  workload, team``);
- ``steward:gpu_owners``: one series per GPU and pod on it (``hostname, UUID`` and the same).

Nothing is dropped for want of a join: a pod without workload information is named as its
own workload with ``workload_kind="unknown"``, a namespace without team information gets
``team="unknown"`` (the controller exports ``unassigned`` for a namespace it knows has no
team). Every join picks one series per key (``topk``), so two exporters disagreeing for a
moment (a leader handover, a relabelled namespace) can never turn the rule into a
many-to-many error that would silence the alert.

A GPU fault alert is then one alert per (fault, workload pod) on that GPU, and the fault
alone when the GPU had no tenant: a label per workload is what Alertmanager can group,
route and inhibit on, and PromQL cannot fold several series into one label without free
text. The tenants are the pods on the GPU at any time in the last ``OWNERS_WINDOW``: a job
the fault killed is still named after its pod is gone.

An alert whose fault has several values of a label on one GPU at once (two XIDs, two
thermal reasons) cannot be joined to several workloads in one vector match (PromQL refuses
many-to-many), so the owners are first copied once per known value of that label
(``label_replace``, one branch per value); the values are the catalog's own (the critical
XIDs, the thermal reasons).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

POD_OWNERS: Final = "steward:pod_owners"
GPU_OWNERS: Final = "steward:gpu_owners"
OWNER_LABELS: Final = ("namespace", "pod", "workload_kind", "workload", "team")
# Unknown owners are said to be unknown, never left out.
UNKNOWN: Final = "unknown"
# How long a pod still counts as the GPU's tenant after it left: a fault kills its jobs, and
# the notice must still reach their owners.
OWNERS_WINDOW: Final = "10m"
NODE_REMEDIATION_ANNOTATION: Final = "node_remediation"


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    group: str


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(f"{by}{line}" for line in text.splitlines())


def _with_team(expr: str) -> str:
    """``expr`` (namespace-labelled) with the namespace's ``team``, or ``unknown``."""
    return (
        f"{expr}\n"
        f"* on (namespace) group_left (team)\n"
        f"topk by (namespace) (1,\n"
        f"  steward_namespace_team_info\n"
        f"  or on (namespace)\n"
        f'  label_replace(steward_gpu_allocation or steward_pod_workload_info, '
        f'"team", "{UNKNOWN}", "", "")\n'
        f")"
    )


def _pod_owners_expr() -> str:
    return (
        f"max by (hostname, {', '.join(OWNER_LABELS)}) (\n"
        f"{_indent(_with_team('steward_pod_workload_info'))}\n"
        f")"
    )


def _gpu_owners_expr() -> str:
    allocated = (
        "(\n"
        "  steward_gpu_allocation\n"
        "  * on (hostname, namespace, pod) group_left (workload_kind, workload)\n"
        "  topk by (hostname, namespace, pod) (1,\n"
        "    steward_pod_workload_info\n"
        "    or on (hostname, namespace, pod)\n"
        '    label_replace(label_replace(steward_gpu_allocation, "workload", "$1", "pod", '
        f'"(.*)"), "workload_kind", "{UNKNOWN}", "", "")\n'
        "  )\n"
        ")"
    )
    return (
        f"max by (hostname, UUID, {', '.join(OWNER_LABELS)}) (\n"
        f"{_indent(_with_team(allocated))}\n"
        f")"
    )


def recording_rules(*, gpu_group: str, pod_group: str) -> tuple[RecordingRule, ...]:
    """Each in the group of the alerts that read it: a group's rules run in order at one
    evaluation time, while two groups run apart (an alert in another group could read the
    recorded series one evaluation late: a new pod without its owners)."""
    return (
        RecordingRule(GPU_OWNERS, _gpu_owners_expr(), gpu_group),
        RecordingRule(POD_OWNERS, _pod_owners_expr(), pod_group),
    )


def _recent(record: str) -> str:
    return f"max_over_time({record}[{OWNERS_WINDOW}])"


def with_gpu_owners(fault: str, *, copy: Sequence[str],
                    split: tuple[str, Sequence[str]] | None = None) -> str:
    """``fault`` (one series per GPU, or per GPU and ``split`` label) once per workload pod
    on that GPU, owner labels added; the fault as it is for a GPU without tenants.

    ``copy``: the fault's labels the result keeps besides ``hostname`` and ``UUID`` (the
    owners side has only those); ``split``: a label the fault can have several values of on
    one GPU at once, and every value it can take.
    """
    match = ["hostname", "UUID"]
    owners = _recent(GPU_OWNERS)
    if split is not None:
        label, values = split
        match.append(label)
        branches = "\nor\n".join(
            f'label_replace({owners}, "{label}", "{value}", "", "")' for value in values)
        owners = f"(\n{_indent(branches)}\n)"
    on = ", ".join(match)
    copied = ", ".join(c for c in copy if c not in match)
    return (
        f"(\n"
        f"{_indent(owners)}\n"
        f"  * on ({on}) group_left ({copied})\n"
        f"  topk by ({on}) (1,\n"
        f"{_indent(fault, '    ')}\n"
        f"  )\n"
        f")\n"
        f"or on ({on})\n"
        f"(\n"
        f"{_indent(fault)}\n"
        f")"
    )


def with_pod_owners(expr: str) -> str:
    """``expr`` (per hostname, namespace, pod) with the pod's workload and team (unknown
    where the pod has no workload information)."""
    unknown = (f'label_replace(label_replace(label_replace(\n{_indent(expr, "    ")},\n'
               f'    "workload", "$1", "pod", "(.*)"), "workload_kind", "{UNKNOWN}", "", ""), '
               f'"team", "{UNKNOWN}", "", "")')
    return (
        f"(\n{_indent(expr)}\n)\n"
        f"* on (hostname, namespace, pod) group_left ({', '.join(OWNER_LABELS[2:])})\n"
        f"topk by (hostname, namespace, pod) (1,\n"
        f"  {POD_OWNERS}\n"
        f"  or on (hostname, namespace, pod)\n"
        f"  {unknown}\n"
        f")"
    )


def _query(expr: str) -> str:
    return f'query (printf "{expr}" $labels.hostname)'


# What a remediation tool has done to the alert's node, as an annotation: evaluated with the
# alert (Prometheus' template `query`), so the label set, and with it the alert's identity,
# does not change when the node is cordoned. Grafana's templates have no `query`: its rules
# leave this annotation out.
NODE_REMEDIATION_TEMPLATE: Final = (
    "{{ with " + _query("max by (hostname) (steward_node_cordoned{hostname=%q}) == 1")
    + " }}cordoned{{ else }}{{ with "
    + _query("steward_node_cordoned{hostname=%q}")
    + " }}not cordoned{{ else }}unknown{{ end }}{{ end }}"
    + "{{ range " + _query("max by (hostname, by) (steward_node_quarantined{hostname=%q}) == 1")
    + " }}; quarantined by {{ .Labels.by }}{{ end }}"
    + "{{ range " + _query(
        "max by (hostname, key, effect) (steward_node_remediation_taint{hostname=%q}) == 1")
    + " }}; tainted {{ .Labels.key }}:{{ .Labels.effect }}{{ end }}"
)
