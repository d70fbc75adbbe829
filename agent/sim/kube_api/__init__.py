"""The Kubernetes API stand-in (see :mod:`agent.sim.kube_api.server`)."""

from agent.sim.kube_api.server import (
    Fault,
    Grant,
    KubeApiError,
    KubeApiServer,
    RequestRecord,
    parse_label_selector,
    standin_threads,
)

__all__ = [
    "Fault", "Grant", "KubeApiError", "KubeApiServer", "RequestRecord", "parse_label_selector",
    "standin_threads",
]
