"""End to end, owner notices: ``steward node --gpu-backend sim`` and ``steward controller``
(against the Kubernetes API stand-in) -> Prometheus evaluating the catalog's rules (with the
demo's windows) -> Alertmanager -> the notifier -> the Slack stub.

The simulated node's GPUs fall off the bus with XID 79 at 25 s: GPU 0 under a research
training Job, GPU 1 time-sliced by two teams' workloads (platform, data), GPU 2 with no
tenant; GPU 3 keeps training. The controller maps namespaces to teams (the FinOps mapping)
and reads the node's quarantine (NVSentinel's annotation, a cordon). Expected: the on-call
messages (GpuLost and GpuXidCritical, each grouped per node) and one owner notice per
affected team in its own channel, linked both ways; no notice for the GPU nobody had, and
none in any other channel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from agent.demo.rules import write_demo_rules
from agent.notify.app import Notifier, build_notifier
from agent.notify.server import BearerAuth
from agent.sim.kube_api import KubeApiServer
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.conftest import RUNBOOKS, TOKEN, notifier_config
from tests.support.alertmanager import Alertmanager, start_alertmanager, webhook_receiver
from tests.support.kube import KubeStandIns
from tests.support.net import free_port
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus
from tests.support.steward import StewardProcess, start_node, start_steward

pytestmark = pytest.mark.integration
HOST = "gpu-node-owners"
AM_TOKEN = "am-to-notifier-secret"
TEAMS = {"ml-research": "research", "inference": "platform", "data-science": "data"}
CHANNELS = {"research": "#ml-alerts", "platform": "#platform-alerts", "data": "#data-alerts"}
ONCALL = "#gpu-critical"


@dataclass
class Loop:
    stub: SlackStub
    notifier: Notifier
    kube: KubeApiServer
    controller: StewardProcess
    node: StewardProcess
    alertmanager: Alertmanager
    prometheus: Prometheus


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory,
         make_module_kube: KubeStandIns) -> Iterator[Loop]:
    workdir = tmp_path_factory.mktemp("owners-e2e")
    stub = SlackStub(tokens=(TOKEN,)).start()
    kube = make_module_kube(namespaces=("default", "steward", *TEAMS))
    for namespace, team in TEAMS.items():  # teams by label, as in a real cluster
        kube.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": namespace, "labels": {"team": team}}})
    kube.apply({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": HOST, "annotations": {"quarantineHealthEvent": '[{"checkName":"GpuXidError"}]'}},
        "spec": {"unschedulable": True}})
    am_port = free_port()
    notifier = build_notifier(notifier_config(
        stub, workdir / "notifier.db",
        slack={"default_channel": "#gpu-alerts", "team_channels": CHANNELS,
               "routes": [{"match": {"severity": "critical"}, "channel": ONCALL}]},
        notifier={"allow_unauthenticated": False, "poll_seconds": 0.2},
        alertmanager={"url": f"http://127.0.0.1:{am_port}"}),
        auth=BearerAuth(token=AM_TOKEN), environ={})
    notifier.start()
    alertmanager = start_alertmanager({
        "route": {"receiver": "steward", "group_by": ["alertname", "hostname"],
                  "group_wait": "100ms", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [webhook_receiver("steward", f"{notifier.url}/alertmanager",
                                       bearer_token=AM_TOKEN)],
    }, port=am_port)
    node = start_node(workdir, env={"NODE_NAME": HOST, "KUBECONFIG": ""}, config=(
        "node:\n  collect_interval_seconds: 0.5\n"
        "  sim: {gpus: [lost, lost_shared, lost_free, training], lost_after_seconds: 25}\n"))
    controller_port = free_port()
    controller_config = workdir / "controller.yaml"
    controller_config.write_text(yaml.safe_dump({
        "controller": {"listen": f"127.0.0.1:{controller_port}", "lease_namespace": "steward",
                       "collect_interval_seconds": 1, "lease_duration_seconds": 3,
                       "renew_deadline_seconds": 2, "retry_period_seconds": 0.5},
        "state": {"url": f"sqlite:///{workdir / 'controller.db'}"},
        "hygiene": {"idle_gpus": {"enabled": False}, "stale_images": {"enabled": False},
                    "orphaned_buckets": {"enabled": False}},
    }), encoding="utf-8")
    controller = start_steward(
        workdir, "controller", ["controller", "--config", str(controller_config)],
        port=controller_port,
        env={"KUBECONFIG": str(kube.kubeconfig(workdir / "kubeconfig")),
             "POD_NAME": "controller-0"})
    prometheus = start_prometheus(
        [ScrapeJob("steward-node", [f"127.0.0.1:{node.port}"]),
         ScrapeJob("steward-controller", [f"127.0.0.1:{controller_port}"])],
        # The shipped rules with the demo's windows: GpuXidCritical tells a new XID from an
        # old one after 30 s of history, not 10 minutes.
        rule_files=[write_demo_rules(workdir / "rules.yaml")],
        alertmanager=alertmanager.url.removeprefix("http://"))
    yield Loop(stub, notifier, kube, controller, node, alertmanager, prometheus)
    prometheus.stop()
    node.stop()
    controller.stop()
    alertmanager.stop()
    notifier.stop()
    stub.stop()


def blocks_text(message: StubMessage) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def permalinks(message: StubMessage) -> list[str]:
    found = re.findall(r"<(http[^|>]+/archives/[^|>]+)\|", blocks_text(message))
    found += [e["url"] for b in message.blocks if b.get("type") == "actions"
              for e in b["elements"] if "/archives/" in e.get("url", "")]
    return found


def oncall(stub: SlackStub, alertname: str) -> StubMessage | None:
    """The on-call message of an alert group (firing or, for the short-lived XID, already
    resolved: it stays, updated in place)."""
    return next((m for m in stub.roots() if m.blocks and m.blocks[0].get("type") == "header"
                 and re.search(rf"(FIRING:\d+|RESOLVED) {alertname}\b",
                               m.blocks[0]["text"]["text"])), None)


ALERTS = ("GpuLost", "GpuXidCritical", "PodDeviceUnhealthy")


def test_each_team_is_told_in_its_channel_linked_both_ways(loop: Loop) -> None:
    stub = loop.stub

    def settled() -> bool:
        groups = [oncall(stub, name) for name in ALERTS]
        notices = [stub.roots(c) for c in CHANNELS.values()]
        if any(g is None for g in groups) or any(len(n) != 1 for n in notices):
            return False
        texts = [blocks_text(n[0]) for n in notices]
        return (all("fell off the bus" in t and "hit XID 79" in t and "Unhealthy" in t
                    for t in texts)
                and all(len(permalinks(g)) == 3 for g in groups if g is not None)
                and all(len(permalinks(n[0])) == 3 for n in notices))

    try:
        stub.wait_for(settled, timeout=90, what="on-call messages and three linked notices")
    except TimeoutError:
        seen = [(stub.channel_name(m.channel), m.blocks[0]["text"]["text"] if m.blocks else
                 m.text, len(permalinks(m))) for m in stub.roots()]
        alerts = sorted({(a["labels"]["alertname"], a["labels"].get("workload", ""))
                         for a in loop.prometheus.alerts()})
        raise AssertionError(f"messages: {seen}\nalerts: {alerts}") from None
    lost, xid, device = (oncall(stub, name) for name in ALERTS)
    assert lost is not None and xid is not None and device is not None
    assert {stub.channel_name(m.channel) for m in (lost, xid)} == {ONCALL}
    # On-call: every alert of the fault, the GPU nobody had included (GPU 2), once each.
    for message in (lost, xid):
        text = blocks_text(message)
        for pod in ("train-resnet-0", "embed-batch-1", "feature-backfill-1"):
            assert pod in text
        assert "GPU 2" in text and "GPU 3" not in text

    notices = {channel: stub.roots(channel)[0] for channel in CHANNELS.values()}
    # Each team's notice names its own workload, and only it.
    assert "ml-research/train-resnet-" in blocks_text(notices["#ml-alerts"])
    assert "inference/embed-batch" in blocks_text(notices["#platform-alerts"])
    assert "data-science/feature-backfill" in blocks_text(notices["#data-alerts"])
    assert "embed-batch" not in blocks_text(notices["#data-alerts"])
    for notice in notices.values():
        text = blocks_text(notice)
        assert "GPU has fallen off the bus" in text
        assert "cordoned; quarantined by nvsentinel" in text  # the controller's reading
        assert "Kubernetes reports the nvidia.com/gpu device" in text  # pod status health
        assert f"{RUNBOOKS}/GpuLost.md#if-you-own-the-workload" in text
        # linked to every on-call message of the incident...
        assert {stub.by_permalink(u).ts for u in permalinks(notice)  # type: ignore[union-attr]
                } == {lost.ts, xid.ts, device.ts}
    # ...and every on-call message links to the three notices.
    for message in (lost, xid, device):
        assert {stub.by_permalink(u).ts for u in permalinks(message)  # type: ignore[union-attr]
                } == {n.ts for n in notices.values()}

    # Nothing anywhere else: no notice for the GPU with no tenant, none in a channel nobody
    # configured, one message per notice (updated in place).
    channels = {stub.channel_name(m.channel) for m in stub.roots()}
    assert channels <= {ONCALL, "#gpu-alerts", *CHANNELS.values()}
    assert all(len(stub.roots(c)) == 1 for c in CHANNELS.values())
    assert all(stub.replies(n) == [] for n in notices.values())
