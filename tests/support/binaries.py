"""Finding the real server binaries the integration tests start.

With ``CI=true`` a missing binary fails the test: CI must never pass by skipping the
tests that matter. Elsewhere it skips with the install command in the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# scripts/install-test-deps.sh puts binaries that Debian does not ship (helm) here.
TOOLS_BIN = ROOT / ".tools" / "bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str) -> str:
    """Return the path of ``name`` or fail (CI) / skip (elsewhere) the calling test."""
    found = shutil.which(name) or shutil.which(name, path=str(TOOLS_BIN))
    if found:
        return found
    message = f"{name} not found on PATH; run scripts/install-test-deps.sh"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
