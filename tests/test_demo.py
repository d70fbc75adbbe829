"""``steward demo`` end to end, as a newcomer runs it: a subprocess, its output, its artefacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.binaries import require_binary

pytestmark = pytest.mark.integration

# Each fault scenario of the simulated nodes and the alert it must raise.
FAULT_ALERTS = {
    "lost": "GpuLost", "xid_storm": "GpuXidErrors", "ecc_errors": "GpuEccUncorrectable",
    "row remap": "GpuRowRemapFailure", "thermal_throttling": "GpuThermalThrottling",
    "idle_allocated": "GpuIdleAllocated", "crash loop": "PodCrashLooping",
    "OOM kill": "PodOomKilled", "stale pipeline": "PipelineStale",
    "long pipeline": "PipelineRunTooLong", "pending GPU pod": "GpuPodPendingTooLong",
}


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "KUBECONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "60", "--out", str(out),
         "--log-format", "text"], capture_output=True, text=True, timeout=420, env=env,
        check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    # in order: endpoints, alerts and Slack, hygiene plans, the report, the dashboards
    order = ["== Endpoints", "== Watching alerts", "== Hygiene plans", "== Weekly FinOps",
             "== Dashboards", "== Stopping"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    summary = json.loads((out / "demo-summary.json").read_text(encoding="utf-8"))
    assert summary["skipped"] == {}

    fired = {alert["alertname"] for alert in summary["alerts"]}
    missing = {fault: name for fault, name in FAULT_ALERTS.items() if name not in fired}
    assert not missing, f"faults without their alert: {missing}; fired: {sorted(fired)}"
    for name in FAULT_ALERTS.values():
        assert f"ALERT {name}" in text

    # one Slack message per Alertmanager group (alertname, hostname), every one with links
    messages = summary["slack_messages"]
    groups = {(a["alertname"], a.get("hostname", "")) for a in summary["alerts"]}
    assert len(messages) >= len({g[0] for g in groups})
    rendered = {line for line in text.splitlines() if "FIRING" in line}
    for name in fired:
        assert any(name in line for line in rendered), f"no Slack message for {name}"
    for message in messages:
        urls = message["buttons"]
        assert any(u and "/runbooks/" in u for u in urls), message
        assert any(u and "/d/steward-" in u for u in urls), message
        assert any(u and "#/silences/new" in u for u in urls), message

    plans = summary["plans"]
    assert set(plans) == {"idle-gpus", "stale-images", "orphaned-buckets"}
    for job, plan in plans.items():
        assert plan["candidates"] > 0, job
    assert plans["idle-gpus"]["reclaimable"]["gpus"] >= 1
    assert plans["stale-images"]["reclaimable"]["bytes"] > 0
    idle = json.loads((out / "plan-idle-gpus.json").read_text(encoding="utf-8"))
    assert idle["mode"] == "dry_run"
    assert any(c["resource"].startswith("data-science/") for c in idle["candidates"])

    report = Path(summary["report"])
    assert report.name == "report.html" and report.is_file()
    totals = json.loads((report.parent / "summary.json").read_text(encoding="utf-8"))["totals"]
    assert totals["cost"] > 0 and totals["idle_cost"] > 0
    assert "8 Grafana dashboards" in text


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    import signal
    import time

    import psutil

    require_binary("prometheus")
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "KUBECONFIG")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "300", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("== Watching"):
            break
    children = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(out)]
    assert len(children) >= 5  # two nodes, notifier, controller, Prometheus, ...
    started = time.monotonic()
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130
    assert time.monotonic() - started < 30
    assert "== Stopping" in rest
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
