"""The docs hold: docs/alertmanager.yml works with the real Alertmanager in front of a real
notifier, and the README's Helm install renders what it promises (scraped, alerting)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.localnet import stop_process
from agent.sim.slack_stub import SlackStub
from tests.support.alertmanager import Alertmanager, start_alertmanager
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
AM_CONFIG = ROOT / "docs" / "alertmanager.yml"
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOKEN = "xoxb-docs-test"


def test_amtool_accepts_the_shipped_file() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run([amtool, "check-config", str(AM_CONFIG)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_file_says_what_the_notifier_needs() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    steward = next(r for r in config["receivers"] if r["name"] == config["route"]["receiver"])
    hook = steward["webhook_configs"][0]
    assert hook["url"].endswith(":9500/alertmanager")
    assert hook["send_resolved"] is True and hook["max_alerts"] == 0
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert hook["http_config"]["authorization"]["credentials_file"]
    bypass = [r for r in config["route"]["routes"]
              if r.get("matchers") == ['routing="bypass-notifier"']]
    assert len(bypass) == 1 and bypass[0]["receiver"] != steward["name"]


@dataclass
class Loop:
    alertmanager: Alertmanager
    stub: SlackStub
    notifier_url: str
    notifier_log: Path


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """docs/alertmanager.yml, with only its URLs, file paths and timings replaced."""
    workdir = tmp_path_factory.mktemp("docs-am")
    stub = SlackStub(tokens=(TOKEN,)).start()
    token_file = workdir / "notifier-token"
    token_file.write_text("a-long-random-token-from-the-secret\n", encoding="utf-8")
    webhook_file = workdir / "oncall-webhook-url"
    webhook_file.write_text(f"{stub.url}/services/T0/B0/oncall", encoding="utf-8")
    port = free_port()
    config = workdir / "steward.yaml"
    config.write_text(yaml.safe_dump({
        "notifier": {"auth_token_file": str(token_file)},
        "state": {"url": f"sqlite:///{workdir / 'notifier.db'}"},
        "slack": {"api_url": stub.api_url, "default_channel": "#gpu-oncall"},
    }), encoding="utf-8")
    log = workdir / "notifier.log"
    notifier = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "notifier", "--config", str(config),
         "--listen", f"127.0.0.1:{port}"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "SLACK_BOT_TOKEN": TOKEN}, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: notifier.poll() is None and http_ok(f"{url}/readyz"), timeout=30,
               what="notifier ready")

    am = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    am["route"].update(group_wait="100ms", group_interval="1s")
    for route in am["route"]["routes"]:
        route["group_wait"] = "100ms"
    receivers = {r["name"]: r for r in am["receivers"]}
    hook = receivers["steward"]["webhook_configs"][0]
    hook["url"] = f"{url}/alertmanager"
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    slack = receivers["oncall-without-steward"]["slack_configs"][0]
    slack["api_url_file"] = str(webhook_file)
    alertmanager = start_alertmanager(am)
    yield Loop(alertmanager, stub, url, log)
    alertmanager.stop()
    stop_process(notifier)
    stub.stop()


def _alert(name: str, *, starts: datetime | None = None, ends: datetime | None = None,
           **labels: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} summary.", "description": f"{name} happened.",
                        "runbook_url": f"https://runbooks.example/{name}.md"},
        "startsAt": (starts or datetime.now(UTC)).isoformat()}
    if ends is not None:
        body["endsAt"] = ends.isoformat()
    return body


def test_an_alert_becomes_one_message_and_its_resolution_updates_it(loop: Loop) -> None:
    labels = {"severity": "critical", "hostname": "gpu-node-9", "gpu": "3"}
    started = datetime.now(UTC)
    loop.alertmanager.post_alerts([_alert("GpuLost", starts=started, **labels)])
    loop.stub.wait_for(lambda: any("GpuLost" in m.text for m in loop.stub.roots()),
                       timeout=30, what="the GpuLost message")
    loop.alertmanager.post_alerts([_alert("GpuLost", starts=started, ends=datetime.now(UTC),
                                          **labels)])

    def resolved() -> bool:
        message = next(m for m in loop.stub.roots() if "GpuLost" in m.text)
        return "RESOLVED" in message.text

    loop.stub.wait_for(resolved, timeout=30, what="the message updated to RESOLVED")
    roots = [m for m in loop.stub.roots() if "GpuLost" in m.text]
    assert len(roots) == 1 and roots[0].updates  # one message, edited in place
    assert loop.stub.channel_name(roots[0].channel) == "#gpu-oncall"


def test_every_alert_of_a_group_reaches_the_notifier(loop: Loop) -> None:
    alerts = [_alert("GpuXidErrors", severity="warning", hostname="gpu-node-8", gpu=str(i),
                     xid="13") for i in range(12)]
    loop.alertmanager.post_alerts(alerts)
    loop.stub.wait_for(lambda: any("FIRING:12 GpuXidErrors" in m.text
                                   for m in loop.stub.roots()),
                       timeout=30, what="all twelve alerts in one message (max_alerts: 0)")


def test_the_bypass_route_goes_around_the_notifier(loop: Loop) -> None:
    loop.alertmanager.post_alerts([_alert("StewardNotifierDeliveryFailing", severity="critical",
                                          routing="bypass-notifier",
                                          instance="10.0.0.9:9500")])
    loop.stub.wait_for(lambda: any("StewardNotifierDeliveryFailing" in json.dumps(w)
                                   for w in loop.stub.webhooks),
                       timeout=30, what="the bypass alert at the incoming webhook")
    assert not any("StewardNotifierDeliveryFailing" in m.text for m in loop.stub.messages())
    log = loop.notifier_log.read_text(encoding="utf-8")
    assert "StewardNotifierDeliveryFailing" not in log


def test_the_notifier_refuses_a_webhook_without_the_token(loop: Loop) -> None:
    request = urllib.request.Request(
        f"{loop.notifier_url}/alertmanager", method="POST",
        data=json.dumps({"version": "4", "groupKey": "x", "status": "firing",
                         "alerts": []}).encode(),
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def _readme_install() -> tuple[list[str], list[str]]:
    """The README's install block: the kubectl lines and the helm install arguments."""
    section = README.split("## Install with Helm", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [c for c in block.group(1).replace("\\\n", " ").splitlines()
                if c.strip() and not c.lstrip().startswith("#")]
    kubectl = [c for c in commands if c.startswith("kubectl ")]
    helm = next(c for c in commands if c.startswith("helm install"))
    return kubectl, shlex.split(helm)


def test_the_readme_install_does_what_the_chart_readme_requires() -> None:
    kubectl, helm = _readme_install()
    chart_readme = (ROOT / "helm" / "steward" / "README.md").read_text(encoding="utf-8")
    assert "kubectl create namespace steward" in kubectl
    label = "kubectl label namespace steward pod-security.kubernetes.io/enforce=privileged"
    assert label in kubectl and label in chart_readme
    secret = next(c for c in kubectl if "create secret generic" in c)
    name = secret.split("create secret generic ", 1)[1].split()[0]
    assert f"slack.existingSecret={name}" in helm


def test_the_readme_install_renders_scraping_and_alerting() -> None:
    helm = require_binary("helm")
    _, args = _readme_install()
    assert args[:4] == ["helm", "install", "steward", "helm/steward"]
    result = subprocess.run([helm, "template", *args[2:]], capture_output=True, text=True,
                            cwd=ROOT, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in documents}
    assert {"ServiceMonitor", "PrometheusRule", "DaemonSet", "Deployment"} <= kinds
    for doc in documents:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            assert doc["metadata"]["labels"].get("release") == "kube-prometheus-stack", doc
    monitors = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceMonitor"}
    assert len(monitors) == 3, monitors  # node agent, controller, notifier
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    assert {g["name"] for g in rule["spec"]["groups"]} >= {"steward-gpu-hardware",
                                                           "steward-self"}
