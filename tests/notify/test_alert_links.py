"""Every alert's runbook, dashboard and silence links point at things that exist."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from agent.alerts.catalog import CATALOG
from agent.links import DASHBOARD_UIDS
from agent.notify.alert_links import (
    DASHBOARD_VARIABLES,
    MAX_URL,
    LinkSettings,
    allowed_link,
    dashboard_link,
    links_for,
    silence_link,
)
from agent.notify.incident import AlertState

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = LinkSettings(runbook_base_url="https://runbooks.example/rb/",
                        grafana_url="https://grafana.example/",
                        alertmanager_url="https://am.example",
                        dashboard_window=timedelta(minutes=30))
START = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def state(name: str, *, status: str = "firing", ends: datetime | None = None,
          **labels: str) -> AlertState:
    return AlertState(fingerprint=name, status=status,  # type: ignore[arg-type]
                      labels={"alertname": name, **labels}, annotations={},
                      starts_at=START, ends_at=ends)


def dashboard_variables_in_json() -> dict[str, tuple[str, ...]]:
    found = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        document = json.loads(path.read_text())
        names = [v["name"] for v in document["templating"]["list"] if v["name"] != "datasource"]
        found[document["uid"]] = tuple(names)
    return found


def test_dashboard_variables_match_the_generated_dashboards() -> None:
    assert set(DASHBOARD_VARIABLES) == set(DASHBOARD_UIDS)
    generated = dashboard_variables_in_json()
    for uid, variables in DASHBOARD_VARIABLES.items():
        assert set(variables) <= set(generated[uid]), uid


@pytest.mark.parametrize("alert", CATALOG, ids=lambda a: a.name)
def test_every_catalog_alert_has_a_runbook_and_a_dashboard(alert: object) -> None:
    name = alert.name  # type: ignore[attr-defined]
    links = links_for(state(name, hostname="n1", namespace="ml", gpu="2"), SETTINGS)
    assert links.runbook == f"https://runbooks.example/rb/{name}.md"
    assert (ROOT / "runbooks" / f"{name}.md").is_file()
    assert links.dashboard is not None
    uid = urlsplit(links.dashboard).path.split("/")[2]
    assert uid == alert.dashboard_uid  # type: ignore[attr-defined]
    assert uid in dashboard_variables_in_json()


def test_dashboard_link_is_scoped_to_the_alert() -> None:
    firing = dashboard_link(state("GpuLost", hostname="gpu-node-1", gpu="3", UUID="GPU-1"),
                            SETTINGS)
    assert firing is not None
    url = urlsplit(firing)
    assert url.path == "/d/steward-gpu-node/gpu-node"
    query = parse_qs(url.query)
    assert query["var-hostname"] == ["gpu-node-1"]
    assert query["var-gpu"] == ["3"]
    assert "var-UUID" not in query  # not a variable of that dashboard
    assert query["from"] == [str(int((START - timedelta(minutes=30)).timestamp() * 1000))]
    assert query["to"] == ["now"]
    ended = START + timedelta(minutes=10)
    resolved = dashboard_link(state("PodOomKilled", status="resolved", ends=ended,
                                    namespace="ml", pod="p"), SETTINGS)
    assert resolved is not None
    query = parse_qs(urlsplit(resolved).query)
    assert query["to"] == [str(int((ended + timedelta(minutes=30)).timestamp() * 1000))]
    assert query["var-namespace"] == ["ml"]


def test_no_dashboard_without_grafana_or_for_unknown_alerts() -> None:
    assert dashboard_link(state("GpuLost"), LinkSettings(runbook_base_url="https://x")) is None
    assert dashboard_link(state("SomeoneElsesAlert"), SETTINGS) is None


def test_silence_link_prefills_the_alerts_matchers() -> None:
    url = silence_link(state("GpuLost", hostname="gpu-node-1", note='say "hi"\\'), SETTINGS)
    assert url is not None
    assert url.startswith("https://am.example/#/silences/new?filter=")
    matchers = unquote(url.split("filter=", 1)[1])
    assert matchers == ('{alertname="GpuLost",hostname="gpu-node-1",'
                        'note="say \\"hi\\"\\\\"}')


def test_silence_link_only_to_the_configured_alertmanager_and_fits() -> None:
    # The payload's externalURL is the sender's word: no silence button without
    # alertmanager.url.
    assert silence_link(state("A"), LinkSettings(runbook_base_url="https://x")) is None
    long = state("A", big="x" * 5000, hostname="n1")
    url = silence_link(long, SETTINGS)
    assert url is not None and len(url) <= MAX_URL
    assert "big" not in unquote(url) and 'hostname="n1"' in unquote(url)


@pytest.mark.parametrize("url", [
    "https://evil.example/rb/GpuLost.md",
    "https://runbooks.example.evil.example/rb/x.md",
    "https://runbooks.example@evil.example/rb/x.md",
    "https://runbooks.example/elsewhere/x.md",  # right host, not under the runbook base
    "https://runbooks.example/rb/../../elsewhere/x.md",
    "https://runbooks.example/rb/%2e%2e/x.md",
    "javascript:alert(1)",
    "https://runbooks.example/rb/x.md|<!channel>",
    "https://runbooks.example/rb/x\\y",
    "ftp://runbooks.example/rb/x.md",
])
def test_no_link_outside_the_configured_targets(url: str) -> None:
    alert = AlertState(fingerprint="x", status="firing", labels={"alertname": "TheirAlert"},
                       annotations={"runbook_url": url}, starts_at=START, ends_at=None)
    links = links_for(alert, SETTINGS)
    if "|" in url:  # on a configured target: kept, but '|', '<', '>' percent-encoded
        assert links.runbook == "https://runbooks.example/rb/x.md%7C%3C!channel%3E"
    else:
        assert links.runbook is None
    assert allowed_link(url, SETTINGS) == links.runbook


def test_links_under_configured_targets_are_kept() -> None:
    alert = AlertState(fingerprint="x", status="firing", labels={"alertname": "TheirAlert"},
                       annotations={"runbook_url": "HTTPS://RUNBOOKS.example/rb/their{thing}.md"},
                       starts_at=START, ends_at=None)
    assert links_for(alert, SETTINGS).runbook == \
        "HTTPS://RUNBOOKS.example/rb/their%7Bthing%7D.md"
    assert allowed_link("https://grafana.example/d/x?a=1&b=2", SETTINGS) == \
        "https://grafana.example/d/x?a=1&b=2"
    assert allowed_link("https://am.example/#/alerts", SETTINGS) is not None


def test_resolved_alert_has_no_silence_button() -> None:
    links = links_for(state("GpuLost", status="resolved", ends=START), SETTINGS)
    assert links.silence is None and links.runbook is not None


def test_year_one_timestamps_do_not_break_links() -> None:
    odd = AlertState(fingerprint="x", status="firing", labels={"alertname": "GpuLost"},
                     annotations={}, starts_at=datetime(1, 1, 1, tzinfo=UTC), ends_at=None)
    assert dashboard_link(odd, SETTINGS) is not None
