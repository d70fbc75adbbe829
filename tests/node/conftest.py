"""The node's pod cache against the Kubernetes API stand-in (tests/conftest.py) through the
node's own client: node ``n1`` watching the ``default`` and ``ml`` namespaces, quick
timeouts and backoff."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clients.kubernetes.rest import PodListWatch, load_endpoint
from agent.config import KubernetesConfig
from agent.node.pods import PodCache
from agent.sim.kube_api import KubeApiServer


@pytest.fixture
def kube_namespaces() -> tuple[str, ...]:
    return ("default", "ml")


@pytest.fixture
def pod_api(tmp_path: Path) -> Callable[[KubeApiServer], PodListWatch]:
    """The node's own client for a stand-in, configured from a kubeconfig as in production."""
    def connect(kube: KubeApiServer) -> PodListWatch:
        kubeconfig = kube.kubeconfig(tmp_path / f"node-{kube.port}.kubeconfig")
        return PodListWatch(load_endpoint(KubernetesConfig(kubeconfig=kubeconfig),
                                          environ={}))

    return connect


@pytest.fixture
def cache(kube: KubeApiServer,
          pod_api: Callable[[KubeApiServer], PodListWatch]) -> Iterator[PodCache]:
    pod_cache = PodCache(pod_api(kube), "n1", watch_timeout_seconds=5,
                         request_timeout=2, backoff_initial=0.05, backoff_max=0.2)
    yield pod_cache
    pod_cache.stop()
