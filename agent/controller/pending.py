"""GPU pods waiting to be scheduled, cluster-wide, on the leader only.

Unscheduled pods have no node, so no node agent sees them. ``pending since`` is when the
scheduler first said it could not place the pod (the PodScheduled=False condition), else
the pod's creation time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.api import paged, timestamp
from agent.clients.kubernetes.calls import PodListing
from agent.clients.kubernetes.gpus import pod_gpus
from agent.exporter.collection import Collector, CollectorFailed, CollectResult


def pending_since(pod: Any) -> float | None:
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return timestamp(condition.last_transition_time)
    return timestamp(pod.metadata.creation_timestamp)


def pending_pods_collector(core_api: PodListing, interval: float) -> Collector:
    def collect() -> CollectResult:
        from kubernetes.client.exceptions import ApiException

        family = Metric("steward_pod_pending_since_timestamp_seconds",
                        "When a GPU pod started waiting to be scheduled.", "gauge")
        try:
            # Pending and not bound to a node: the API server filters, not this process.
            pods = list(paged(core_api.list_pod_for_all_namespaces,
                               field_selector="status.phase=Pending,spec.nodeName="))
        except ApiException as exc:
            raise CollectorFailed(f"api_{exc.status}", f"listing pending pods: {exc.reason}") \
                from exc
        for pod in sorted(pods, key=lambda p: (p.metadata.namespace, p.metadata.name)):
            since = pending_since(pod)
            if since is None or pod.spec.node_name or not pod_gpus(pod):
                continue
            family.add_sample(family.name, {"namespace": pod.metadata.namespace,
                                            "pod": pod.metadata.name}, since)
        return CollectResult([family] if family.samples else [])

    return Collector("pending_pods", collect, interval)
