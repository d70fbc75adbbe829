"""The demo's shared GPUs as the namespace dashboard shows them: its "Tenants of shared GPUs"
table, each column's query run against the demo's Prometheus and joined on the labels, as
Grafana's merge transformation does.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent.dashboards.lint import default_variable_values, iter_panels, substitute_variables

TABLE = "Tenants of shared GPUs"
KEYS = ("namespace", "pod", "hostname", "gpu", "mode")


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    data = urllib.parse.urlencode({"query": expr}).encode()
    with urllib.request.urlopen(f"{prometheus}/api/v1/query", data, timeout=10) as response:
        body = json.loads(response.read())
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def tenant_rows(prometheus: str, dashboard: Path) -> list[dict[str, Any]]:
    """One row per tenant: its labels and one value per column of the dashboard's table."""
    model = json.loads(dashboard.read_text(encoding="utf-8"))
    panel = next(p for p in iter_panels(model) if p.get("title") == TABLE)
    values = default_variable_values(model)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    rename = next(t["options"]["renameByName"] for t in panel["transformations"]
                  if t["id"] == "organize")
    for target in panel["targets"]:
        title = rename.get(f"Value #{target['refId']}", target["refId"])
        expr = substitute_variables(str(target["expr"]), values, rate_interval="30s")
        for sample in _query(prometheus, expr):
            labels = sample["metric"]
            key = tuple(str(labels.get(k, "")) for k in KEYS)
            row = rows.setdefault(key, dict(zip(KEYS, key, strict=True)))
            row[title] = float(sample["value"][1])
    return sorted(rows.values(), key=lambda r: (r["hostname"], int(r["gpu"] or 0), r["pod"]))


def tenant_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table for the terminal."""
    if not rows:
        return ["no tenant of a shared GPU in Prometheus yet"]
    lines = [f"{'tenant':<34} {'node / GPU':<14} {'mode':<12} {'share':>6} {'own use':>8} "
             f"{'of share':>9}"]
    for row in rows:
        share, use = row.get("Share of the GPU"), row.get("Own use of the GPU")
        of_share = row.get("Use of its share")

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.0%}"

        lines.append(f"{row['namespace'] + '/' + row['pod']:<34} "
                     f"{row['hostname'] + ' ' + row['gpu']:<14} {row['mode']:<12} "
                     f"{pct(share):>6} {pct(use):>8} {pct(of_share):>9}")
    return lines
