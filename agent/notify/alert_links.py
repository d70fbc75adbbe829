"""The three links every alert in a Slack message carries: runbook, dashboard, silence.

Runbook and dashboard come from the alert catalog (through ``agent.links``, so they agree
with the rules and dashboards); the dashboard opens on the alert's time range with its
variables filled from the alert's labels; the silence opens Alertmanager's form pre-filled
with the alert's own matchers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import quote

from agent.alerts.catalog import CATALOG
from agent.links import DASHBOARD_UIDS, dashboard_url, runbook_url
from agent.notify.incident import AlertState

# Slack refuses a button whose url is longer than this.
MAX_URL: Final = 3000

_DASHBOARD_BY_ALERT: Final[dict[str, str]] = {a.name: a.dashboard_uid for a in CATALOG}
# The template variables (besides ``datasource``) of each dashboard that an alert label can
# fill. tests/notify/test_alert_links.py checks this against dashboards/*.json.
DASHBOARD_VARIABLES: Final[dict[str, tuple[str, ...]]] = {
    "steward-gpu-fleet": ("hostname",),
    "steward-gpu-node": ("hostname", "gpu"),
    "steward-namespace-usage": ("namespace",),
    "steward-pod-health": ("namespace",),
    "steward-pipelines": ("namespace", "pipeline"),
    "steward-hygiene": ("hygiene_job",),
    "steward-finops": ("namespace",),
    "steward-self": (),
}


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    runbook_base_url: str
    grafana_url: str | None = None
    alertmanager_url: str | None = None
    dashboard_window: timedelta = timedelta(minutes=60)


@dataclass(frozen=True)
class AlertLinks:
    runbook: str | None
    dashboard: str | None
    silence: str | None


def _http(url: str | None) -> str | None:
    if url and url.startswith(("http://", "https://")) and len(url) <= MAX_URL:
        return url
    return None


def runbook_link(alert: AlertState, settings: LinkSettings) -> str | None:
    if alert.alertname in _DASHBOARD_BY_ALERT:
        return _http(runbook_url(alert.alertname, base_url=settings.runbook_base_url))
    # An alert from outside Steward's catalog may still carry its own runbook.
    return _http(alert.annotations.get("runbook_url"))


def dashboard_uid(alert: AlertState) -> str | None:
    uid = _DASHBOARD_BY_ALERT.get(alert.alertname) or alert.annotations.get("dashboard_uid")
    return uid if uid in DASHBOARD_UIDS else None


def _millis(when: datetime, shift: timedelta) -> str | None:
    try:
        return str(int((when + shift).timestamp() * 1000))
    except (OverflowError, ValueError):  # a sender's year 1 or 9999 timestamp
        return None


def dashboard_link(alert: AlertState, settings: LinkSettings) -> str | None:
    uid = dashboard_uid(alert)
    if uid is None or not settings.grafana_url:
        return None
    window = settings.dashboard_window
    # Still firing: up to now, so the graph shows whether it is getting worse.
    time_to = _millis(alert.ends_at, window) if alert.ends_at else "now"
    variables = {name: alert.labels[name] for name in DASHBOARD_VARIABLES.get(uid, ())
                 if alert.labels.get(name)}
    return _http(dashboard_url(settings.grafana_url, uid, variables=variables,
                               time_from=_millis(alert.starts_at, -window), time_to=time_to))


def _matcher(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'


def silence_link(alert: AlertState, settings: LinkSettings, *,
                 external_url: str = "") -> str | None:
    base = _http(settings.alertmanager_url) or _http(external_url)
    if base is None:
        return None
    labels: Mapping[str, str] = {k: v for k, v in alert.labels.items() if v}
    # The form takes the alert's full label set; when that does not fit in a button's URL,
    # drop the longest values first (never alertname) until it does.
    names = sorted(labels)
    while True:
        matchers = ",".join(_matcher(name, labels[name]) for name in names)
        url = f"{base.rstrip('/')}/#/silences/new?filter={quote('{' + matchers + '}', safe='')}"
        if len(url) <= MAX_URL:
            return url
        droppable = [n for n in names if n != "alertname"]
        if not droppable:
            return None
        names.remove(max(droppable, key=lambda n: len(labels[n])))


def links_for(alert: AlertState, settings: LinkSettings, *, external_url: str = "") -> AlertLinks:
    return AlertLinks(
        runbook=runbook_link(alert, settings),
        dashboard=dashboard_link(alert, settings),
        silence=silence_link(alert, settings, external_url=external_url) if alert.firing
        else None,
    )
