"""Builders every Steward dashboard is made of: variables, documented panels, layout, links.

The lint rules (datasource variable everywhere, unit and description on every panel, runbook
links, stable ids) hold by construction when a dashboard is built from these. The shared
PromQL fragments for GPU allocation live here too, so that the fleet, namespace and FinOps
dashboards count an allocated, shared or idle GPU the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import attr
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    SORT_ALPHA_ASC,
    BarGauge,
    Dashboard,
    DashboardLink,
    GaugePanel,
    GridPos,
    RowPanel,
    Stat,
    Table,
    TableSortByField,
    Template,
    Templating,
    Time,
    TimeSeries,
)

from agent.links import DASHBOARD_UIDS, DEFAULT_RUNBOOK_BASE_URL, runbook_url

# grafanalib ships no type information: its objects are opaque to mypy.
GrafanaPanel: TypeAlias = Any
GrafanaObject: TypeAlias = Any

DATASOURCE_VARIABLE: Final = "datasource"
DATASOURCE: Final[dict[str, str]] = {"type": "prometheus", "uid": "${datasource}"}
# Grafana 10.4 / 11: a schema this recent is loaded as written, without old-panel migrations.
SCHEMA_VERSION: Final = 39
GRID_WIDTH: Final = 24
RUNBOOK_LINK_TITLE: Final = "Runbook: {alert}"
STEWARD_TAG: Final = "steward"

# Utilization under this share counts as idle: the same floor as the GpuIdleAllocated alert
# and the FinOps report's idle GPU-hours.
IDLE_UTILIZATION_FLOOR: Final = 0.01

GREEN: Final = "green"
ORANGE: Final = "orange"
RED: Final = "red"

Thresholds: TypeAlias = Sequence[tuple[str, float | None]]
OK_BELOW_ONE: Final[Thresholds] = ((GREEN, None), (RED, 1.0))


class PanelDefinitionError(ValueError):
    """A panel or dashboard definition breaks a house rule (no unit, no description, ...)."""


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; ``legend`` is Grafana's legend format."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Column:
    """A value column of a table panel: the query that fills it, its header and its unit."""

    title: str
    expr: str
    unit: str


@dataclass(frozen=True)
class Section:
    """A titled row of panels; panels flow left to right and wrap at the grid width."""

    title: str
    panels: Sequence[GrafanaPanel]


# --- variables ---------------------------------------------------------------------------


def datasource_variable() -> GrafanaObject:
    """The ``datasource`` variable every panel and target reads from (any Prometheus)."""
    return Template(
        name=DATASOURCE_VARIABLE,
        label="Data source",
        query="prometheus",
        type="datasource",
        regex="",
    )


def query_variable(name: str, *, label: str, metric: str, label_name: str | None = None,
                   multi: bool = False, include_all: bool = False) -> GrafanaObject:
    """A variable filled with the values of ``label_name`` (default ``name``) on ``metric``.

    With ``include_all`` the All option is the regex ``.*``: queries match it with ``=~``.
    """
    query = f"label_values({metric}, {label_name or name})"
    variable = Template(
        name=name,
        label=label,
        query=query,
        dataSource=dict(DATASOURCE),
        multi=multi,
        includeAll=include_all,
        allValue=".*" if include_all else None,
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        sort=SORT_ALPHA_ASC,
        regex="",
    )
    if include_all:
        # Open on All rather than on whichever value Grafana happens to list first.
        variable._current = {"selected": True, "text": ["All"] if multi else "All",
                             "value": ["$__all"] if multi else "$__all"}
    return variable


# --- links -------------------------------------------------------------------------------


def runbook_link(alert: str, *, base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> dict[str, Any]:
    """A panel link to the runbook of ``alert``."""
    return {
        "title": RUNBOOK_LINK_TITLE.format(alert=alert),
        "url": runbook_url(alert, base_url=base_url),
        "targetBlank": True,
    }


def dashboard_drilldown(uid: str, variable: str) -> dict[str, Any]:
    """A data link that opens dashboard ``uid`` with ``variable`` set to the clicked value."""
    if uid not in DASHBOARD_UIDS:
        raise PanelDefinitionError(f"unknown dashboard uid {uid!r}")
    url = (f"/d/{uid}/{DASHBOARD_UIDS[uid]}?var-{DATASOURCE_VARIABLE}=${{{DATASOURCE_VARIABLE}}}"
           f"&var-{variable}=${{__value.raw}}&${{__url_time_range}}")
    return {"title": f"Open {DASHBOARD_UIDS[uid]}", "url": url, "targetBlank": False}


# --- targets -----------------------------------------------------------------------------


def _ref_id(index: int) -> str:
    if index >= 26:
        raise PanelDefinitionError("a panel has at most 26 queries")
    return chr(ord("A") + index)


def _target(expr: str, *, ref_id: str, legend: str = "", instant: bool = False,
            table: bool = False) -> dict[str, Any]:
    return {
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref_id,
    }


def _targets(queries: Sequence[Query], *, instant: bool) -> list[dict[str, Any]]:
    if not queries:
        raise PanelDefinitionError("a panel needs at least one query")
    return [_target(query.expr, ref_id=_ref_id(i), legend=query.legend, instant=instant)
            for i, query in enumerate(queries)]


# --- panels ------------------------------------------------------------------------------


def _require_documented(title: str, *, unit: str, description: str) -> None:
    # A number without a unit or a panel nobody can interpret is decoration, not telemetry.
    if not title.strip():
        raise PanelDefinitionError("a panel needs a title")
    if not unit.strip():
        raise PanelDefinitionError(f"panel {title!r} has no unit")
    if not description.strip():
        raise PanelDefinitionError(f"panel {title!r} has no description")


def _steps(thresholds: Thresholds) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in thresholds]


def _links(runbooks: Sequence[str]) -> list[dict[str, Any]]:
    return [runbook_link(alert) for alert in runbooks]


def _grid(width: int, height: int) -> GrafanaObject:
    if not 1 <= width <= GRID_WIDTH:
        raise PanelDefinitionError(f"panel width {width} is outside 1..{GRID_WIDTH}")
    return GridPos(h=height, w=width, x=0, y=0)


def timeseries(*, title: str, description: str, unit: str, queries: Sequence[Query],
               runbooks: Sequence[str] = (), width: int = 12, height: int = 8,
               stacked: bool = False, bars: bool = False, min_value: int | None = 0,
               max_value: int | None = None,
               thresholds: Thresholds = ((GREEN, None),),
               show_thresholds: bool = False) -> GrafanaPanel:
    """A time series panel over the dashboard range (range queries)."""
    _require_documented(title, unit=unit, description=description)
    return TimeSeries(
        title=title,
        description=description,
        dataSource=dict(DATASOURCE),
        targets=_targets(queries, instant=False),
        unit=unit,
        links=_links(runbooks),
        gridPos=_grid(width, height),
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else (25 if stacked else 10),
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none"},
        valueMin=min_value,
        valueMax=max_value,
        thresholds=_steps(thresholds),
        thresholdsStyleMode="line" if show_thresholds else "off",
        legendDisplayMode="table",
        legendPlacement="right" if width >= 16 else "bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        showPoints="never",
        maxDataPoints=None,
    )


def stat(*, title: str, description: str, unit: str, queries: Sequence[Query],
         runbooks: Sequence[str] = (), width: int = 4, height: int = 4,
         thresholds: Thresholds = ((GREEN, None),), decimals: int | None = None) -> GrafanaPanel:
    """A single number, evaluated now (instant query)."""
    _require_documented(title, unit=unit, description=description)
    return Stat(
        title=title,
        description=description,
        dataSource=dict(DATASOURCE),
        targets=_targets(queries, instant=True),
        format=unit,
        links=_links(runbooks),
        gridPos=_grid(width, height),
        color={"mode": "thresholds"},
        thresholds=_steps(thresholds),
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="value",
        decimals=decimals,
        noValue="No data",
    )


def gauge(*, title: str, description: str, unit: str, queries: Sequence[Query],
          runbooks: Sequence[str] = (), width: int = 4, height: int = 4,
          min_value: float = 0, max_value: float = 1,
          thresholds: Thresholds = ((GREEN, None),)) -> GrafanaPanel:
    """A gauge between ``min_value`` and ``max_value``, evaluated now."""
    _require_documented(title, unit=unit, description=description)
    return GaugePanel(
        title=title,
        description=description,
        dataSource=dict(DATASOURCE),
        targets=_targets(queries, instant=True),
        format=unit,
        links=_links(runbooks),
        gridPos=_grid(width, height),
        min=min_value,
        max=max_value,
        thresholds=_steps(thresholds),
        calc="lastNotNull",
        extraJson={
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "showThresholdMarkers": True},
        },
    )


def bargauge(*, title: str, description: str, unit: str, queries: Sequence[Query],
             runbooks: Sequence[str] = (), width: int = 8, height: int = 8,
             min_value: float = 0, max_value: float | None = None,
             thresholds: Thresholds = ((GREEN, None),)) -> GrafanaPanel:
    """One horizontal bar per series, evaluated now (e.g. top-N lists)."""
    _require_documented(title, unit=unit, description=description)
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": min_value,
        "max": max_value,
        "color": {"mode": "thresholds"},
        "thresholds": {"mode": "absolute", "steps": _steps(thresholds)},
    }
    return BarGauge(
        title=title,
        description=description,
        dataSource=dict(DATASOURCE),
        targets=_targets(queries, instant=True),
        format=unit,
        links=_links(runbooks),
        gridPos=_grid(width, height),
        min=min_value,
        max=max_value,
        displayMode="gradient",
        thresholds=_steps(thresholds),
        # grafanalib writes the Grafana 6 ``options.fieldOptions`` shape; modern Grafana reads
        # ``fieldConfig`` and ``reduceOptions``.
        extraJson={
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
            },
        },
    )


def table(*, title: str, description: str, columns: Sequence[Column], labels: Sequence[str],
          runbooks: Sequence[str] = (), width: int = 24, height: int = 8,
          sort_by: str | None = None, sort_desc: bool = True,
          drilldowns: Mapping[str, str] | None = None, show_values: bool = True) -> GrafanaPanel:
    """A table joining instant queries on their labels: one row per label set.

    ``labels`` are the label columns shown, in order; each ``Column`` adds a value column
    with its own unit. ``drilldowns`` maps a label column to the uid of a dashboard that
    has a variable of the same name. ``show_values=False`` keeps only the label columns
    (inventory tables whose value is a constant 1).
    """
    if not columns:
        raise PanelDefinitionError(f"table {title!r} has no columns")
    for column in columns:
        _require_documented(f"{title}: {column.title}", unit=column.unit,
                            description=description)
    _require_documented(title, unit=columns[0].unit, description=description)
    targets = [_target(column.expr, ref_id=_ref_id(i), instant=True, table=True)
               for i, column in enumerate(columns)]
    # Grafana names the value field "Value" for a single query and "Value #<refId>" for
    # several; handle both so that the header never depends on that. organize orders by
    # the field names before its rename.
    rename: dict[str, str] = {}
    order = {label: i for i, label in enumerate(labels)}
    for i, (target, column) in enumerate(zip(targets, columns, strict=True)):
        fields = [f"Value #{target['refId']}", *(["Value"] if len(columns) == 1 else [])]
        for field in fields:
            rename[field] = column.title
            order[field] = len(labels) + i
    value_fields = list(rename) if show_values else []
    transformations: list[dict[str, Any]] = [
        {"id": "merge", "options": {}},
        {"id": "filterFieldsByName",
         "options": {"include": {"names": [*labels, *value_fields]}}},
        {"id": "organize",
         "options": {"excludeByName": {}, "indexByName": order, "renameByName": rename}},
    ]
    overrides: list[dict[str, Any]] = []
    if show_values:
        overrides.extend(
            {"matcher": {"id": "byName", "options": column.title},
             "properties": [{"id": "unit", "value": column.unit}]}
            for column in columns
        )
    for label, uid in sorted((drilldowns or {}).items()):
        if label not in labels:
            raise PanelDefinitionError(f"table {title!r}: drilldown on unshown label {label!r}")
        overrides.append({"matcher": {"id": "byName", "options": label},
                          "properties": [{"id": "links",
                                          "value": [dashboard_drilldown(uid, label)]}]})
    sort = [TableSortByField(displayName=sort_by, desc=sort_desc)] if sort_by else []
    if sort_by is not None and sort_by not in {*labels, *(c.title for c in columns)}:
        raise PanelDefinitionError(f"table {title!r}: cannot sort by unknown column {sort_by!r}")
    return Table(
        title=title,
        description=description,
        dataSource=dict(DATASOURCE),
        targets=targets,
        unit=columns[0].unit,
        links=_links(runbooks),
        gridPos=_grid(width, height),
        filterable=True,
        overrides=overrides,
        transformations=transformations,
        sortBy=sort,
        thresholds=_steps(((GREEN, None),)),
    )


# --- dashboard ---------------------------------------------------------------------------


def _layout(sections: Sequence[Section]) -> list[GrafanaPanel]:
    """Place rows and panels on the 24-column grid and number them in reading order."""
    placed: list[GrafanaPanel] = []
    y = 0
    next_id = 1
    for section in sections:
        placed.append(RowPanel(title=section.title, id=next_id,
                               gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in section.panels:
            grid = panel.gridPos
            if x + grid.w > GRID_WIDTH:
                y += line_height
                x = 0
                line_height = 0
            placed.append(attr.evolve(panel, id=next_id,
                                      gridPos=GridPos(h=grid.h, w=grid.w, x=x, y=y)))
            next_id += 1
            x += grid.w
            line_height = max(line_height, grid.h)
        y += line_height
    return placed


def dashboard(*, uid: str, title: str, description: str, sections: Sequence[Section],
              variables: Sequence[GrafanaObject] = (), tags: Sequence[str] = (),
              time_from: str = "now-6h", refresh: str = "1m") -> GrafanaObject:
    """A Steward dashboard: stable ``uid``, the datasource variable first, rows of panels."""
    if uid not in DASHBOARD_UIDS:
        raise PanelDefinitionError(f"uid {uid!r} is not in agent.links.DASHBOARD_UIDS")
    if not description.strip():
        raise PanelDefinitionError(f"dashboard {uid!r} has no description")
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[STEWARD_TAG, *tags],
        templating=Templating(list=[datasource_variable(), *variables]),
        panels=_layout(sections),
        links=[DashboardLink(title="Steward dashboards", type="dashboards",
                             tags=[STEWARD_TAG], asDropdown=True, includeVars=False,
                             keepTime=True)],
        time=Time(time_from, "now"),
        refresh=refresh,
        schemaVersion=SCHEMA_VERSION,
        graphTooltip=1,
        timezone="browser",
        editable=True,
    )


# --- shared PromQL -----------------------------------------------------------------------


def _selector(matchers: str) -> str:
    return f"{{{matchers}}}" if matchers else ""


def gpu_share(matchers: str = "") -> str:
    """Per pod and GPU, the share of that physical GPU the pod holds (labels: namespace, pod,
    hostname, UUID, modelName), as the node agent computes it
    (``steward_gpu_pod_allocated_ratio``): 1 for a whole GPU, 1/replicas for a time-sliced
    replica, the fraction for KAI and HAMi, slices/7 for a MIG instance. Sums over pods
    never count a GPU twice. ``matchers`` filter the pods (e.g. a namespace).
    """
    return (
        f"(sum by (namespace, pod, hostname, UUID, modelName) "
        f"(max by (namespace, pod, hostname, UUID, GPU_I_ID, modelName, mode) "
        f"(steward_gpu_pod_allocated_ratio{_selector(matchers)})))"
    )


def pod_use(matchers: str = "") -> str:
    """Per pod and GPU, the pod's own SM use of that GPU, 0-1 of the whole GPU (labels:
    namespace, pod, hostname, UUID), averaged over the rate interval: the GPU's utilization
    for a pod holding it whole, its processes' samples on a shared GPU; none for MIG."""
    return ("max by (namespace, pod, hostname, UUID) (avg_over_time("
            f"steward_gpu_pod_utilization_ratio{_selector(matchers)}[$__rate_interval]))")


def idle_share(matchers: str = "") -> str:
    """Per pod and GPU, the share held idle: the pod's share where its own use stayed under
    the idle floor of that share (a pod holding half a GPU at 0 % idles half a GPU)."""
    share = gpu_share(matchers)
    tenant = "namespace, pod, hostname, UUID"
    return (f"({share} * on ({tenant}) group_left () "
            f"({pod_use(matchers)} / on ({tenant}) {share} < bool {IDLE_UTILIZATION_FLOOR}))")


def gpu_utilization() -> str:
    """SM utilization per GPU (labels: hostname, UUID), averaged over the rate interval."""
    return ("max by (hostname, UUID) "
            "(avg_over_time(steward_gpu_utilization_ratio[$__rate_interval]))")


def gpu_idle() -> str:
    """1 for a GPU whose utilization is under the idle floor, else 0 (hostname, UUID)."""
    return f"({gpu_utilization()} < bool {IDLE_UTILIZATION_FLOOR})"


def allocated_gpus(matchers: str = "") -> str:
    """Distinct allocated GPUs (labels: hostname, UUID), however many containers hold one."""
    return f"max by (hostname, UUID) (steward_gpu_allocation{_selector(matchers)})"


def gpu_price() -> str:
    """USD per GPU-hour by ``modelName`` from the controller's ``finops.prices``."""
    return "max by (modelName) (steward_gpu_price_dollars_per_hour)"
