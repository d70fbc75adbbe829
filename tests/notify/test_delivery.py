"""Delivery to a Slack stub over real HTTP: one message per group, updates, thread replies,
Slack failing and recovering, lost responses, pacing and restarts."""

from __future__ import annotations

import itertools
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.notify.app import Notifier
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.conftest import MakeNotifier
from tests.notify.payloads import T0, alert, post, webhook
from tests.support.net import metric_value


def send(notifier: Notifier, payload: dict[str, Any]) -> None:
    status, answer = post(notifier.url, payload)
    assert status == 200, answer


def drain(notifier: Notifier, stub: SlackStub, timeout: float = 15) -> None:
    stub.wait_for(notifier.worker.idle, timeout=timeout, what="outbox drained")


def resolved(a: dict[str, Any], minutes: int = 5) -> dict[str, Any]:
    ends = (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    return {**a, "status": "resolved", "endsAt": ends}


def header(message: StubMessage) -> str:
    return str(message.blocks[0]["text"]["text"])


def texts(message: StubMessage) -> str:
    return message.text + "\n" + "\n".join(
        b.get("text", {}).get("text", "") for b in message.blocks if b["type"] == "section")


def metrics(notifier: Notifier) -> str:
    with urllib.request.urlopen(f"{notifier.url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_group_lifecycle_one_message_updated_in_place(make_notifier: MakeNotifier,
                                                     stub: SlackStub) -> None:
    notifier = make_notifier()
    lost = alert("GpuLost", hostname="gpu-node-1", gpu="3")
    ecc = alert("GpuEccUncorrectable", hostname="gpu-node-1", gpu="5")
    send(notifier, webhook([lost]))
    drain(notifier, stub)
    send(notifier, webhook([lost, ecc]))
    drain(notifier, stub)
    send(notifier, webhook([resolved(lost), resolved(ecc)], status="resolved"))
    drain(notifier, stub)

    (root,) = stub.roots()
    assert root.channel == stub.channel_id("#oncall")  # routed by severity
    assert root.metadata is not None  # carries the op id that makes posting idempotent
    assert len(root.updates) == 2
    assert "GpuEccUncorrectable" in str(root.updates[0]["blocks"])
    assert header(root).startswith("✅ RESOLVED")
    replies = stub.replies(root)
    assert [r.text.split(":")[0] for r in replies] == ["🔥 1 firing", "✅ 2 resolved"]
    assert "GpuEccUncorrectable" in texts(replies[0])
    assert "GpuLost" in texts(replies[1]) and "GpuEccUncorrectable" in texts(replies[1])
    text = metrics(notifier)
    assert metric_value(text, "steward_notifier_slack_messages_total", result="ok") == 5
    assert metric_value(text, "steward_notifier_outbox_depth") == 0


def test_a_new_incident_after_resolution_gets_a_new_message(make_notifier: MakeNotifier,
                                                            stub: SlackStub) -> None:
    notifier = make_notifier()
    warn = alert("GpuThermalThrottling", severity="warning", hostname="n2", gpu="6")
    send(notifier, webhook([warn], group_key="g2"))
    send(notifier, webhook([resolved(warn)], group_key="g2"))
    send(notifier, webhook([warn], group_key="g2"))
    drain(notifier, stub)
    roots = stub.roots("#alerts")  # warnings go to the default channel
    assert len(roots) == 2
    assert header(roots[0]).startswith("✅ RESOLVED")
    assert header(roots[1]).startswith("🟠 FIRING:1")


def test_slack_down_then_back_every_alert_once_in_order(make_notifier: MakeNotifier,
                                                        stub: SlackStub) -> None:
    outage = stub.fail("status", status=500, seconds=1.5)
    throttle = stub.fail("ratelimit", retry_after=0.3, times=3)
    notifier = make_notifier()
    groups = [f"group-{g}" for g in range(4)]
    for step in range(3):
        for g, key in enumerate(groups):
            alerts = [alert(f"Alert{i}", hostname=f"n{g}", gpu=str(i)) for i in range(step + 1)]
            send(notifier, webhook(alerts, group_key=key, group_labels={"hostname": f"n{g}"}))
    stub.wait_for(lambda: outage.hits > 0 and throttle.hits == 3, timeout=10,
                  what="Slack failures seen")
    drain(notifier, stub, timeout=30)
    roots = stub.roots()
    assert len(roots) == 4  # one message per group, none duplicated
    for root in roots:
        # What the group's readers saw, in order: the root as first posted, then each reply.
        seen = [str(root.posted_blocks)] + [texts(r) for r in stub.replies(root)]
        first_seen = [next(i for i, text in enumerate(seen) if f"Alert{n}" in text)
                      for n in range(3)]
        assert first_seen == sorted(first_seen), first_seen  # in order, each exactly once:
        for n in range(3):
            assert sum(f"*Alert{n}*" in text for text in seen) == 1, (n, seen)
        assert header(root).startswith("🔴 FIRING:3")  # the final state, updated in place
    text = metrics(notifier)
    assert (metric_value(text, "steward_notifier_slack_messages_total", result="error")
            or 0) >= 4
    assert metric_value(text, "steward_notifier_outbox_depth") == 0


def test_retry_after_pauses_only_that_channel(make_notifier: MakeNotifier,
                                              stub: SlackStub) -> None:
    stub.fail("ratelimit", retry_after=1.0, times=1, channels=["#oncall"])
    notifier = make_notifier()
    send(notifier, webhook([alert("Crit")], group_key="crit"))
    stub.wait_for(lambda: len(stub.calls("chat.postMessage")) == 1, timeout=5,
                  what="first, rate-limited post")
    send(notifier, webhook([alert("Warn", severity="warning")], group_key="warn"))
    drain(notifier, stub)
    posts = stub.calls("chat.postMessage")
    limited, *rest = posts
    assert limited.status == 429
    by_channel = {c.args["channel"]: c for c in rest}
    # the warning channel was not held back by the critical channel's Retry-After
    assert by_channel["#alerts"].at - limited.at < 0.9
    assert by_channel["#oncall"].at - limited.at >= 0.95


def test_refused_channel_stays_in_the_outbox_until_fixed(make_notifier: MakeNotifier,
                                                         stub: SlackStub) -> None:
    # Within notifier.max_attempts (past it: test_isolation, dead letter and notice).
    refusal = stub.fail("error", error="not_in_channel", channels=["#oncall"])
    notifier = make_notifier(notifier={"max_attempts": 100})
    send(notifier, webhook([alert("Crit")], group_key="crit"))
    stub.wait_for(lambda: (metric_value(metrics(notifier), "steward_notifier_slack_messages_total",
                                        result="error") or 0) >= 3,
                  timeout=10, what="repeated refusals counted")
    assert refusal.hits >= 3
    assert metric_value(metrics(notifier), "steward_notifier_outbox_depth") == 1
    stub.clear_faults()  # someone invited the bot
    drain(notifier, stub, timeout=15)
    assert len(stub.roots("#oncall")) == 1


def test_lost_responses_do_not_duplicate_posts(make_notifier: MakeNotifier,
                                               stub: SlackStub) -> None:
    # Slack applies each post but the answer never arrives: the notifier cannot know.
    drop = stub.fail("drop", methods=["chat.postMessage"], times=2)
    notifier = make_notifier()
    lost = alert("GpuLost", hostname="n1")
    send(notifier, webhook([lost]))
    stub.wait_for(lambda: drop.hits == 1, timeout=5, what="dropped root post")
    send(notifier, webhook([lost, alert("Second", hostname="n1")]))
    drain(notifier, stub, timeout=15)
    (root,) = stub.roots()
    replies = stub.replies(root)
    assert len(replies) == 1 and "Second" in texts(replies[0])
    assert drop.hits == 2
    assert stub.calls("conversations.history") and stub.calls("conversations.replies")


def test_pacing_about_one_message_per_second_per_channel(make_notifier: MakeNotifier,
                                                         stub: SlackStub) -> None:
    notifier = make_notifier(notifier={"channel_pacing_seconds": 0.25})
    for g in range(4):
        send(notifier, webhook([alert("Crit", hostname=f"n{g}")], group_key=f"c{g}"))
        send(notifier, webhook([alert("Warn", severity="warning", hostname=f"n{g}")],
                               group_key=f"w{g}"))
    drain(notifier, stub)
    for channel in ("#oncall", "#alerts"):
        times = [c.at for c in stub.calls("chat.postMessage") if c.args["channel"] == channel]
        assert len(times) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.24, gaps
    # the two channels were paced independently, not one after the other
    assert max(c.at for c in stub.calls()) - min(c.at for c in stub.calls()) < 1.6


def test_deleted_root_is_posted_again(make_notifier: MakeNotifier, stub: SlackStub) -> None:
    notifier = make_notifier()
    lost = alert("GpuLost", hostname="n1")
    send(notifier, webhook([lost]))
    drain(notifier, stub)
    stub.fail("error", error="message_not_found", methods=["chat.update"], times=1)
    send(notifier, webhook([lost, alert("Second", hostname="n1")]))
    drain(notifier, stub)
    _first, second = stub.roots()
    assert "Second" in str(second.blocks) and "GpuLost" in str(second.blocks)


def test_blocks_slack_refuses_fall_back_to_text(make_notifier: MakeNotifier,
                                                stub: SlackStub) -> None:
    stub.fail("error", error="invalid_blocks", methods=["chat.postMessage"], times=1)
    notifier = make_notifier()
    send(notifier, webhook([alert("GpuLost", hostname="n1")]))
    drain(notifier, stub)
    (root,) = stub.roots()
    assert root.blocks == [] and "GpuLost" in root.text


def test_group_mapping_survives_a_restart(make_notifier: MakeNotifier, stub: SlackStub,
                                          tmp_path: Path) -> None:
    state = tmp_path / "restart.db"
    first = make_notifier(state=state)
    lost = alert("GpuLost", hostname="n1")
    send(first, webhook([lost]))
    drain(first, stub)
    first.stop()
    second = make_notifier(state=state)
    send(second, webhook([lost, alert("Second", hostname="n1")]))
    drain(second, stub)
    (root,) = stub.roots()
    assert len(root.updates) == 1 and len(stub.replies(root)) == 1


def test_reply_to_a_deleted_thread_starts_a_new_message(make_notifier: MakeNotifier,
                                                        stub: SlackStub) -> None:
    notifier = make_notifier()
    lost = alert("GpuLost", hostname="n1")
    send(notifier, webhook([lost]))
    drain(notifier, stub)
    stub.fail("error", error="thread_not_found", methods=["chat.postMessage"], times=1)
    send(notifier, webhook([lost, alert("Second", hostname="n1")]))
    drain(notifier, stub)
    _first, second = stub.roots()
    assert "*Second*" in str(second.blocks) and "*GpuLost*" in str(second.blocks)


def test_when_slack_will_not_say_whether_it_posted_deliver_anyway(
        make_notifier: MakeNotifier, stub: SlackStub) -> None:
    # The answer to the post is lost and the bot may not read history: at least once.
    stub.fail("drop", methods=["chat.postMessage"], times=1)
    stub.fail("error", error="missing_scope", methods=["conversations.history"])
    notifier = make_notifier()
    send(notifier, webhook([alert("GpuLost", hostname="n1")]))
    drain(notifier, stub)
    assert len(stub.roots()) == 2
    assert metric_value(metrics(notifier), "steward_notifier_outbox_depth") == 0
