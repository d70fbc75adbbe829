"""Controller tests use the root stand-in (tests/conftest.py) with these namespaces."""

from __future__ import annotations

import pytest


@pytest.fixture
def kube_namespaces() -> tuple[str, ...]:
    return ("default", "steward", "ml")
