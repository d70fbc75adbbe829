"""pandas: the hourly series -> GPU-hours and cost per team, namespace, GPU model, workload, day.

Two stages. :func:`reduce_batch` folds each batch of step rows into sums per (day,
namespace, pod, GPU model, MIG profile) as it arrives, so memory stays bounded by one
batch whatever the week's size. :func:`build_tables` prices those sums and shapes them.

Per step row (``share`` of the step a container held a GPU unit, ``step`` in hours):
allocated = share x step; used = allocated x mean utilization; idle = allocated when the
GPU's peak utilization in the step stayed under ``finops.idle_floor``; allocated time with
no utilization (MIG instances, GPUs that did not answer) is ``unmeasured``: neither used
nor idle. GPU-hours are whole-GPU hours (a ``3g.40gb`` slice hour is 3/7 of one).
Utilization is used / allocated, unmeasured hours included in the denominator.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from agent.finops.pricing import PriceTable, gpu_fraction
from agent.finops.series import SeriesSource
from agent.finops.teams import UNASSIGNED

KEYS = ("namespace", "pod", "model", "profile")
REDUCE_COLUMNS = ("ts", *KEYS, "share", "util_mean", "util_max")
STEP_SUMS = ("alloc_h", "used_h", "idle_h", "unmeasured_h")
METRICS = ("gpu_hours_allocated", "gpu_hours_used", "gpu_hours_idle", "gpu_hours_unmeasured",
           "cost", "idle_cost", "unmeasured_cost")
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"  # the alphabet of Kubernetes' random name suffixes
_WORKLOAD_PATTERNS = (
    re.compile(rf"^(?P<name>.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$"),  # Deployment's ReplicaSet
    re.compile(rf"^(?P<name>.+)-\d{{8,}}-{_SAFE}{{5}}$"),  # CronJob's Job
    re.compile(rf"^(?P<name>.+)-{_SAFE}{{5}}$"),  # Job, ReplicaSet, DaemonSet
    re.compile(r"^(?P<name>.+)-\d+$"),  # StatefulSet ordinal
)


def _codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), column.cat.categories
    codes, uniques = pd.factorize(column)
    return codes, pd.Index(uniques)


def empty_usage() -> pd.DataFrame:
    frame = pd.DataFrame({"day": np.array([], dtype=np.int64)})
    for key in KEYS:
        frame[key] = pd.Series([], dtype=object)
    for name in STEP_SUMS:
        frame[name] = np.array([], dtype=np.float64)
    return frame


def reduce_batch(frame: pd.DataFrame, *, step_seconds: int, idle_floor: float) -> pd.DataFrame:
    """Step rows -> sums of GPU-unit-hours per (day, namespace, pod, model, profile).

    Rows arrive series by series, so runs of equal keys are long: numpy folds each run
    first and pandas groups the (far fewer) runs. Any row order gives the same sums.
    """
    n = len(frame)
    if n == 0:
        return empty_usage()
    day = frame["ts"].to_numpy(dtype=np.int64) // 86400
    coded = [_codes(frame[key]) for key in KEYS]
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(day[1:], day[:-1], out=change[1:])
    for codes, _ in coded:
        change[1:] |= codes[1:] != codes[:-1]
    starts = np.flatnonzero(change)

    hours = step_seconds / 3600
    share = frame["share"].to_numpy(dtype=np.float64)
    mean = frame["util_mean"].to_numpy(dtype=np.float64)
    peak = frame["util_max"].to_numpy(dtype=np.float64)
    measured = ~np.isnan(mean)
    parts = {
        "alloc_h": share,
        "used_h": share * np.where(measured, mean, 0.0),
        # NaN < floor is False: an unmeasured step is never idle.
        "idle_h": np.where(peak < idle_floor, share, 0.0),
        "unmeasured_h": np.where(measured, 0.0, share),
    }
    runs: dict[str, Any] = {"day": day[starts]}
    for key, (codes, categories) in zip(KEYS, coded, strict=True):
        runs[key] = pd.Categorical.from_codes(codes[starts], categories=categories)
    for name, values in parts.items():
        runs[name] = np.add.reduceat(values, starts) * hours
    folded = pd.DataFrame(runs)
    if len(starts) * 4 < n:
        return folded  # already far smaller than the batch; combine_usage groups it
    return (folded.groupby(["day", *KEYS], observed=True, sort=False, as_index=False)
            [list(STEP_SUMS)].sum())


def combine_usage(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate reduced batches (different categories each) and sum them again."""
    frames = [part for part in parts if len(part)]
    if not frames:
        return empty_usage()
    whole = pd.concat([_plain(part) for part in frames], ignore_index=True)
    return (whole.groupby(["day", *KEYS], sort=True, as_index=False)[list(STEP_SUMS)].sum())


def _plain(part: pd.DataFrame) -> pd.DataFrame:
    out = part.copy()
    for key in KEYS:
        out[key] = out[key].astype(str)
    return out


def aggregate_usage(source: SeriesSource, start: datetime, end: datetime, *,
                    idle_floor: float, threads: int | None = None) -> pd.DataFrame:
    """Read ``[start, end)`` from ``source`` batch by batch and reduce it.

    Batches are reduced on a few threads (numpy releases the GIL), at most two per thread in
    flight, so memory stays bounded however long the range.
    """
    step = source.step_seconds
    workers = threads or min(8, os.cpu_count() or 1)
    parts: list[pd.DataFrame] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="finops-reduce") as pool:
        pending: deque[Future[pd.DataFrame]] = deque()
        for batch in source.batches(start, end, columns=REDUCE_COLUMNS):
            pending.append(pool.submit(reduce_batch, batch, step_seconds=step,
                                       idle_floor=idle_floor))
            if len(pending) >= 2 * workers:
                parts.append(pending.popleft().result())
        parts.extend(future.result() for future in pending)
    return combine_usage(parts)


@dataclass(frozen=True)
class PricedUsage:
    rows: pd.DataFrame  # usage + gpu_fraction, price and every column of METRICS
    unknown_profiles: tuple[str, ...] = ()
    unpriced_models: tuple[str, ...] = ()  # left out of the cost (``strict=False`` only)


def price_usage(usage: pd.DataFrame, prices: PriceTable, *, strict: bool = True) -> PricedUsage:
    """GPU-unit-hours -> whole-GPU hours and USD.

    Raises MissingPriceError for a model without a price; with ``strict=False`` (the
    previous week, whose models may since have left the price table) its cost is 0 and the
    model is listed in ``unpriced_models``.
    """
    rows = usage.copy()
    units = rows[["model", "profile"]].drop_duplicates()
    fractions: dict[tuple[str, str], float] = {}
    unknown: list[str] = []
    for model, profile in units.itertuples(index=False):
        fraction = gpu_fraction(str(model), str(profile))
        if fraction is None:
            # A slice count we cannot read: charge the whole GPU rather than nothing.
            unknown.append(f"{model} {profile}")
            fraction = 1.0
        fractions[(str(model), str(profile))] = fraction
    rows["gpu_fraction"] = [fractions[(str(m), str(p))]
                            for m, p in zip(rows["model"], rows["profile"], strict=True)]
    for metric, step_sum in zip(METRICS[:4], STEP_SUMS, strict=True):
        rows[metric] = rows[step_sum] * rows["gpu_fraction"]
    allocated = rows.groupby("model")["gpu_hours_allocated"].sum()
    if strict:
        prices.check({str(model): float(hours) for model, hours in allocated.items()})
    table = prices.usd_per_gpu_hour
    unpriced = tuple(sorted(str(m) for m in allocated.index if str(m) not in table))
    rows["price"] = rows["model"].map(lambda m: float(table.get(str(m), 0.0))) \
        .astype(np.float64)
    rows["cost"] = rows["gpu_hours_allocated"] * rows["price"]
    rows["idle_cost"] = rows["gpu_hours_idle"] * rows["price"]
    rows["unmeasured_cost"] = rows["gpu_hours_unmeasured"] * rows["price"]
    return PricedUsage(rows=rows, unknown_profiles=tuple(sorted(unknown)),
                       unpriced_models=unpriced)


def workload_of(pod: str) -> str:
    """The pod's owner name, guessed from Kubernetes' generated suffixes."""
    for pattern in _WORKLOAD_PATTERNS:
        match = pattern.match(pod)
        if match:
            return match["name"]
    return pod


@dataclass(frozen=True)
class FinopsTables:
    totals: dict[str, float]
    teams: pd.DataFrame
    namespaces: pd.DataFrame
    models: pd.DataFrame
    top_idle_workloads: pd.DataFrame
    daily: pd.DataFrame
    previous_totals: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)


def _ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Utilization = used / allocated GPU-hours, the two columns beside it: one definition
    everywhere. Unmeasured hours count in the denominator (they were paid for) and are a
    column of their own, so a reader sees how much of the figure is unknown."""
    allocated = table["gpu_hours_allocated"].where(table["gpu_hours_allocated"] > 0)
    table["utilization"] = (table["gpu_hours_used"] / allocated).astype(float)
    table["idle_share"] = (table["gpu_hours_idle"] / allocated).astype(float)
    return table


def _sum_by(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame({**{k: pd.Series([], dtype=object) for k in keys},
                             **{m: pd.Series([], dtype=float) for m in METRICS}})
    return rows.groupby(keys, sort=False, as_index=False)[list(METRICS)].sum()


def _change(current: pd.Series, previous: pd.Series) -> pd.Series:
    return ((current - previous) / previous.where(previous > 0)).astype(float)


def totals_of(rows: pd.DataFrame) -> dict[str, float]:
    return {metric: float(rows[metric].sum()) if len(rows) else 0.0 for metric in METRICS}


def build_tables(current: PricedUsage, previous: PricedUsage | None, *,
                 teams: Mapping[str, str], top_n: int = 10) -> FinopsTables:
    """Price-weighted tables for the week, with the previous week's cost where known."""
    rows = current.rows.copy()
    rows["team"] = rows["namespace"].map(lambda ns: teams.get(str(ns), UNASSIGNED))
    rows["workload"] = rows["pod"].map(lambda pod: workload_of(str(pod)))

    prev_team_cost: pd.Series = pd.Series(dtype=float)
    prev_ns_cost: pd.Series = pd.Series(dtype=float)
    if previous is not None:
        prev = previous.rows.copy()
        prev["team"] = prev["namespace"].map(lambda ns: teams.get(str(ns), UNASSIGNED))
        prev_team_cost = prev.groupby("team")["cost"].sum()
        prev_ns_cost = prev.groupby("namespace")["cost"].sum()

    team_table = _sum_by(rows, ["team"])
    namespaces_per_team = rows.groupby("team")["namespace"].nunique()
    team_table.insert(1, "namespaces",
                      team_table["team"].map(namespaces_per_team).fillna(0).astype(int))
    team_table = _ratios(team_table)
    team_table["previous_cost"] = team_table["team"].map(prev_team_cost).astype(float)
    if previous is not None:
        team_table["previous_cost"] = team_table["previous_cost"].fillna(0.0)
    team_table["cost_change"] = _change(team_table["cost"], team_table["previous_cost"])
    team_table = team_table.sort_values(["cost", "team"], ascending=[False, True],
                                        ignore_index=True)

    ns_table = _ratios(_sum_by(rows, ["namespace", "team"]))
    ns_table["previous_cost"] = ns_table["namespace"].map(prev_ns_cost).astype(float)
    if previous is not None:
        ns_table["previous_cost"] = ns_table["previous_cost"].fillna(0.0)
    ns_table["cost_change"] = _change(ns_table["cost"], ns_table["previous_cost"])
    ns_table = ns_table.sort_values(["cost", "namespace"], ascending=[False, True],
                                    ignore_index=True)

    model_table = _ratios(_sum_by(rows, ["model"]))
    prices = rows.groupby("model")["price"].first()
    model_table.insert(1, "price_per_gpu_hour", model_table["model"].map(prices).astype(float))
    model_table = model_table.sort_values(["cost", "model"], ascending=[False, True],
                                          ignore_index=True)

    idle = rows[rows["gpu_hours_idle"] > 0]
    workloads = _sum_by(idle, ["namespace", "workload", "team"])
    pods = idle.groupby(["namespace", "workload"])["pod"].nunique()
    workloads.insert(3, "pods", [int(pods.get((ns, wl), 0)) for ns, wl in
                                 zip(workloads["namespace"], workloads["workload"],
                                     strict=True)])
    # The workload's whole allocation, not only its idle steps, for the idle share.
    allocated = rows.groupby(["namespace", "workload"])["gpu_hours_allocated"].sum()
    workloads["gpu_hours_allocated"] = [float(allocated.get((ns, wl), 0.0)) for ns, wl in
                                        zip(workloads["namespace"], workloads["workload"],
                                            strict=True)]
    workloads = _ratios(workloads).sort_values(
        ["idle_cost", "gpu_hours_idle", "namespace", "workload"],
        ascending=[False, False, True, True], ignore_index=True).head(top_n)
    workloads = workloads[["namespace", "workload", "team", "pods", "gpu_hours_idle",
                           "idle_cost", "gpu_hours_allocated", "idle_share"]]

    daily = _ratios(_sum_by(rows, ["day"]).sort_values("day", ignore_index=True))
    daily.insert(0, "date", [datetime.fromtimestamp(int(d) * 86400, UTC).date().isoformat()
                             for d in daily["day"]])
    daily = daily.drop(columns=["day"])

    warnings = [f"MIG profile with no slice count, charged as a whole GPU: {p}"
                for p in current.unknown_profiles]
    return FinopsTables(
        totals=totals_of(rows), teams=team_table, namespaces=ns_table, models=model_table,
        top_idle_workloads=workloads, daily=daily,
        previous_totals=totals_of(previous.rows) if previous is not None else None,
        warnings=warnings)
