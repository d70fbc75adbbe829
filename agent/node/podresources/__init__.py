"""The kubelet PodResources v1 API: its proto, the generated stubs and the node agent's client."""

from __future__ import annotations

from agent.node.podresources.client import (
    DEFAULT_SOCKET_PATH,
    ContainerDevices,
    PodResourcesClient,
    PodResourcesError,
    Reason,
)

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "ContainerDevices",
    "PodResourcesClient",
    "PodResourcesError",
    "Reason",
]
