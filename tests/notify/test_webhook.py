"""Parsing Alertmanager webhook v4 payloads: what is accepted, and the reason for what is not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.notify.webhook import Notification, PayloadError, parse_notification
from tests.notify.payloads import alert, webhook


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def test_alertmanager_payload_parses() -> None:
    payload = webhook([alert("GpuLost", hostname="n1", gpu="3")])
    payload["alerts"][0]["startsAt"] = "2026-11-20T03:00:00.123456789Z"  # Go's nanoseconds
    parsed = parse_notification(body(payload))
    assert parsed.group_key == '{}:{hostname="gpu-node-1"}'
    assert parsed.status == "firing"
    (first,) = parsed.alerts
    assert first.alertname == "GpuLost"
    assert first.starts_utc == datetime(2026, 11, 20, 3, 0, 0, 123456, tzinfo=UTC)
    assert first.ends_utc is None  # 0001-01-01 while firing
    assert first.key == payload["alerts"][0]["fingerprint"]
    assert len(parsed.group_id) == 32


def test_normalised_form_round_trips() -> None:
    parsed = parse_notification(body(webhook([alert(extra="x")])))
    again = Notification.model_validate_json(parsed.to_json())
    assert again == parsed


def test_missing_fingerprint_gets_a_stable_one() -> None:
    one = alert(hostname="n1")
    del one["fingerprint"]
    first = parse_notification(body(webhook([one]))).alerts[0].key
    second = parse_notification(body(webhook([dict(one)]))).alerts[0].key
    assert first == second and first.startswith("h")


def test_unknown_fields_are_ignored() -> None:
    payload = webhook([alert()])
    payload["futureField"] = {"x": 1}
    payload["alerts"][0]["silencedBy"] = []
    assert parse_notification(body(payload)).alerts


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: b"{not json", "invalid JSON"),
    (lambda p: body([p]), "payload must be a JSON object"),
    (lambda p: body({**p, "version": "3"}), "version"),
    (lambda p: body({k: v for k, v in p.items() if k != "groupKey"}),
     "groupKey: required field is missing"),
    (lambda p: body({**p, "groupKey": ""}), "groupKey"),
    (lambda p: body({**p, "alerts": []}), "alerts"),
    (lambda p: body({**p, "status": "pending"}), "status"),
    (lambda p: body({**p, "alerts": [{**p["alerts"][0], "labels": {"a": 1}}]}),
     "alerts.0.labels.a"),
    (lambda p: body({**p, "alerts": [{**p["alerts"][0], "startsAt": "yesterday"}]}),
     "alerts.0.startsAt"),
    (lambda p: body({**p, "truncatedAlerts": -1}), "truncatedAlerts"),
    (lambda p: b"[" * 5000 + b"]" * 5000, "invalid JSON"),
    (lambda p: b'{"version": "4", "groupKey": "\\ud800"}', "invalid JSON"),
])
def test_invalid_payloads_name_the_problem(mutate: Any, reason: str) -> None:
    payload = webhook([alert()])
    with pytest.raises(PayloadError) as caught:
        parse_notification(mutate(payload))
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_notification(raw)
    except PayloadError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["version", "groupKey", "status", "receiver", "groupLabels",
                              "commonLabels", "externalURL", "truncatedAlerts", "alerts"]),
       alert_field=st.sampled_from(["status", "labels", "annotations", "startsAt", "endsAt",
                                    "generatorURL", "fingerprint"]),
       value=json_values, in_alert=st.booleans())
def test_mutated_payloads_parse_or_are_rejected(field: str, alert_field: str, value: Any,
                                                in_alert: bool) -> None:
    payload = webhook([alert(hostname="n1")])
    if in_alert:
        payload["alerts"][0][alert_field] = value
    else:
        payload[field] = value
    try:
        parsed = parse_notification(body(payload))
    except PayloadError as exc:
        assert exc.reason
    else:
        # whatever is accepted must survive the outbox round trip
        assert Notification.model_validate_json(parsed.to_json()) == parsed


@pytest.mark.parametrize(("starts", "reason"), [
    ("0001-01-01T00:00:00+01:00", "alerts.0.startsAt: must be between 1970-01-01 and 9000-01-01"),
    ("0001-01-01T00:00:00Z", "alerts.0.startsAt: must be between"),
    ("9999-12-31T23:59:59-01:00", "alerts.0.startsAt: must be between"),
    ("1969-12-31T23:59:59Z", "alerts.0.startsAt: must be between"),
    ("1970-01-01T00:30:00+01:00", "alerts.0.startsAt: must be between"),  # 1969 in UTC
])
def test_timestamps_that_cannot_be_shown_are_refused(starts: str, reason: str) -> None:
    payload = webhook([alert()])
    payload["alerts"][0]["startsAt"] = starts
    with pytest.raises(PayloadError) as caught:
        parse_notification(body(payload))
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize("ends", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                                  "0001-01-01T00:00:00-05:00"])
def test_the_zero_end_time_in_any_offset_means_firing(ends: str) -> None:
    payload = webhook([alert()])
    payload["alerts"][0]["endsAt"] = ends
    assert parse_notification(body(payload)).alerts[0].ends_at is None


def test_times_are_kept_in_utc() -> None:
    payload = webhook([alert()])
    payload["alerts"][0]["startsAt"] = "2026-11-20T05:00:00+02:00"
    parsed = parse_notification(body(payload))
    assert parsed.alerts[0].starts_at == datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    assert Notification.model_validate_json(parsed.to_json()) == parsed


def test_nul_and_oversized_values_are_refused() -> None:
    payload = webhook([alert()])
    payload["alerts"][0]["labels"]["pod"] = "a\x00b"
    with pytest.raises(PayloadError, match="NUL"):
        parse_notification(body(payload))
    payload = webhook([alert()])
    payload["alerts"][0]["labels"]["pod"] = "x" * 20_000
    with pytest.raises(PayloadError, match=r"alerts\.0\.labels\.pod"):
        parse_notification(body(payload))
    payload = webhook([alert()])
    payload["alerts"][0]["annotations"]["description"] = "x" * 20_000  # annotations may be long
    assert parse_notification(body(payload))
