"""The real control plane, one for the whole session: scripts/real-k8s.sh up/down.

Missing etcd or an unbuilt kube-apiserver fails the tests in CI (CI=true) and skips them
elsewhere, with the command that installs them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realk8s.cluster import RealCluster, binaries_dir
from tests.support.binaries import in_ci


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/realk8s/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.realk8s)
            item.add_marker(pytest.mark.integration)


def _require_control_plane() -> None:
    missing = []
    if shutil.which("etcd") is None:
        missing.append("etcd (apt-get install etcd-server)")
    bins = binaries_dir()
    for name in ("kube-apiserver", "kube-controller-manager"):
        if not (bins / name).is_file():
            missing.append(f"{bins / name} (scripts/real-k8s.sh build)")
    if missing:
        message = ("real Kubernetes control plane missing: " + ", ".join(missing)
                   + "; run scripts/install-test-deps.sh")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def real_k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    _require_control_plane()
    directory: Path = tmp_path_factory.mktemp("real-k8s")
    cluster = RealCluster.up(directory)
    try:
        yield cluster
    finally:
        cluster.down()
