"""Acknowledge from Slack, end to end with the real Alertmanager: a click signed as Slack
signs it -> the notifier's store -> the action worker -> an Alertmanager silence for exactly
that alert; the thread and the root say who acknowledged it until when; Unacknowledge
expires it. Unsigned, badly signed, stale and replayed clicks change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from agent.clients.alertmanager import AlertmanagerClient, Silence
from agent.clients.slack import SlackSink
from agent.clients.slack_params import SlackSettings
from agent.notify.actions import ActionStore, Click, StoredAction, slack_actions
from agent.notify.app import Notifier, build_notifier
from agent.notify.silences import ForgottenSilences, SilenceBook, ack_until
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.clicks import (
    SECRET,
    button_values,
    click_body,
    post_click,
    raw_value,
    signed_headers,
)
from tests.notify.conftest import notifier_config
from tests.support.alertmanager import Alertmanager, start_alertmanager, webhook_receiver
from tests.support.net import free_port, wait_until

pytestmark = pytest.mark.integration
LABELS = {"alertname": "GpuLost", "severity": "critical", "hostname": "gpu-node-7",
          "gpu": "3", "job": "steward-node"}


@dataclass
class World:
    stub: SlackStub
    notifier: Notifier
    alertmanager: Alertmanager
    am: AlertmanagerClient
    sink: SlackSink


@pytest.fixture
def world(tmp_path: Path, stub: SlackStub) -> Iterator[World]:
    am_port = free_port()
    am_url = f"http://127.0.0.1:{am_port}"
    config = notifier_config(stub, tmp_path / "state.db", alertmanager={"url": am_url})
    notifier = build_notifier(config, retry_base_seconds=0.05,
                              environ={"SLACK_SIGNING_SECRET": SECRET})
    notifier.start()
    alertmanager = start_alertmanager({
        "route": {"receiver": "steward", "group_by": ["hostname"], "group_wait": "100ms",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [webhook_receiver("steward", f"{notifier.url}/alertmanager")],
    }, port=am_port)
    try:
        yield World(stub, notifier, alertmanager, AlertmanagerClient(am_url),
                    SlackSink.create(SlackSettings.from_config(config.slack)))
    finally:
        alertmanager.stop()
        notifier.stop()


def fire(world: World, *, ends_in: timedelta = timedelta(hours=1),
         labels: dict[str, str] | None = None) -> StubMessage:
    now = datetime.now(UTC)
    world.alertmanager.post_alerts([{
        "labels": labels or LABELS, "annotations": {"summary": "GPU 3 fell off the bus."},
        "startsAt": now.isoformat(), "endsAt": (now + ends_in).isoformat(),
        "generatorURL": "http://prometheus.example/graph"}])
    world.stub.wait_for(lambda: bool(world.stub.roots()), timeout=15)
    return world.stub.roots()[-1]


def current(stub: SlackStub, root: StubMessage) -> StubMessage:
    return next(m for m in stub.messages() if m.ts == root.ts and m.channel == root.channel)


def am_alert(world: World) -> dict[str, Any]:
    return next(a for a in world.am.alerts() if a["labels"].get("alertname") == "GpuLost")


def ours(world: World) -> list[Silence]:
    return [s for s in world.am.silences() if "steward-action-" in s.comment]


def count_actions(world: World) -> int:
    with world.notifier.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(slack_actions)).scalar_one())


def test_acknowledge_then_unacknowledge(world: World) -> None:
    stub = world.stub
    root = fire(world)
    buttons = button_values(root)
    ack = next(v for v in buttons.values() if v.get("a") == "ack" and v.get("d") == "4h")
    fingerprint = ack["f"]
    assert am_alert(world)["fingerprint"] == fingerprint  # the button names that alert

    body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
    headers = signed_headers(body)
    started = time.monotonic()
    assert post_click(world.notifier.url, body, headers) == 200
    assert time.monotonic() - started < 3.0  # Slack's limit

    wait_until(lambda: bool(ours(world)), timeout=15, what="the silence")
    [silence] = ours(world)
    assert silence.exact_labels() == LABELS
    assert all(not regex and equal for _, _, regex, equal in silence.matchers)
    assert len(silence.matchers) == len(LABELS)
    assert silence.created_by == "alice (Slack U0ALICE)"
    assert f"{world.stub.url}/archives/{root.channel}/p" in silence.comment
    assert timedelta(hours=3, minutes=59) < silence.ends_at - silence.starts_at \
        <= timedelta(hours=4, seconds=1)
    # The alert stops notifying: Alertmanager holds it as suppressed by our silence.
    wait_until(lambda: am_alert(world)["status"]["state"] == "suppressed", timeout=10,
               what="the alert suppressed")
    assert am_alert(world)["status"]["silencedBy"] == [silence.id]

    def acked_in_thread() -> bool:
        return any("acknowledged by <@U0ALICE> until" in r.text for r in stub.replies(root))
    stub.wait_for(acked_in_thread, timeout=10)
    stub.wait_for(lambda: "unack" in {v["a"] for v in button_values(current(stub, root))
                                      .values()}, timeout=10)
    shown = json.dumps(current(stub, root).blocks)
    assert "acknowledged by <@U0ALICE> until" in shown

    # Replayed, badly signed, stale, unsigned: 401 and nothing changes.
    actions_before = count_actions(world)
    assert post_click(world.notifier.url, body, headers) == 401
    bad = {**headers, "X-Slack-Signature": "v0=" + "0" * 64}
    assert post_click(world.notifier.url, body, bad) == 401
    stale_body = click_body(json.dumps({**ack, "d": "1h"}), channel=root.channel, ts=root.ts)
    assert post_click(world.notifier.url, stale_body,
                      signed_headers(stale_body, at=time.time() - 400)) == 401
    assert post_click(world.notifier.url, stale_body,
                      {"Content-Type": "application/x-www-form-urlencoded"}) == 401
    assert post_click(world.notifier.url, stale_body,
                      signed_headers(stale_body, secret="not-the-secret")) == 401
    time.sleep(1.0)
    assert count_actions(world) == actions_before
    assert len(ours(world)) == 1 and ours(world)[0].state == "active"

    unack_value = raw_value(current(stub, root), f"unack-{fingerprint[:16]}")
    unack = click_body(unack_value, user="U0BOB", name="bob", channel=root.channel,
                       ts=root.ts)
    assert post_click(world.notifier.url, unack, signed_headers(unack)) == 200
    wait_until(lambda: ours(world)[0].state == "expired", timeout=15, what="silence expired")
    wait_until(lambda: am_alert(world)["status"]["state"] == "active", timeout=10,
               what="the alert notifies again")
    stub.wait_for(lambda: any("unacknowledged by <@U0BOB>" in r.text
                              for r in stub.replies(root)), timeout=10)
    stub.wait_for(lambda: "unack" not in {v["a"] for v in button_values(
        current(stub, root)).values()}, timeout=10)


def test_a_link_button_click_is_answered_and_ignored(world: World) -> None:
    root = fire(world)
    body = click_body("not-json", channel=root.channel, ts=root.ts)
    assert post_click(world.notifier.url, body, signed_headers(body)) == 200
    assert count_actions(world) == 0


def test_killed_after_creating_the_silence_creates_no_second_one(world: World) -> None:
    """The stage says a silence was being created when the notifier died: the next attempt
    finds it in Alertmanager by the click's tag instead of creating another."""
    root = fire(world)
    ack = next(v for v in button_values(root).values() if v.get("a") == "ack")
    notifier = world.notifier
    store = ActionStore(notifier.outbox, notifier.engine)
    click = Click(kind="ack", args={k: v for k, v in ack.items() if k != "a"},
                  user_id="U0ALICE", user_name="alice", channel_id=root.channel,
                  message_ts=root.ts)
    action_id = store.accept("v0=test-signature", time.time(), click)
    assert action_id is not None
    # What a notifier killed right after Alertmanager answered leaves behind.
    now = datetime.now(UTC)
    ends = now + timedelta(hours=1)
    store.set_stage(StoredAction(action_id, click, {}, 0, time.time()), creating=True,
                    starts_at=now.timestamp(), ends_at=ends.timestamp())
    existing = world.am.create_silence(LABELS, starts_at=now, ends_at=ends,
                                       created_by="alice (Slack U0ALICE)",
                                       comment=f"Acknowledged [steward-action-{action_id}]")
    assert notifier.actions is not None
    notifier.actions.wake()
    wait_until(lambda: (store.get(action_id) or {}).get("state") == "done", timeout=15,
               what="the click done")
    assert [s.id for s in ours(world) if s.state == "active"] == [existing]
    assert len(ours(world)) == 1


def test_resolved_alert_is_refused_with_an_ephemeral_message(world: World) -> None:
    root = fire(world, ends_in=timedelta(seconds=2))
    ack = next(v for v in button_values(root).values() if v.get("a") == "ack")
    world.stub.wait_for(lambda: bool(world.stub.replies(root)), timeout=15)  # resolved
    body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
    assert post_click(world.notifier.url, body, signed_headers(body)) == 200
    world.stub.wait_for(lambda: bool(world.stub.ephemerals), timeout=10)
    assert world.stub.ephemerals[0]["user"] == "U0ALICE"
    assert "resolved" in world.stub.ephemerals[0]["text"]
    assert ours(world) == []


def test_forgotten_silences_digest(world: World) -> None:
    root = fire(world)
    ack = next(v for v in button_values(root).values() if v.get("d") == "4h")
    body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
    assert post_click(world.notifier.url, body, signed_headers(body)) == 200
    wait_until(lambda: bool(ours(world)), timeout=15, what="the silence")
    notifier = world.notifier
    now = [time.time()]
    digest = ForgottenSilences(
        outbox=notifier.outbox, engine=notifier.engine,
        book=SilenceBook(notifier.outbox, notifier.engine, clock=lambda: now[0]),
        alertmanager=world.am, sink=world.sink, channel="#alerts",
        cron="0 * * * *", clock=lambda: now[0])
    digest.run()  # the first run only starts the schedule
    assert digest.forgotten() == []  # the alert still fires: not forgotten
    # The alert resolves; the silence stays.
    world.alertmanager.post_alerts([{"labels": LABELS, "startsAt": datetime.now(UTC)
                                     .isoformat(), "endsAt": datetime.now(UTC).isoformat()}])
    wait_until(lambda: not any(a["labels"].get("alertname") == "GpuLost"
                               for a in world.am.alerts()), timeout=10, what="resolved")
    before = len(world.stub.messages())
    digest.run()  # not due yet
    assert len(world.stub.messages()) == before
    now[0] += 3700
    digest.run()
    posted = [m for m in world.stub.messages() if "Forgotten silences" in m.text]
    assert len(posted) == 1
    assert ours(world)[0].id in json.dumps(posted[0].blocks)
    assert "<@U0ALICE>" in json.dumps(posted[0].blocks)
    digest.run()  # once per schedule
    assert len([m for m in world.stub.messages() if "Forgotten silences" in m.text]) == 1


def test_ack_until_monday() -> None:
    thursday = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
    assert ack_until("monday", thursday) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    monday_early = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert ack_until("monday", monday_early) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    monday_late = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert ack_until("monday", monday_late) == datetime(2026, 12, 14, 9, 0, tzinfo=UTC)
    assert ack_until("1h", thursday) == thursday + timedelta(hours=1)


def test_only_the_clicked_alert_is_silenced(world: World) -> None:
    now = datetime.now(UTC)
    other = {**LABELS, "gpu": "4"}
    world.alertmanager.post_alerts([
        {"labels": labels, "startsAt": now.isoformat(),
         "endsAt": (now + timedelta(hours=1)).isoformat()} for labels in (LABELS, other)])
    world.stub.wait_for(lambda: any(len([v for v in button_values(m).values()
                                         if v.get("d") == "1h"]) == 2
                                    for m in world.stub.messages()), timeout=15)
    root = next(m for m in world.stub.messages() if len(
        [v for v in button_values(m).values() if v.get("d") == "1h"]) == 2)
    by_gpu = {a["labels"]["gpu"]: a["fingerprint"] for a in world.am.alerts()}
    ack = next(v for v in button_values(root).values()
               if v.get("d") == "1h" and v["f"] == by_gpu["3"])
    body = click_body(json.dumps(ack), channel=root.channel, ts=root.ts)
    assert post_click(world.notifier.url, body, signed_headers(body)) == 200
    wait_until(lambda: bool(ours(world)), timeout=15, what="the silence")

    def states() -> dict[str, str]:
        return {a["labels"]["gpu"]: a["status"]["state"] for a in world.am.alerts()}
    wait_until(lambda: states() == {"3": "suppressed", "4": "active"}, timeout=10,
               what="GPU 3 silenced, GPU 4 not")
