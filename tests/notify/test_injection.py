"""Nothing from a webhook is ever active in Slack: no mention, no link to a host of the
sender's choosing, whatever field it hides in; and every payload the notifier accepts is
delivered, or dead-lettered with its notice, within a bound."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clients.slack_text import escape
from agent.notify.alert_links import LinkSettings
from agent.notify.app import Notifier
from agent.notify.blocks import GroupView, render_changes, render_group, render_plain
from agent.notify.delivery import dead_letter_notice
from agent.notify.incident import AlertState, Change
from agent.notify.outbox import DeadLetter
from agent.notify.webhook import group_id
from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import GRAFANA, RUNBOOKS, MakeNotifier
from tests.notify.payloads import alert, post, webhook
from tests.notify.slack_checks import problems

ALERTMANAGER = "https://am.example"
HOSTS = {"https://grafana.example", "https://runbooks.example", ALERTMANAGER}
SETTINGS = LinkSettings(runbook_base_url=RUNBOOKS, grafana_url=GRAFANA,
                        alertmanager_url=ALERTMANAGER)

NASTY = [
    "<!channel>", "<!here|here>", "<!everyone>", "@channel", "@here now", "@Everyone",
    "<@U024BE7LH>", "<!subteam^S0123|@oncall-team>", "<#C0123|general>",
    "<https://evil.example/login|Open runbook>", "https://evil.example/x", "http://evil.example",
    "&lt;!channel&gt;", "&amp;lt;!here&amp;gt;", "*bold* _it_ ~s~ `code`", "a|b>c<d",
    "javascript:alert(1)", f"{RUNBOOKS}/../../evil", "https://grafana.example@evil.example/",
    "https://runbooks.example.evil.example/x", "\u202eevil", "<", ">", "&", "|", "\n\t",
    "<!date^1^{date}|x>", "<mailto:a@evil.example|mail>", "<tel:123|call>",
]


def nasty_text() -> st.SearchStrategy[str]:
    piece = st.sampled_from(NASTY) | st.text(max_size=30)
    return st.lists(piece, min_size=1, max_size=3).map("".join)


def assert_inert(stub: SlackStub) -> None:
    calls = [c for c in stub.calls() if c.method in ("chat.postMessage", "chat.update")]
    assert calls
    # The stub's permalinks (a resolve reply links its root) are Slack's own links.
    found = [p for c in calls for p in problems(c, HOSTS | {stub.url})]
    assert not found, found[:5]


def view_of(**strings: str) -> GroupView:
    labels = {"alertname": strings.get("name", "TheirAlert"), "severity": "critical",
              "hostname": strings.get("host", "n1"), "pod": strings.get("pod", "p"),
              "namespace": "ns"}
    state = AlertState(fingerprint="f", status="firing", labels=labels,
                       annotations={"summary": strings.get("summary", "s"),
                                    "description": strings.get("description", "d"),
                                    "runbook_url": strings.get("runbook", "")},
                       starts_at=datetime(2026, 11, 20, tzinfo=UTC), ends_at=None)
    return GroupView(alerts=[state], group_labels={"hostname": strings.get("group", "g")})


def test_escape_breaks_every_mention_and_url() -> None:
    assert escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    assert escape("@channel @here @everyone @chan") == \
        "@\u200bchannel @\u200bhere @\u200beveryone @chan"
    assert escape("see https://evil.example") == "see https:\u200b//evil.example"


@pytest.mark.parametrize("field", ["name", "host", "pod", "summary", "description",
                                   "runbook", "group"])
@pytest.mark.parametrize("value", NASTY)
def test_no_field_renders_active(field: str, value: str) -> None:
    view = view_of(**{field: value})
    group = render_group(view, SETTINGS)
    changes = render_changes([Change("firing", view.alerts[0])], SETTINGS)
    for message in (group, changes, render_plain(group), render_plain(changes)):
        from agent.sim.slack_stub import Call

        call = Call("chat.postMessage", {"text": message.text, "blocks": message.blocks,
                                         "parse": "none"}, 200, None, 0.0, None)
        assert problems(call, HOSTS) == [], (field, value)


def test_runbook_on_another_host_is_shown_inert_not_linked() -> None:
    message = render_group(view_of(runbook="https://evil.example/rb.md"), SETTINGS)
    text = json.dumps(message.blocks, ensure_ascii=False)
    assert "evil.example/rb.md" in text  # shown, so on-call can judge it
    assert "https:\u200b//evil.example" in text  # and not a link Slack would make
    assert "(not a configured host, not linked)" in text


def test_notice_of_a_dead_letter_is_inert() -> None:
    dead = DeadLetter(id=3, group_id="g", group_key="k", created_at=0.0,
                      reason="KeyError: '<!channel> https://evil.example'", attempts=6,
                      alertnames=("<@U1>", "@here"), webhooks=1, last_id=1, lane=None,
                      fallback_state="pending", fallback_channel=None, fallback_ts=None,
                      fallback_attempted_at=None, fallback_error=None, replayed_at=None)
    from agent.sim.slack_stub import Call

    message = dead_letter_notice(dead)
    call = Call("chat.postMessage", {"text": message.text, "parse": "none"}, 200, None, 0.0,
                None)
    assert problems(call, HOSTS) == []
    assert "&lt;@U1&gt;" in message.text


def test_external_url_and_annotation_links_never_reach_slack(make_notifier: MakeNotifier,
                                                             stub: SlackStub) -> None:
    notifier = make_notifier(alertmanager={"url": ALERTMANAGER})
    bad = alert("TheirAlert", hostname="n1", summary="<!channel> wake up",
                description="<https://evil.example|runbook> @here")
    bad["annotations"]["runbook_url"] = "https://evil.example/rb|<!channel>"
    payload = webhook([bad, alert("Second", hostname="n1")])
    payload["externalURL"] = "https://evil.example/|<!channel>"
    status, _ = post(notifier.url, payload)
    assert status == 200
    stub.wait_for(notifier.worker.idle, timeout=10, what="the root posted")
    payload = webhook([bad, alert("Second", hostname="n1"), alert("Third", hostname="n1")])
    post(notifier.url, payload)
    stub.wait_for(notifier.worker.idle, timeout=10, what="delivered")
    # the group's root, its update, its thread reply: all inert
    assert {c.method for c in stub.calls()} >= {"chat.postMessage", "chat.update"}
    assert_inert(stub)
    # while the configured targets still get their buttons
    root = stub.roots()[0]
    urls = [e["url"] for b in root.blocks if b["type"] == "actions" for e in b["elements"]]
    assert any(u.startswith(f"{ALERTMANAGER}/#/silences/new") for u in urls)


def test_plain_text_fallback_is_escaped_too(make_notifier: MakeNotifier,
                                            stub: SlackStub) -> None:
    stub.fail("error", error="invalid_blocks", methods=["chat.postMessage"], times=1)
    notifier = make_notifier()
    post(notifier.url, webhook([alert("<!channel>", hostname="<@U1> https://evil.example")]))
    stub.wait_for(notifier.worker.idle, timeout=10, what="delivered")
    (root,) = stub.roots()
    assert root.blocks == [] and "&lt;!channel&gt;" in root.text
    assert_inert(stub)


# --- fuzzing: every accepted payload is delivered or dead-lettered, and inert -------------

def timestamps() -> st.SearchStrategy[str]:
    valid = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(8999, 1, 1),
                         timezones=st.sampled_from([UTC, None])).map(
        lambda d: d.isoformat() + ("" if d.tzinfo else "Z"))
    odd = st.sampled_from(["0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z",
                           "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z",
                           "2026-02-30T00:00:00Z", "2026-11-20T03:00:00.123456789+14:00"])
    return valid | odd


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    alerts = []
    for index in range(draw(st.integers(min_value=1, max_value=4))):
        labels = {"alertname": draw(nasty_text()),
                  "severity": draw(st.sampled_from(["critical", "warning", "", "<!here>"]))}
        for name in draw(st.lists(st.sampled_from(["hostname", "pod", "namespace", "gpu",
                                                   "UUID", "pipeline", "instance", "job"]),
                                  max_size=4, unique=True)):
            labels[name] = draw(nasty_text())
        item = {"status": draw(st.sampled_from(["firing", "resolved"])), "labels": labels,
                "annotations": {k: draw(nasty_text()) for k in draw(st.lists(
                    st.sampled_from(["summary", "description", "runbook_url", "dashboard_uid"]),
                    max_size=4, unique=True))},
                "startsAt": draw(timestamps()),
                "endsAt": draw(timestamps() | st.just("0001-01-01T00:00:00Z")),
                "generatorURL": draw(nasty_text()), "fingerprint": f"fp{index}"}
        alerts.append(item)
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "status": draw(st.sampled_from([status, status, "resolved"])),
            "receiver": "steward", "groupKey": f"fuzz-{draw(st.uuids())}",
            "groupLabels": {"hostname": draw(nasty_text())}, "commonLabels": {},
            "commonAnnotations": {"summary": draw(nasty_text())},
            "externalURL": draw(nasty_text()), "alerts": alerts,
            "truncatedAlerts": draw(st.integers(min_value=0, max_value=3))}


def delivered_or_dead(notifier: Notifier, stub: SlackStub, key: str) -> Callable[[], bool]:
    prefix = f"steward-{group_id(key)[:16]}-"

    def check() -> bool:
        for message in stub.roots():
            op = ((message.metadata or {}).get("event_payload") or {}).get("op", "")
            if op.startswith(prefix):
                return True
        return any(d.group_id == group_id(key) and d.fallback_state in ("sent", "suppressed")
                   for d in notifier.outbox.list_dead_letters())
    return check


@pytest.mark.slow
def test_fuzzed_payloads_are_delivered_or_dead_lettered_and_inert(
        make_notifier: MakeNotifier, stub: SlackStub) -> None:
    notifier = make_notifier(alertmanager={"url": ALERTMANAGER}, notifier={"max_attempts": 2})
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=120, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(payload=payloads())
    def check(payload: dict[str, Any]) -> None:
        status, answer = post(notifier.url, payload)
        assert status in (200, 400), (status, answer)
        if status == 400:
            outcomes["refused"] += 1
            assert answer["error"]
            return
        outcomes["accepted"] += 1
        started = time.monotonic()
        stub.wait_for(delivered_or_dead(notifier, stub, payload["groupKey"]), timeout=10,
                      what="the accepted group delivered or dead-lettered")
        assert time.monotonic() - started < 10

    check()
    stub.wait_for(notifier.worker.idle, timeout=30, what="everything settled")
    assert outcomes["accepted"] > 20 and outcomes["refused"] > 5, outcomes
    assert_inert(stub)
    assert notifier.worker.alive()


def test_odd_but_valid_times_render(make_notifier: MakeNotifier, stub: SlackStub) -> None:
    notifier = make_notifier()
    early = alert("Early", hostname="n1", starts_at=datetime(1970, 1, 1, tzinfo=UTC))
    late = alert("Late", hostname="n1",
                 starts_at=datetime(8999, 12, 31, 23, tzinfo=UTC) - timedelta(days=1))
    assert post(notifier.url, webhook([early, late]))[0] == 200
    stub.wait_for(notifier.worker.idle, timeout=10, what="delivered")
    (root,) = stub.roots()
    assert "Early" in root.text and "Late" in root.text
