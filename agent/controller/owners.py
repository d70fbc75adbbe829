"""What the alert rules need to say whose workload a GPU fault hit, and whether the node is
already being dealt with; cluster-scope, on the leader only.

- ``steward_namespace_team_info{namespace, team}``: the team of every namespace, by the
  mapping the FinOps report uses (``finops.namespace_teams`` first, then the namespace's
  ``finops.team_label``, else ``unassigned``). Teams are namespace label values or config:
  bounded, never free text.
- ``steward_node_cordoned{hostname}`` (0 or 1, every node), ``steward_node_quarantined{hostname,
  by}`` (NVIDIA NVSentinel's ``quarantineHealthEvent`` annotation) and
  ``steward_node_remediation_taint{hostname, key, effect}`` (the taints listed in
  ``controller.remediation_taint_keys``): read only. Steward never cordons, taints or drains.

The leader reads nodes rather than each node agent its own: RBAC cannot limit ``get nodes``
to the caller's node for a ServiceAccount (only the Node authorizer does that, for kubelets),
so a node agent allowed to read its node could read every node; one Deployment holding
``list nodes`` is the smaller grant. ``hostname`` is the node's name, as the node agent
labels its GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from agent.exporter.collection import Collector, CollectorFailed, CollectResult
from agent.finops.teams import resolve_teams
from agent.kube import paged

# NVSentinel's fault-quarantine writes this annotation on every node it quarantines (the
# health events that caused it) and removes it when the node is released.
NVSENTINEL_QUARANTINE_ANNOTATION: Final = "quarantineHealthEvent"


class _Labels:
    """resolve_teams' source, holding labels already read (a failed read fails the run)."""

    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self._labels = labels

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        return self._labels


def _api_failed(what: str, exc: Exception) -> CollectorFailed:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return CollectorFailed(f"api_{exc.status}", f"listing {what}: {exc.reason}")
    return CollectorFailed(type(exc).__name__.lower(), f"listing {what}: {exc}")


def namespace_teams_collector(core_api: Any, interval: float, *, static: Mapping[str, str],
                              label: str) -> Collector:
    def collect() -> CollectResult:
        try:
            labels = {ns.metadata.name: dict(ns.metadata.labels or {})
                      for ns in paged(core_api.list_namespace)}
        except Exception as exc:
            # Every namespace "unassigned" would be a wrong answer; none is an honest one.
            raise _api_failed("namespaces", exc) from exc
        mapping = resolve_teams([*labels, *static], static=static, label=label,
                                source=_Labels(labels))
        family = Metric("steward_namespace_team_info",
                        "The namespace's team (finops.namespace_teams, else its "
                        "finops.team_label label, else unassigned); always 1.", "gauge")
        for namespace, team in sorted(mapping.teams.items()):
            family.add_sample(family.name, {"namespace": namespace, "team": team}, 1.0)
        return CollectResult([family] if family.samples else [])

    return Collector("namespace_teams", collect, interval)


def node_remediation_families(nodes: Sequence[Any], taint_keys: Sequence[str]) -> list[Metric]:
    cordoned = Metric("steward_node_cordoned",
                      "1 while the node is cordoned (spec.unschedulable), else 0.", "gauge")
    quarantined = Metric("steward_node_quarantined",
                         "1 while a remediation tool holds the node in quarantine "
                         "(by: nvsentinel).", "gauge")
    tainted = Metric("steward_node_remediation_taint",
                     "1 for each remediation taint on the node "
                     "(controller.remediation_taint_keys).", "gauge")
    wanted = frozenset(taint_keys)
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        name = node.metadata.name
        spec = node.spec
        cordoned.add_sample(cordoned.name, {"hostname": name},
                            1.0 if spec is not None and spec.unschedulable else 0.0)
        if (node.metadata.annotations or {}).get(NVSENTINEL_QUARANTINE_ANNOTATION):
            quarantined.add_sample(quarantined.name, {"hostname": name, "by": "nvsentinel"}, 1.0)
        seen: set[tuple[str, str]] = set()
        for taint in (spec.taints or []) if spec is not None else []:
            key = (str(taint.key), str(taint.effect or ""))
            if taint.key in wanted and key not in seen:
                seen.add(key)
                tainted.add_sample(tainted.name, {"hostname": name, "key": key[0],
                                                  "effect": key[1]}, 1.0)
    return [m for m in (cordoned, quarantined, tainted) if m.samples]


def node_remediation_collector(core_api: Any, interval: float, *,
                               taint_keys: Sequence[str]) -> Collector:
    def collect() -> CollectResult:
        try:
            nodes = list(paged(core_api.list_node))
        except Exception as exc:
            raise _api_failed("nodes", exc) from exc
        return CollectResult(node_remediation_families(nodes, taint_keys))

    return Collector("node_remediation", collect, interval)
