"""Rendering ``dashboards/*.dashboard.py`` (grafanalib) to the committed ``dashboards/*.json``.

Output is deterministic (sorted keys, ids from the layout, no timestamps) so that CI can
diff a fresh render against the committed files; ``steward build`` writes them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Final

from agent.dashboards.lint import lint_dashboard
from agent.links import DASHBOARD_UIDS, DEFAULT_RUNBOOK_BASE_URL

DASHBOARD_SUFFIX: Final = ".dashboard.py"


class DashboardError(Exception):
    """A dashboard source cannot be loaded, or renders a dashboard that fails the lint."""


def dashboard_sources(src_dir: Path) -> list[Path]:
    """The dashboard sources in ``src_dir``, sorted by name."""
    return sorted(src_dir.glob(f"*{DASHBOARD_SUFFIX}"))


def json_name(source: Path) -> str:
    """``gpu-fleet.dashboard.py`` -> ``gpu-fleet.json``."""
    return source.name[: -len(DASHBOARD_SUFFIX)] + ".json"


def load_dashboard(source: Path) -> Any:
    """Execute a dashboard source and return its ``dashboard`` (grafanalib's convention)."""
    module_name = "steward_dashboard_" + source.name[: -len(DASHBOARD_SUFFIX)].replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise DashboardError(f"{source}: cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "dashboard"):
        raise DashboardError(f"{source}: defines no variable 'dashboard'")
    return module.dashboard


def _grafanalib_json(obj: Any) -> Any:
    to_json_data = getattr(obj, "to_json_data", None)
    if to_json_data is None:
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")
    return to_json_data()


def dashboard_model(dashboard: Any) -> dict[str, Any]:
    """The plain JSON model of a grafanalib dashboard."""
    model: dict[str, Any] = json.loads(json.dumps(dashboard, default=_grafanalib_json))
    return model


def _rebase_runbook_links(node: Any, base_url: str) -> None:
    default = DEFAULT_RUNBOOK_BASE_URL.rstrip("/") + "/"
    wanted = base_url.rstrip("/") + "/"
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str) and url.startswith(default):
            node["url"] = wanted + url[len(default):]
        for value in node.values():
            _rebase_runbook_links(value, base_url)
    elif isinstance(node, list):
        for value in node:
            _rebase_runbook_links(value, base_url)


def render_model(model: dict[str, Any]) -> str:
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_dashboards(src_dir: Path, *,
                      runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> dict[str, str]:
    """``{"gpu-fleet.json": <json text>, ...}`` for every source in ``src_dir``.

    Each dashboard must pass the lint with the uid that ``agent.links`` gives its file;
    otherwise ``DashboardError`` lists every problem. ``runbook_base_url`` rewrites the
    runbook links (the committed files use the default).
    """
    rendered: dict[str, str] = {}
    problems: list[str] = []
    stems = {stem: uid for uid, stem in DASHBOARD_UIDS.items()}
    for source in dashboard_sources(src_dir):
        name = json_name(source)
        model = dashboard_model(load_dashboard(source))
        expected_uid = stems.get(name[: -len(".json")])
        if expected_uid is None:
            problems.append(f"{name}: no uid in agent.links.DASHBOARD_UIDS for this file")
        problems.extend(f"{name}: {p}" for p in lint_dashboard(model, expected_uid=expected_uid))
        if runbook_base_url != DEFAULT_RUNBOOK_BASE_URL:
            _rebase_runbook_links(model, runbook_base_url)
        rendered[name] = render_model(model)
    if problems:
        raise DashboardError("dashboards fail the lint:\n" + "\n".join(problems))
    return rendered
