"""What every test folder shares: the Kubernetes API stand-in, the ``steward`` subprocesses a
test started (``processes``), and the fast lane's guard.

The stand-in (``agent.sim.kube_api``) comes from one factory in three lifetimes:
``make_kube`` (until the end of the test), ``make_module_kube`` and ``make_session_kube``;
each stops every server it started. ``kube`` and ``api_client`` are the stand-in most tests
take: quick bookmarks and the namespaces of ``kube_namespaces``, which a folder's conftest
(or a test module) overrides instead of writing its own server fixture. A test that needs
another stand-in asks the factory: ``make_kube(crds=(), grants=...)``.

The fast lane (``make test-fast``) and its guard: tests/support/fast_lane.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from agent.sim.kube_api import KubeApiServer
from tests.support.kube import QUICK_BOOKMARKS, KubeStandIns
from tests.support.steward import StewardProcess

pytest_plugins = ("tests.support.fast_lane",)


@pytest.fixture
def make_kube() -> Iterator[KubeStandIns]:
    with KubeStandIns() as stand_ins:
        yield stand_ins


@pytest.fixture(scope="module")
def make_module_kube() -> Iterator[KubeStandIns]:
    with KubeStandIns() as stand_ins:
        yield stand_ins


@pytest.fixture(scope="session")
def make_session_kube() -> Iterator[KubeStandIns]:
    with KubeStandIns() as stand_ins:
        yield stand_ins


@pytest.fixture
def kube_namespaces() -> tuple[str, ...]:
    return ("default", "steward")


@pytest.fixture
def kube(make_kube: KubeStandIns, kube_namespaces: tuple[str, ...]) -> KubeApiServer:
    return make_kube(bookmark_interval=QUICK_BOOKMARKS, namespaces=kube_namespaces)


@pytest.fixture
def api_client(make_kube: KubeStandIns, kube: KubeApiServer) -> client.ApiClient:
    return make_kube.api_client(kube)


@pytest.fixture
def processes() -> Iterator[list[StewardProcess]]:
    """``steward`` subprocesses a test started (tests/support/steward.py): stopped after it."""
    started: list[StewardProcess] = []
    yield started
    for process in started:
        process.stop()
