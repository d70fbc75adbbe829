"""Slack interactivity requests as Slack sends them: a form-encoded ``payload`` signed with
the app's signing secret (v0), for the notifier's tests and the demo."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from agent.notify.signing import sign
from agent.sim.slack_stub import StubMessage

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def click_body(value: str, *, user: str = "U0ALICE", name: str = "alice",
               channel: str, ts: str) -> bytes:
    payload = {
        "type": "block_actions", "user": {"id": user, "username": name, "team_id": "T1"},
        "channel": {"id": channel, "name": "alerts"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "actions": [{"type": "button", "action_id": "x", "block_id": "b", "value": value,
                     "action_ts": f"{time.time():.6f}"}],
        "response_url": "https://hooks.slack.com/actions/T1/1/x", "trigger_id": "1.2.3",
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed_headers(body: bytes, *, secret: str = SECRET, at: float | None = None
                   ) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {"X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": sign(secret, timestamp, body),
            "Content-Type": "application/x-www-form-urlencoded"}


def post_click(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{url}/slack/actions", data=body, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def button_values(message: StubMessage) -> dict[str, dict[str, Any]]:
    """The root's interactive buttons by action_id, their values parsed."""
    found = {}
    for block in message.blocks:
        for element in block.get("elements") or []:
            if element.get("type") == "button" and "value" in element:
                found[element["action_id"]] = json.loads(element["value"])
    return found


def raw_value(message: StubMessage, action_id: str) -> str:
    for block in message.blocks:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise KeyError(action_id)
