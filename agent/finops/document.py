"""The assembled report: what ``render`` writes and ``slack`` posts, and ``summary.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.finops.aggregate import FinopsTables
from agent.finops.period import ReportWeek
from agent.finops.savings import HygieneSavings
from agent.finops.series import Gap, iso

CURRENCY = "USD"
# SPEC's five, and the allocated hours without utilization (neither used nor idle).
SUMMARY_METRICS = ("gpu_hours_allocated", "gpu_hours_used", "gpu_hours_idle",
                   "gpu_hours_unmeasured", "cost", "idle_cost")
# Beside the totals: what nobody held, and every GPU's hours (allocated + unallocated).
CAPACITY_METRICS = ("gpu_hours_unallocated", "unallocated_cost", "gpu_hours_capacity",
                    "capacity_cost")
_TENANT_KEYS = ("tenant", "namespace", "pod", "team", "mode", "share", "gpu_hours_allocated",
                "gpu_hours_used", "gpu_hours_idle", "gpu_hours_unmeasured", "cost",
                "idle_cost")


def _round(value: float) -> float:
    return round(float(value), 6)


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    number = float(value)
    return None if math.isnan(number) else _round(number)  # NaN: not applicable


def _change(current: float, previous: float) -> float | None:
    return None if previous <= 0 else _round((current - previous) / previous)


@dataclass(frozen=True)
class FinopsReport:
    week: ReportWeek
    tables: FinopsTables
    gaps: list[Gap]
    savings: HygieneSavings
    source: str
    generated_at: datetime
    idle_floor: float
    # Share of the previous week's hours that had data; None when it was not read.
    previous_coverage: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def week_over_week_available(self) -> bool:
        return self.tables.previous_totals is not None and bool(self.previous_coverage)

    def week_over_week(self) -> dict[str, Any]:
        previous = self.week.previous().name
        prev = self.tables.previous_totals
        if prev is None or not self.previous_coverage:
            return {"previous_week": previous, "available": False}
        now = self.tables.totals
        return {
            "previous_week": previous, "available": True,
            "previous_coverage": _round(self.previous_coverage),
            "previous_totals": {k: _round(prev[k]) for k in SUMMARY_METRICS},
            "cost_change": _change(now["cost"], prev["cost"]),
            "idle_cost_change": _change(now["idle_cost"], prev["idle_cost"]),
            "gpu_hours_allocated_change": _change(now["gpu_hours_allocated"],
                                                  prev["gpu_hours_allocated"]),
        }

    def shared_gpus(self) -> list[dict[str, Any]]:
        """Per shared GPU: its hours and cost, and each tenant's (and the unallocated
        remainder's) share, use and charge; the charges add up to the GPU's cost."""
        table = self.tables.shared_gpus
        out: list[dict[str, Any]] = []
        if table.empty:
            return out
        for (hostname, uuid), rows in table.groupby(["hostname", "uuid"], sort=False):
            first = rows.iloc[0]
            out.append({
                "hostname": str(hostname), "uuid": str(uuid), "model": str(first["model"]),
                "price_per_gpu_hour": _round(first["price_per_gpu_hour"]),
                "gpu_hours": _round(first["gpu_hours_capacity"]),
                "cost": _round(first["gpu_cost"]),
                "tenants": [{k: _json_value(row[k]) for k in _TENANT_KEYS}
                            for row in rows.to_dict("records")],
            })
        return out

    def summary(self) -> dict[str, Any]:
        """``summary.json``: the shape SPEC.md's "FinOps report output" fixes, plus the
        capacity totals, ``shared_gpus``, ``week_over_week`` and ``warnings``."""
        totals = self.tables.totals
        return {
            "week": self.week.name,
            "currency": CURRENCY,
            "start": iso(self.week.start),
            "end": iso(self.week.end),
            "totals": {k: _round(totals[k]) for k in (*SUMMARY_METRICS, *CAPACITY_METRICS)
                       if k in totals},
            "teams": [{"team": str(row["team"]), **{k: _round(row[k]) for k in SUMMARY_METRICS}}
                      for row in self.tables.teams.to_dict("records")],
            "shared_gpus": self.shared_gpus(),
            "gaps": [gap.to_json() for gap in self.gaps],
            "hygiene_savings": self.savings.to_json(),
            "week_over_week": self.week_over_week(),
            "warnings": list(self.warnings),
        }
