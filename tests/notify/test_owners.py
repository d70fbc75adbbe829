"""Owner notices: a GPU fault alert that names the workload on the failed GPU and its team
reaches that team's channel (slack.team_channels) as a notice in plain language, linked
both ways with the on-call message, one per workload per incident, updated in place, through
the same outbox (durable, isolated, escaped) as the on-call message."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.notify.incident import AlertState
from agent.notify.owners import (
    ONCALL_GROUP_ANNOTATION,
    Owner,
    OwnerNotices,
    owner_of,
    slack_permalink,
)
from agent.notify.webhook import WebhookAlert
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.conftest import GRAFANA, RUNBOOKS, MakeNotifier
from tests.notify.payloads import T0, alert, post, webhook
from tests.notify.slack_checks import problems
from tests.notify.test_crash import AM_TOKEN, start_notifier
from tests.support.steward import StewardProcess

CHANNELS = {"research": "#ml-alerts", "platform": "#platform-alerts"}
NODE = "gpu-node-7"
TRAIN = {"namespace": "ml-research", "pod": "train-llama-0", "workload_kind": "Job",
         "workload": "train-llama", "team": "research"}
CHAT = {"namespace": "inference", "pod": "chat-api-7f9c5d8b4-x2x9k",
        "workload_kind": "Deployment", "workload": "chat-api", "team": "platform"}
NOTEBOOK = {"namespace": "scratch", "pod": "jupyter-bob-0", "workload_kind": "StatefulSet",
            "workload": "jupyter-bob", "team": "unassigned"}  # no channel for this team


def gpu_alert(name: str, gpu: str, owner: dict[str, str] | None, *, status: str = "firing",
              node_state: str = "not cordoned", **extra: str) -> dict[str, Any]:
    labels = {"hostname": NODE, "gpu": gpu, "UUID": f"GPU-{gpu}", "modelName": "H100",
              **(owner or {}), **extra}
    made = alert(name, status=status, **labels)
    made["annotations"]["node_remediation"] = node_state
    made["annotations"]["runbook_url"] = f"{RUNBOOKS}/{name}.md"
    return made


def lost_group(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    return webhook(list(alerts), group_key='{}:{alertname="GpuLost", hostname="gpu-node-7"}',
                   group_labels={"alertname": "GpuLost", "hostname": NODE}, status=status)


def xid_group(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    return webhook(list(alerts),
                   group_key='{}:{alertname="GpuXidCritical", hostname="gpu-node-7"}',
                   group_labels={"alertname": "GpuXidCritical", "hostname": NODE},
                   status=status)


def send(url: str, payload: dict[str, Any]) -> None:
    status, answer = post(url, payload)
    assert status == 200, answer


def texts(message: StubMessage) -> str:
    return json.dumps(message.blocks, ensure_ascii=False) + message.text


def button_urls(message: StubMessage) -> list[str]:
    return [e["url"] for b in message.blocks if b.get("type") == "actions"
            for e in b["elements"] if e.get("url")]


def link_targets(message: StubMessage) -> list[str]:
    """Every <url|label> target in the message's mrkdwn."""
    import re

    return re.findall(r"<(http[^|>]+)\|", json.dumps(message.blocks, ensure_ascii=False))


@pytest.fixture
def owners_notifier(make_notifier: MakeNotifier) -> Any:
    return make_notifier(slack={"team_channels": CHANNELS})


# --- derivation (pure) ----------------------------------------------------------------


def state(payload: dict[str, Any]) -> AlertState:
    return AlertState.from_webhook(WebhookAlert.model_validate(payload))


def test_notices_only_for_owned_alerts_of_teams_with_a_channel_and_only_when_changed() -> None:
    notices = OwnerNotices(CHANNELS)
    train, chat = state(gpu_alert("GpuLost", "3", TRAIN)), state(gpu_alert("GpuLost", "3", CHAT))
    bare = state(gpu_alert("GpuLost", "4", None))
    notebook = state(gpu_alert("GpuLost", "5", NOTEBOOK))
    current = {a.fingerprint: a for a in (train, chat, bare, notebook)}
    derived = notices.derive("oncall-1", {}, current)
    assert [n.group_key for n in derived] == [
        "steward-owner:platform/inference/Deployment/chat-api",
        "steward-owner:research/ml-research/Job/train-llama"]
    (chat_alert,) = derived[0].alerts
    assert chat_alert.annotations[ONCALL_GROUP_ANNOTATION] == "oncall-1"
    assert chat_alert.key == chat.fingerprint and derived[0].status == "firing"
    # Nothing changed for either workload: nothing to tell.
    assert notices.derive("oncall-1", current, current) == []
    # Only the workload whose alert resolved is told again.
    done = state(gpu_alert("GpuLost", "3", TRAIN, status="resolved"))
    later = notices.derive("oncall-1", current, {**current, done.fingerprint: done})
    assert [n.group_key for n in later] == ["steward-owner:research/ml-research/Job/train-llama"]


def test_a_forged_oncall_annotation_is_replaced_and_absurd_owners_get_no_notice() -> None:
    forged = gpu_alert("GpuLost", "3", TRAIN)
    forged["annotations"][ONCALL_GROUP_ANNOTATION] = "someone-elses-group"
    found = state(forged)
    (notice,) = OwnerNotices(CHANNELS).derive("mine", {}, {found.fingerprint: found})
    assert notice.alerts[0].annotations[ONCALL_GROUP_ANNOTATION] == "mine"
    assert owner_of({**TRAIN, "workload": "x" * 300}) is None
    assert owner_of({"team": "research", "namespace": "ml"}) is None
    assert owner_of(TRAIN) == Owner("research", "ml-research", "Job", "train-llama")


def test_only_slacks_own_permalinks_become_links() -> None:
    api = "http://127.0.0.1:5000/api/"
    assert slack_permalink("https://acme.slack.com/archives/C1/p1", api_url=api) == \
        "https://acme.slack.com/archives/C1/p1"
    assert slack_permalink("http://127.0.0.1:5000/archives/C1/p1", api_url=api)
    for bad in ("https://evil.example/archives/C1/p1", "http://acme.slack.com/archives/C1",
                "https://acme.slack.com.evil.example/x", "javascript:alert(1)", None,
                "https://user@acme.slack.com/x", "https://acme.slack.com/../x"):
        assert slack_permalink(bad, api_url=api) is None, bad


def test_a_webhook_cannot_claim_an_owner_notice_group(make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(slack={"team_channels": CHANNELS})
    payload = webhook([alert("GpuLost", hostname=NODE, **TRAIN)],
                      group_key="steward-owner:research/ml-research/Job/train-llama")
    status, answer = post(notifier.url, payload)
    assert status == 400 and "Steward's own" in answer["error"]


# --- delivery (in-process notifier, Slack stub) ---------------------------------------


def test_one_notice_per_team_in_its_channel_linked_both_ways(owners_notifier: Any,
                                                             stub: SlackStub) -> None:
    # GPU 3 is time-sliced by a research Job and a platform Deployment; GPU 4 had no
    # tenant; GPU 5's notebook belongs to a team with no channel.
    send(owners_notifier.url, lost_group(
        gpu_alert("GpuLost", "3", TRAIN), gpu_alert("GpuLost", "3", CHAT),
        gpu_alert("GpuLost", "4", None), gpu_alert("GpuLost", "5", NOTEBOOK)))
    def linked_back() -> bool:
        roots = stub.roots("#oncall")
        return bool(roots) and len(link_targets(roots[0])) >= 2

    stub.wait_for(linked_back, timeout=15, what="the on-call message linking both notices")
    (research,) = stub.roots("#ml-alerts")
    (platform,) = stub.roots("#platform-alerts")
    assert {m.channel for m in stub.roots()} == {
        stub.channel_id(c) for c in ("#oncall", "#ml-alerts", "#platform-alerts")}

    # The notice: plain words, the workload, the node's state, what to do.
    text = texts(research)
    assert "Your Job ml-research/train-llama was on a GPU that failed" in text
    assert "GPU 3 (H100) of node gpu-node-7 fell off the bus" in text
    assert "processes on this GPU are lost" in text
    assert "node reboot" in text and "checkpoint" in text
    assert "Node gpu-node-7: not cordoned" in text
    assert "chat-api" not in text  # the other team's workload is not theirs
    # Its links: the owner section of the runbook, the dashboard, the on-call message.
    urls = button_urls(research)
    assert f"{RUNBOOKS}/GpuLost.md#if-you-own-the-workload" in urls
    assert any(u.startswith(GRAFANA) for u in urls)
    oncall_links = [u for u in urls if "/archives/" in u]
    assert [stub.by_permalink(u) for u in oncall_links] == [stub.roots("#oncall")[0]]

    # The on-call message links to each notice.
    notices = {m.ts for m in (research, platform)}
    linked = {found.ts for u in link_targets(stub.roots("#oncall")[0])
              if (found := stub.by_permalink(u)) is not None}
    assert linked == notices
    assert "Owners told" in texts(stub.roots("#oncall")[0])


def test_one_notice_per_workload_per_incident_updated_in_place_until_resolved(
        owners_notifier: Any, stub: SlackStub) -> None:
    lost = gpu_alert("GpuLost", "3", TRAIN)
    send(owners_notifier.url, lost_group(lost))
    stub.wait_for(lambda: len(stub.roots("#ml-alerts")) == 1, timeout=15, what="the notice")
    # The same GPU's XID 79 arrives in its own on-call group: the same notice grows.
    xid = gpu_alert("GpuXidCritical", "3", TRAIN, xid="79", action="reboot-node",
                    node_state="cordoned; quarantined by nvsentinel")
    send(owners_notifier.url, xid_group(xid))

    def both_shown() -> bool:
        notice = stub.roots("#ml-alerts")[0]
        return "hit XID 79" in texts(notice) and "fell off the bus" in texts(notice)

    stub.wait_for(both_shown, timeout=15, what="the notice updated with the XID")
    (notice,) = stub.roots("#ml-alerts")  # one message, never a second one
    assert stub.replies(notice) == []  # a notice is updated, not threaded
    text = texts(notice)
    assert "GPU has fallen off the bus" in text
    assert "NVIDIA recommends to drain and reboot the node" in text
    assert "cordoned; quarantined by nvsentinel" in text
    oncall = {stub.by_permalink(u).ts for u in button_urls(notice)  # type: ignore[union-attr]
              if "/archives/" in u}
    assert oncall == {m.ts for m in stub.roots("#oncall")} and len(oncall) == 2

    # Both resolve: the notice says so, in place.
    send(owners_notifier.url, lost_group({**lost, "status": "resolved",
                                          "endsAt": "2026-11-20T03:20:00Z"}))
    send(owners_notifier.url, xid_group({**xid, "status": "resolved",
                                         "endsAt": "2026-11-20T03:20:00Z"}))
    stub.wait_for(lambda: "Resolved: your Job ml-research/train-llama" in texts(
        stub.roots("#ml-alerts")[0]), timeout=15, what="the notice resolved")
    assert len(stub.roots("#ml-alerts")) == 1

    # The workload is hit again later: a new incident, a new notice.
    again = gpu_alert("GpuLost", "3", TRAIN)
    again["startsAt"] = (T0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    again["fingerprint"] = lost["fingerprint"]
    send(owners_notifier.url, lost_group(again))
    stub.wait_for(lambda: len(stub.roots("#ml-alerts")) == 2, timeout=15,
                  what="a new notice for the new incident")


def test_no_notice_without_team_channels_or_for_a_gpu_with_no_tenant(
        make_notifier: MakeNotifier, stub: SlackStub) -> None:
    plain = make_notifier()  # no slack.team_channels
    send(plain.url, lost_group(gpu_alert("GpuLost", "3", TRAIN)))
    stub.wait_for(plain.worker.idle, timeout=15, what="delivered")
    assert [stub.channel_name(m.channel) for m in stub.roots()] == ["#oncall"]
    assert "Owners told" not in texts(stub.roots()[0])


def test_nothing_from_the_alert_becomes_markup_in_a_notice(owners_notifier: Any,
                                                           stub: SlackStub) -> None:
    evil = dict(TRAIN, workload="x<!channel>", pod="<https://evil.example|click>")
    made = gpu_alert("GpuLost", "3", evil, node_state="<!here> @everyone https://evil.example")
    made["annotations"]["runbook_url"] = "https://evil.example/runbook"
    send(owners_notifier.url, lost_group(made))
    stub.wait_for(lambda: len(stub.roots("#ml-alerts")) == 1
                  and link_targets(stub.roots("#oncall")[0]), timeout=15,
                  what="notice and link back")
    hosts = {GRAFANA, "https://runbooks.example", stub.url}
    writes = stub.calls("chat.postMessage") + stub.calls("chat.update")
    assert writes and all(problems(call, hosts) == [] for call in writes), \
        [problems(c, hosts) for c in writes]
    assert "x&lt;!channel&gt;" in texts(stub.roots("#ml-alerts")[0])


# --- killed between Slack and the outbox ----------------------------------------------


def start_process(workdir: Path, stub: SlackStub, started: list[StewardProcess]
                  ) -> StewardProcess:
    return start_notifier(workdir, stub, started, slack={"team_channels": CHANNELS},
                          notifier={"poll_seconds": 0.2},
                          runbooks={"base_url": RUNBOOKS}, grafana={"url": GRAFANA})


@pytest.mark.integration
@pytest.mark.parametrize("held_channel", ["#oncall", "#ml-alerts"])
def test_killed_between_slack_and_the_outbox_the_notice_is_sent_once(
        tmp_path: Path, stub: SlackStub, processes: list[StewardProcess],
        held_channel: str) -> None:
    """SIGKILL while Slack holds the answer to the on-call post (the notice is derived by
    the step that records it), or to the notice's own post (found again by its metadata)."""
    hold = stub.fail("hold", methods=["chat.postMessage"], channels=[held_channel], times=1)
    first = start_process(tmp_path, stub, processes)
    status, _ = post(first.url, lost_group(gpu_alert("GpuLost", "3", TRAIN)), token=AM_TOKEN)
    assert status == 200
    hold.wait_held()  # Slack has the message; the notifier waits for the answer
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    hold.release()

    second = start_process(tmp_path, stub, processes)

    def linked() -> bool:
        roots = stub.roots("#oncall")
        return len(roots) == 1 and len(stub.roots("#ml-alerts")) == 1 and bool(
            link_targets(roots[0]))

    stub.wait_for(linked, timeout=30, what="one on-call message and one notice, linked")
    time.sleep(1.5)  # a duplicate would be posted within the poll interval
    (oncall,) = stub.roots("#oncall")
    (notice,) = stub.roots("#ml-alerts")
    assert [stub.by_permalink(u) for u in link_targets(oncall)] == [notice]
    assert [stub.by_permalink(u) for u in button_urls(notice) if "/archives/" in u] == [oncall]
    assert second.stop() == 0
