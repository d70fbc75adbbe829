"""The buttons of a hygiene owner notice, end to end through the notifier: a signed click ->
the hygiene store's mark changed and audited with the Slack user -> a line in the notice's
thread. Exempt is for admins only (a user list or a Slack user group): anyone else gets an
ephemeral refusal and nothing changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.clients.slack import SlackSink
from agent.clients.slack_params import SlackSettings
from agent.controller.hygiene.notify import OwnerNotice, SlackNotifier
from agent.controller.hygiene.store import HygieneStore, Mark
from agent.notify.app import Notifier, build_notifier
from agent.sim.slack_stub import SlackStub, StubMessage
from tests.notify.clicks import SECRET, click_body, post_click, raw_value, signed_headers
from tests.notify.conftest import notifier_config
from tests.support.net import wait_until

NOW = time.time()


@pytest.fixture
def notifier(tmp_path: Path, stub: SlackStub) -> Notifier:
    stub.usergroups["S0ADMINS"] = {"U0ADMIN"}
    config = notifier_config(stub, tmp_path / "state.db", notifier={"actions": {
        "hygiene_buttons": True, "admin_group": "S0ADMINS", "graphs": False}})
    built = build_notifier(config, environ={"SLACK_SIGNING_SECRET": SECRET})
    built.start()
    yield built  # type: ignore[misc]
    built.stop()


def notice(stub: SlackStub, notifier: Notifier, resource: str) -> tuple[str, StubMessage]:
    store = HygieneStore(notifier.engine)
    mark = Mark(mark_id=f"m-{resource.rsplit('/', 1)[-1]}", job="idle-gpus", resource=resource,
                action="scale_to_zero", reason="idle for 6 h", evidence={}, reclaim={},
                owner="team-a", kube_object=None, run_id="r1", marked_at=NOW,
                deadline=NOW + 3600)
    assert store.create_mark(mark, mode="apply")
    store.set_notified(mark.mark_id, NOW, deadline=mark.deadline)
    settings = SlackSettings.from_config(notifier_config(stub, "sqlite://").slack)
    SlackNotifier(SlackSink.create(settings), settings.router(), buttons=True).notify(
        OwnerNotice(kind="marked", job="idle-gpus", resource=resource, action="scale_to_zero",
                    reason="idle", deadline=mark.deadline, mark_id=mark.mark_id,
                    labels={"hygiene_job": "idle-gpus"}))
    message = stub.messages()[-1]
    return mark.mark_id, message


def click(notifier: Notifier, message: StubMessage, choice: str, user: str) -> None:
    body = click_body(raw_value(message, f"hygiene-{choice}"), user=user, name=user.lower(),
                      channel=message.channel, ts=message.ts)
    assert post_click(notifier.url, body, signed_headers(body)) == 200


def audit(notifier: Notifier, action: str) -> list[dict[str, object]]:
    return [e for e in HygieneStore(notifier.engine).audit_entries() if e["action"] == action]


def test_keep_snooze_and_exempt(stub: SlackStub, notifier: Notifier) -> None:
    store = HygieneStore(notifier.engine)
    kept_id, kept = notice(stub, notifier, "team-a/Deployment/kept")
    click(notifier, kept, "keep", "U0ALICE")
    stub.wait_for(lambda: any("kept" in r.text for r in stub.replies(kept)), timeout=10)
    assert "<@U0ALICE> kept" in stub.replies(kept)[0].text
    assert store.mark(kept_id) is not None
    assert all(m.mark_id != kept_id for m in store.active_marks("idle-gpus"))
    [entry] = audit(notifier, "owner_keep")
    assert "U0ALICE" in str(entry["detail"])

    snoozed_id, snoozed = notice(stub, notifier, "team-a/Deployment/snoozed")
    click(notifier, snoozed, "snooze", "U0ALICE")
    stub.wait_for(lambda: bool(stub.replies(snoozed)), timeout=10)
    mark = store.mark(snoozed_id)
    assert mark is not None and mark.deadline == NOW + 3600 + 24 * 3600

    exempt_id, exempt = notice(stub, notifier, "team-a/Deployment/exempt")
    click(notifier, exempt, "exempt", "U0ALICE")  # not an admin
    stub.wait_for(lambda: bool(stub.ephemerals), timeout=10)
    assert stub.ephemerals[0]["user"] == "U0ALICE"
    assert "Only hygiene admins" in stub.ephemerals[0]["text"]
    assert any(m.mark_id == exempt_id for m in store.active_marks("idle-gpus"))
    assert audit(notifier, "owner_exempt") == [] and stub.replies(exempt) == []

    click(notifier, exempt, "exempt", "U0ADMIN")  # in the admin user group
    wait_until(lambda: bool(audit(notifier, "owner_exempt")), timeout=10, what="exempted")
    assert all(m.mark_id != exempt_id for m in store.active_marks("idle-gpus"))
    stub.wait_for(lambda: any("<@U0ADMIN> exempted" in r.text for r in stub.replies(exempt)),
                  timeout=10)
    assert stub.calls("usergroups.users.list")


def test_buttons_carry_the_mark(stub: SlackStub, notifier: Notifier) -> None:
    mark_id, message = notice(stub, notifier, "team-a/Deployment/x")
    values = [json.loads(raw_value(message, f"hygiene-{c}")) for c in ("keep", "snooze",
                                                                        "exempt")]
    assert values == [{"a": "hygiene", "c": c, "m": mark_id}
                      for c in ("keep", "snooze", "exempt")]


def test_who_may_click_is_configurable(tmp_path: Path, stub: SlackStub) -> None:
    config = notifier_config(stub, tmp_path / "only-bob.db", notifier={"actions": {
        "hygiene_buttons": True, "allowed_users": ["U0BOB"], "graphs": False}})
    only_bob = build_notifier(config, environ={"SLACK_SIGNING_SECRET": SECRET})
    only_bob.start()
    try:
        mark_id, message = notice(stub, only_bob, "team-a/Deployment/y")
        click(only_bob, message, "keep", "U0ALICE")
        stub.wait_for(lambda: bool(stub.ephemerals), timeout=10)
        assert "not on the list" in stub.ephemerals[0]["text"]
        assert any(m.mark_id == mark_id
                   for m in HygieneStore(only_bob.engine).active_marks("idle-gpus"))
        assert audit(only_bob, "owner_keep") == []
        click(only_bob, message, "keep", "U0BOB")
        wait_until(lambda: bool(audit(only_bob, "owner_keep")), timeout=10, what="kept")
    finally:
        only_bob.stop()
