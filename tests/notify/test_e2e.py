"""End to end: ``steward node --gpu-backend sim`` -> Prometheus evaluating the catalog's rules
-> Alertmanager -> the notifier -> the Slack stub.

The simulated node has GPU 0 running hot and thermally throttled from the start
(GpuTemperatureHigh, GpuThermalThrottling; its inference pods were OOM-killed: PodOomKilled;
all warnings) and GPU 1 falling off the bus after 11 s (GpuLost: critical), which joins the
same group (grouped by hostname). Stopping the node resolves them all (their expressions are
instant vectors, so the stale series end them).
A second notifier with a revoked Slack token cannot deliver anything, so
StewardNotifierDeliveryFailing fires, and Alertmanager routes it around the notifier.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from agent.demo.servers import rules_without_for
from agent.notify.app import Notifier, build_notifier
from agent.notify.server import BearerAuth
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.conftest import RUNBOOKS, TOKEN, notifier_config
from tests.notify.payloads import alert, post, webhook
from tests.support.alertmanager import (
    RULES,
    Alertmanager,
    start_alertmanager,
    webhook_receiver,
)
from tests.support.net import free_port
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus
from tests.support.steward import StewardProcess, start_node

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HOST = "gpu-node-e2e"
AM_TOKEN = "am-to-notifier-secret"


@dataclass
class Loop:
    stub: SlackStub
    notifier: Notifier
    broken: Notifier
    node: StewardProcess
    alertmanager: Alertmanager
    prometheus: Prometheus


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    workdir = tmp_path_factory.mktemp("e2e")
    stub = SlackStub(tokens=(TOKEN,)).start()
    routes = {"default_channel": "#gpu-alerts",
              "routes": [{"match": {"severity": "critical"}, "channel": "#gpu-critical"}]}
    am_port = free_port()
    # Silence buttons link to the configured Alertmanager only (never a payload's URL).
    notifier = build_notifier(notifier_config(
        stub, workdir / "notifier.db", slack=routes,
        notifier={"allow_unauthenticated": False},
        alertmanager={"url": f"http://127.0.0.1:{am_port}"}),
        auth=BearerAuth(token=AM_TOKEN), environ={})
    broken = build_notifier(
        notifier_config(stub, workdir / "broken.db", slack={"token": "xoxb-revoked"}),
        retry_base_seconds=0.05, environ={})
    notifier.start()
    broken.start()
    # Something the broken notifier will never manage to deliver.
    assert post(broken.url, webhook([alert("Anything")], group_key="stuck"))[0] == 200

    alertmanager = start_alertmanager({
        "route": {
            "receiver": "steward", "group_by": ["hostname"], "group_wait": "100ms",
            "group_interval": "1s", "repeat_interval": "1h",
            # The notifier cannot report its own failure: that alert goes elsewhere.
            "routes": [{"receiver": "fallback", "matchers": ['routing="bypass-notifier"']}],
        },
        "receivers": [
            webhook_receiver("steward", f"{notifier.url}/alertmanager", bearer_token=AM_TOKEN),
            webhook_receiver("fallback", f"{stub.url}/fallback"),
        ],
    }, port=am_port)
    node = start_node(workdir, env={"NODE_NAME": HOST}, config=(
        "node:\n  collect_interval_seconds: 0.5\n"
        "  sim: {gpus: [thermal_throttling, lost], lost_after_seconds: 11}\n"))
    prometheus = start_prometheus(
        [ScrapeJob("steward-node", [f"127.0.0.1:{node.port}"]),
         ScrapeJob("steward-notifier", [f"127.0.0.1:{broken.port}"])],
        rule_files=[rules_without_for(RULES, workdir / "rules.yaml")],
        alertmanager=alertmanager.url.removeprefix("http://"))
    yield Loop(stub, notifier, broken, node, alertmanager, prometheus)
    prometheus.stop()
    node.stop()
    alertmanager.stop()
    notifier.stop()
    broken.stop()
    stub.stop()


def node_roots(stub: SlackStub) -> list[StubMessage]:
    return [m for m in stub.roots() if HOST in m.text]


def section_texts(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(str(b.get("text", {}).get("text", ""))
                     for b in blocks if b.get("type") == "section")


def dashboard_uids() -> set[str]:
    return {json.loads(p.read_text())["uid"] for p in (ROOT / "dashboards").glob("*.json")}


def test_first_alerts_of_the_group_are_posted(loop: Loop) -> None:
    def shows_warnings() -> bool:
        roots = node_roots(loop.stub)
        text = section_texts(roots[0].blocks) if roots else ""
        return all(f"*{name}*" in text for name in (
            "GpuThermalThrottling", "GpuTemperatureHigh", "PodOomKilled"))

    loop.stub.wait_for(shows_warnings, timeout=40, what="the node's warnings in Slack")
    (root,) = node_roots(loop.stub)
    # only warnings so far: routed to the default channel, where the group's thread stays
    assert root.channel == loop.stub.channel_id("#gpu-alerts")
    assert root.posted_blocks[0]["text"]["text"].startswith("🟠 FIRING")
    assert "*GpuLost*" not in section_texts(root.posted_blocks)
    text = section_texts(root.blocks)
    assert f"node {HOST} · GPU 0 (GPU-" in text
    assert "pod inference/llm-server-" in text
    assert "<!date^" in text


def test_gpu_lost_joins_the_same_message_with_working_buttons(loop: Loop) -> None:
    def lost_replied() -> bool:
        roots = node_roots(loop.stub)
        return bool(roots) and any("GpuLost firing" in r.text
                                   for r in loop.stub.replies(roots[0]))

    # The root is updated first, then the change is replied in its thread.
    loop.stub.wait_for(lost_replied, timeout=40, what="GpuLost replied in the group's thread")
    (root,) = node_roots(loop.stub)  # updated in place, never a second message
    assert root.updates and "*GpuLost*" in section_texts(root.blocks)
    blocks = root.blocks
    assert blocks[0]["text"]["text"].startswith("🔴 FIRING")
    lost_index = next(i for i, b in enumerate(blocks)
                      if b["type"] == "section" and "*GpuLost*" in section_texts([b]))
    assert "A GPU fell off the bus or disappeared." in section_texts([blocks[lost_index]])
    actions = blocks[lost_index + 1]
    assert actions["type"] == "actions"
    runbook, dashboard, silence = (e["url"] for e in actions["elements"])

    assert runbook == f"{RUNBOOKS}/GpuLost.md"
    assert (ROOT / "runbooks" / runbook.rsplit("/", 1)[1]).is_file()

    url = urlsplit(dashboard)
    uid = url.path.split("/")[2]
    assert uid == "steward-gpu-node" and uid in dashboard_uids()
    query = parse_qs(url.query)
    assert query["var-hostname"] == [HOST] and query["var-gpu"] == ["1"]
    assert int(query["from"][0]) > 0 and query["to"] == ["now"]

    # Silences go to the Alertmanager that sent the alert (its --web.external-url).
    assert silence.startswith(f"{loop.alertmanager.url}/#/silences/new?filter=")
    matchers = unquote(silence.split("filter=", 1)[1])
    assert 'alertname="GpuLost"' in matchers and f'hostname="{HOST}"' in matchers
    assert 'gpu="1"' in matchers


def test_resolve_updates_in_place_and_replies_in_thread(loop: Loop) -> None:
    loop.node.stop()  # its series go stale: every alert of the node resolves

    names = ("GpuLost", "GpuThermalThrottling", "GpuTemperatureHigh", "PodOomKilled")

    def resolved() -> bool:
        roots = node_roots(loop.stub)
        if not roots or not roots[0].blocks[0]["text"]["text"].startswith("✅ RESOLVED"):
            return False
        replied = "".join(r.text for r in loop.stub.replies(roots[0]))
        return all(f"{name} resolved" in replied for name in names)

    # Each change is replied in the thread after the root is updated in place.
    loop.stub.wait_for(resolved, timeout=30, what="the group resolved, in place and in thread")
    (root,) = node_roots(loop.stub)
    assert root.updates  # edited in place with chat.update, not reposted
    assert "resolved" in loop.stub.replies(root)[-1].text


def test_delivery_failing_alert_bypasses_the_notifier(loop: Loop) -> None:
    def fallback_got_it() -> bool:
        return any(a["labels"].get("alertname") == "StewardNotifierDeliveryFailing"
                   for path, body in loop.stub.webhooks if path == "/fallback"
                   for a in body.get("alerts", []))

    loop.stub.wait_for(fallback_got_it, timeout=40,
                       what="StewardNotifierDeliveryFailing at the fallback receiver")
    assert not any("StewardNotifierDeliveryFailing" in m.text for m in loop.stub.messages())
    assert all(path == "/fallback" for path, _ in loop.stub.webhooks)
