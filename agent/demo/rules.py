"""The demo's alert rules: the shipped catalog with its time windows shortened.

A demo of seconds cannot wait the real durations (GpuIdleAllocated needs two hours of
idleness, GpuXidCritical ten minutes of history before it can tell a new XID from an old
one). Every alert keeps its PromQL and its thresholds on the data ("pending for over 30
minutes", "last succeeded over 26 hours ago" are true of the simulated cluster); only its
``for``, its range windows and its offsets are replaced, and every sentence of its summary
and description that names one of those windows is rewritten to say the demo's window, so
that no message claims "idle for 2 hours" about a GPU the demo started seconds ago.

The shipped rules (``alerts/*.yaml``) are never touched; the promtool unit tests in
``alerts/tests/`` hold them to their real durations.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.alerts.catalog import CATALOG, Alert
from agent.alerts.render import render_prometheus_rules

_DURATION = re.compile(r"(\[|offset )(\d+[smhd])(\]?)")


@dataclass(frozen=True)
class DemoTiming:
    """``for``; each production window (range or offset) -> the demo's; text rewrites."""

    for_duration: str
    windows: Mapping[str, str] = field(default_factory=dict)
    text: Sequence[tuple[str, str]] = ()


# Chosen so that every alert the simulated faults raise fires within about a minute of
# Prometheus' first scrape, while each still needs a few evaluations (a `for`) and the
# count-based ones still count real events (XID 13 every 5 s: five of them need > 20 s).
DEMO_TIMINGS: Final[Mapping[str, DemoTiming]] = {
    # {"10m": ...} of the GPU fault alerts also shortens how long a pod that left the GPU
    # is still named as its tenant (agent.alerts.owners.OWNERS_WINDOW).
    "GpuLost": DemoTiming("5s", {"10m": "1m"}),
    "GpuXidCritical": DemoTiming("2s", {"10m": "30s"}),
    "GpuXidErrors": DemoTiming("5s", {"10m": "1m"}, (
        ("times in 10 minutes", "times in 1 minute"),)),
    "GpuEccUncorrectable": DemoTiming("2s", {"10m": "1m"}, (
        ("in the last 10 minutes", "in the last minute"),)),
    "GpuRowRemapFailure": DemoTiming("5s", {"10m": "1m"}),
    "GpuTemperatureHigh": DemoTiming("10s", text=(
        ("running hot for 10 minutes", "running hot for 10 seconds"),
        ("above 85 °C for 10 minutes", "above 85 °C for 10 seconds"))),
    "GpuThermalThrottling": DemoTiming("10s", {"10m": "1m"}, text=(
        ("for 10 minutes, so jobs", "for 10 seconds, so jobs"),)),
    "GpuMemoryNearlyFull": DemoTiming("15s", text=(
        ("nearly full for 30 minutes", "nearly full for 15 seconds"),
        ("of its memory for 30 minutes", "of its memory for 15 seconds"))),
    "GpuIdleAllocated": DemoTiming("30s", {"1h": "30s"}, (
        ("idle for 2 hours", "idle for 1 minute"),
        ("below 1% for 2 hours (peak in the last hour:",
         "below 1% for 1 minute (peak in the last 30 seconds:"))),
    "PodCrashLooping": DemoTiming("15s", {"5m": "30s"}, (
        ("CrashLoopBackOff for 15 minutes", "CrashLoopBackOff for 15 seconds"),)),
    "PodOomKilled": DemoTiming("2s"),
    "GpuPodPendingTooLong": DemoTiming("5s"),
    "PodDeviceUnhealthy": DemoTiming("5s"),
    "PipelineRunFailed": DemoTiming("2s", {"30m": "30s"}, (
        ("in the last 30 minutes", "in the last 30 seconds"),)),
    "PipelineStale": DemoTiming("5s"),
    "PipelineRunTooLong": DemoTiming("5s"),
    "StewardAgentDown": DemoTiming("15s", text=(
        ("for 5 minutes", "for 15 seconds"),)),
    "StewardCollectorFailing": DemoTiming("30s", text=(
        ("every run for 10 minutes", "every run for 30 seconds"),)),
    "StewardGpuAttributionFailing": DemoTiming("30s", text=(
        ("has failed for 10 minutes", "has failed for 30 seconds"),)),
    "StewardHygieneJobFailing": DemoTiming("2s", {"6h": "6m", "1h": "1m"}, (
        ("in the last 6 hours", "in the last 6 minutes"),
        ("in the last hour", "in the last minute"))),
    "StewardHygieneBlastRadiusTripped": DemoTiming("2s", {"1h": "1m"}),
    "StewardNotifierDeliveryFailing": DemoTiming("15s", {"10m": "30s", "1h": "1m"}, (
        ("has not emptied for 15 minutes", "has not emptied for 45 seconds"),
        ("in the last hour", "in the last minute"))),
    "StewardStateStoreRecreated": DemoTiming("5s", {"1h": "5m"}, (
        ("created in the last hour", "created in the last 5 minutes"),)),
}


class DemoRulesError(ValueError):
    """The catalog changed in a way the demo's timings do not cover."""


def _shorten_expr(alert: Alert, windows: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        prefix, duration, suffix = match.groups()
        if duration not in windows:
            raise DemoRulesError(f"{alert.name}: window {duration} has no demo value "
                                 "(agent/demo/rules.py DEMO_TIMINGS)")
        return f"{prefix}{windows[duration]}{suffix}"

    return _DURATION.sub(replace, alert.expr)


def _rewrite(alert: Alert, text: str, rewrites: Sequence[tuple[str, str]]) -> str:
    for old, new in rewrites:
        text = text.replace(old, new)
    return text


def demo_alert(alert: Alert) -> Alert:
    """``alert`` with the demo's ``for``, windows and wording."""
    timing = DEMO_TIMINGS.get(alert.name)
    if timing is None:
        raise DemoRulesError(f"{alert.name} has no demo timing (agent/demo/rules.py)")
    for old, _ in timing.text:
        if old not in alert.summary and old not in alert.description:
            raise DemoRulesError(f"{alert.name}: the text {old!r} is no longer in its summary "
                                 "or description; update its demo wording")
    return dataclasses.replace(
        alert, for_duration=timing.for_duration, expr=_shorten_expr(alert, timing.windows),
        summary=_rewrite(alert, alert.summary, timing.text),
        description=_rewrite(alert, alert.description, timing.text))


def demo_catalog(catalog: Sequence[Alert] = CATALOG) -> list[Alert]:
    return [demo_alert(alert) for alert in catalog]


def write_demo_rules(out: Path, *, runbook_base_url: str | None = None) -> Path:
    """The demo's rules file; the header says how it differs from the shipped one."""
    kwargs = {} if runbook_base_url is None else {"runbook_base_url": runbook_base_url}
    body = render_prometheus_rules(alerts=demo_catalog(), **kwargs)
    header = ("# steward demo: the shipped alert rules (alerts/prometheus-rules.yaml) with\n"
              "# shorter `for` durations and windows (agent/demo/rules.py), so that a demo of\n"
              "# seconds shows what production raises over minutes and hours.\n")
    out.write_text(header + body, encoding="utf-8")
    return out
