"""Chart tests render helm/steward with the real Helm 4 binary (scripts/install-helm.sh).

Every test runs helm at least once (about a second each): the fast lane leaves them out.
"""

from __future__ import annotations

import pytest

from tests.support.binaries import require_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/helm/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def helm() -> str:
    return require_binary("helm")
