"""``runbooks/index.json``: the runbooks and the alert catalog in one machine-readable file,
for investigation agents (HolmesGPT, an on-call bot) that pick a runbook by alert name.

One entry per catalog alert: ``alert``, ``severity``, ``summary``, ``file`` (relative to
``runbooks/``), plus the alert's rule group, dashboard uid, whether it names the workloads
on the failed GPU (``owners``) and the runbook's sections with their anchors. Written by
``steward build``, checked by ``steward build --check``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from agent.alerts.catalog import CATALOG, Alert

INDEX_FILE: Final = "index.json"
_SECTION = re.compile(r"^##\s+(.+?)\s*$", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _anchor(title: str) -> str:
    """The id GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def runbook_sections(text: str) -> list[dict[str, str]]:
    return [{"title": m.group(1), "anchor": _anchor(m.group(1))}
            for m in _SECTION.finditer(_FENCE.sub("", text))]


def runbook_index(runbooks_dir: Path, alerts: Sequence[Alert] = CATALOG) -> list[dict[str, Any]]:
    entries = []
    for alert in alerts:
        path = runbooks_dir / f"{alert.name}.md"
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        entries.append({
            "alert": alert.name, "severity": alert.severity, "summary": alert.summary,
            "file": path.name, "group": alert.group, "dashboard_uid": alert.dashboard_uid,
            "owners": alert.owners, "sections": runbook_sections(text),
        })
    return entries


def render_runbook_index(runbooks_dir: Path, alerts: Sequence[Alert] = CATALOG) -> str:
    return json.dumps(runbook_index(runbooks_dir, alerts), indent=2, ensure_ascii=False) + "\n"
