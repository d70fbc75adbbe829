"""Writes the report folder: ``report.html`` (self-contained, charts as embedded PNG, readable
on a phone), ``report.md``, one CSV per table, the chart PNGs and ``summary.json``."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pandas as pd

from agent.finops.charts import CHARTS
from agent.finops.document import CURRENCY, FinopsReport
from agent.finops.series import iso

Formatter = Callable[[Any], str]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def hours(value: Any) -> str:
    return "n/a" if _is_missing(value) else f"{float(value):,.1f}"


def money(value: Any) -> str:
    return "n/a" if _is_missing(value) else f"${float(value):,.2f}"


def percent(value: Any) -> str:
    return "n/a" if _is_missing(value) else f"{100 * float(value):.1f}%"


def change(value: Any) -> str:
    return "n/a" if _is_missing(value) else f"{100 * float(value):+.1f}%"


def text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def count(value: Any) -> str:
    return "n/a" if _is_missing(value) else f"{int(value):,d}"


def size(value: Any) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:,.1f} {unit}" if unit != "B" else f"{int(amount)} B"
        amount /= 1024
    return f"{amount:,.1f} PiB"


Column = tuple[str, str, Formatter]  # frame column, header, formatter
UTILIZATION = "Utilization (used ÷ allocated)"
_METRIC_COLUMNS: list[Column] = [
    ("gpu_hours_allocated", "GPU-h allocated", hours),
    ("gpu_hours_used", "GPU-h used", hours),
    ("utilization", UTILIZATION, percent),
    ("gpu_hours_idle", "GPU-h idle", hours),
    ("gpu_hours_unmeasured", "GPU-h unmeasured", hours),
    ("cost", "Cost", money),
    ("idle_cost", "Idle cost", money),
]
TEAM_COLUMNS: list[Column] = [("team", "Team", text), ("namespaces", "Namespaces", count),
                              *_METRIC_COLUMNS, ("cost_change", "vs last week", change)]
NAMESPACE_COLUMNS: list[Column] = [("namespace", "Namespace", text), ("team", "Team", text),
                                   *_METRIC_COLUMNS, ("cost_change", "vs last week", change)]
MODEL_COLUMNS: list[Column] = [("model", "GPU model", text),
                               ("price_per_gpu_hour", "Price / GPU-h", money),
                               *_METRIC_COLUMNS]
IDLE_COLUMNS: list[Column] = [("namespace", "Namespace", text), ("workload", "Workload", text),
                              ("team", "Team", text), ("pods", "Idle pods", count),
                              ("gpu_hours_idle", "GPU-h idle", hours),
                              ("idle_cost", "Idle cost", money),
                              ("idle_share", "Idle share of its GPU-h", percent)]
DAILY_COLUMNS: list[Column] = [("date", "Day (UTC)", text), *_METRIC_COLUMNS]
SHARED_COLUMNS: list[Column] = [("tenant", "Tenant", text), ("team", "Team", text),
                                ("mode", "Given as", text), ("share", "Share", percent),
                                ("gpu_hours_allocated", "GPU-h", hours),
                                ("gpu_hours_used", "GPU-h used", hours),
                                ("utilization", "Use of its share", percent),
                                ("gpu_hours_idle", "GPU-h held idle", hours),
                                ("cost", "Charge", money), ("idle_cost", "Idle charge", money)]
SHARED_GPUS_SHOWN = 20
GAP_COLUMNS: list[Column] = [("kind", "Kind", text), ("scope", "Scope", text),
                             ("start", "From (UTC)", text), ("end", "To (UTC)", text),
                             ("hours", "Hours (GPU-h for utilization)", hours)]
SAVINGS_COLUMNS: list[Column] = [("job", "Job", text), ("actions", "Actions", count),
                                 ("gpu_hours_freed", "GPU-h freed", hours),
                                 ("gpu_cost", "GPU cost saved", money),
                                 ("bytes_removed", "Storage removed", size),
                                 ("storage_cost_per_month", "Storage / month", money)]
RECLAIMABLE_COLUMNS: list[Column] = [("job", "Job", text), ("mode", "Plan", text),
                                     ("run_at", "Planned (UTC)", text),
                                     ("candidates", "Candidates", count),
                                     ("gpus", "GPUs", hours),
                                     ("gpu_cost_per_week", "GPU cost / week", money),
                                     ("bytes", "Storage", size),
                                     ("storage_cost_per_month", "Storage / month", money)]
_GAP_TEXT = {
    "no_data": "No data in Prometheus",
    "node_agent_down": "Node agent not scraped",
    "utilization_unavailable": "Allocated without utilization (MIG, GPU not answering, "
                               "use not attributable)",
}


@dataclass
class ReportFiles:
    folder: Path
    html: Path
    markdown: Path
    summary: Path
    csv: dict[str, Path] = field(default_factory=dict)
    charts: dict[str, Path] = field(default_factory=dict)


def _gaps_frame(report: FinopsReport) -> pd.DataFrame:
    return pd.DataFrame([g.to_json() for g in report.gaps],
                        columns=["kind", "scope", "start", "end", "hours"])


def _readable_gaps(report: FinopsReport) -> pd.DataFrame:
    frame = pd.DataFrame([{"kind": _GAP_TEXT.get(g.kind, g.kind), "scope": g.scope,
                           "start": f"{g.start.astimezone(UTC):%a %d %b %H:%M}",
                           "end": f"{g.end.astimezone(UTC):%a %d %b %H:%M}",
                           "hours": g.hours} for g in report.gaps],
                         columns=["kind", "scope", "start", "end", "hours"])
    return frame


def _savings_frame(report: FinopsReport) -> pd.DataFrame:
    columns = [c for c, _, _ in SAVINGS_COLUMNS]
    return pd.DataFrame([{c: getattr(job, c) for c in columns} for job in report.savings.jobs],
                        columns=columns)


def _reclaimable_frame(report: FinopsReport) -> pd.DataFrame:
    columns = [c for c, _, _ in RECLAIMABLE_COLUMNS]
    rows = [{**{c: getattr(r, c, None) for c in columns},
             "run_at": f"{r.at.astimezone(UTC):%a %d %b %H:%M}",
             "mode": r.mode.replace("_", "-")} for r in report.savings.reclaimable]
    return pd.DataFrame(rows, columns=columns)


def _tables(report: FinopsReport) -> dict[str, pd.DataFrame]:
    t = report.tables
    return {"teams": t.teams, "namespaces": t.namespaces, "models": t.models,
            "top_idle_workloads": t.top_idle_workloads, "daily": t.daily,
            "shared_gpus": t.shared_gpus,
            "gaps": _gaps_frame(report), "hygiene_savings": _savings_frame(report),
            "hygiene_reclaimable": _reclaimable_frame(report)}


def write_report(report: FinopsReport, folder: Path) -> ReportFiles:
    folder.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(folder=folder, html=folder / "report.html",
                        markdown=folder / "report.md", summary=folder / "summary.json")
    for name, table in _tables(report).items():
        path = folder / f"{name}.csv"
        table.to_csv(path, index=False, float_format="%.6f")
        files.csv[name] = path
    charts: dict[str, bytes] = {}
    for name, (_, draw) in CHARTS.items():
        charts[name] = draw(report.tables)
        path = folder / f"chart-{name}.png"
        path.write_bytes(charts[name])
        files.charts[name] = path
    _write(files.html, render_html(report, charts))
    _write(files.markdown, render_markdown(report))
    _write(files.summary, json.dumps(report.summary(), indent=2) + "\n")
    return files


def _write(path: Path, content: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(content, encoding="utf-8")
    partial.replace(path)


# --- shared wording ---------------------------------------------------------------------


def utilization_text(used: float, allocated: float) -> str:
    """The one definition, with its denominator: ``64.5% (1,501.9 of 2,328.0 GPU-h)``."""
    share = used / allocated if allocated > 0 else None
    return f"{percent(share)} ({hours(used)} of {hours(allocated)} GPU-h)"


def reclaimable_text(report: FinopsReport) -> str:
    """What the latest plans found and nobody acted on: ``3 GPUs ($2,066.40/week), ...``."""
    pending = report.savings.reclaimable
    if not pending:
        return "no hygiene plan yet"
    gpus = sum(r.gpus for r in pending)
    stored = sum(r.bytes for r in pending)
    parts = []
    if gpus:
        parts.append(f"{gpus:g} GPUs ({money(sum(r.gpu_cost_per_week for r in pending))}"
                     "/week)")
    if stored:
        parts.append(f"{size(stored)} "
                     f"({money(sum(r.storage_cost_per_month for r in pending))}/month)")
    return ", ".join(parts) or "nothing"


def headline(report: FinopsReport) -> list[tuple[str, str, str]]:
    """(label, value, detail) cards: the numbers a platform lead reads first."""
    totals = report.tables.totals
    idle_share = totals["idle_cost"] / totals["cost"] if totals["cost"] > 0 else None
    wow = report.week_over_week()
    savings = report.savings
    if savings.available:
        applied = (f"{savings.actions} actions applied, {hours(savings.gpu_hours_freed)} GPU-h "
                   f"freed, {size(savings.bytes_removed)} removed" if savings.actions
                   else "nothing applied this week")
        saved_detail = f"{applied}; reclaimable, not acted on: {reclaimable_text(report)}"
    else:
        saved_detail = savings.reason
    cards = [
        ("GPU cost", money(totals["cost"]),
         f"{change(wow.get('cost_change'))} vs {wow['previous_week']}" if wow["available"]
         else "no data for last week"),
        ("Allocated but idle", money(totals["idle_cost"]),
         f"{percent(idle_share)} of the cost, {hours(totals['gpu_hours_idle'])} GPU-h"),
        ("GPU-hours allocated", hours(totals["gpu_hours_allocated"]),
         f"utilization {utilization_text(totals['gpu_hours_used'], totals['gpu_hours_allocated'])}"
         f"; {hours(totals['gpu_hours_unmeasured'])} GPU-h unmeasured"),
        ("Hygiene savings",
         money(savings.gpu_cost) if savings.available else "not available", saved_detail),
    ]
    return cards


def capacity_text(report: FinopsReport) -> str:
    """Every GPU's hours and cost, split into what pods held and what nobody held."""
    t = report.tables.totals
    if "gpu_hours_capacity" not in t:
        return ""
    return (f"GPU capacity: {hours(t['gpu_hours_capacity'])} GPU-h, "
            f"{money(t['capacity_cost'])} = allocated {money(t['cost'])} + unallocated "
            f"{money(t['unallocated_cost'])} ({hours(t['gpu_hours_unallocated'])} GPU-h "
            "nobody held).")


def shared_gpu_groups(report: FinopsReport) -> list[tuple[str, pd.DataFrame]]:
    """(heading, tenant rows) per shared GPU, the costliest first, at most
    ``SHARED_GPUS_SHOWN``; the heading states the reconciliation."""
    table = report.tables.shared_gpus
    groups: list[tuple[str, pd.DataFrame]] = []
    if table.empty:
        return groups
    for (hostname, uuid), rows in table.groupby(["hostname", "uuid"], sort=False):
        first = rows.iloc[0]
        tenants = rows[rows["tenant"] != "(unallocated)"]
        free = rows[rows["tenant"] == "(unallocated)"]
        heading = (f"{hostname} {uuid} ({first['model']}): {hours(first['gpu_hours_capacity'])} "
                   f"GPU-h x {money(first['price_per_gpu_hour'])} = {money(first['gpu_cost'])}"
                   f" = {len(tenants)} tenant(s) {money(tenants['cost'].sum())} + unallocated "
                   f"{money(free['cost'].sum())}")
        groups.append((heading, rows))
        if len(groups) == SHARED_GPUS_SHOWN:
            break
    return groups


def _shared_more(report: FinopsReport) -> str:
    total = report.tables.shared_gpus.groupby(["hostname", "uuid"]).ngroups \
        if not report.tables.shared_gpus.empty else 0
    return (f"{total - SHARED_GPUS_SHOWN} more shared GPUs in shared_gpus.csv."
            if total > SHARED_GPUS_SHOWN else "")


SHARED_INTRO = ("GPUs shared by time-slicing, MPS, KAI or HAMi fractions, or MIG: each "
                "tenant is charged its share of every GPU-hour, and what nobody held is the "
                "unallocated rest; the charges add up to the GPU's cost to the cent. A "
                "tenant's use is its own (NVML per-process samples), as a part of its share; "
                "held idle is its share while its use stayed under the idle floor.")


def method_notes(report: FinopsReport) -> list[str]:
    return [
        f"Week {report.week.name}: {iso(report.week.start)} to {iso(report.week.end)} "
        "(ISO week, Monday 00:00 UTC to the next Monday).",
        "Allocated: each pod's share of each physical GPU, over the hours it held it "
        "(steward_gpu_pod_allocated_ratio): a whole GPU counts 1, a MIG instance its compute "
        "slices (3g.40gb = 3/7 GPU), a time-sliced replica 1/replicas, a KAI or HAMi "
        "fraction its fraction. Unallocated: the hours of each GPU nobody held; allocated "
        "+ unallocated = every GPU's hours.",
        "Used: allocated GPU-hours weighted by each pod's own mean SM use of its share in "
        "each step (the GPU's utilization for a pod holding it whole; per-process samples "
        "on shared GPUs).",
        "Utilization: used ÷ allocated GPU-hours, everywhere in this report. Unmeasured "
        "GPU-hours (allocated, but no utilization was reported: MIG instances, GPUs that "
        "did not answer) are in the denominator and in a column of their own; they are "
        "neither used nor idle.",
        f"Idle: allocated GPU-hours in steps whose peak use (of the pod's share) stayed "
        f"under {percent(report.idle_floor)} (finops.idle_floor).",
        "Cost: allocated GPU-hours x the model's price per GPU-hour (finops.prices); "
        "idle cost is the idle part of it.",
        "Missing data is listed under Data gaps and is not counted as zero cost.",
        f"Source: {report.source}. Generated {iso(report.generated_at)}.",
    ]


# --- HTML -------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; --fg: #1d2430; --muted: #5b6577; --line: #dde2ea;
  --accent: #3b6fb6; --idle: #e4572e; --bg: #ffffff; --card: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
  sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.5rem; margin: 0.2em 0; }
h3.gpu { font-size: 0.95rem; margin: 1.1em 0 0.3em; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.6em 0 0.5em; border-bottom: 1px solid var(--line);
  padding-bottom: 0.2em; }
.period, .muted, footer { color: var(--muted); font-size: 0.9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr));
  gap: 10px; margin: 14px 0; }
.card { background: var(--card); border-radius: 8px; padding: 10px 12px; }
.card .label { font-size: 0.8rem; color: var(--muted); text-transform: uppercase;
  letter-spacing: 0.03em; }
.card .value { font-size: 1.45rem; font-weight: 600; }
.card .detail { font-size: 0.85rem; color: var(--muted); }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 8px 12px;
  border-radius: 4px; margin: 10px 0; }
figure { margin: 8px 0; }
figure img { display: block; width: 100%; height: auto; max-width: 660px; }
figcaption { font-size: 0.85rem; color: var(--muted); }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; font-size: 0.86rem; }
th, td { padding: 5px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { text-align: left; background: var(--card); font-weight: 600; font-size: 0.8rem; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.text { overflow-wrap: break-word; }
footer ul { padding-left: 1.2em; }
/* A phone cannot show nine columns: each row becomes a card of label: value lines. */
@media (max-width: 720px) {
  main { padding: 10px; } h1 { font-size: 1.25rem; } .card .value { font-size: 1.2rem; }
  table.data, table.data tbody, table.data tr, table.data td { display: block; width: 100%; }
  table.data thead { display: none; }
  table.data tr { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 8px;
    padding: 4px 8px; }
  table.data td { display: flex; justify-content: space-between; gap: 12px; border: 0;
    padding: 2px 0; text-align: right; white-space: normal; }
  table.data td::before { content: attr(data-label); color: var(--muted); text-align: left;
    flex: 0 0 45%; }
}
"""


def _html_table(frame: pd.DataFrame, columns: Sequence[Column], *, empty: str) -> str:
    if frame.empty:
        return f'<p class="muted">{html.escape(empty)}</p>'
    present = [c for c in columns if c[0] in frame.columns]
    numeric = {c for c, _, fmt in present if fmt is not text}
    head = "".join(f'<th{" class=num" if c in numeric else ""} scope="col">'
                   f"{html.escape(h)}</th>" for c, h, _ in present)
    body = []
    for record in frame.to_dict("records"):
        cells = "".join(f'<td class={"num" if c in numeric else "text"} '
                        f'data-label="{html.escape(h)}">{html.escape(fmt(record[c]))}</td>'
                        for c, h, fmt in present)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="table-wrap"><table class="data"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _figure(name: str, png: bytes, title: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}" '
            f'data-chart="{html.escape(name)}"><figcaption>{html.escape(title)}</figcaption>'
            f"</figure>")


def render_html(report: FinopsReport, charts: dict[str, bytes]) -> str:
    week = report.week
    title = f"GPU cost report {week.name}"
    tables = report.tables
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="period">{week.start:%a %d %b %Y} to {week.end:%a %d %b %Y}, 00:00 UTC'
        f" &middot; prices in {CURRENCY}</p>",
        '<section class="cards">',
    ]
    for label, value, detail in headline(report):
        parts.append(f'<div class="card"><div class="label">{html.escape(label)}</div>'
                     f'<div class="value">{html.escape(value)}</div>'
                     f'<div class="detail">{html.escape(detail)}</div></div>')
    parts.append("</section>")
    missing = [g for g in report.gaps if g.kind != "utilization_unavailable"]
    if missing:
        hours_missing = sum(g.hours for g in missing)
        parts.append(f'<p class="warn">Data is missing for part of this week '
                     f"({len(missing)} gap(s), {hours(hours_missing)} hours): the cost of "
                     "those hours is not counted. See Data gaps below.</p>")
    for warning in report.warnings:
        parts.append(f'<p class="warn">{html.escape(warning)}</p>')
    titles = {name: title for name, (title, _) in CHARTS.items()}
    parts += [
        "<h2>Cost by team</h2>", _figure("cost-by-team", charts["cost-by-team"],
                                         titles["cost-by-team"]),
        _html_table(tables.teams, TEAM_COLUMNS, empty="No GPU allocations this week."),
        "<h2>Top idle workloads</h2>",
        '<p class="muted">Allocated GPUs whose utilization stayed under the idle floor: the '
        "first candidates to release.</p>",
        _html_table(tables.top_idle_workloads, IDLE_COLUMNS, empty="No idle allocations."),
        "<h2>GPU-hours per day</h2>", _figure("daily-gpu-hours", charts["daily-gpu-hours"],
                                              titles["daily-gpu-hours"]),
        _html_table(tables.daily, DAILY_COLUMNS, empty="No data."),
        "<h2>By namespace</h2>",
        _html_table(tables.namespaces, NAMESPACE_COLUMNS, empty="No GPU allocations."),
        "<h2>By GPU model</h2>", _figure("cost-by-model", charts["cost-by-model"],
                                         titles["cost-by-model"]),
        _html_table(tables.models, MODEL_COLUMNS, empty="No GPU allocations."),
        f'<p class="muted">{html.escape(capacity_text(report))}</p>',
        "<h2>Shared GPUs</h2>", f'<p class="muted">{html.escape(SHARED_INTRO)}</p>',
    ]
    groups = shared_gpu_groups(report)
    if not groups:
        parts.append('<p class="muted">No shared GPU this week.</p>')
    for heading, rows in groups:
        parts += [f'<h3 class="gpu">{html.escape(heading)}</h3>',
                  _html_table(rows, SHARED_COLUMNS, empty="")]
    if _shared_more(report):
        parts.append(f'<p class="muted">{html.escape(_shared_more(report))}</p>')
    parts += [
        "<h2>Hygiene savings</h2>",
    ]
    if report.savings.available:
        parts += ["<h3>Realised this week</h3>",
                  _html_table(_savings_frame(report), SAVINGS_COLUMNS,
                              empty="No hygiene action was applied this week: $0.00 saved."),
                  "<h3>Reclaimable, not acted on</h3>",
                  '<p class="muted">What each job\'s latest plan found (a dry-run plan, or '
                  "marks whose deadline has not come). GPUs are priced per week at the "
                  "week's mean price per GPU-hour, storage per month at "
                  "finops.storage_usd_per_gb_month.</p>",
                  _html_table(_reclaimable_frame(report), RECLAIMABLE_COLUMNS,
                              empty="No hygiene job has run yet.")]
    else:
        parts.append(f'<p class="muted">Not available: {html.escape(report.savings.reason)}.</p>')
    parts += ["<h2>Data gaps</h2>",
              _html_table(_readable_gaps(report), GAP_COLUMNS,
                          empty="None: every hour had data."),
              "<footer><h2>How these numbers are made</h2><ul>"]
    parts += [f"<li>{html.escape(note)}</li>" for note in method_notes(report)]
    parts.append("</ul></footer></main></body></html>\n")
    return "\n".join(parts)


# --- Markdown ---------------------------------------------------------------------------


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame, columns: Sequence[Column], *, empty: str) -> str:
    if frame.empty:
        return f"_{empty}_"
    present = [c for c in columns if c[0] in frame.columns]
    lines = ["| " + " | ".join(h for _, h, _ in present) + " |",
             "|" + "|".join("---:" if fmt is not text else "---" for _, _, fmt in present)
             + "|"]
    for record in frame.to_dict("records"):
        lines.append("| " + " | ".join(_md_cell(fmt(record[c])) for c, _, fmt in present)
                     + " |")
    return "\n".join(lines)


def _md_shared(report: FinopsReport) -> str:
    groups = shared_gpu_groups(report)
    if not groups:
        return "_No shared GPU this week._"
    parts = [SHARED_INTRO]
    for heading, rows in groups:
        parts += [f"**{_md_cell(heading)}**", _md_table(rows, SHARED_COLUMNS, empty="")]
    if _shared_more(report):
        parts.append(_shared_more(report))
    return "\n\n".join(parts)


def render_markdown(report: FinopsReport) -> str:
    tables = report.tables
    week = report.week
    lines = [f"# GPU cost report {week.name}", "",
             f"{week.start:%a %d %b %Y} to {week.end:%a %d %b %Y}, 00:00 UTC; prices in "
             f"{CURRENCY}.", ""]
    lines += [f"- **{label}**: {value} ({detail})" for label, value, detail in headline(report)]
    lines.append("")
    missing = [g for g in report.gaps if g.kind != "utilization_unavailable"]
    if missing:
        lines += [f"> **Data is missing** for {hours(sum(g.hours for g in missing))} hours "
                  "of this week: their cost is not counted. See Data gaps.", ""]
    lines += [f"> {warning}" for warning in report.warnings]
    sections = [
        ("Cost by team", _md_table(tables.teams, TEAM_COLUMNS, empty="No GPU allocations.")),
        ("Top idle workloads", _md_table(tables.top_idle_workloads, IDLE_COLUMNS,
                                         empty="No idle allocations.")),
        ("GPU-hours per day", _md_table(tables.daily, DAILY_COLUMNS, empty="No data.")),
        ("By namespace", _md_table(tables.namespaces, NAMESPACE_COLUMNS,
                                   empty="No GPU allocations.")),
        ("By GPU model", _md_table(tables.models, MODEL_COLUMNS, empty="No GPU allocations.")
         + (f"\n\n{capacity_text(report)}" if capacity_text(report) else "")),
        ("Shared GPUs", _md_shared(report)),
        ("Hygiene savings",
         "Realised this week:\n\n"
         + _md_table(_savings_frame(report), SAVINGS_COLUMNS,
                     empty="No hygiene action was applied this week: $0.00 saved.")
         + "\n\nReclaimable, not acted on (the latest plans):\n\n"
         + _md_table(_reclaimable_frame(report), RECLAIMABLE_COLUMNS,
                     empty="No hygiene job has run yet.")
         if report.savings.available else f"_Not available: {report.savings.reason}._"),
        ("Data gaps", _md_table(_readable_gaps(report), GAP_COLUMNS,
                                empty="None: every hour had data.")),
    ]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body]
    lines += ["", "## How these numbers are made", ""]
    lines += [f"- {note}" for note in method_notes(report)]
    return "\n".join(lines) + "\n"
