"""An incident's alerts across webhooks, and the changes that become thread replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.clients.slack_params import NoChannel, Route, Router
from agent.notify.incident import accumulate, all_resolved, dump_alerts, load_alerts, ordered
from agent.notify.webhook import Notification, parse_notification
from tests.notify.payloads import alert, webhook


def notification(*alerts: dict[str, Any], status: str | None = None) -> Notification:
    return parse_notification(json.dumps(webhook(list(alerts), status=status)).encode())


def test_changes_follow_the_webhooks_in_order() -> None:
    lost = alert("GpuLost", gpu="3")
    ecc = alert("GpuEccUncorrectable", gpu="5")
    lost_resolved = {**lost, "status": "resolved", "endsAt": "2026-11-20T03:05:00Z"}
    alerts, changes = accumulate({}, [
        notification(lost),
        notification(lost, ecc),
        # Alertmanager sends a resolved alert once, then forgets it
        notification(lost_resolved, ecc),
        notification(ecc),
    ])
    assert [(c.kind, c.alert.alertname) for c in changes] == [
        ("firing", "GpuLost"), ("firing", "GpuEccUncorrectable"), ("resolved", "GpuLost")]
    # the union still has the resolved alert, so the root message keeps showing it
    assert {a.alertname: a.status for a in alerts.values()} == {
        "GpuLost": "resolved", "GpuEccUncorrectable": "firing"}
    assert not all_resolved(alerts)


def test_a_resolved_group_resolves_every_alert_of_the_incident() -> None:
    lost = alert("GpuLost", gpu="3")
    ecc = alert("GpuEccUncorrectable", gpu="5")
    base, _ = accumulate({}, [notification(lost, ecc)])
    ecc_resolved = {**ecc, "status": "resolved", "endsAt": "2026-11-20T03:07:00Z"}
    # the group resolved but Alertmanager no longer lists GpuLost
    alerts, changes = accumulate(base, [notification(ecc_resolved, status="resolved")])
    assert all_resolved(alerts)
    assert sorted(c.alert.alertname for c in changes) == ["GpuEccUncorrectable", "GpuLost"]


def test_refiring_alert_is_a_new_change() -> None:
    lost = alert("GpuLost", gpu="3")
    resolved = {**lost, "status": "resolved", "endsAt": "2026-11-20T03:05:00Z"}
    _, changes = accumulate({}, [notification(lost), notification(resolved, alert("Other")),
                                 notification(lost, alert("Other"))])
    assert [c.kind for c in changes if c.alert.alertname == "GpuLost"] == [
        "firing", "resolved", "firing"]


def test_state_round_trips_through_json() -> None:
    alerts, _ = accumulate({}, [notification(alert(hostname="n1"), alert("B", status="resolved"))])
    assert load_alerts(dump_alerts(alerts)) == alerts


def test_order_is_firing_then_severity_then_age() -> None:
    alerts, _ = accumulate({}, [notification(
        alert("Warn", severity="warning"), alert("Crit", severity="critical"),
        alert("Done", status="resolved", severity="critical"))])
    assert [a.alertname for a in ordered(alerts.values())] == ["Crit", "Warn", "Done"]


def test_routes_first_match_wins_on_any_alert() -> None:
    router = Router([Route({"severity": "critical"}, "#oncall"),
                     Route({"team": "ml"}, "#ml")], default_channel="#alerts")
    assert router.channel_for([{"severity": "warning"}, {"severity": "critical"}]) == "#oncall"
    assert router.channel_for([{"severity": "warning", "team": "ml"}]) == "#ml"
    assert router.channel_for([{"severity": "info"}]) == "#alerts"
    with pytest.raises(NoChannel):
        Router([], default_channel=None).channel_for([{}])
