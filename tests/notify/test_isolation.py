"""One group that cannot be rendered or delivered never holds up the others: it is retried on
its own, then dead-lettered with a plain notice, listed and replayed by the CLI. And what an
Alertmanager peer that is behind sends late does not page again."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, insert

from agent.cli import main
from agent.clients.slack import Message
from agent.notify import delivery as delivery_module
from agent.notify.blocks import GroupView
from agent.notify.outbox import notifications
from agent.notify.webhook import group_id
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.conftest import MakeNotifier, notifier_config
from tests.notify.payloads import T0, alert, post, webhook
from tests.notify.test_delivery import drain, header, metrics, send, texts
from tests.support.net import http_ok, metric_value

POISON_START = "0001-01-01T00:00:00+01:00"


def poison_payload(name: str = "PoisonAlert", key: str = "poison") -> dict[str, Any]:
    payload = webhook([alert(name, hostname="poison-node")], group_key=key)
    payload["alerts"][0]["startsAt"] = POISON_START
    return payload


def store_raw(state: Path, payload: dict[str, Any]) -> None:
    """A webhook an older notifier acknowledged before validating timestamps."""
    engine = create_engine(f"sqlite:///{state}")
    try:
        with engine.begin() as conn:
            conn.execute(insert(notifications).values(
                group_id=group_id(payload["groupKey"]), received_at=time.time(),
                status=payload["status"], alert_count=len(payload["alerts"]),
                payload=json.dumps(payload)))
    finally:
        engine.dispose()


def notices(stub: SlackStub, channel: str | None = None) -> list[StubMessage]:
    return [m for m in stub.roots(channel) if "could not show an alert group" in m.text]


def test_poison_timestamp_is_refused_at_the_door(make_notifier: MakeNotifier,
                                                 stub: SlackStub) -> None:
    notifier = make_notifier()
    status, answer = post(notifier.url, poison_payload())
    assert status == 400
    assert answer["error"] == "alerts.0.startsAt: must be between 1970-01-01 and 9000-01-01"
    started = time.monotonic()
    send(notifier, webhook([alert("GpuLost", hostname="n1")], group_key="normal"))
    stub.wait_for(lambda: len(stub.roots("#oncall")) == 1, timeout=5, what="GpuLost posted")
    assert time.monotonic() - started < 3


def test_a_poison_group_in_the_store_does_not_hold_up_its_channel(
        make_notifier: MakeNotifier, stub: SlackStub, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_notifier(state=state).stop()  # an outbox from before
    store_raw(state, poison_payload())  # routed to #oncall (critical), first in the queue
    notifier = make_notifier(state=state, retry_base_seconds=0.3,
                             notifier={"max_attempts": 4})
    started = time.monotonic()
    send(notifier, webhook([alert("GpuLost", hostname="n1")], group_key="normal"))
    stub.wait_for(lambda: any("GpuLost" in m.text for m in stub.roots("#oncall")), timeout=5,
                  what="the normal alert, despite the poison group before it")
    assert time.monotonic() - started < 3
    # The poison group: retried on its own, then dead-lettered with a plain notice.
    stub.wait_for(lambda: notices(stub), timeout=20, what="the dead-letter notice")
    drain(notifier, stub)
    (notice,) = notices(stub, "#oncall")  # routed by what of its JSON could be read
    assert notice.blocks == []
    assert "PoisonAlert" in notice.text and "ValidationError" in notice.text
    assert "dead letter 1" in notice.text and "--retry 1" in notice.text
    text = metrics(notifier)
    assert metric_value(text, "steward_notifier_dead_letters_total") == 1
    assert metric_value(text, "steward_notifier_dead_letters_stored") == 1
    assert metric_value(text, "steward_notifier_outbox_depth") == 0
    assert (metric_value(text, "steward_notifier_slack_messages_total", result="error")
            or 0) >= 4
    assert notifier.worker.alive()


def boom_on_render(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Rendering a group with an alert named Boom raises ``error`` (a bug, say)."""
    real = delivery_module.render_group

    def render(view: GroupView, settings: Any, *rest: Any) -> Message:
        if any(a.alertname == "Boom" for a in view.alerts):
            raise error
        return real(view, settings, *rest)

    monkeypatch.setattr(delivery_module, "render_group", render)


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_any_exception_in_a_step_is_isolated_to_its_group(
        make_notifier: MakeNotifier, stub: SlackStub, monkeypatch: pytest.MonkeyPatch) -> None:
    boom_on_render(monkeypatch, KeyError("<!channel> from a bug"))
    notifier = make_notifier(retry_base_seconds=0.5, notifier={"max_attempts": 4})
    send(notifier, webhook([alert("Boom", hostname="b")], group_key="boom"))
    for n in range(5):
        send(notifier, webhook([alert(f"Fine{n}", hostname=f"f{n}")], group_key=f"fine{n}"))
    stub.wait_for(lambda: len(notices(stub)) == 1, timeout=15, what="Boom dead-lettered")
    drain(notifier, stub)
    fine = [m for m in stub.roots("#oncall") if "Fine" in m.text]
    assert len(fine) == 5
    (notice,) = notices(stub, "#oncall")  # the group's own channel
    # Same channel, and every other group went while Boom was still being retried.
    posts = {c.response["ts"]: c.at for c in stub.calls("chat.postMessage")
             if c.response and c.response.get("ok")}
    assert max(posts[m.ts] for m in fine) < posts[notice.ts]
    assert "Boom" in notice.text
    # the exception's text came from inside a step: escaped like any other input
    assert "KeyError: '&lt;!channel&gt; from a bug'" in notice.text
    assert "<!channel>" not in notice.text


def test_refused_channel_dead_letters_to_the_default_channel_and_replays(
        make_notifier: MakeNotifier, stub: SlackStub, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    stub.fail("error", error="not_in_channel", channels=["#oncall"])
    notifier = make_notifier(notifier={"max_attempts": 3})
    send(notifier, webhook([alert("Crit", hostname="c1")], group_key="crit"))
    stub.wait_for(lambda: notices(stub, "#alerts"), timeout=10, what="notice elsewhere")
    drain(notifier, stub)
    (notice,) = notices(stub, "#alerts")
    assert "Crit" in notice.text and "not_in_channel" in notice.text
    assert stub.roots("#oncall") == []

    config = tmp_path / "steward.yaml"
    config.write_text(yaml.safe_dump({"state": {"url": f"sqlite:///{tmp_path / 'state.db'}"}}))
    assert main(["notifier", "dead-letters", "--config", str(config), "--output", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == 1 and listed["alertnames"] == ["Crit"]
    assert listed["fallback"]["state"] == "sent" and listed["fallback"]["channel"] == "#alerts"
    assert "not_in_channel" in listed["reason"] and listed["attempts"] == 3

    stub.clear_faults()  # the bot was invited
    assert main(["notifier", "--config", str(config), "dead-letters", "--retry", "1"]) == 0
    assert "replayed dead letter 1: 1 webhook(s) of Crit" in capsys.readouterr().out
    stub.wait_for(lambda: stub.roots("#oncall"), timeout=10, what="the replayed group")
    drain(notifier, stub)
    (root,) = stub.roots("#oncall")
    assert "Crit" in root.text
    assert metric_value(metrics(notifier), "steward_notifier_dead_letters_stored") == 0

    assert main(["notifier", "dead-letters", "--config", str(config), "--retry", "1"]) == 2
    assert "dead letter 1 was already replayed" in capsys.readouterr().err
    assert main(["notifier", "dead-letters", "--config", str(config), "--retry", "9"]) == 2
    assert "dead letter 9 does not exist" in capsys.readouterr().err
    assert main(["notifier", "dead-letters", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"


def test_dead_letters_cli_without_a_store(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "steward.yaml"
    config.write_text(yaml.safe_dump({"state": {"url": f"sqlite:///{tmp_path / 'none.db'}"}}))
    assert main(["notifier", "dead-letters", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"steward: the state store {tmp_path / 'none.db'} does not exist: check "
                   "state.url (the notifier's store)"]
    assert not (tmp_path / "none.db").exists()


def test_a_group_that_keeps_failing_sends_one_notice_an_hour(
        make_notifier: MakeNotifier, stub: SlackStub, monkeypatch: pytest.MonkeyPatch) -> None:
    boom_on_render(monkeypatch, RuntimeError("cannot render"))
    notifier = make_notifier(notifier={"max_attempts": 2})
    for wave in range(3):  # Alertmanager sends the group again every group_interval
        send(notifier, webhook([alert("Boom", hostname="b", extra=str(wave))], group_key="b"))
        stub.wait_for(lambda w=wave: len(notifier.outbox.list_dead_letters()) == w + 1,
                      timeout=10, what=f"dead letter {wave + 1}")
    drain(notifier, stub)
    states = sorted(d.fallback_state for d in notifier.outbox.list_dead_letters())
    assert states == ["sent", "suppressed", "suppressed"]
    assert len(notices(stub)) == 1


def resolved(a: dict[str, Any], minutes: int = 5) -> dict[str, Any]:
    ends = (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    return {**a, "status": "resolved", "endsAt": ends}


def test_stale_firing_from_a_lagging_peer_does_not_page_again(
        make_notifier: MakeNotifier, stub: SlackStub) -> None:
    # The resolution happened "now" as far as the notifier can tell (endsAt just passed).
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=30)
    firing = alert("GpuLost", hostname="n1", starts_at=start)
    done = {**firing, "status": "resolved", "endsAt": now.isoformat().replace("+00:00", "Z")}
    notifier = make_notifier()
    send(notifier, webhook([firing], group_key="g"))
    drain(notifier, stub)
    send(notifier, webhook([done], group_key="g", status="resolved"))
    drain(notifier, stub)
    send(notifier, webhook([firing], group_key="g"))  # peer B, behind: its old view
    drain(notifier, stub)
    (root,) = stub.roots()
    assert header(root).startswith("✅ RESOLVED")
    assert [r.text.split(":")[0] for r in stub.replies(root)] == ["✅ 1 resolved"]
    # A genuine new occurrence (a later start) is a new incident: a new message.
    again = alert("GpuLost", hostname="n1", starts_at=now + timedelta(seconds=30))
    send(notifier, webhook([again], group_key="g"))
    drain(notifier, stub)
    _first, second = stub.roots()
    assert header(second).startswith("🔴 FIRING:1")


def test_the_same_start_long_after_the_resolution_fires_again(
        make_notifier: MakeNotifier, stub: SlackStub) -> None:
    # Prometheus restores an alert's start after a restart: past the window, it pages.
    firing = alert("GpuLost", hostname="n1")  # resolved at T0+5m, long ago
    notifier = make_notifier(notifier={"stale_firing_window_seconds": 60})
    send(notifier, webhook([firing], group_key="g"))
    send(notifier, webhook([resolved(firing)], group_key="g", status="resolved"))
    send(notifier, webhook([firing], group_key="g"))
    drain(notifier, stub)
    first, second = stub.roots()
    assert header(first).startswith("✅ RESOLVED") and header(second).startswith("🔴 FIRING")
    assert "GpuLost" in texts(second)


def test_replay_config_error_is_exit_two(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "steward.yaml"
    config.write_text("notifier: {max_attempts: 0}\n")
    assert main(["notifier", "dead-letters", "--config", str(config)]) == 2
    assert "notifier.max_attempts" in capsys.readouterr().err


def test_notifier_config_defaults() -> None:
    with SlackStub(tokens=("x",)) as stub:
        config = notifier_config(stub, Path("/nonexistent.db"))
    assert config.notifier.max_attempts == 6
    assert config.notifier.stale_firing_window_seconds == 300


def test_healthz_fails_when_the_delivery_loop_is_stuck(
        make_notifier: MakeNotifier, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = make_notifier()
    worker = notifier.worker
    stuck = threading.Event()
    release = threading.Event()
    real = notifier.outbox.refresh_stats

    def hang() -> Any:
        stuck.set()
        release.wait(30)  # a store call that does not come back
        return real()

    monkeypatch.setattr(notifier.outbox, "refresh_stats", hang)
    assert stuck.wait(5)
    assert http_ok(f"{notifier.url}/healthz")
    # the loop has been stuck for longer than the limit: /healthz says so (restart it)
    now = time.monotonic() + 61
    monkeypatch.setattr(worker, "_monotonic", lambda: now)
    assert not http_ok(f"{notifier.url}/healthz")
    monkeypatch.setattr(worker, "_monotonic", time.monotonic)
    release.set()
    deadline = time.monotonic() + 5
    while not http_ok(f"{notifier.url}/healthz") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_ok(f"{notifier.url}/healthz")
