"""Fixtures for the Kubernetes API stand-in's own tests: one server per module, a fresh
namespace per test so that tests never see each other's objects."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from kubernetes import client

from agent.sim.kube_api import KubeApiServer

_names = itertools.count()


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture(scope="module")
def api_client(kube: KubeApiServer) -> Iterator[client.ApiClient]:
    api = kube.api_client()
    yield api
    api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def apps(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def ns(core: client.CoreV1Api) -> str:
    name = f"t{next(_names)}"
    core.create_namespace({"metadata": {"name": name}})
    return name
