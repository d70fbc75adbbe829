"""Fixtures for the Kubernetes API stand-in's own tests: one server per module, a fresh
namespace per test so that tests never see each other's objects."""

from __future__ import annotations

import itertools

import pytest
from kubernetes import client

from agent.sim.kube_api import KubeApiServer
from tests.support.kube import QUICK_BOOKMARKS, KubeStandIns

_names = itertools.count()


@pytest.fixture(scope="module")
def kube(make_module_kube: KubeStandIns) -> KubeApiServer:
    return make_module_kube(bookmark_interval=QUICK_BOOKMARKS)


@pytest.fixture(scope="module")
def api_client(make_module_kube: KubeStandIns, kube: KubeApiServer) -> client.ApiClient:
    return make_module_kube.api_client(kube)


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
