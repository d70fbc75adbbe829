"""The report's charts as PNG bytes (matplotlib's Agg canvas, no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from agent.finops.aggregate import FinopsTables

BUSY, IDLE, USED, UNMEASURED = "#3b6fb6", "#e4572e", "#59a14f", "#a8b0bd"
_DPI = 110
MAX_BARS = 12


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _styled(draw: Callable[[FinopsTables], bytes]) -> Callable[[FinopsTables], bytes]:
    def styled(tables: FinopsTables) -> bytes:
        # Large type: on a phone the 700 px image shrinks to about 370 px.
        with matplotlib.rc_context({"font.size": 13, "axes.titlesize": 15,
                                    "axes.labelsize": 13, "xtick.labelsize": 12,
                                    "ytick.labelsize": 12, "legend.fontsize": 12}):
            return draw(tables)
    return styled


def _empty(figure: Figure, title: str) -> bytes:
    axes = figure.subplots()
    axes.set_title(title)
    axes.text(0.5, 0.5, "No GPU allocations in this week", ha="center", va="center",
              transform=axes.transAxes)
    axes.set_axis_off()
    return _png(figure)


def _cost_bars(frame: pd.DataFrame, column: str, title: str, currency: str) -> bytes:
    """Horizontal bars per ``column`` value, most expensive on top. Each bar is the whole
    cost, in three parts: measured and not idle, allocated but idle, and unmeasured (no
    utilization: neither idle nor busy, so never drawn as either)."""
    rows = frame.head(MAX_BARS).iloc[::-1]
    figure = Figure(figsize=(6.4, 0.45 * max(len(rows), 3) + 1.4))
    if rows.empty:
        return _empty(figure, title)
    axes = figure.subplots()
    names = [str(value) for value in rows[column]]
    idle = rows["idle_cost"].to_numpy(dtype=float)
    unmeasured = rows["unmeasured_cost"].to_numpy(dtype=float)
    busy = np.maximum(rows["cost"].to_numpy(dtype=float) - idle - unmeasured, 0.0)
    axes.barh(names, busy, color=BUSY, label="active")
    axes.barh(names, idle, left=busy, color=IDLE, label="idle")
    axes.barh(names, unmeasured, left=busy + idle, color=UNMEASURED, label="unmeasured")
    axes.set_xlabel(currency)
    axes.set_title(title)
    axes.legend(ncols=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    axes.grid(axis="x", alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def cost_by_team(tables: FinopsTables, *, currency: str = "USD") -> bytes:
    """Per team: cost in use, idle and unmeasured."""
    return _cost_bars(tables.teams, "team", "GPU cost by team", currency)


def daily_gpu_hours(tables: FinopsTables) -> bytes:
    """Per day: allocated GPU-hours stacked as active (measured, not idle), idle and
    unmeasured, with the used (utilization-weighted) GPU-hours as a line over them."""
    title = "GPU-hours per day"
    daily = tables.daily
    figure = Figure(figsize=(6.4, 3.8))
    if daily.empty:
        return _empty(figure, title)
    axes = figure.subplots()
    x = np.arange(len(daily))
    idle = daily["gpu_hours_idle"].to_numpy(dtype=float)
    unmeasured = daily["gpu_hours_unmeasured"].to_numpy(dtype=float)
    active = np.maximum(daily["gpu_hours_allocated"].to_numpy(dtype=float) - idle - unmeasured,
                        0.0)
    axes.bar(x, active, 0.6, color=BUSY, label="active")
    axes.bar(x, idle, 0.6, bottom=active, color=IDLE, label="idle")
    axes.bar(x, unmeasured, 0.6, bottom=active + idle, color=UNMEASURED, label="unmeasured")
    axes.plot(x, daily["gpu_hours_used"].to_numpy(dtype=float), color=USED, marker="o",
              linewidth=2, label="used (utilization-weighted)")
    labels = [datetime.fromisoformat(str(d)).strftime("%a\n%d") for d in daily["date"]]
    axes.set_xticks(x, labels)
    axes.set_ylabel("GPU-hours")
    axes.set_title(title)
    axes.legend(ncols=2, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    axes.grid(axis="y", alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def cost_by_model(tables: FinopsTables, *, currency: str = "USD") -> bytes:
    """Per GPU model: cost in use, idle and unmeasured."""
    return _cost_bars(tables.models, "model", "GPU cost by model", currency)


CHARTS: dict[str, tuple[str, Callable[[FinopsTables], bytes]]] = {
    "cost-by-team": ("GPU cost by team", _styled(cost_by_team)),
    "daily-gpu-hours": ("GPU-hours per day", _styled(daily_gpu_hours)),
    "cost-by-model": ("GPU cost by model", _styled(cost_by_model)),
}
