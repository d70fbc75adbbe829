"""The dashboards: lint, committed JSON, the lint's own teeth, variable substitution, and
every panel query run against a real Prometheus scraping a synthetic Steward exposition."""

from __future__ import annotations

import copy
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.clients.prometheus import PrometheusClient
from agent.dashboards.lint import (
    default_variable_values,
    iter_panels,
    lint_dashboard,
    panel_queries,
    rate_window_problems,
    substitute_variables,
    variable_queries,
)
from agent.dashboards.panels import (
    Column,
    PanelDefinitionError,
    Query,
    stat,
    table,
    timeseries,
)
from agent.dashboards.render import (
    DashboardError,
    dashboard_sources,
    json_name,
    render_dashboards,
)
from agent.links import DASHBOARD_UIDS, DEFAULT_RUNBOOK_BASE_URL
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"

# The alert catalog's dashboard for each alert (issue "Alerts, runbooks and dashboards as
# code"): the dashboard an alert links to must carry a link to that alert's runbook.
ALERT_DASHBOARDS = {
    "GpuLost": "steward-gpu-node",
    "GpuXidCritical": "steward-gpu-node",
    "GpuXidErrors": "steward-gpu-node",
    "GpuEccUncorrectable": "steward-gpu-node",
    "GpuRowRemapFailure": "steward-gpu-node",
    "GpuTemperatureHigh": "steward-gpu-node",
    "GpuThermalThrottling": "steward-gpu-node",
    "GpuMemoryNearlyFull": "steward-gpu-node",
    "GpuIdleAllocated": "steward-namespace-usage",
    "PodCrashLooping": "steward-pod-health",
    "PodOomKilled": "steward-pod-health",
    "GpuPodPendingTooLong": "steward-pod-health",
    "PipelineRunFailed": "steward-pipelines",
    "PipelineStale": "steward-pipelines",
    "PipelineRunTooLong": "steward-pipelines",
    "StewardAgentDown": "steward-self",
    "StewardCollectorFailing": "steward-self",
    "StewardGpuAttributionFailing": "steward-self",
    "StewardHygieneJobFailing": "steward-hygiene",
    "StewardHygieneBlastRadiusTripped": "steward-hygiene",
    "StewardNotifierDeliveryFailing": "steward-self",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render_dashboards(DASHBOARDS)


@pytest.fixture(scope="module")
def models(rendered: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in rendered.items()}


def _by_uid(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {model["uid"]: model for model in models.values()}


# --- the committed dashboards ------------------------------------------------------------


def test_there_is_one_source_per_dashboard_uid() -> None:
    stems = sorted(json_name(source)[: -len(".json")] for source in dashboard_sources(DASHBOARDS))
    assert stems == sorted(DASHBOARD_UIDS.values())


def test_each_uid_in_links_has_its_dashboard_and_vice_versa(
        models: dict[str, dict[str, Any]]) -> None:
    assert {model["uid"] for model in models.values()} == set(DASHBOARD_UIDS)
    for name, model in models.items():
        assert DASHBOARD_UIDS[model["uid"]] + ".json" == name


@pytest.mark.parametrize("name", sorted(f"{stem}.json" for stem in DASHBOARD_UIDS.values()))
def test_dashboard_lints_clean(models: dict[str, dict[str, Any]], name: str) -> None:
    model = models[name]
    stems = {stem: uid for uid, stem in DASHBOARD_UIDS.items()}
    assert lint_dashboard(model, expected_uid=stems[name[: -len(".json")]]) == []
    assert panel_queries(model), "a dashboard without queries"


def test_committed_json_equals_a_fresh_render(rendered: dict[str, str]) -> None:
    fix = "run steward build"
    for name, text in rendered.items():
        committed = DASHBOARDS / name
        assert committed.is_file(), f"{name} is not committed; {fix}"
        assert committed.read_text() == text, f"{name} is stale; {fix}"


def test_render_is_deterministic(rendered: dict[str, str]) -> None:
    assert render_dashboards(DASHBOARDS) == rendered
    for text in rendered.values():
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2,
                                  ensure_ascii=False) + "\n"


@pytest.mark.parametrize("alert", sorted(ALERT_DASHBOARDS))
def test_the_alerts_dashboard_links_its_runbook(models: dict[str, dict[str, Any]],
                                                alert: str) -> None:
    model = _by_uid(models)[ALERT_DASHBOARDS[alert]]
    urls = [link["url"] for panel in iter_panels(model) for link in panel.get("links") or []]
    assert f"{DEFAULT_RUNBOOK_BASE_URL}/{alert}.md" in urls


def test_rates_use_the_rate_interval_everywhere(models: dict[str, dict[str, Any]]) -> None:
    exprs = [expr for model in models.values() for _, expr in panel_queries(model)]
    rated = [e for e in exprs if "rate(" in e or "increase(" in e]
    assert rated, "no rate()/increase() in any dashboard"
    assert all("$__rate_interval" in e or "$__range" in e for e in rated)


def test_runbook_base_url_is_configurable(tmp_path: Path) -> None:
    rendered = render_dashboards(DASHBOARDS, runbook_base_url="https://wiki.example/rb/")
    text = rendered["gpu-node.json"]
    assert "https://wiki.example/rb/GpuLost.md" in text
    assert DEFAULT_RUNBOOK_BASE_URL not in text


SOURCE_HEADER = """
from agent.dashboards.panels import Query, Section, stat
from agent.dashboards.panels import dashboard as steward_dashboard
"""


def test_render_refuses_a_dashboard_that_fails_the_lint(tmp_path: Path) -> None:
    # gpu-fleet.dashboard.py claiming the node dashboard's uid.
    (tmp_path / "gpu-fleet.dashboard.py").write_text(SOURCE_HEADER + """
dashboard = steward_dashboard(uid="steward-gpu-node", title="t", description="d", sections=[
    Section("s", [stat(title="x", unit="short", description="d", queries=[Query("up")])])])
""")
    with pytest.raises(DashboardError, match="not the stable uid 'steward-gpu-fleet'"):
        render_dashboards(tmp_path)


def test_render_refuses_a_source_without_a_dashboard(tmp_path: Path) -> None:
    (tmp_path / "gpu-fleet.dashboard.py").write_text("board = None\n")
    with pytest.raises(DashboardError, match="defines no variable 'dashboard'"):
        render_dashboards(tmp_path)


# --- the panel factory -------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: timeseries(title="t", description="d", unit="", queries=[Query("up")]),
    lambda: timeseries(title="t", description=" ", unit="short", queries=[Query("up")]),
    lambda: stat(title="t", description="", unit="short", queries=[Query("up")]),
    lambda: stat(title="t", description="d", unit="short", queries=[]),
    lambda: table(title="t", description="d", labels=["job"], columns=[Column("c", "up", "")]),
    lambda: table(title="t", description="", labels=["job"],
                  columns=[Column("c", "up", "short")]),
    lambda: table(title="t", description="d", labels=["job"], sort_by="nope",
                  columns=[Column("c", "up", "short")]),
])
def test_panel_factory_refuses_undocumented_panels(build: Callable[[], Any]) -> None:
    with pytest.raises(PanelDefinitionError):
        build()


# --- the lint catches each kind of problem -----------------------------------------------


def _panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in iter_panels(model) if p.get("title") == title and p["type"] != "row")


def _break_uid(m: dict[str, Any]) -> None:
    del m["uid"]


def _wrong_uid(m: dict[str, Any]) -> None:
    m["uid"] = "gpu-fleet-2"


def _no_datasource_variable(m: dict[str, Any]) -> None:
    m["templating"]["list"] = [v for v in m["templating"]["list"] if v["name"] != "datasource"]


def _datasource_variable_of_wrong_type(m: dict[str, Any]) -> None:
    m["templating"]["list"][0]["type"] = "custom"


def _variable_on_fixed_datasource(m: dict[str, Any]) -> None:
    m["templating"]["list"][1]["datasource"] = {"type": "prometheus", "uid": "prod"}


def _panel_on_fixed_datasource(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["datasource"] = {"type": "prometheus", "uid": "prod"}


def _target_on_fixed_datasource(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["targets"][0]["datasource"] = "Prometheus"


def _no_unit(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["fieldConfig"]["defaults"]["unit"] = ""


def _table_without_unit(m: dict[str, Any]) -> None:
    del _panel(m, "Per-node summary")["fieldConfig"]["defaults"]["unit"]


def _no_description(m: dict[str, Any]) -> None:
    _panel(m, "XID events")["description"] = ""


def _fixed_rate_window(m: dict[str, Any]) -> None:
    target = _panel(m, "XID events")["targets"][0]
    target["expr"] = target["expr"].replace("$__rate_interval", "5m")


def _irate_fixed_window(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["targets"][0]["expr"] = "sum(irate(steward_gpu_energy_joules_total[1m]))"


def _range_window_in_range_query(m: dict[str, Any]) -> None:
    target = _panel(m, "ECC errors")["targets"][0]
    target["expr"] = target["expr"].replace("$__rate_interval", "$__range")


def _duplicate_panel_id(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["id"] = _panel(m, "GPUs lost")["id"]


def _duplicate_id_in_collapsed_row(m: dict[str, Any]) -> None:
    row = next(p for p in m["panels"] if p["type"] == "row")
    hidden = copy.deepcopy(_panel(m, "GPUs"))
    hidden["title"] = "hidden copy"
    row["collapsed"] = True
    row["panels"] = [hidden]


def _duplicate_title(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["title"] = "GPUs lost"


def _no_runbook_link(m: dict[str, Any]) -> None:
    _panel(m, "GPUs lost")["links"] = []


def _wrong_runbook_link(m: dict[str, Any]) -> None:
    for link in _panel(m, "ECC errors")["links"]:
        link["url"] = link["url"].replace("GpuEccUncorrectable", "GpuLost")


def _undefined_variable(m: dict[str, Any]) -> None:
    target = _panel(m, "GPUs")["targets"][0]
    target["expr"] = target["expr"].replace("$hostname", "${node}")


def _empty_expression(m: dict[str, Any]) -> None:
    _panel(m, "GPUs")["targets"][0]["expr"] = " "


BREAKAGES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_break_uid, "no uid"),
    (_wrong_uid, "not the stable uid"),
    (_no_datasource_variable, "no 'datasource' template variable"),
    (_datasource_variable_of_wrong_type, "must be of type datasource"),
    (_variable_on_fixed_datasource, "$hostname does not query $datasource"),
    (_panel_on_fixed_datasource, "panel 'GPUs': datasource is not $datasource"),
    (_target_on_fixed_datasource, "panel 'GPUs' query A: datasource is not $datasource"),
    (_no_unit, "panel 'GPUs': no unit"),
    (_table_without_unit, "panel 'Per-node summary': no unit"),
    (_no_description, "panel 'XID events': no description"),
    (_fixed_rate_window, "increase() over [5m]"),
    (_irate_fixed_window, "irate() over [1m]"),
    (_range_window_in_range_query, "belongs in an instant query"),
    (_duplicate_panel_id, "duplicate panel id"),
    (_duplicate_id_in_collapsed_row, "duplicate panel id"),
    (_duplicate_title, "duplicate panel title 'GPUs lost' (2 panels)"),
    (_no_runbook_link, "GpuLost fires on but has no link"),
    (_wrong_runbook_link, "GpuEccUncorrectable fires on but has no link"),
    (_undefined_variable, "undefined variable $node"),
    (_empty_expression, "empty expression"),
]


@pytest.mark.parametrize(("breakage", "expected"), BREAKAGES,
                         ids=[b.__name__.strip("_") for b, _ in BREAKAGES])
def test_lint_catches(models: dict[str, dict[str, Any]],
                      breakage: Callable[[dict[str, Any]], None], expected: str) -> None:
    model = copy.deepcopy(models["gpu-fleet.json"])
    breakage(model)
    problems = lint_dashboard(model, expected_uid="steward-gpu-fleet")
    assert any(expected in problem for problem in problems), problems


def test_lint_without_expected_uid_wants_a_known_uid(models: dict[str, dict[str, Any]]) -> None:
    model = copy.deepcopy(models["gpu-fleet.json"])
    assert lint_dashboard(model) == []
    model["uid"] = "someone-elses"
    assert lint_dashboard(model) == ["uid 'someone-elses' is not one of agent.links.DASHBOARD_UIDS"]


@pytest.mark.parametrize(("expr", "problems"), [
    ("sum(rate(x_total{a=\"b\"}[$__rate_interval]))", 0),
    ("increase(x_total[${__rate_interval}])", 0),
    ("irate(x_total[$__rate_interval]) + rate(y_total[$__rate_interval])", 0),
    ("sum(increase(x_total[$__range]))", 0),
    ("sum(avg_over_time(x[5m]))", 0),
    ("rate(x_total[5m])", 1),
    ("irate(x_total[30s])", 1),
    ("increase(x_total[1h]) / rate(y_total[$__rate_interval]) + rate(z[$__interval])", 2),
    ("rate(x_total)", 1),
])
def test_rate_window_problems(expr: str, problems: int) -> None:
    assert len(rate_window_problems(expr)) == problems


def test_panel_queries_reach_collapsed_rows_and_legacy_rows() -> None:
    model = {
        "panels": [
            {"type": "stat", "title": "top", "targets": [{"expr": "a"}]},
            {"type": "row", "title": "row", "collapsed": True,
             "panels": [{"type": "timeseries", "title": "inside", "targets": [{"expr": "b"},
                                                                              {"expr": "c"}]}]},
        ],
        "rows": [{"panels": [{"type": "graph", "title": "legacy", "targets": [{"expr": "d"}]}]}],
    }
    assert panel_queries(model) == [("top", "a"), ("inside", "b"), ("inside", "c"),
                                     ("legacy", "d")]


# --- variable substitution ---------------------------------------------------------------


@pytest.mark.parametrize(("expr", "expected"), [
    ('up{hostname=~"$hostname"}', 'up{hostname=~"gpu-1.example"}'),
    ('up{hostname=~"${hostname}"}', 'up{hostname=~"gpu-1.example"}'),
    ('up{hostname=~"[[hostname]]"}', 'up{hostname=~"gpu-1.example"}'),
    ('up{hostname=~"[[hostname:raw]]"}', 'up{hostname=~"gpu-1.example"}'),
    ('up{hostname=~"${hostname:regex}"}', 'up{hostname=~"gpu-1\\.example"}'),
    ('up{hostname=~"${hostname:raw}"}', 'up{hostname=~"gpu-1.example"}'),
    ("${hostname:doublequote}", '"gpu-1.example"'),
    ('up{gpu=~"$gpu", hostname=~"$hostname"}', 'up{gpu=~"(0|1)", hostname=~"gpu-1.example"}'),
    ("rate(x[$__rate_interval])", "rate(x[2m])"),
    ("rate(x[${__rate_interval}])", "rate(x[2m])"),
    ("increase(x[$__range])", "increase(x[7d])"),
    ("avg_over_time(x[$__range:$__interval])", "avg_over_time(x[7d:30s])"),
    ("x * $__interval_ms / 3600000", "x * 30000 / 3600000"),
    ("time() - x < $__range_s", "time() - x < 604800"),
    ("$__range_ms + $__rate_interval_ms", "604800000 + 120000"),
    ('label_replace(x, "a", "$1", "b", "(.*)")', 'label_replace(x, "a", "$1", "b", "(.*)")'),
    ('up{job=~"$unknown"}', 'up{job=~"$unknown"}'),
    ('up{job=~"^steward$"}', 'up{job=~"^steward$"}'),
    ("$hostnames", "$hostnames"),
])
def test_substitute_variables(expr: str, expected: str) -> None:
    values = {"hostname": "gpu-1.example", "gpu": "(0|1)"}
    assert substitute_variables(expr, values, rate_interval="2m", interval="30s",
                                range_="7d") == expected


def test_substitute_variables_defaults() -> None:
    assert (substitute_variables("rate(x[$__rate_interval]) [$__interval] [$__range]", {})
            == "rate(x[1m]) [1m] [1h]")


def test_substitute_variables_rejects_a_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        substitute_variables("x", {}, range_="a week")


def test_default_values_and_variable_queries(models: dict[str, dict[str, Any]]) -> None:
    node = models["gpu-node.json"]
    assert default_variable_values(node) == {"hostname": ".*", "gpu": ".*"}
    assert variable_queries(node) == [
        ("hostname", "group by (hostname) (steward_gpu_info)"),
        ("gpu", 'group by (gpu) (steward_gpu_info{hostname=~"$hostname"})'),
    ]


# --- every query against a real Prometheus -----------------------------------------------

NODES = {
    "gpu-a": [("0", "NVIDIA A100-SXM4-80GB", "Disabled"), ("1", "NVIDIA A100-SXM4-80GB",
                                                         "Disabled")],
    "gpu-b": [("0", "NVIDIA H100 80GB HBM3", "Enabled")],
}
# (node, gpu index) -> (namespace, pod, container, utilization)
ALLOCATIONS = {
    ("gpu-a", "0"): ("team-a", "trainer-0", "main", 0.93),
    ("gpu-a", "1"): ("team-b", "notebook-7", "jupyter", 0.0),  # allocated and idle
    ("gpu-b", "0"): ("team-a", "infer-1", "server", 0.4),
}
NOW = 1_760_000_000


def _series(name: str, value: float, **labels: str) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{text}}} {value}"


def _node_exposition(hostname: str) -> str:
    lines = []
    reasons = ["gpu_idle", "power_cap", "hw_slowdown", "sw_thermal", "hw_thermal",
               "hw_power_brake", "sync_boost", "clocks_setting", "display_clocks"]
    for index, model_name, mig_mode in NODES[hostname]:
        gpu = {"gpu": index, "UUID": f"GPU-{hostname}-{index}", "pci_bus_id": f"0000:0{index}:00.0",
               "device": f"nvidia{index}", "modelName": model_name, "hostname": hostname}
        namespace, pod, container, util = ALLOCATIONS[(hostname, index)]
        shared = (hostname, index) == ("gpu-a", "0")
        if shared:
            # The trainer does all the GPU's work; its neighbour holds half of it, idle.
            tenant = {"namespace": "team-b", "pod": "notebook-9", **gpu}
            lines += [_series("steward_gpu_pod_allocated_ratio", 0.5, mode="time_sliced",
                              **tenant),
                      _series("steward_gpu_pod_utilization_ratio", 0.0, **tenant)]
            lines += [_series("steward_gpu_unattributed_utilization_ratio",
                              0.02 if reason == "unknown_process" else 0.0, reason=reason, **gpu)
                      for reason in ("no_samples", "unknown_process", "pod_without_share")]
        lines += [
            _series("steward_gpu_info", 1, driver_version="550.54.15", mig_mode=mig_mode, **gpu),
            _series("steward_gpu_up", 1, **gpu),
            _series("steward_gpu_lost", 0, **gpu),
            _series("steward_gpu_utilization_ratio", util, **gpu),
            _series("steward_gpu_memory_copy_utilization_ratio", util / 2, **gpu),
            _series("steward_gpu_memory_used_bytes", 40e9, **gpu),
            _series("steward_gpu_memory_total_bytes", 80e9, **gpu),
            _series("steward_gpu_temperature_celsius", 61, **gpu),
            _series("steward_gpu_power_watts", 310, **gpu),
            _series("steward_gpu_power_limit_watts", 400, **gpu),
            _series("steward_gpu_energy_joules_total", 1e6, **gpu),
            _series("steward_gpu_sm_clock_hertz", 1.41e9, **gpu),
            _series("steward_gpu_ecc_errors_total", 3, type="corrected", **gpu),
            _series("steward_gpu_ecc_errors_total", 0, type="uncorrected", **gpu),
            _series("steward_gpu_xid_errors_total", 2, xid="79" if index == "1" else "13", **gpu),
            _series("steward_gpu_xid_last_timestamp_seconds", NOW, xid="79" if index == "1"
                    else "13", **gpu),
            _series("steward_gpu_allocation", 1, namespace=namespace, pod=pod,
                    container=container, **gpu),
            _series("steward_gpu_pod_memory_used_bytes", 30e9, namespace=namespace, pod=pod,
                    **gpu),
            # gpu-a's GPU 0 is time-sliced in two (a second tenant below); others whole.
            _series("steward_gpu_pod_allocated_ratio", 0.5 if shared else 1.0,
                    namespace=namespace, pod=pod,
                    mode="time_sliced" if shared else "exclusive", **gpu),
            _series("steward_gpu_pod_utilization_ratio", util, namespace=namespace, pod=pod,
                    **gpu),
            _series("steward_pod_phase", 1, namespace=namespace, pod=pod, phase="Running",
                    hostname=hostname),
            _series("steward_pod_gpu_requested", 1, namespace=namespace, pod=pod,
                    hostname=hostname),
            _series("steward_container_restarts", 0, namespace=namespace, pod=pod,
                    container=container, hostname=hostname),
        ]
        lines += [_series("steward_gpu_clock_event_active", 1 if r == "power_cap" else 0,
                          reason=r, **gpu) for r in reasons]
        lines += [_series("steward_gpu_remapped_rows", 0, state=s, **gpu)
                  for s in ("correctable", "uncorrectable", "pending", "failure")]
        if mig_mode == "Enabled":
            mig = {**gpu, "GPU_I_ID": "1", "GPU_I_PROFILE": "3g.40gb"}
            lines += [_series("steward_gpu_utilization_ratio", 0.5, **mig),
                      _series("steward_gpu_memory_used_bytes", 20e9, **mig),
                      _series("steward_gpu_memory_total_bytes", 40e9, **mig)]
    pod = {"namespace": "team-b", "pod": "etl-3", "container": "worker", "hostname": hostname}
    lines += [
        _series("steward_pod_phase", 1, namespace="team-b", pod="etl-3", phase="Running",
                hostname=hostname),
        _series("steward_container_restarts", 12, **pod),
        _series("steward_container_waiting", 1, reason="CrashLoopBackOff", **pod),
        _series("steward_container_last_terminated_timestamp_seconds", NOW,
                reason="OOMKilled", **pod),
    ]
    for collector in ("gpu", "xid_events", "attribution", "pods"):
        lines += [_series("steward_collector_up", 1, collector=collector, hostname=hostname),
                  _series("steward_collector_duration_seconds", 0.02, collector=collector,
                          hostname=hostname)]
    lines.append(_series("steward_collector_errors_total", 1, collector="gpu",
                         error="NVMLError_Timeout", hostname=hostname))
    return "\n".join(lines) + "\n"


def _controller_exposition() -> str:
    lines = []
    for pipeline, kind in (("nightly-train", "CronJob"), ("eval", "Workflow")):
        key = {"namespace": "team-a", "pipeline": pipeline, "kind": kind}
        lines += [
            _series("steward_pipeline_runs_total", 5, result="succeeded", **key),
            _series("steward_pipeline_runs_total", 1, result="failed", **key),
            _series("steward_pipeline_last_success_timestamp_seconds", NOW - 3600, **key),
            _series("steward_pipeline_last_duration_seconds", 1800, **key),
        ]
    lines.append(_series("steward_pipeline_running_since_timestamp_seconds", NOW - 600,
                         namespace="team-a", pipeline="nightly-train", kind="CronJob"))
    lines.append(_series("steward_pod_pending_since_timestamp_seconds", NOW - 900,
                         namespace="team-b", pod="big-train-0"))
    for job in ("idle-gpus", "stale-images", "orphaned-buckets"):
        lines += [
            _series("steward_hygiene_runs_total", 3, hygiene_job=job, result="succeeded"),
            _series("steward_hygiene_runs_total", 1, hygiene_job=job, result="failed"),
            _series("steward_hygiene_last_success_timestamp_seconds", NOW, hygiene_job=job),
            _series("steward_hygiene_candidates", 2, hygiene_job=job),
            _series("steward_hygiene_actions_total", 2, hygiene_job=job, action="notify",
                    mode="dry_run"),
            _series("steward_hygiene_reclaimable", 1 if job == "idle-gpus" else 5e9,
                    hygiene_job=job, unit="gpus" if job == "idle-gpus" else "bytes"),
        ]
    lines += [_series("steward_gpu_price_dollars_per_hour", price, modelName=model)
              for model, price in (("NVIDIA A100-SXM4-80GB", 2.5), ("NVIDIA H100 80GB HBM3", 4.0))]
    for collector in ("pipelines", "pending_pods", "leader"):
        lines += [_series("steward_collector_up", 1, collector=collector),
                  _series("steward_collector_duration_seconds", 0.1, collector=collector)]
    lines.append(_series("steward_state_store_created_timestamp_seconds", NOW - 86400))
    return "\n".join(lines) + "\n"


def _notifier_exposition() -> str:
    return "\n".join([
        "steward_notifier_alerts_received_total 4",
        _series("steward_notifier_slack_messages_total", 4, result="ok"),
        _series("steward_notifier_slack_messages_total", 1, result="error"),
        "steward_notifier_outbox_depth 0",
        _series("steward_state_store_created_timestamp_seconds", NOW - 3600),
    ]) + "\n"


def _serve(body: str) -> ThreadingHTTPServer:
    payload = body.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_binary("prometheus")
    exporters = {
        "steward-node": [_serve(_node_exposition("gpu-a")), _serve(_node_exposition("gpu-b"))],
        "steward-controller": [_serve(_controller_exposition())],
        "steward-notifier": [_serve(_notifier_exposition())],
    }
    directory = tmp_path_factory.mktemp("prometheus")
    jobs = [
        {"job_name": job, "scrape_interval": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{s.server_address[1]}" for s in servers]}]}
        for job, servers in exporters.items()
    ]
    config = directory / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(f"{url}/-/ready"), timeout=15, what="prometheus ready")

        def scraped_twice() -> bool:
            result = _query(url, "min(count_over_time(up[1m])) >= 3 and count(up == 1) == 4")
            return bool(result)

        wait_until(scraped_twice, timeout=30, interval=0.25, what="every target scraped")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        for servers in exporters.values():
            for server in servers:
                server.shutdown()
                server.server_close()


def _query(url: str, expr: str) -> list[Any]:
    return PrometheusClient(url, timeout=10).query(expr)


def _substituted(model: dict[str, Any], expr: str) -> str:
    # Scrapes every 1 s here, so a 10 s rate interval holds several samples.
    return substitute_variables(expr, default_variable_values(model), rate_interval="10s",
                                interval="1s", range_="1m")


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(f"{stem}.json" for stem in DASHBOARD_UIDS.values()))
def test_every_panel_query_parses_and_returns_data(prometheus: str,
                                                   models: dict[str, dict[str, Any]],
                                                   name: str) -> None:
    model = models[name]
    empty = []
    for title, expr in panel_queries(model):
        if not _query(prometheus, _substituted(model, expr)):
            empty.append(f"{title}: {expr}")
    assert empty == []


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(f"{stem}.json" for stem in DASHBOARD_UIDS.values()))
def test_every_variable_has_values(prometheus: str, models: dict[str, dict[str, Any]],
                                   name: str) -> None:
    model = models[name]
    for variable, expr in variable_queries(model):
        assert _query(prometheus, _substituted(model, expr)), f"${variable} has no values"


@pytest.mark.integration
def test_idle_and_cost_queries_compute_the_right_numbers(
        prometheus: str, models: dict[str, dict[str, Any]]) -> None:
    fleet = models["gpu-fleet.json"]
    finops = models["finops.json"]

    def value(model: dict[str, Any], title: str) -> float:
        expr = _panel(model, title)["targets"][0]["expr"]
        (sample,) = _query(prometheus, _substituted(model, expr))
        return float(sample["value"][1])

    assert value(fleet, "GPUs") == 3
    assert value(fleet, "GPUs allocated") == 3
    assert value(fleet, "Allocated GPUs idle") == 1  # notebook-7 on gpu-a GPU 1
    assert value(fleet, "GPU memory used") == pytest.approx(0.5)  # MIG instance not counted
    assert value(finops, "GPU cost per hour") == pytest.approx(2.5 + 2.5 + 4.0)
    # notebook-7's whole GPU, and notebook-9's half of the busy GPU it time-slices: idle
    # for its share although the GPU is at 93 %.
    assert value(finops, "Idle GPU cost per hour") == pytest.approx(2.5 + 1.25)
    assert value(finops, "Allocated GPUs without a price") == 0


@pytest.mark.integration
def test_the_namespace_view_shows_each_tenants_share_and_own_use(
        prometheus: str, models: dict[str, dict[str, Any]]) -> None:
    usage = models["namespace-usage.json"]
    table = _panel(usage, "Tenants of shared GPUs")

    def column(ref: int) -> dict[str, float]:
        expr = table["targets"][ref]["expr"]
        return {s["metric"]["pod"]: float(s["value"][1])
                for s in _query(prometheus, _substituted(usage, expr))}

    assert column(0) == {"trainer-0": 0.5, "notebook-9": 0.5}  # share of the GPU
    assert column(1) == {"trainer-0": 0.93, "notebook-9": 0.0}  # own use of the GPU
    # Use of its share: the trainer borrows the time its idle neighbour leaves.
    assert column(2) == pytest.approx({"trainer-0": 1.86, "notebook-9": 0.0})
    assert column(3) == pytest.approx({"trainer-0": 0.02, "notebook-9": 0.02})
    modes = {s["metric"]["mode"] for s in _query(
        prometheus, _substituted(usage, table["targets"][1]["expr"]))}
    assert modes == {"time_sliced"}  # every column carries the mode label the table joins on
