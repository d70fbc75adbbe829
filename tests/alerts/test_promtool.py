"""The generated rules against the real promtool: `check rules` and the unit tests.

Also checks that every catalog alert has unit tests of all three kinds, and that promtool
does fail the suite when an expectation or a rule is wrong.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.alerts.catalog import CATALOG, RECORDING_RULES
from agent.alerts.render import (
    PROMETHEUS_RULES_FILE,
    inline_records,
    render_prometheus_rule_resource,
)
from tests.support.binaries import require_binary

pytestmark = pytest.mark.slow  # a promtool run per test

ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = ROOT / "alerts"
TESTS_DIR = ALERTS_DIR / "tests"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def unit_test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yaml"))


def test_check_rules_passes(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", f"alerts/{PROMETHEUS_RULES_FILE}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(CATALOG) + len(RECORDING_RULES)} rules found" in result.stdout


def test_check_rules_passes_on_the_prometheusrule_groups(promtool: str, tmp_path: Path) -> None:
    resource = yaml.safe_load(render_prometheus_rule_resource())
    rules_file = tmp_path / "from-prometheusrule.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}),
                          encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_pass(promtool: str) -> None:
    files = [str(path.relative_to(ROOT)) for path in unit_test_files()]
    assert len(files) >= 4
    result = run_promtool(promtool, "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


def test_every_alert_has_firing_and_quiet_cases() -> None:
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in unit_test_files():
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["rule_files"] == [f"../{PROMETHEUS_RULES_FILE}"], path.name
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = firing if case.get("exp_alerts") else quiet
                counts[case["alertname"]] = counts.get(case["alertname"], 0) + 1
                for expected in case.get("exp_alerts") or []:
                    annotations = expected["exp_annotations"]
                    alert = next(a for a in CATALOG if a.name == case["alertname"])
                    assert set(annotations) == {
                        "summary", "description", "runbook_url", "dashboard_uid",
                        *alert.annotations}, (path.name, case["alertname"])
                    assert "severity" in expected["exp_labels"]
    names = {alert.name for alert in CATALOG}
    assert set(firing) == names, names ^ set(firing)
    assert set(quiet) == names, names ^ set(quiet)


def _copy_suite(tmp_path: Path) -> Path:
    """The rules and their tests in a scratch directory, laid out as in the repository."""
    shutil.copytree(TESTS_DIR, tmp_path / "alerts" / "tests")
    shutil.copy(ALERTS_DIR / PROMETHEUS_RULES_FILE, tmp_path / "alerts" / PROMETHEUS_RULES_FILE)
    return tmp_path / "alerts"


def test_a_wrong_expectation_fails(promtool: str, tmp_path: Path) -> None:
    alerts = _copy_suite(tmp_path)
    test_file = alerts / "tests" / "gpu-hardware.yaml"
    text = test_file.read_text(encoding="utf-8")
    assert "runbooks/GpuLost.md" in text
    test_file.write_text(text.replace("runbooks/GpuLost.md", "runbooks/GpuGone.md"),
                         encoding="utf-8")
    result = run_promtool(promtool, "test", "rules", str(test_file), cwd=alerts)
    assert result.returncode != 0
    assert "GpuLost" in result.stdout + result.stderr


def test_a_rule_without_its_for_fails(promtool: str, tmp_path: Path) -> None:
    alerts = _copy_suite(tmp_path)
    rules_file = alerts / PROMETHEUS_RULES_FILE
    document = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "GpuTemperatureHigh":
                rule["for"] = "0s"
    rules_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = run_promtool(promtool, "test", "rules",
                          str(alerts / "tests" / "gpu-hardware.yaml"), cwd=alerts)
    assert result.returncode != 0
    assert "GpuTemperatureHigh" in result.stdout + result.stderr


def test_grafana_inlined_expressions_alert_like_the_recorded_ones(promtool: str,
                                                                  tmp_path: Path) -> None:
    """Grafana-managed rules cannot read Steward's recording rules, so their expressions
    inline them (a range over a recorded series becomes a subquery). The owner tests pass
    with every alert's expression inlined and the recording rules gone."""
    alerts = _copy_suite(tmp_path)
    rules_file = alerts / PROMETHEUS_RULES_FILE
    document = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    for group in document["groups"]:
        group["rules"] = [{**rule, "expr": inline_records(rule["expr"])}
                          for rule in group["rules"] if "alert" in rule]
    rules_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert "steward:" not in rules_file.read_text(encoding="utf-8")
    result = run_promtool(promtool, "test", "rules", str(alerts / "tests" / "owners.yaml"),
                          cwd=alerts)
    assert result.returncode == 0, result.stdout + result.stderr
