"""A resolve reply links back to its root message (Slack's permalink), after a restart too;
a permalink that is not Slack's is never turned into a link."""

from __future__ import annotations

import json
from pathlib import Path

from agent.notify.alert_links import LinkSettings
from agent.notify.blocks import render_changes
from agent.notify.incident import AlertState, Change
from agent.notify.webhook import WebhookAlert
from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import MakeNotifier
from tests.notify.payloads import alert, post, webhook


def test_resolve_after_a_restart_threads_and_links_the_root(
        tmp_path: Path, stub: SlackStub, make_notifier: MakeNotifier) -> None:
    first = make_notifier()
    firing = alert("GpuLost", hostname="gpu-node-1")
    assert post(first.url, webhook([firing]))[0] == 200
    stub.wait_for(lambda: bool(stub.roots()), timeout=10)
    first.stop()

    second = make_notifier()
    resolved = alert("GpuLost", status="resolved", hostname="gpu-node-1")
    assert post(second.url, webhook([resolved]))[0] == 200
    [root] = stub.roots()
    stub.wait_for(lambda: bool(stub.replies(root)), timeout=10)
    [reply] = stub.replies(root)
    assert reply.thread_ts == root.ts
    link = f"{stub.url}/archives/{root.channel}/p{root.ts.replace('.', '')}"
    assert f"<{link}|alert group>" in json.dumps(reply.blocks)


def _change() -> Change:
    raw = alert("GpuLost", status="resolved", hostname="n1")
    state = AlertState.from_webhook(WebhookAlert.model_validate(raw))
    return Change(kind="resolved", alert=state)


def test_only_permalink_shaped_links_are_linked() -> None:
    """The host is checked before (owners.slack_permalink); here what would be markup."""
    settings = LinkSettings(runbook_base_url="https://runbooks.example", grafana_url=None,
                            alertmanager_url=None)
    for bad in ("https://x.slack.com.evil.example/a", "https://x.slack.com/archives/C1/p1|<!channel>",
                "https://x.slack.com/archives/C1/p1> <!here", "javascript:alert(1)"):
        text = json.dumps(render_changes([_change()], settings, root_link=bad).blocks)
        assert "alert group" not in text, bad
    good = "https://acme.slack.com/archives/C0123ABC/p1700000000123456"
    text = json.dumps(render_changes([_change()], settings, root_link=good).blocks)
    assert f"<{good}|alert group>" in text
