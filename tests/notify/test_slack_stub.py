"""The Slack stub itself, driven by slack-sdk as the notifier and the FinOps report drive it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from agent.sim.slack_stub import SlackStub


def client(stub: SlackStub, token: str = "xoxb-test") -> WebClient:
    return WebClient(token=token, base_url=stub.api_url, retry_handlers=[])


def test_post_update_thread_and_history_with_metadata(stub: SlackStub) -> None:
    slack = client(stub)
    posted = slack.chat_postMessage(channel="#alerts", text="hello",
                                    metadata={"event_type": "t", "event_payload": {"op": "1"}})
    channel, ts = posted["channel"], posted["ts"]
    assert channel.startswith("C") and channel == stub.channel_id("#alerts")
    slack.chat_update(channel=channel, ts=ts, text="edited", blocks=[])
    slack.chat_postMessage(channel=channel, text="in thread", thread_ts=ts)
    history = slack.conversations_history(channel=channel, include_all_metadata=True)
    (root,) = history["messages"]
    assert root["text"] == "edited" and root["metadata"]["event_payload"] == {"op": "1"}
    assert "metadata" not in slack.conversations_history(channel=channel)["messages"][0]
    replies = slack.conversations_replies(channel=channel, ts=ts)["messages"]
    assert [m["text"] for m in replies] == ["edited", "in thread"]
    (message,) = stub.roots("#alerts")
    assert message.updates[0]["text"] == "edited" and len(stub.replies(message)) == 1
    names = {c["name"]: c["id"] for c in slack.conversations_list()["channels"]}
    assert names["alerts"] == channel


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_refuses_what_slack_refuses(stub: SlackStub) -> None:
    slack = client(stub)
    cases: list[dict[str, Any]] = [
        dict(channel="#a", text="t", blocks=[{"type": "section",
                                              "text": {"type": "mrkdwn", "text": "x" * 3001}}]),
        dict(channel="#a", text="t", blocks=[{"type": "divider"}] * 51),
        dict(channel="#a", text="t", thread_ts="1.000000"),
        dict(channel="#a"),
    ]
    errors = []
    for args in cases:
        with pytest.raises(SlackApiError) as caught:
            slack.chat_postMessage(**args)
        errors.append(caught.value.response["error"])
    assert errors == ["invalid_blocks", "invalid_blocks", "thread_not_found", "no_text"]
    with pytest.raises(SlackApiError) as caught:
        slack.chat_update(channel="#a", ts="1.0", text="x")  # names are not ids
    assert caught.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as caught:
        client(stub, token="xoxb-other").auth_test()
    assert caught.value.response["error"] == "invalid_auth"


def test_failures_for_a_while(stub: SlackStub) -> None:
    slack = client(stub)
    stub.fail("ratelimit", retry_after=7, times=1, methods=["chat.postMessage"])
    stub.fail("status", status=502, times=1)
    stub.fail("error", error="not_in_channel", times=1, channels=["#b"])
    with pytest.raises(SlackApiError) as caught:
        slack.chat_postMessage(channel="#a", text="x")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    with pytest.raises(SlackApiError) as caught:
        slack.auth_test()
    assert caught.value.response.status_code == 502
    with pytest.raises(SlackApiError) as caught:
        slack.chat_postMessage(channel="#b", text="x")
    assert caught.value.response["error"] == "not_in_channel"
    assert slack.chat_postMessage(channel="#b", text="x")["ok"]
    assert [c.status for c in stub.calls()] == [429, 502, 200, 200]


def test_file_upload_flow(stub: SlackStub) -> None:
    slack = client(stub)
    result = slack.files_upload_v2(channel=stub.channel_id("#finops"), content=b"team,cost\n",
                                   filename="costs.csv", title="Weekly costs",
                                   initial_comment="FinOps report")
    file_id = result["file"]["id"]
    upload = stub.uploads[file_id]
    assert upload["data"] == b"team,cost\n" and upload["completed"]
    assert upload["channel"] == stub.channel_id("#finops")
    (message,) = stub.messages("#finops")
    assert message.text == "FinOps report" and message.files[0]["title"] == "Weekly costs"
    assert [c.method for c in stub.calls()] == ["files.getUploadURLExternal",
                                                "files.completeUploadExternal"]


def test_fallback_webhooks_are_recorded(stub: SlackStub) -> None:
    request = urllib.request.Request(f"{stub.url}/fallback", data=json.dumps({"a": 1}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    assert stub.webhooks == [("/fallback", {"a": 1})]
