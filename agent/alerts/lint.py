"""The catalog lint run by `steward build` and CI: naming, severities, annotations, runbooks.

Each problem is one line naming the alert (or group) and what is wrong; no problems, [].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from agent.alerts.catalog import CATALOG, SEVERITIES, Alert, alerts_by_group
from agent.alerts.render import GRAFANA_UID_MAX_LENGTH, grafana_rule_uid
from agent.alerts.xid import (
    TABLE_END_MARKER,
    TABLE_START_MARKER,
    embedded_xid_table,
    render_xid_table_markdown,
)
from agent.durations import is_duration
from agent.links import DASHBOARD_UIDS

MAX_RULES_PER_GROUP: Final = 20
RUNBOOK_SECTIONS: Final = ("Meaning", "Impact", "Diagnosis", "Mitigation", "Escalation")
# For the workload's team, linked from the owner notice: alerts that carry owners have it.
OWNER_SECTION: Final = "If you own the workload"
# The runbook that must embed the XID table (others may, and are checked when they do).
XID_TABLE_RUNBOOK: Final = "GpuXidCritical"

_CAMEL_CASE = re.compile(r"^(?:[A-Z][a-z0-9]+)+$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS: Final = frozenset({"alertname", "severity"})
_FRONT_MATTER = re.compile(r"\A---\n(?P<body>.*?)\n---\s*\n", re.DOTALL)


def lint_catalog(*, runbooks_dir: Path, alerts: Sequence[Alert] = CATALOG) -> list[str]:
    """Every problem with ``alerts`` and their runbooks under ``runbooks_dir``."""
    problems: list[str] = []
    for name, count in sorted(Counter(alert.name for alert in alerts).items()):
        if count > 1:
            problems.append(f"{name}: defined {count} times")
    for group, members in alerts_by_group(alerts).items():
        if len(members) > MAX_RULES_PER_GROUP:
            problems.append(
                f"group {group}: {len(members)} rules, more than {MAX_RULES_PER_GROUP}"
            )
    for alert in alerts:
        problems.extend(f"{alert.name}: {problem}" for problem in _lint_rule(alert))
        problems.extend(
            f"{alert.name}: {problem}" for problem in _lint_runbook(alert, runbooks_dir)
        )
    return problems


def _lint_rule(alert: Alert) -> list[str]:
    problems: list[str] = []
    if not _CAMEL_CASE.match(alert.name):
        problems.append("name is not CamelCase (e.g. GpuXidCritical)")
    if len(grafana_rule_uid(alert.name)) > GRAFANA_UID_MAX_LENGTH:
        problems.append(f"name too long for a Grafana uid ({GRAFANA_UID_MAX_LENGTH} chars)")
    if not alert.group.strip():
        problems.append("no group")
    if alert.severity not in SEVERITIES:
        problems.append(f"severity {alert.severity!r} is not one of {', '.join(SEVERITIES)}")
    if not alert.expr.strip():
        problems.append("expr is empty")
    if not is_duration(alert.for_duration):
        problems.append(f"for {alert.for_duration!r} is not a Prometheus duration")
    problems.extend(_lint_summary(alert.summary))
    if not alert.description.strip():
        problems.append("description is empty")
    elif "{{" not in alert.description:
        problems.append("description is not templated: say where ({{ $labels... }})")
    if alert.dashboard_uid not in DASHBOARD_UIDS:
        problems.append(f"dashboard uid {alert.dashboard_uid!r} is not in agent.links")
    for label in alert.labels:
        if label in _RESERVED_LABELS:
            problems.append(f"label {label!r} is set by the catalog itself")
        elif not _LABEL_NAME.match(label):
            problems.append(f"label {label!r} is not a valid label name")
    return problems


def _lint_summary(summary: str) -> list[str]:
    problems: list[str] = []
    if not summary.strip():
        return ["summary is empty"]
    # A static summary groups well in Alertmanager and Slack; details go in the description.
    if "{{" in summary or "$labels" in summary or "$value" in summary:
        problems.append("summary is templated; keep it static")
    if not summary.endswith("."):
        problems.append("summary does not end with a full stop")
    return problems


def _lint_runbook(alert: Alert, runbooks_dir: Path) -> list[str]:
    path = runbooks_dir / f"{alert.name}.md"
    if not path.is_file():
        return [f"runbook {path} is missing"]
    text = path.read_text(encoding="utf-8")
    problems = _lint_front_matter(alert, path, text)
    for section in (*RUNBOOK_SECTIONS, *((OWNER_SECTION,) if alert.owners else ())):
        if not re.search(rf"^#{{1,6}}\s+{section}\b", text, re.MULTILINE):
            problems.append(f"runbook {path} has no {section} section")
    embedded = embedded_xid_table(text)
    if embedded is None:
        if alert.name == XID_TABLE_RUNBOOK:
            problems.append(
                f"runbook {path} has no {TABLE_START_MARKER} ... {TABLE_END_MARKER} section"
            )
    elif embedded != render_xid_table_markdown().strip():
        problems.append(f"runbook {path} has a stale XID table; run `steward build`")
    return problems


def _lint_front_matter(alert: Alert, path: Path, text: str) -> list[str]:
    match = _FRONT_MATTER.match(text)
    if match is None:
        return [f"runbook {path} has no front matter (--- alert, severity ---)"]
    try:
        front: Any = yaml.safe_load(match.group("body"))
    except yaml.YAMLError as error:
        return [f"runbook {path} front matter is not YAML: {str(error).splitlines()[0]}"]
    if not isinstance(front, dict):
        return [f"runbook {path} front matter is not a mapping"]
    problems: list[str] = []
    for key, expected in (("alert", alert.name), ("severity", alert.severity)):
        found = front.get(key)
        if found != expected:
            problems.append(
                f"runbook {path} front matter {key}: {found!r}, the rule says {expected!r}"
            )
    return problems
