"""The alert catalog, its lint, the XID table and the three rendered rule files."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from agent.alerts.catalog import CATALOG, RECORDING_RULES, Alert, alerts_by_group
from agent.alerts.lint import (
    MAX_RULES_PER_GROUP,
    OWNER_SECTION,
    RUNBOOK_SECTIONS,
    lint_catalog,
)
from agent.alerts.render import (
    GRAFANA_ALERTS_FILE,
    PROMETHEUS_RULE_RESOURCE_FILE,
    PROMETHEUS_RULES_FILE,
    grafana_rule_uid,
    inline_records,
    render_alert_files,
)
from agent.alerts.xid import (
    TABLE_END_MARKER,
    TABLE_START_MARKER,
    XID_TABLE,
    XidAction,
    critical_xids,
    embedded_xid_table,
    render_xid_table_markdown,
    sync_xid_table,
)
from agent.finops.recording import GROUP as RECORDING_GROUP
from agent.finops.recording import RULES_FILE, recording_rule_groups, recording_rules
from agent.links import DEFAULT_RUNBOOK_BASE_URL

ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = ROOT / "alerts"

# SPEC.md's alert list with the severities the issue fixed.
SPEC_ALERTS = {
    "GpuLost": "critical",
    "GpuXidCritical": "critical",
    "GpuXidErrors": "warning",
    "GpuEccUncorrectable": "critical",
    "GpuRowRemapFailure": "critical",
    "GpuTemperatureHigh": "warning",
    "GpuThermalThrottling": "warning",
    "GpuMemoryNearlyFull": "warning",
    "GpuIdleAllocated": "warning",
    "PodCrashLooping": "warning",
    "PodOomKilled": "warning",
    "GpuPodPendingTooLong": "warning",
    "PipelineRunFailed": "warning",
    "PipelineStale": "warning",
    "PipelineRunTooLong": "warning",
    "StewardAgentDown": "critical",
    "StewardCollectorFailing": "warning",
    "StewardGpuAttributionFailing": "warning",
    "StewardHygieneJobFailing": "warning",
    "StewardHygieneBlastRadiusTripped": "warning",
    "StewardNotifierDeliveryFailing": "critical",
}


def write_good_runbooks(directory: Path, alerts: tuple[Alert, ...] = CATALOG) -> None:
    """Minimal runbooks that satisfy the lint, so that each test can break one thing."""
    for alert in alerts:
        table = ""
        if alert.name == "GpuXidCritical":
            table = f"{TABLE_START_MARKER}\n{render_xid_table_markdown()}\n{TABLE_END_MARKER}\n"
        names = (*RUNBOOK_SECTIONS, *((OWNER_SECTION,) if alert.owners else ()))
        sections = "".join(f"## {name}\n\nText.\n\n" for name in names)
        (directory / f"{alert.name}.md").write_text(
            f"---\nalert: {alert.name}\nseverity: {alert.severity}\n---\n# {alert.name}\n\n"
            f"{sections}{table}",
            encoding="utf-8",
        )


@pytest.fixture()
def runbooks(tmp_path: Path) -> Path:
    write_good_runbooks(tmp_path)
    return tmp_path


# --- the catalog -----------------------------------------------------------------------


def test_every_spec_alert_is_in_the_catalog_with_its_severity() -> None:
    found = {alert.name: alert.severity for alert in CATALOG}
    assert {name: found.get(name) for name in SPEC_ALERTS} == SPEC_ALERTS


def test_the_real_catalog_passes_the_lint(runbooks: Path) -> None:
    assert lint_catalog(runbooks_dir=runbooks) == []


def test_the_real_catalog_passes_the_lint_with_the_repository_runbooks() -> None:
    assert lint_catalog(runbooks_dir=ROOT / "runbooks") == []


def test_groups_are_few_and_small() -> None:
    groups = alerts_by_group()
    assert list(groups) == [
        "steward-gpu-hardware", "steward-workloads", "steward-pipelines", "steward-self",
    ]
    assert all(len(members) <= MAX_RULES_PER_GROUP for members in groups.values())


def test_gpu_alerts_keep_the_labels_on_call_needs() -> None:
    for alert in CATALOG:
        if alert.dashboard_uid == "steward-gpu-node":
            for label in ("hostname", "gpu", "UUID", "modelName"):
                assert label in alert.expr, (alert.name, label)
                assert f"$labels.{label}" in alert.description, (alert.name, label)
    idle = next(a for a in CATALOG if a.name == "GpuIdleAllocated")
    for label in ("namespace", "pod", "container", "hostname", "UUID"):
        assert label in idle.expr and f"$labels.{label}" in idle.description


def test_no_grafana_only_variables_in_promql() -> None:
    for alert in CATALOG:
        assert "$__" not in alert.expr, alert.name


# --- the lint on bad catalogs ------------------------------------------------------------

GOOD_ALERT = next(a for a in CATALOG if a.name == "GpuLost")


@pytest.mark.parametrize(("change", "expected"), [
    ({"name": "gpuLost"}, "not CamelCase"),
    ({"name": "GPULost"}, "not CamelCase"),
    ({"name": "Gpu_Lost"}, "not CamelCase"),
    ({"severity": "page"}, "severity 'page' is not one of critical, warning, info"),
    ({"summary": "GPU {{ $labels.gpu }} is lost."}, "summary is templated"),
    ({"summary": "A GPU is lost"}, "summary does not end with a full stop"),
    ({"summary": ""}, "summary is empty"),
    ({"description": "  "}, "description is empty"),
    ({"description": "A GPU is lost."}, "description is not templated"),
    ({"dashboard_uid": "gpu-node"}, "dashboard uid 'gpu-node' is not in agent.links"),
    ({"for_duration": "5 minutes"}, "is not a Prometheus duration"),
    ({"expr": ""}, "expr is empty"),
    ({"group": ""}, "no group"),
    ({"labels": {"severity": "critical"}}, "label 'severity' is set by the catalog itself"),
    ({"labels": {"team-name": "gpu"}}, "label 'team-name' is not a valid label name"),
])
def test_lint_rejects_a_bad_rule(runbooks: Path, change: dict[str, object],
                                 expected: str) -> None:
    bad = dataclasses.replace(GOOD_ALERT, **change)  # type: ignore[arg-type]
    write_good_runbooks(runbooks, (bad,))
    problems = lint_catalog(runbooks_dir=runbooks, alerts=(bad,))
    assert any(expected in problem for problem in problems), problems
    assert all(problem.startswith(f"{bad.name}: ") for problem in problems)


def test_lint_accepts_the_good_rule(runbooks: Path) -> None:
    assert lint_catalog(runbooks_dir=runbooks, alerts=(GOOD_ALERT,)) == []


def test_lint_rejects_duplicate_names(runbooks: Path) -> None:
    problems = lint_catalog(runbooks_dir=runbooks, alerts=(GOOD_ALERT, GOOD_ALERT))
    assert problems == ["GpuLost: defined 2 times"]


def test_lint_rejects_a_group_over_the_limit(runbooks: Path) -> None:
    alerts = tuple(
        dataclasses.replace(GOOD_ALERT, name=f"GpuLost{n}", group="big")
        for n in range(MAX_RULES_PER_GROUP + 1)
    )
    write_good_runbooks(runbooks, alerts)
    assert lint_catalog(runbooks_dir=runbooks, alerts=alerts) == [
        f"group big: {MAX_RULES_PER_GROUP + 1} rules, more than {MAX_RULES_PER_GROUP}"
    ]


def test_lint_rejects_a_name_too_long_for_a_grafana_uid(runbooks: Path) -> None:
    bad = dataclasses.replace(GOOD_ALERT, name="GpuLostBecauseItFellOffTheBusAgainAndAgain")
    write_good_runbooks(runbooks, (bad,))
    problems = lint_catalog(runbooks_dir=runbooks, alerts=(bad,))
    assert any("too long for a Grafana uid" in p for p in problems), problems


def test_lint_reports_a_missing_runbook(runbooks: Path) -> None:
    (runbooks / "GpuLost.md").unlink()
    assert lint_catalog(runbooks_dir=runbooks, alerts=(GOOD_ALERT,)) == [
        f"GpuLost: runbook {runbooks / 'GpuLost.md'} is missing"
    ]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("severity: critical", "severity: warning"),
     "front matter severity: 'warning', the rule says 'critical'"),
    (lambda t: t.replace("alert: GpuLost", "alert: GpuGone"),
     "front matter alert: 'GpuGone', the rule says 'GpuLost'"),
    (lambda t: t.replace("severity: critical\n", ""),
     "front matter severity: None"),
    (lambda t: t.replace("---\nalert: GpuLost\nseverity: critical\n---\n", ""),
     "has no front matter"),
    (lambda t: t.replace("alert: GpuLost", "alert: [GpuLost"), "front matter is not YAML"),
    (lambda t: t.replace("## Mitigation", "## Fixes"), "has no Mitigation section"),
])
def test_lint_rejects_a_bad_runbook(runbooks: Path, edit: object, expected: str) -> None:
    path = runbooks / "GpuLost.md"
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")  # type: ignore[operator]
    problems = lint_catalog(runbooks_dir=runbooks, alerts=(GOOD_ALERT,))
    assert any(expected in problem for problem in problems), problems


def test_lint_reports_a_stale_or_missing_xid_table(runbooks: Path) -> None:
    xid_alert = tuple(a for a in CATALOG if a.name == "GpuXidCritical")
    path = runbooks / "GpuXidCritical.md"
    text = path.read_text(encoding="utf-8")
    assert lint_catalog(runbooks_dir=runbooks, alerts=xid_alert) == []

    path.write_text(text.replace("| 79 |", "| 97 |"), encoding="utf-8")
    assert lint_catalog(runbooks_dir=runbooks, alerts=xid_alert) == [
        f"GpuXidCritical: runbook {path} has a stale XID table; run `steward build`"
    ]

    path.write_text(text.replace(TABLE_START_MARKER, "<!-- table -->"), encoding="utf-8")
    problems = lint_catalog(runbooks_dir=runbooks, alerts=xid_alert)
    assert problems == [
        f"GpuXidCritical: runbook {path} has no {TABLE_START_MARKER} ... {TABLE_END_MARKER} "
        "section"
    ]


# --- the XID table -----------------------------------------------------------------------


def test_xid_actions_follow_nvidia_buckets() -> None:
    by_xid = {info.xid: info for info in XID_TABLE}
    assert len(by_xid) == len(XID_TABLE), "an XID is listed twice"
    assert by_xid[79].action is XidAction.REBOOT_NODE  # RESTART_BM
    assert by_xid[48].action is XidAction.RESET_GPU
    assert by_xid[64].action is XidAction.DRAIN_AND_RMA
    for info in XID_TABLE:
        if info.nvidia_bucket == "RESET_GPU" and info.xid != 64:
            assert info.action is XidAction.RESET_GPU, info
        if info.nvidia_bucket == "RESTART_APP":
            assert info.action is XidAction.RESTART_APP, info
        if info.nvidia_bucket == "IGNORE":
            assert info.action is XidAction.NONE, info


def test_application_xids_do_not_page() -> None:
    critical = set(critical_xids())
    assert {13, 31, 43, 45, 63, 94}.isdisjoint(critical)
    assert {46, 48, 62, 64, 74, 79, 95, 119, 120}.issubset(critical)


def test_xid_rules_use_the_table() -> None:
    critical = next(a for a in CATALOG if a.name == "GpuXidCritical")
    others = next(a for a in CATALOG if a.name == "GpuXidErrors")
    regex = "|".join(str(x) for x in critical_xids())
    assert f'xid=~"{regex}"' in critical.expr
    assert f'xid!~"{regex}"' in others.expr
    for action in ("reset-gpu", "reboot-node", "drain-and-rma"):
        assert f'"action", "{action}"' in critical.expr
        assert f'eq $labels.action "{action}"' in critical.description
    for text in ("drain and reboot the node", "drain the node and RMA the GPU",
                 "reset the GPU"):
        assert text in critical.description


def test_xid_table_markdown_lists_every_xid_once() -> None:
    table = render_xid_table_markdown()
    rows = [line for line in table.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == [info.xid for info in XID_TABLE]
    row_79 = next(row for row in rows if row.startswith("| 79 |"))
    assert "`RESTART_BM`" in row_79 and "drain and reboot the node" in row_79
    assert "GpuXidCritical" in row_79
    assert "GpuXidErrors" in next(row for row in rows if row.startswith("| 13 |"))


def test_sync_xid_table_rewrites_only_the_marked_section(tmp_path: Path) -> None:
    runbook = tmp_path / "GpuXidCritical.md"
    before, after = "# GpuXidCritical\n\nIntro.\n\n", "\n\n## Mitigation\n\nSteps.\n"
    runbook.write_text(f"{before}{TABLE_START_MARKER}\nold table\n{TABLE_END_MARKER}{after}",
                       encoding="utf-8")
    assert sync_xid_table(runbook) is True
    text = runbook.read_text(encoding="utf-8")
    assert text.startswith(before) and text.endswith(after)
    assert embedded_xid_table(text) == render_xid_table_markdown().strip()
    assert sync_xid_table(runbook) is False
    assert runbook.read_text(encoding="utf-8") == text


def test_sync_xid_table_refuses_a_runbook_without_markers(tmp_path: Path) -> None:
    runbook = tmp_path / "GpuXidCritical.md"
    runbook.write_text("# GpuXidCritical\n", encoding="utf-8")
    with pytest.raises(ValueError, match="xid-table:start"):
        sync_xid_table(runbook)


# --- the rendered files ------------------------------------------------------------------


def test_committed_alert_files_are_current() -> None:
    for name, content in render_alert_files(recording_groups=recording_rule_groups()).items():
        committed = (ALERTS_DIR / name).read_text(encoding="utf-8")
        assert committed == content, f"alerts/{name} is stale: run `steward build`"


def test_the_prometheusrule_ships_the_finops_recording_rules_too() -> None:
    resource = yaml.safe_load((ALERTS_DIR / PROMETHEUS_RULE_RESOURCE_FILE).read_text())
    [group] = [g for g in resource["spec"]["groups"] if g["name"] == RECORDING_GROUP]
    assert group["interval"] == "1h"
    assert [r["record"] for r in group["rules"]] == list(recording_rules())
    rules_file = yaml.safe_load((ALERTS_DIR / RULES_FILE).read_text())
    assert rules_file["groups"] == [group]


def test_rendering_is_deterministic() -> None:
    assert render_alert_files() == render_alert_files()
    assert set(render_alert_files()) == {
        PROMETHEUS_RULES_FILE, PROMETHEUS_RULE_RESOURCE_FILE, GRAFANA_ALERTS_FILE,
    }


def test_prometheus_rules_carry_labels_and_annotations() -> None:
    document = yaml.safe_load(render_alert_files()[PROMETHEUS_RULES_FILE])
    every = [rule for group in document["groups"] for rule in group["rules"]]
    rules = [rule for rule in every if "alert" in rule]
    assert [rule["record"] for rule in every if "record" in rule] == [
        r.record for r in RECORDING_RULES]
    assert [rule["alert"] for rule in rules] == [alert.name for alert in CATALOG]
    for rule, alert in zip(rules, CATALOG, strict=True):
        assert list(rule) == ["alert", "expr", "for", "labels", "annotations"]
        assert rule["labels"]["severity"] == alert.severity
        assert rule["annotations"] == {
            "summary": alert.summary,
            "description": alert.description,
            "runbook_url": f"{DEFAULT_RUNBOOK_BASE_URL}/{alert.name}.md",
            "dashboard_uid": alert.dashboard_uid,
            **alert.annotations,
        }
    notifier = next(rule for rule in rules if rule["alert"] == "StewardNotifierDeliveryFailing")
    assert notifier["labels"] == {"severity": "critical", "routing": "bypass-notifier"}


def test_runbook_base_url_is_configurable() -> None:
    files = render_alert_files(runbook_base_url="https://wiki.example.com/steward/")
    for name in (PROMETHEUS_RULES_FILE, PROMETHEUS_RULE_RESOURCE_FILE, GRAFANA_ALERTS_FILE):
        assert "https://wiki.example.com/steward/GpuLost.md" in files[name]
        assert DEFAULT_RUNBOOK_BASE_URL not in files[name]


def test_prometheusrule_resource_has_the_same_groups() -> None:
    files = render_alert_files()
    plain = yaml.safe_load(files[PROMETHEUS_RULES_FILE])
    resource = yaml.safe_load(files[PROMETHEUS_RULE_RESOURCE_FILE])
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "steward"
    assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "steward"
    assert resource["spec"]["groups"] == plain["groups"]


def test_committed_grafana_alerts_have_one_rule_per_catalog_rule() -> None:
    document = json.loads((ALERTS_DIR / GRAFANA_ALERTS_FILE).read_text(encoding="utf-8"))
    assert document["apiVersion"] == 1
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert [rule["title"] for rule in rules] == [alert.name for alert in CATALOG]
    assert len({rule["uid"] for rule in rules}) == len(rules)
    for group in document["groups"]:
        assert group["folder"] == "Steward" and group["interval"] == "1m"
    for rule, alert in zip(rules, CATALOG, strict=True):
        assert rule["uid"] == grafana_rule_uid(alert.name) and len(rule["uid"]) <= 40
        assert rule["grafana_alert"]["title"] == alert.name
        assert rule["for"] == alert.for_duration
        assert rule["labels"]["severity"] == alert.severity
        assert rule["annotations"]["summary"] == alert.summary
        assert rule["annotations"]["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE_URL}/{alert.name}.md"
        assert rule["annotations"]["dashboard_uid"] == alert.dashboard_uid
        query, condition = rule["data"]
        assert query["datasourceUid"] == "prometheus"
        assert query["model"]["expr"] == inline_records(alert.expr)
        assert query["model"]["instant"] is True
        assert condition["model"]["type"] == "math"
        assert rule["condition"] == condition["refId"]
        assert rule["noDataState"] == "OK"


def test_grafana_annotations_use_grafanas_value_variable() -> None:
    document = json.loads(render_alert_files()[GRAFANA_ALERTS_FILE])
    rules = {rule["title"]: rule for group in document["groups"] for rule in group["rules"]}
    description = rules["GpuTemperatureHigh"]["annotations"]["description"]
    assert '{{ $values.query.Value | printf "%.0f" }}' in description
    assert not re.search(r"\$value\b", json.dumps(document))


def test_grafana_datasource_uid_is_a_parameter() -> None:
    document = json.loads(render_alert_files(grafana_datasource_uid="mimir")[GRAFANA_ALERTS_FILE])
    queries = [rule["data"][0] for group in document["groups"] for rule in group["rules"]]
    assert {q["datasourceUid"] for q in queries} == {"mimir"}
    assert {q["model"]["datasource"]["uid"] for q in queries} == {"mimir"}
