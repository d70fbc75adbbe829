"""Real servers for the stale-images and orphaned-buckets jobs: moto (in-process, over HTTP),
the Debian docker-registry, and the Kubernetes API stand-in (tests/conftest.py) with the
namespaces the jobs' workloads live in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent.sim.moto import Moto, running_moto
from tests.support.registry import Registry, start_registry

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    with running_moto() as server:
        yield server


@pytest.fixture
def aws(moto_server: Moto) -> Moto:
    """moto with nothing in it: every test starts from an empty account."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = start_registry()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_namespaces() -> tuple[str, ...]:
    return ("default", "ml", "data")
