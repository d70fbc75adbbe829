"""Controller tests share one Kubernetes API stand-in per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from agent.sim.kube_api import KubeApiServer


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(bookmark_interval=0.2, namespaces=("default", "steward", "ml")) as api:
        yield api


@pytest.fixture
def api_client(kube: KubeApiServer) -> Iterator[client.ApiClient]:
    api = kube.api_client()
    yield api
    api.close()
