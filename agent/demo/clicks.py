"""Slack's side of the buttons in the demo: clicks signed with the app's signing secret, as
Slack signs them, posted to the notifier's ``/slack/actions``; and a small page server that
shows the channel live with working buttons (a click there is relayed the same way)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from agent.notify.signing import sign

DEMO_USER = ("U0DEMOONCALL", "oncall-demo")


def click_payload(value: str, *, user: tuple[str, str], channel: str, ts: str,
                  thread_ts: str | None = None) -> bytes:
    """The form body Slack posts for a button click (block_actions)."""
    container: dict[str, Any] = {"type": "message", "message_ts": ts, "channel_id": channel}
    if thread_ts:
        container["thread_ts"] = thread_ts
    payload = {"type": "block_actions", "user": {"id": user[0], "username": user[1]},
               "channel": {"id": channel}, "container": container,
               "actions": [{"type": "button", "action_id": "demo", "value": value,
                            "action_ts": f"{time.time():.6f}"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


class SlackClicker:
    """Signs and posts clicks to the notifier, as Slack would."""

    def __init__(self, notifier_url: str, secret: str) -> None:
        self._url = notifier_url.rstrip("/") + "/slack/actions"
        self._secret = secret

    def click(self, value: str, *, channel: str, ts: str, user: tuple[str, str] = DEMO_USER,
              thread_ts: str | None = None) -> int:
        body = click_payload(value, user=user, channel=channel, ts=ts, thread_ts=thread_ts)
        stamp = str(int(time.time()))
        request = urllib.request.Request(self._url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(self._secret, stamp, body)})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


class ChannelPage:
    """``GET /``: the channel as it is now (``render()``); ``POST /click``: a button of that
    page, relayed to the notifier as a signed click, then back to the page."""

    def __init__(self, render: Callable[[str], str], clicker: SlackClicker) -> None:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = render(page.click_url).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 16384)
                form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                fields = {k: v[0] for k, v in form.items() if v}
                if self.path == "/click" and {"value", "channel", "ts"} <= fields.keys():
                    clicker.click(fields["value"], channel=fields["channel"], ts=fields["ts"])
                    time.sleep(1.0)  # the worker carries it out; show the result
                self.send_response(303)
                self.send_header("Location", "/")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="demo-channel-page")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def click_url(self) -> str:
        return f"{self.url}click"

    def start(self) -> ChannelPage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
