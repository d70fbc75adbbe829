"""The demo's Slack page: buttons with a value are forms posting to the demo's relay, which
signs the click as Slack does and hands it to the notifier; uploaded PNGs show inline."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from agent.controller.hygiene.store import HygieneStore
from agent.demo.clicks import ChannelPage, SlackClicker
from agent.demo.slack_view import render_html
from agent.notify.app import build_notifier
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.clicks import SECRET, raw_value
from tests.notify.conftest import notifier_config
from tests.notify.test_hygiene_buttons import notice
from tests.support.net import wait_until


def test_a_button_on_the_page_is_a_signed_click(tmp_path: Path, stub: SlackStub) -> None:
    config = notifier_config(stub, tmp_path / "state.db", notifier={"actions": {
        "hygiene_buttons": True, "graphs": False}})
    notifier = build_notifier(config, environ={"SLACK_SIGNING_SECRET": SECRET})
    notifier.start()
    page = None
    try:
        mark_id, message = notice(stub, notifier, "team-a/Deployment/z")

        def render(click_url: str) -> str:
            return render_html([(m, stub.replies(m)) for m in stub.roots()],
                               click_url=click_url)
        page = ChannelPage(render, SlackClicker(notifier.url, SECRET)).start()
        with urllib.request.urlopen(page.url, timeout=10) as response:
            html = response.read().decode()
        assert f"action='{page.click_url}'" in html and "Keep 7 days</button>" in html
        form = urlencode({"value": raw_value(message, "hygiene-keep"),
                          "channel": message.channel, "ts": message.ts}).encode()
        with urllib.request.urlopen(urllib.request.Request(page.click_url, data=form),
                                    timeout=10) as response:
            assert response.status == 200  # followed the 303 back to the page
        store = HygieneStore(notifier.engine)
        wait_until(lambda: all(m.mark_id != mark_id for m in store.active_marks("idle-gpus")),
                   timeout=10, what="kept")
        # A forged click (wrong secret) through the same relay changes nothing.
        forged = SlackClicker(notifier.url, "not-the-secret")
        assert forged.click(raw_value(message, "hygiene-exempt"), channel=message.channel,
                            ts=message.ts) == 401
    finally:
        if page is not None:
            page.stop()
        notifier.stop()


def test_uploaded_png_shows_inline() -> None:
    reply = StubMessage(channel="C1", ts="2.0", text="", blocks=[], thread_ts="1.0",
                        metadata=None, files=[{"id": "F1", "name": "g.png", "title": "graph"}])
    root = StubMessage(channel="C1", ts="1.0", text="root", blocks=[], thread_ts=None,
                       metadata=None)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 10
    html = render_html([(root, [reply])], files={"F1": png})
    assert "<img src='data:image/png;base64," in html and "graph" in html
