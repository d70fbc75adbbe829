"""Acknowledging an alert whose root links its owner notices (slack.team_channels) re-renders
that root as delivery does: the Acknowledge state is added, the notices' links stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.clients.alertmanager import AlertmanagerClient
from agent.notify.app import build_notifier
from agent.sim.slack_stub import SlackStub
from tests.notify.clicks import SECRET, button_values, click_body, post_click, signed_headers
from tests.notify.conftest import notifier_config
from tests.notify.test_owners import CHANNELS, TRAIN, gpu_alert, link_targets, lost_group, send
from tests.support.alertmanager import start_alertmanager, webhook_receiver
from tests.support.net import wait_until

pytestmark = pytest.mark.integration


def test_acknowledge_keeps_the_owner_notice_links(tmp_path: Path, stub: SlackStub) -> None:
    alertmanager = start_alertmanager({"route": {"receiver": "none"},
                                       "receivers": [webhook_receiver("none", "http://x/")]})
    notifier = build_notifier(notifier_config(
        stub, tmp_path / "state.db", slack={"team_channels": CHANNELS},
        alertmanager={"url": alertmanager.url}, notifier={"actions": {"graphs": False}}),
        environ={"SLACK_SIGNING_SECRET": SECRET})
    notifier.start()
    try:
        send(notifier.url, lost_group(gpu_alert("GpuLost", "3", TRAIN)))

        def oncall_links_notice() -> bool:
            roots = stub.roots("#oncall")
            return bool(roots) and any("/archives/" in u for u in link_targets(roots[0]))
        stub.wait_for(oncall_links_notice, timeout=15, what="the on-call root linking")
        root = stub.roots("#oncall")[0]
        links = link_targets(root)
        ack = next(v for v in button_values(root).values() if v.get("d") == "1h")
        body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
        assert post_click(notifier.url, body, signed_headers(body)) == 200
        wait_until(lambda: bool(AlertmanagerClient(alertmanager.url).silences()), timeout=15,
                   what="the silence")
        stub.wait_for(lambda: "unack" in {v["a"] for v in button_values(
            stub.roots("#oncall")[0]).values()}, timeout=15, what="the root re-rendered")
        now = stub.roots("#oncall")[0]
        assert link_targets(now) == links  # the owner notice is still linked
        assert any("/archives/" in u for u in links)
        assert "Owners told" in json.dumps(now.blocks, ensure_ascii=False)
        assert "acknowledged by <@U0ALICE>" in json.dumps(now.blocks)
        # The owner notice itself gets no Acknowledge buttons (it is not the on-call page).
        (notice,) = stub.roots("#ml-alerts")
        assert not [v for v in button_values(notice).values() if v.get("a") == "ack"]
    finally:
        notifier.stop()
        alertmanager.stop()
