"""What the alert rules need to say whether a failed GPU's node is already being dealt with;
cluster-scope, on the leader only (the namespace -> team series the same rules read is the
FinOps mapping's own, agent.finops.team_info, composed onto the leader by the CLI).

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

from collections.abc import Sequence
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.api import paged
from agent.exporter.collection import Collector, CollectorFailed, CollectResult

# NVSentinel's fault-quarantine writes this annotation on every node it quarantines (the
# health events that caused it) and removes it when the node is released.
NVSENTINEL_QUARANTINE_ANNOTATION: Final = "quarantineHealthEvent"


def _api_failed(what: str, exc: Exception) -> CollectorFailed:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return CollectorFailed(f"api_{exc.status}", f"listing {what}: {exc.reason}")
    return CollectorFailed(type(exc).__name__.lower(), f"listing {what}: {exc}")


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
