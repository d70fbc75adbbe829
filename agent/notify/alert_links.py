"""The three links every alert in a Slack message carries: runbook, dashboard, silence.

Runbook and dashboard come from the alert catalog (through ``agent.links``, so they agree
with the rules and dashboards); the dashboard opens on the alert's time range with its
variables filled from the alert's labels; the silence opens Alertmanager's form pre-filled
with the alert's own matchers.

Links are only ever made to the hosts configured for them (``runbooks.base_url``,
``grafana.url``, ``alertmanager.url``): a webhook can carry any URL (``externalURL``, a
``runbook_url`` annotation), and a link or button to a host of the sender's choosing is a
phishing link on the on-call channel. Such URLs are shown as inert text instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Final
from urllib.parse import quote, unquote, urlsplit

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

    @cached_property
    def prefixes(self) -> tuple[tuple[str, str], ...]:
        """(origin, path prefix) of every configured link target."""
        found = []
        for url in (self.runbook_base_url, self.grafana_url, self.alertmanager_url):
            split = _split(url)
            if split is not None:
                origin, path = split
                found.append((origin, path.rstrip("/") + "/"))
        return tuple(found)


# RFC 3986 reserved and unreserved characters, '%' (existing escapes) kept; everything else
# (spaces, quotes, '<', '>', '|', '^', '`', '{', '}', non-ASCII) is percent-encoded.
_URL_SAFE: Final = ":/?#[]@!$&'()*+,;=%-._~"
_UNSAFE_IN_URL: Final = re.compile(r"[\x00-\x20\x7f\\]")


def _split(url: str | None) -> tuple[str, str] | None:
    """(``scheme://host[:port]`` lowercased, path) of an http(s) URL; None otherwise."""
    if not url or _UNSAFE_IN_URL.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc \
            or "@" in parts.netloc:
        return None
    # A dot segment would let ".../runbooks/../../elsewhere" leave the configured prefix.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}", parts.path or "/"


def split_url(url: str | None) -> tuple[str, str] | None:
    """(``scheme://host[:port]`` lowercased, path) of a safe http(s) URL; None otherwise."""
    return _split(url)


def allowed_link(url: str | None, settings: LinkSettings) -> str | None:
    """``url``, percent-encoded where it must be, when it lies under a configured target
    (runbooks base URL, Grafana, Alertmanager); None otherwise."""
    if not url or len(url) > MAX_URL:
        return None
    split = _split(url)
    if split is None:
        return None
    origin, path = split
    if not any(origin == o and (path.rstrip("/") + "/").startswith(prefix)
               for o, prefix in settings.prefixes):
        return None
    encoded = quote(url, safe=_URL_SAFE)
    return encoded if len(encoded) <= MAX_URL else None


@dataclass(frozen=True)
class AlertLinks:
    runbook: str | None
    dashboard: str | None
    silence: str | None


def runbook_link(alert: AlertState, settings: LinkSettings) -> str | None:
    if alert.alertname in _DASHBOARD_BY_ALERT:
        return allowed_link(runbook_url(alert.alertname, base_url=settings.runbook_base_url),
                            settings)
    # An alert from outside Steward's catalog may still carry its own runbook, on a
    # configured host.
    return allowed_link(alert.annotations.get("runbook_url"), settings)


def unlinked_runbook(alert: AlertState, settings: LinkSettings) -> str | None:
    """The alert's ``runbook_url`` annotation when no link may be made of it (shown inert)."""
    url = alert.annotations.get("runbook_url")
    if not url or alert.alertname in _DASHBOARD_BY_ALERT or runbook_link(alert, settings):
        return None
    return url


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
    return allowed_link(dashboard_url(settings.grafana_url, uid, variables=variables,
                                      time_from=_millis(alert.starts_at, -window),
                                      time_to=time_to), settings)


def _matcher(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'


def silence_link(alert: AlertState, settings: LinkSettings) -> str | None:
    # Only the configured Alertmanager: the payload's externalURL is the sender's word.
    base = settings.alertmanager_url
    if not base or _split(base) is None:
        return None
    labels: Mapping[str, str] = {k: v for k, v in alert.labels.items() if v}
    # The form takes the alert's full label set; when that does not fit in a button's URL,
    # drop the longest values first (never alertname) until it does.
    names = sorted(labels)
    while True:
        matchers = ",".join(_matcher(name, labels[name]) for name in names)
        url = f"{base.rstrip('/')}/#/silences/new?filter={quote('{' + matchers + '}', safe='')}"
        if len(url) <= MAX_URL:
            return allowed_link(url, settings)
        droppable = [n for n in names if n != "alertname"]
        if not droppable:
            return None
        names.remove(max(droppable, key=lambda n: len(labels[n])))


def links_for(alert: AlertState, settings: LinkSettings) -> AlertLinks:
    return AlertLinks(
        runbook=runbook_link(alert, settings),
        dashboard=dashboard_link(alert, settings),
        silence=silence_link(alert, settings) if alert.firing else None,
    )
