"""The node's pod cache against the Kubernetes API stand-in (tests/conftest.py): node ``n1``
watching the ``default`` and ``ml`` namespaces, quick timeouts and backoff."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from agent.node.pods import PodCache
from agent.sim.kube_api import KubeApiServer


@pytest.fixture
def kube_namespaces() -> tuple[str, ...]:
    return ("default", "ml")


@pytest.fixture
def cache(kube: KubeApiServer) -> Iterator[PodCache]:
    api = kube.api_client()
    pod_cache = PodCache(client.CoreV1Api(api), "n1", watch_timeout_seconds=5,
                         request_timeout=2, backoff_initial=0.05, backoff_max=0.2)
    yield pod_cache
    pod_cache.stop()
    api.close()
