"""The dashboard lint, and the helpers that run a dashboard's queries outside Grafana.

``lint_dashboard`` checks a rendered dashboard model (the JSON Grafana imports) against the
house rules; ``panel_queries`` and ``substitute_variables`` let a test run every panel
query against a real Prometheus the way Grafana would send it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from agent.durations import parse_duration
from agent.links import DASHBOARD_UIDS

PANELS_NEEDING_UNIT: Final = frozenset(
    {"graph", "timeseries", "stat", "gauge", "table", "bargauge"})
DATASOURCE_REFERENCES: Final = frozenset({"$datasource", "${datasource}"})
RATE_WINDOWS: Final = frozenset({"$__rate_interval", "${__rate_interval}"})
RANGE_WINDOWS: Final = frozenset({"$__range", "${__range}"})
# Grafana's own variables, always defined.
BUILTIN_VARIABLES: Final = frozenset({
    "__interval", "__interval_ms", "__rate_interval", "__rate_interval_ms", "__range",
    "__range_s", "__range_ms", "__from", "__to", "__dashboard", "__org", "__user",
})

# Grafana's variable syntax: $var, [[var]] / [[var:format]], ${var} / ${var:format}.
_VARIABLE: Final = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.[^:}]+)?(?::([^}]+))?\}")
_RATE_CALL: Final = re.compile(r"(?<![\w:])(rate|irate|increase)\s*\(")
_RANGE_SELECTOR: Final = re.compile(r"\[([^\[\]]*)\]")
# Grafana's regex format escapes these characters with a backslash.
_REGEX_SPECIAL: Final = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT: Final = re.compile(r"^\s*query_result\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class AlertPanelRule:
    """A panel whose queries match every pattern in ``all_of`` (and not ``unless``) shows
    what ``alert`` fires on, so it must link to that alert's runbook."""

    alert: str
    all_of: tuple[str, ...]
    unless: str | None = None

    def applies(self, exprs: str) -> bool:
        if self.unless is not None and re.search(self.unless, exprs):
            return False
        return all(re.search(pattern, exprs) for pattern in self.all_of)


_XID = r"\bsteward_gpu_xid_(?:errors_total|last_timestamp_seconds)\b"
_HYGIENE_RUNS = r"\bsteward_hygiene_runs_total\b"
ALERT_PANEL_RULES: Final[tuple[AlertPanelRule, ...]] = (
    AlertPanelRule("GpuLost", (r"\bsteward_gpu_lost\b",)),
    AlertPanelRule("GpuXidCritical", (_XID,)),
    AlertPanelRule("GpuXidErrors", (_XID,)),
    AlertPanelRule("GpuEccUncorrectable", (r"\bsteward_gpu_ecc_errors_total\b",)),
    AlertPanelRule("GpuRowRemapFailure", (r"\bsteward_gpu_remapped_rows\b",)),
    AlertPanelRule("GpuTemperatureHigh", (r"\bsteward_gpu_temperature_celsius\b",)),
    AlertPanelRule("GpuThermalThrottling", (r"\bsteward_gpu_clock_event_active\b",)),
    AlertPanelRule("GpuMemoryNearlyFull", (r"\bsteward_gpu_memory_used_bytes\b",)),
    AlertPanelRule("GpuIdleAllocated",
                   (r"\bsteward_gpu_allocation\b", r"\bsteward_gpu_utilization_ratio\b",
                    r"<\s*(?:bool\s+)?0?\.01\b")),
    AlertPanelRule("PodCrashLooping", (r"\bsteward_container_waiting\b",)),
    AlertPanelRule("PodOomKilled",
                   (r"\bsteward_container_last_terminated_timestamp_seconds\b", "OOMKilled")),
    AlertPanelRule("GpuPodPendingTooLong", (r"\bsteward_pod_pending_since_timestamp_seconds\b",)),
    AlertPanelRule("PipelineRunFailed", (r"\bsteward_pipeline_runs_total\b",)),
    AlertPanelRule("PipelineStale", (r"\bsteward_pipeline_last_success_timestamp_seconds\b",)),
    AlertPanelRule("PipelineRunTooLong",
                   (r"\bsteward_pipeline_running_since_timestamp_seconds\b",)),
    AlertPanelRule("StewardAgentDown", (r"(?<![\w:])up\s*\{[^}]*job\s*=~?\s*\"steward",)),
    AlertPanelRule("StewardCollectorFailing", (r"\bsteward_collector_up\b",),
                   unless=r"collector\s*=\s*\"attribution\""),
    AlertPanelRule("StewardGpuAttributionFailing",
                   (r"\bsteward_collector_up\b", r"collector\s*=\s*\"attribution\"")),
    AlertPanelRule("StewardHygieneJobFailing", (_HYGIENE_RUNS,)),
    AlertPanelRule("StewardHygieneBlastRadiusTripped", (_HYGIENE_RUNS, "blast_radius_tripped")),
    AlertPanelRule("StewardNotifierDeliveryFailing",
                   (r"\bsteward_notifier_(?:slack_messages_total|outbox_depth)\b",)),
)


# --- walking a model ---------------------------------------------------------------------


def iter_panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, row panels included, with the panels nested in collapsed rows and in
    legacy ``rows``."""
    for panel in model.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []
    for row in model.get("rows") or []:
        yield from row.get("panels") or []


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, in reading order."""
    return [(str(panel.get("title", "")), str(target.get("expr", "")))
            for panel in iter_panels(model) for target in panel.get("targets") or []]


def variable_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, PromQL) returning the values of each query variable.

    ``label_values(selector, label)`` becomes ``group by (label) (selector)``; the result
    still holds ``$var`` references for ``substitute_variables``.
    """
    found: list[tuple[str, str]] = []
    for variable in _variables(model):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        text = str(query or "")
        if match := _LABEL_VALUES.match(text):
            found.append((variable["name"], f"group by ({match[2]}) ({match[1].strip()})"))
        elif match := _QUERY_RESULT.match(text):
            found.append((variable["name"], match[1].strip()))
    return found


def default_variable_values(model: dict[str, Any]) -> dict[str, str]:
    """A value for every non-datasource variable: the All value (``.*``) where there is
    one, else ``.*`` too, which every Steward query matches with ``=~``."""
    values: dict[str, str] = {}
    for variable in _variables(model):
        if variable.get("type") == "datasource":
            continue
        all_value = variable.get("allValue")
        values[str(variable["name"])] = str(all_value) if all_value else ".*"
    return values


def _variables(model: dict[str, Any]) -> list[dict[str, Any]]:
    templating = model.get("templating") or {}
    return list(templating.get("list") or [])


# --- variable substitution ---------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _format(value: str, fmt: str | None) -> str:
    if fmt == "regex":
        return _REGEX_SPECIAL.sub(lambda m: "\\" + m[0], value)
    if fmt == "doublequote":
        return '"' + value.replace('"', '\\"') + '"'
    if fmt == "singlequote":
        return "'" + value.replace("'", "\\'") + "'"
    # raw, text, csv, pipe, glob, ...: one value formats to itself.
    return value


def substitute_variables(expr: str, values: dict[str, str], *, rate_interval: str = "1m",
                         interval: str = "1m", range_: str = "1h") -> str:
    """Replace Grafana variables in ``expr`` as Grafana would before sending it.

    Handles ``$var``, ``${var}``, ``${var:format}`` (``regex`` escapes like Grafana),
    ``[[var]]`` and the built-ins ``$__rate_interval``, ``$__interval``, ``$__range`` and
    their ``_ms`` / ``_s`` forms. Unknown variables are left as they are, as Grafana does,
    so an undefined one shows up as a PromQL parse error.
    """
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "__rate_interval_ms": _number(parse_duration(rate_interval) * 1000),
        "__interval_ms": _number(parse_duration(interval) * 1000),
        "__range_s": _number(parse_duration(range_)),
        "__range_ms": _number(parse_duration(range_) * 1000),
    }

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[4]
        fmt = match[3] or match[5]
        if name in builtins:
            return builtins[name]
        if name in values:
            return _format(values[name], fmt)
        return match[0]

    return _VARIABLE.sub(replace, expr)


def referenced_variables(text: str) -> set[str]:
    """Names of the Grafana variables ``text`` refers to."""
    return {m[1] or m[2] or m[4] for m in _VARIABLE.finditer(text)}


# --- the lint ----------------------------------------------------------------------------


def _call_argument(expr: str, open_paren: int) -> str:
    """The text between the parenthesis at ``open_paren`` and its match."""
    depth = 0
    for i in range(open_paren, len(expr)):
        if expr[i] == "(":
            depth += 1
        elif expr[i] == ")":
            depth -= 1
            if depth == 0:
                return expr[open_paren + 1:i]
    return expr[open_paren + 1:]


def rate_window_problems(expr: str) -> list[str]:
    """rate()/irate()/increase() calls whose window is not ``$__rate_interval`` or
    ``$__range``."""
    problems = []
    for match in _RATE_CALL.finditer(expr):
        argument = _call_argument(expr, match.end() - 1)
        windows = _RANGE_SELECTOR.findall(argument)
        window = windows[-1].strip() if windows else ""
        if window not in RATE_WINDOWS | RANGE_WINDOWS:
            problems.append(f"{match[1]}() over [{window}]: use [$__rate_interval] "
                            "(or [$__range] in an instant query over the dashboard range)")
    return problems


def _unit(panel: dict[str, Any]) -> str:
    if panel.get("type") == "graph":
        axes = panel.get("yaxes") or [{}]
        return str(axes[0].get("format") or "")
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    return str(defaults.get("unit") or "")


def _uses_datasource_variable(reference: Any) -> bool:
    if isinstance(reference, str):
        return reference in DATASOURCE_REFERENCES
    if isinstance(reference, dict):
        return reference.get("uid") in DATASOURCE_REFERENCES
    return False


def _lint_templating(model: dict[str, Any]) -> tuple[list[str], set[str]]:
    problems: list[str] = []
    variables = _variables(model)
    names = [str(v.get("name", "")) for v in variables]
    for name, count in sorted(Counter(names).items()):
        if count > 1:
            problems.append(f"variable ${name} is defined {count} times")
    datasource = [v for v in variables if v.get("name") == "datasource"]
    if not datasource:
        problems.append("no 'datasource' template variable")
    elif datasource[0].get("type") != "datasource" or datasource[0].get("query") != "prometheus":
        problems.append("variable $datasource must be of type datasource, query prometheus")
    for variable in variables:
        if variable.get("type") == "query" and not _uses_datasource_variable(
                variable.get("datasource")):
            problems.append(f"variable ${variable.get('name')} does not query $datasource")
    return problems, set(names)


def _lint_panel(panel: dict[str, Any], defined: set[str]) -> list[str]:
    problems: list[str] = []
    title = panel.get("title") or f"panel id {panel.get('id')}"
    kind = panel.get("type")
    where = f"panel {title!r}"
    if kind in PANELS_NEEDING_UNIT:
        if not _unit(panel):
            problems.append(f"{where}: no unit")
        if not str(panel.get("description") or "").strip():
            problems.append(f"{where}: no description")
    targets = panel.get("targets") or []
    if kind in PANELS_NEEDING_UNIT and not targets:
        problems.append(f"{where}: no queries")
    if targets and not _uses_datasource_variable(panel.get("datasource")):
        problems.append(f"{where}: datasource is not $datasource")
    ref_ids = Counter(str(t.get("refId", "")) for t in targets)
    for ref_id, count in sorted(ref_ids.items()):
        if count > 1:
            problems.append(f"{where}: refId {ref_id!r} used {count} times")
    for target in targets:
        expr = str(target.get("expr") or "")
        label = f"{where} query {target.get('refId')}"
        if not expr.strip():
            problems.append(f"{label}: empty expression")
        if not _uses_datasource_variable(target.get("datasource")):
            problems.append(f"{label}: datasource is not $datasource")
        problems.extend(f"{label}: {p}" for p in rate_window_problems(expr))
        if any(w in expr for w in ("[$__range]", "[${__range}]", "[$__range:")) and not (
                target.get("instant")):
            problems.append(f"{label}: a [$__range] window belongs in an instant query; "
                            "over a time series each point would span the whole range")
        for name in sorted(referenced_variables(expr) - defined - BUILTIN_VARIABLES):
            if not name.isdigit():
                problems.append(f"{label}: undefined variable ${name}")
    exprs = "\n".join(str(t.get("expr") or "") for t in targets)
    link_urls = [str(link.get("url", "")) for link in panel.get("links") or []]
    for rule in ALERT_PANEL_RULES:
        if rule.applies(exprs) and not any(u.endswith(f"/{rule.alert}.md") for u in link_urls):
            problems.append(f"{where}: shows what {rule.alert} fires on but has no link to "
                            f"its runbook ({rule.alert}.md)")
    return problems


def lint_dashboard(model: dict[str, Any], *, expected_uid: str | None = None) -> list[str]:
    """One line per problem in a rendered dashboard model; empty when it is clean.

    ``expected_uid`` pins the uid; without it the uid must be one of
    ``agent.links.DASHBOARD_UIDS``.
    """
    problems: list[str] = []
    uid = model.get("uid")
    if not uid:
        problems.append("no uid")
    elif expected_uid is not None and uid != expected_uid:
        problems.append(f"uid {uid!r} is not the stable uid {expected_uid!r}")
    elif expected_uid is None and uid not in DASHBOARD_UIDS:
        problems.append(f"uid {uid!r} is not one of agent.links.DASHBOARD_UIDS")
    templating_problems, defined = _lint_templating(model)
    problems.extend(templating_problems)
    ids: Counter[Any] = Counter()
    titles: Counter[str] = Counter()
    for panel in iter_panels(model):
        if panel.get("type") != "row":
            titles[str(panel.get("title") or "")] += 1
        if panel.get("id") is None:
            problems.append(f"panel {panel.get('title')!r}: no id")
        else:
            ids[panel["id"]] += 1
        problems.extend(_lint_panel(panel, defined))
    for panel_id, count in sorted(ids.items(), key=lambda item: str(item[0])):
        if count > 1:
            problems.append(f"duplicate panel id {panel_id} ({count} panels)")
    for title, count in sorted(titles.items()):
        if count > 1:
            problems.append(f"duplicate panel title {title!r} ({count} panels)")
    return problems
