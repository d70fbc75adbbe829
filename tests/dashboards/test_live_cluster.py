"""The check that counts: every dashboard query and every alert against a live simulated cluster.

A real Prometheus scrapes two simulated node agents (one reading its pods from the
Kubernetes API stand-in, with no kubelet socket) and a real ``steward controller`` against
the stand-in seeded with pipelines in every state. Then every panel and variable query of
every dashboard (variables substituted) must return data, every alert expression must
parse, and the alerts matching the simulated faults must fire. The rules are loaded with
``for: 0s``: their ``for`` durations are covered by the promtool unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.alerts.catalog import CATALOG
from agent.dashboards.lint import (
    default_variable_values,
    panel_queries,
    substitute_variables,
    variable_queries,
)
from agent.demo.servers import rules_without_for
from agent.sim.cluster import cluster_objects, failing_run
from agent.sim.kube_api import KubeApiServer
from tests.support.net import free_port, http_ok, wait_until
from tests.support.prometheus import Prometheus, ScrapeJob, history, start_prometheus
from tests.support.steward import StewardProcess, start_node

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))

# Simulated faults -> the alerts they must fire.
EXPECTED_FIRING = {
    "GpuLost", "GpuXidCritical", "GpuXidErrors", "GpuEccUncorrectable", "GpuRowRemapFailure",
    "GpuTemperatureHigh", "GpuThermalThrottling", "GpuIdleAllocated", "PodCrashLooping",
    "PodOomKilled", "GpuPodPendingTooLong", "PipelineRunFailed", "PipelineStale",
    "PipelineRunTooLong", "StewardAgentDown", "StewardGpuAttributionFailing",
}


@dataclass
class Cluster:
    prometheus: Prometheus
    kube: KubeApiServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from agent.sim.moto import running_moto
    from agent.sim.slack_stub import SlackStub
    from agent.sim.world import ECR_HOST, seed_aws

    work = tmp_path_factory.mktemp("live")
    kube = KubeApiServer(bookmark_interval=0.5, namespaces=("default", "steward")).start()
    processes: list[StewardProcess] = []
    children: list[subprocess.Popen[bytes]] = []
    prometheus: Prometheus | None = None
    with running_moto() as moto, SlackStub(tokens=("xoxb-live",)) as slack:
        try:
            seed_aws(moto)
            for obj in cluster_objects():
                kube.apply(obj)
            kubeconfig = kube.kubeconfig(work / "kubeconfig")
            processes.append(start_node(work, env={"NODE_NAME": "gpu-node-1"}, config=(
                "node: {collect_interval_seconds: 1, sim: {lost_after_seconds: 2}}\n")))
            kube.apply({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "serve-0", "namespace": "inference"},
                        "spec": {"nodeName": "gpu-node-2",
                                 "containers": [{"name": "s", "image": "img"}]},
                        "status": {"phase": "Running"}})
            processes.append(start_node(
                work, env={"NODE_NAME": "gpu-node-2", "KUBECONFIG": str(kubeconfig)},
                config=(f"node: {{collect_interval_seconds: 1, pod_resources_socket: "
                        f"{work / 'no-kubelet.sock'}, sim: {{gpus: [training, idle_free]}}}}\n")))
            ctl_port, notifier_port = free_port(), free_port()
            dead = f"127.0.0.1:{free_port()}"  # an agent that is down: StewardAgentDown
            prometheus = start_prometheus(
                [ScrapeJob("steward-node", [f"127.0.0.1:{p.port}" for p in processes] + [dead]),
                 ScrapeJob("steward-controller", [f"127.0.0.1:{ctl_port}"]),
                 ScrapeJob("steward-notifier", [f"127.0.0.1:{notifier_port}"])],
                rule_files=[rules_without_for(ROOT / "alerts" / "prometheus-rules.yaml",
                                              work / "rules.yaml")],
                backfill=_past_hour(processes[0], ctl_port))
            common = {
                "state": {"url": f"sqlite:///{work / 'state.db'}"},
                "slack": {"api_url": slack.api_url, "default_channel": "#gpu-oncall"},
                "prometheus": {"url": prometheus.url},
                "aws": {"endpoint_url": moto.url, "region": "us-east-1"},
                "registries": [{"type": "ecr", "url": ECR_HOST}],
                "finops": {"prices": {"NVIDIA H100 80GB HBM3": 4.0}},
                "hygiene": {job: {"run_at_start": True} for job in (
                    "idle_gpus", "stale_images", "orphaned_buckets")},
            }
            common["hygiene"]["idle_gpus"].update(window="5s", grace="1s")
            common["hygiene"]["stale_images"]["keep_newest"] = 2
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "ctl-0",
                   "SLACK_BOT_TOKEN": "xoxb-live", "STEWARD_NOTIFIER_AUTH_TOKEN": "am-live",
                   "AWS_ACCESS_KEY_ID": "live",
                   "AWS_SECRET_ACCESS_KEY": "live", "AWS_DEFAULT_REGION": "us-east-1"}
            for name, extra, listen_port in (
                    ("controller", {"controller": {
                        "listen": f"127.0.0.1:{ctl_port}", "lease_namespace": "steward",
                        "collect_interval_seconds": 1, "lease_duration_seconds": 3,
                        "renew_deadline_seconds": 2, "retry_period_seconds": 0.5}},
                     ctl_port),
                    ("notifier", {"notifier": {"listen": f"127.0.0.1:{notifier_port}"}},
                     notifier_port)):
                config = work / f"{name}.yaml"
                config.write_text(json.dumps({**common, **extra}), encoding="utf-8")
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "agent.cli", name, "--config", str(config)],
                    env=env, stdout=subprocess.DEVNULL,
                    stderr=(work / f"{name}.log").open("wb")))
                wait_until(lambda port=listen_port: http_ok(  # type: ignore[misc]
                    f"http://127.0.0.1:{port}/readyz"), timeout=30, what=f"{name} ready")
            prometheus.wait_for('steward_pipeline_runs_total{pipeline="feature-refresh"}',
                                timeout=30)
            kube.apply(failing_run())  # a failure after the controller's first look
            # increase() needs two samples of the new failure counter inside its window
            prometheus.wait_for('count_over_time(steward_pipeline_runs_total{result="failed"}'
                                '[10s]) >= 2', timeout=30)
            prometheus.wait_for("steward_gpu_lost == 1", timeout=30)
            # every hygiene job has run once (run_at_start), stale images planned bytes
            prometheus.wait_for("count(steward_hygiene_last_success_timestamp_seconds) == 3",
                                timeout=90)
            prometheus.wait_for('steward_hygiene_reclaimable{unit="bytes"} > 0', timeout=30)
            prometheus.wait_for("steward_notifier_outbox_depth", timeout=30)
            yield Cluster(prometheus, kube)
        finally:
            if prometheus is not None:
                prometheus.stop()
            for child in children:
                child.terminate()
                child.wait(10)
            for process in processes:
                process.stop()
            kube.stop()


def _past_hour(node: StewardProcess, controller_port: int) -> str:
    """The GPUs and the controller as seen during the last hour, before this Prometheus
    started: the first-event arms of GpuXidCritical and PipelineRunFailed only trust a new
    counter when its source was already scraped a window ago (so a restarted Prometheus
    does not page for old events)."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    series: list[tuple[str, dict[str, str]]] = [
        ("up", {"job": "steward-controller", "instance": f"127.0.0.1:{controller_port}"})]
    for family in text_string_to_metric_families(text):
        if family.name == "steward_gpu_up":
            series.extend(("steward_gpu_up", {**s.labels, "job": "steward-node",
                                              "instance": f"127.0.0.1:{node.port}"})
                          for s in family.samples)
    now = time.time()
    return history(series, start=now - 3600, end=now - 60)


def _model(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(cluster: Cluster, dashboard: Path) -> None:
    model = _model(dashboard)
    values = default_variable_values(model)
    empty: list[str] = []
    for title, expr in [*panel_queries(model), *variable_queries(model)]:
        query = substitute_variables(expr, values, rate_interval="10s", interval="1s",
                                     range_="1m")
        result = cluster.prometheus.query(query)  # raises on a parse error
        if result:
            continue
        empty.append(f"{title}: {query}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_every_alert_expression_parses(cluster: Cluster) -> None:
    for alert in CATALOG:
        cluster.prometheus.query(alert.expr)  # HTTP 400 on a parse error fails the test


def test_fault_scenarios_fire_their_alerts(cluster: Cluster) -> None:
    def firing() -> set[str]:
        return {a["labels"]["alertname"] for a in cluster.prometheus.alerts()
                if a["state"] == "firing"}

    try:
        wait_until(lambda: firing() >= EXPECTED_FIRING, timeout=60, interval=1,
                   what="every fault alert firing")
    except TimeoutError:
        missing = EXPECTED_FIRING - firing()
        raise AssertionError(
            f"not firing: {sorted(missing)}; firing: {sorted(firing())}") from None
    by_name: dict[str, list[dict[str, str]]] = {}
    for alert in cluster.prometheus.alerts():
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    assert {a["gpu"] for a in by_name["GpuLost"]} == {"3"}
    assert {a["pod"] for a in by_name["GpuIdleAllocated"]} == {"jupyter-alice-2"}
    assert {a["pod"] for a in by_name["PodCrashLooping"]} == {"finetune-crashloop-4"}
    assert {a["pipeline"] for a in by_name["PipelineStale"]} >= {"nightly-etl"}
    assert {a["hostname"] for a in by_name["StewardGpuAttributionFailing"]} == {"gpu-node-2"}
    assert any(a.get("action") == "reboot-node" and a["xid"] == "79"
               for a in by_name["GpuXidCritical"])
