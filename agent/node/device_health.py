"""Device health as Kubernetes reports it in pod status (KEP-4680, ``ResourceHealthStatus``,
beta and on by default in 1.36): ``status.containerStatuses[].allocatedResourcesStatus``.

The kubelet fills it from the device plugin's (or DRA driver's) health reports: for each
resource a container was allocated (``nvidia.com/gpu``, ``claim:<claim>/<request>``), the
health of every device it holds. It is a second, API-native signal next to NVML: a device
plugin that marks a GPU Unhealthy says so here for exactly the pods that hold it.

Exported as ``steward_pod_device_health{namespace, pod, container, resource, health}`` =
how many of that container's devices of that resource are in that health. The device IDs
stay out of the labels (the series would multiply per GPU, and attribution already maps
GPUs to pods); health is one of Healthy, Unhealthy, Unknown (anything else a newer server
sends is counted as Unknown: unknown is never healthy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prometheus_client.metrics_core import Metric

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
UNKNOWN: Final = "Unknown"
HEALTH_STATES: Final = (HEALTHY, UNHEALTHY, UNKNOWN)
# A resource name is a Kubernetes resource name or "claim:<claim>/<request>": bounded by the
# API's own validation; cut defensively so one odd value cannot make a huge label.
_MAX_RESOURCE: Final = 253


@dataclass(frozen=True)
class DeviceHealth:
    container: str
    resource: str
    resource_id: str
    health: str


def _get(obj: Any, attr: str, key: str) -> Any:
    """A field from the client's model (snake_case attribute) or plain JSON (camelCase)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, attr, None)


def _health(value: Any) -> str:
    return str(value) if value in HEALTH_STATES else UNKNOWN


def device_health(container_statuses: Iterable[Any] | None) -> tuple[DeviceHealth, ...]:
    """Every (container, resource, device) health in the pod's container statuses."""
    found: list[DeviceHealth] = []
    for status in container_statuses or ():
        container = str(_get(status, "name", "name") or "")
        for resource in _get(status, "allocated_resources_status",
                             "allocatedResourcesStatus") or ():
            name = str(_get(resource, "name", "name") or "")[:_MAX_RESOURCE]
            for device in _get(resource, "resources", "resources") or ():
                found.append(DeviceHealth(
                    container=container, resource=name,
                    resource_id=str(_get(device, "resource_id", "resourceID") or ""),
                    health=_health(_get(device, "health", "health"))))
    return tuple(found)


class HealthPod(Protocol):
    """What the family needs of a pod (``pods.PodInfo``, which imports this module)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def device_health(self) -> tuple[DeviceHealth, ...]: ...


def build_device_health_family(pods: Iterable[HealthPod], hostname: str) -> Metric:
    family = Metric("steward_pod_device_health",
                    "Devices of that resource allocated to the container, by the health "
                    "Kubernetes reports in pod status (allocatedResourcesStatus, KEP-4680).",
                    "gauge")
    for pod in pods:
        counts: dict[tuple[str, str, str], int] = {}
        for item in pod.device_health:
            key = (item.container, item.resource, item.health)
            counts[key] = counts.get(key, 0) + 1
        for (container, resource, health), count in sorted(counts.items()):
            family.add_sample(family.name, {
                "namespace": pod.namespace, "pod": pod.name, "container": container,
                "resource": resource, "health": health, "hostname": hostname}, float(count))
    return family
