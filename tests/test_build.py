"""``steward build``: regenerates every committed artefact, idempotently; --check for CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # `steward build` in a subprocess per test

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in ("alerts", "dashboards", "runbooks", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def steward_build(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "build", "--root", str(root),
                           *extra], capture_output=True, text=True, check=False, timeout=120)


def test_committed_files_are_fresh() -> None:
    result = steward_build(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_check_reports_stale_files_and_writes_nothing(tree: Path) -> None:
    rules = tree / "alerts" / "prometheus-rules.yaml"
    rules.write_text("groups: []\n", encoding="utf-8")
    dashboard = tree / "dashboards" / "gpu-fleet.json"
    dashboard.unlink()
    result = steward_build(tree, "--check")
    assert result.returncode == 1
    assert f"stale {rules}" in result.stdout
    assert f"stale {dashboard}" in result.stdout
    assert rules.read_text(encoding="utf-8") == "groups: []\n"
    assert not dashboard.exists()


def test_build_rewrites_then_is_idempotent(tree: Path) -> None:
    (tree / "alerts" / "prometheusrule.yaml").write_text("{}\n", encoding="utf-8")
    runbook = tree / "runbooks" / "GpuXidCritical.md"
    text = runbook.read_text(encoding="utf-8")
    start, end = text.index("<!-- xid-table:start -->"), text.index("<!-- xid-table:end -->")
    runbook.write_text(text[:start] + "<!-- xid-table:start -->\nold\n" + text[end:],
                       encoding="utf-8")
    first = steward_build(tree)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split()) == sorted(
        ["wrote", str(tree / "alerts" / "prometheusrule.yaml"), "wrote", str(runbook)])
    assert runbook.read_text(encoding="utf-8") == text
    second = steward_build(tree)
    assert second.returncode == 0 and second.stdout == ""
    for folder in ("alerts", "dashboards", "runbooks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file():
                assert (tree / path.relative_to(ROOT)).read_bytes() == path.read_bytes(), path


def test_missing_runbook_and_orphan_dashboard_fail_the_lint(tree: Path) -> None:
    (tree / "runbooks" / "GpuLost.md").unlink()
    (tree / "dashboards" / "old.json").write_text("{}\n", encoding="utf-8")
    result = steward_build(tree)
    assert result.returncode == 1
    assert "GpuLost" in result.stderr
    assert "old.json: no old.dashboard.py source" in result.stderr


def test_not_a_checkout_is_a_usage_error(tmp_path: Path) -> None:
    result = steward_build(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"steward: {tmp_path} has no dashboards/ folder: run steward build from the "
        "repository root or pass --root"]
