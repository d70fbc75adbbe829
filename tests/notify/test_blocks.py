"""Block Kit rendering: what on-call sees, and Slack's limits for any group size."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clients.slack_text import escape
from agent.notify.alert_links import LinkSettings
from agent.notify.blocks import (
    MAX_BLOCKS,
    GroupView,
    Message,
    fit_escaped,
    render_changes,
    render_group,
    render_plain,
)
from agent.notify.incident import AlertState, Change
from agent.sim.slack_stub import check_blocks

SETTINGS = LinkSettings(runbook_base_url="https://runbooks.example/rb",
                        grafana_url="https://grafana.example", alertmanager_url="https://am.ex")
START = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def gpu_alert(index: int, name: str = "GpuLost", *, status: str = "firing",
              severity: str = "critical", **extra: str) -> AlertState:
    return AlertState(
        fingerprint=f"fp{index}", status=status,  # type: ignore[arg-type]
        labels={"alertname": name, "severity": severity, "hostname": "gpu-node-1",
                "gpu": str(index), "UUID": f"GPU-{index:04d}", "modelName": "H100",
                **extra},
        annotations={"summary": "A GPU fell off the bus.", "description": "Drain & reboot <now>."},
        starts_at=START + timedelta(seconds=index),
        ends_at=START + timedelta(minutes=5) if status == "resolved" else None)


def buttons(message: Message) -> list[list[str]]:
    return [[e["url"] for e in b["elements"]] for b in message.blocks if b["type"] == "actions"]


def all_text(message: Message) -> str:
    parts = [message.text]
    for block in message.blocks:
        for key in ("text",):
            if key in block:
                parts.append(block[key]["text"])
        parts.extend(f["text"] for f in block.get("fields", []))
        parts.extend(e.get("text", "") for e in block.get("elements", [])
                     if isinstance(e.get("text"), str))
    return "\n".join(parts)


def assert_within_limits(message: Message) -> None:
    check_blocks(message.blocks)  # raises where Slack would answer invalid_blocks
    assert len(message.blocks) <= MAX_BLOCKS
    assert 0 < len(message.text) <= 3000


def test_root_message_carries_what_on_call_needs() -> None:
    view = GroupView(alerts=[gpu_alert(3), gpu_alert(5, "GpuEccUncorrectable")],
                     group_labels={"hostname": "gpu-node-1"})
    message = render_group(view, SETTINGS)
    assert_within_limits(message)
    header = message.blocks[0]["text"]["text"]
    assert header.startswith("🔴 FIRING:2") and "gpu-node-1" in header
    text = all_text(message)
    assert "A GPU fell off the bus." in text
    assert "node gpu-node-1 · GPU 3 (GPU-0003, H100)" in text
    assert "<!date^" in text  # start time, in each reader's time zone
    # markup in annotations is escaped, not interpreted
    assert "Drain &amp; reboot &lt;now&gt;." in text
    # every alert has its own three buttons, not only the first
    links = buttons(message)
    assert len(links) == 2
    for urls, gpu in zip(links, ("3", "5"), strict=True):
        runbook, dashboard, silence = urls
        assert runbook.startswith("https://runbooks.example/rb/Gpu")
        assert f"var-gpu={gpu}" in dashboard
        assert f"gpu%3D%22{gpu}%22" in silence


def test_resolved_group_turns_resolved() -> None:
    view = GroupView(alerts=[gpu_alert(1, status="resolved")], group_labels={})
    message = render_group(view, SETTINGS)
    assert message.blocks[0]["text"]["text"].startswith("✅ RESOLVED GpuLost")
    # no silence button for an alert that is over
    assert all(len(urls) == 2 for urls in buttons(message))


def test_large_group_is_summarised_not_rejected() -> None:
    alerts = [gpu_alert(i) for i in range(500)]
    message = render_group(GroupView(alerts=alerts, group_labels={"hostname": "x"}), SETTINGS)
    assert_within_limits(message)
    assert len(buttons(message)) == 21
    text = all_text(message)
    shown = len(re.findall(r"GPU-\d{4}", text))
    more = re.search(r"…and (\d+) more alerts", text)
    assert more is not None
    assert shown + int(more.group(1)) == 500


def test_fit_escaped_never_splits_an_entity() -> None:
    raw = "a&" * 100
    for limit in range(2, 60):
        out = fit_escaped(raw, limit)
        assert len(out) <= limit
        assert not re.search(r"&(?!amp;)", out.rstrip("…"))
    assert escape("<@U123> & <!channel>") == "&lt;@U123&gt; &amp; &lt;!channel&gt;"


def test_plain_fallback_has_no_blocks() -> None:
    message = render_group(GroupView(alerts=[gpu_alert(1)], group_labels={}), SETTINGS)
    plain = render_plain(message)
    assert plain.blocks == [] and "GpuLost" in plain.text and len(plain.text) <= 3000


label_text = st.text(min_size=0, max_size=400)
alerts_strategy = st.lists(
    st.builds(
        lambda i, name, status, sev, extra, summary, desc: AlertState(
            fingerprint=f"fp{i}", status=status,
            labels={"alertname": name, "severity": sev, **extra},
            annotations={"summary": summary, "description": desc},
            starts_at=START, ends_at=START if status == "resolved" else None),
        st.integers(), label_text, st.sampled_from(["firing", "resolved"]),
        st.sampled_from(["critical", "warning", "info", "", "x" * 300]),
        st.dictionaries(st.sampled_from(["hostname", "gpu", "UUID", "namespace", "pod",
                                         "container", "pipeline", "kind", "instance", "xid",
                                         "GPU_I_ID", "other"]), label_text, max_size=6),
        st.text(max_size=3000), st.text(max_size=5000)),
    min_size=1, max_size=120, unique_by=lambda a: a.fingerprint)


@settings(max_examples=60, deadline=None)
@given(alerts=alerts_strategy, group=st.dictionaries(label_text, label_text, max_size=5),
       truncated=st.integers(min_value=0, max_value=10**6))
def test_any_group_renders_within_slacks_limits(alerts: list[AlertState],
                                                group: dict[str, str], truncated: int) -> None:
    view = GroupView(alerts=alerts, group_labels=group, truncated_alerts=truncated)
    assert_within_limits(render_group(view, SETTINGS))
    changes = [Change("firing" if a.firing else "resolved", a) for a in alerts]
    assert_within_limits(render_changes(changes, SETTINGS))
    assert_within_limits(render_plain(render_group(view, SETTINGS)))
