"""Where alerts, dashboards and Slack messages point: runbook URLs and dashboard uids.

One module so that the catalog, the dashboards and the notifier can never disagree on a
link. Dashboard uids are part of the contract: alerts and runbooks link to them.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode

DEFAULT_RUNBOOK_BASE_URL: Final = "https://github.com/steward-ops/steward/blob/main/runbooks"

# uid -> dashboard file stem under dashboards/
DASHBOARD_UIDS: Final[dict[str, str]] = {
    "steward-gpu-fleet": "gpu-fleet",
    "steward-gpu-node": "gpu-node",
    "steward-namespace-usage": "namespace-usage",
    "steward-pod-health": "pod-health",
    "steward-pipelines": "pipelines",
    "steward-hygiene": "hygiene",
    "steward-finops": "finops",
    "steward-self": "steward-self",
}


def runbook_url(alert: str, *, base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{alert}.md"


def dashboard_url(grafana_url: str, uid: str, *, variables: dict[str, str] | None = None,
                  time_from: str | None = None, time_to: str | None = None) -> str:
    """A Grafana link to dashboard ``uid`` with template variables and a time range."""
    if uid not in DASHBOARD_UIDS:
        raise KeyError(f"unknown dashboard uid {uid!r}")
    params: list[tuple[str, str]] = []
    if time_from is not None:
        params.append(("from", time_from))
    if time_to is not None:
        params.append(("to", time_to))
    for name, value in sorted((variables or {}).items()):
        params.append((f"var-{name}", value))
    query = f"?{urlencode(params)}" if params else ""
    return f"{grafana_url.rstrip('/')}/d/{uid}/{DASHBOARD_UIDS[uid]}{query}"
