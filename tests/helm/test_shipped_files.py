"""What the chart ships from the rest of the repository: the generated PrometheusRule
unchanged, every alert with its runbook, every dashboard as a sidecar-labelled ConfigMap, and
the chart's copies in sync with their sources (scripts/sync-chart-files.sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helm.chart import CHART, NAMESPACE, RELEASE, ROOT, render

SYNC = ROOT / "scripts" / "sync-chart-files.sh"
SOURCE_RULE = ROOT / "alerts" / "prometheusrule.yaml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))


def run_sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(root / "scripts" / "sync-chart-files.sh"), *args],
                          capture_output=True, text=True, timeout=120, check=False, cwd=root)


def test_chart_copies_are_in_sync() -> None:
    result = run_sync(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_sync_check_notices_a_stale_copy(tmp_path: Path) -> None:
    """The check above can fail: in a copy of the repository, a changed dashboard is stale
    until the script runs, and a deleted one is removed from the chart."""
    for part in ("scripts", "alerts", "dashboards", "agent", "helm"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    source = tmp_path / "dashboards" / DASHBOARDS[0].name
    source.write_text(source.read_text(encoding="utf-8") + " ", encoding="utf-8")
    (tmp_path / "dashboards" / DASHBOARDS[1].name).unlink()
    stale = run_sync(tmp_path, "--check")
    assert stale.returncode == 1
    assert f"files/dashboards/{DASHBOARDS[0].name} is stale" in stale.stderr
    assert f"files/dashboards/{DASHBOARDS[1].name} has no source" in stale.stderr
    assert run_sync(tmp_path).returncode == 0
    assert run_sync(tmp_path, "--check").returncode == 0
    copies = tmp_path / "helm" / "steward" / "files" / "dashboards"
    assert (copies / DASHBOARDS[0].name).read_bytes() == source.read_bytes()
    assert not (copies / DASHBOARDS[1].name).exists()


def test_prometheus_rule_is_the_generated_one_unchanged(helm: str) -> None:
    rendered = render(helm, "all-features")
    (rule,) = rendered.of_kind("PrometheusRule")
    source = yaml.safe_load(SOURCE_RULE.read_text(encoding="utf-8"))
    assert rule["apiVersion"] == source["apiVersion"]
    assert rule["spec"] == source["spec"]
    # Byte for byte, not only equal once parsed.
    source_spec = SOURCE_RULE.read_text(encoding="utf-8").split("\nspec:\n", 1)[1]
    assert "\nspec:\n" + source_spec in rendered.text
    # Metadata: the same name; the namespace and release labels added, nothing removed.
    assert set(rule["metadata"]) == {"name", "namespace", "labels"}
    assert rule["metadata"]["name"] == source["metadata"]["name"]
    assert rule["metadata"]["namespace"] == NAMESPACE
    labels = rule["metadata"]["labels"]
    assert source["metadata"]["labels"].items() <= labels.items()
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["release"] == "kube-prometheus-stack"


def test_every_alert_has_its_runbook_url(helm: str) -> None:
    (rule,) = render(helm, "all-features").of_kind("PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) >= 21
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        assert url.startswith("https://"), alert["alert"]
        assert url.endswith(f"/{alert['alert']}.md"), url
        assert (ROOT / "runbooks" / f"{alert['alert']}.md").is_file(), alert["alert"]


@pytest.mark.parametrize(("values", "namespace", "annotations"), [
    ("default", NAMESPACE, None),
    ("all-features", "monitoring", {"grafana_folder": "Steward"}),
])
def test_dashboards_are_sidecar_configmaps(helm: str, values: str, namespace: str,
                                           annotations: dict[str, str] | None) -> None:
    maps = [cm for cm in render(helm, values).of_kind("ConfigMap")
            if cm["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(maps) == len(DASHBOARDS) >= 7
    shipped = {}
    for cm in maps:
        assert cm["metadata"]["namespace"] == namespace
        assert cm["metadata"].get("annotations") == annotations
        ((key, text),) = cm["data"].items()
        assert key.endswith(".json")
        shipped[json.loads(text)["uid"]] = text
    for path in DASHBOARDS:
        source = path.read_text(encoding="utf-8")
        assert shipped[json.loads(source)["uid"]] == source


def test_dashboards_can_be_left_out(helm: str) -> None:
    rendered = render(helm, "minimal")
    assert not [cm for cm in rendered.of_kind("ConfigMap") if "grafana_dashboard" in
                cm["metadata"]["labels"]]
    assert (CHART / "files" / "dashboards").is_dir()
