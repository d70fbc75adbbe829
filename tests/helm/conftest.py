"""Chart tests render helm/steward with the real Helm 4 binary (scripts/install-helm.sh)."""

from __future__ import annotations

import pytest

from tests.support.binaries import require_binary


@pytest.fixture(scope="session")
def helm() -> str:
    return require_binary("helm")
