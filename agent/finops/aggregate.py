"""pandas: the hourly series -> GPU-hours and cost per team, namespace, GPU model, workload, day,
and per shared GPU, tenant by tenant.

Two stages. :func:`reduce_batch` folds each batch of step rows into sums per (day,
namespace, pod, GPU model, MIG profile) as it arrives, so memory stays bounded by one
batch whatever the week's size (:func:`reduce_gpu_batch` the same per GPU and tenant, for
the week). :func:`build_tables` prices those sums and shapes them.

Per step row (``share`` of the physical GPU a pod held over the step, ``step`` in hours):
allocated = share x step; used = allocated x the pod's mean use of its share; idle =
allocated when the pod's peak use of its share stayed under ``finops.idle_floor`` (a pod
holding half a GPU at 0 % is idle for its half); allocated time with no use measured (MIG
instances, GPUs that did not answer, shares whose use could not be attributed) is
``unmeasured``: neither used nor idle. GPU-hours are whole-GPU hours (a ``3g.40gb`` slice
hour is 3/7 of one). Utilization is used / allocated, unmeasured hours included in the
denominator. The GPUs' unallocated rows (namespace and pod ``""``) are kept apart: what
nobody held, so that allocated + unallocated is every GPU's hours.
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

from agent.finops.pricing import PriceTable
from agent.finops.series import SeriesSource
from agent.finops.shares import shared_gpu_table
from agent.finops.teams import UNASSIGNED

KEYS = ("namespace", "pod", "model", "profile")
GPU_KEYS = ("hostname", "uuid", "model", "namespace", "pod", "mode")
REDUCE_COLUMNS = ("ts", *dict.fromkeys((*KEYS, *GPU_KEYS)), "share", "util_mean", "util_max")
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


def _step_parts(frame: pd.DataFrame, *, idle_floor: float) -> dict[str, np.ndarray]:
    """Per row: allocated, used, idle and unmeasured GPU-steps (see the module doc)."""
    share = frame["share"].to_numpy(dtype=np.float64)
    mean = frame["util_mean"].to_numpy(dtype=np.float64)
    peak = frame["util_max"].to_numpy(dtype=np.float64)
    measured = ~np.isnan(mean)
    return {
        "alloc_h": share,
        "used_h": share * np.where(measured, mean, 0.0),
        # NaN < floor is False: an unmeasured step is never idle.
        "idle_h": np.where(peak < idle_floor, share, 0.0),
        "unmeasured_h": np.where(measured, 0.0, share),
    }


def reduce_batch(frame: pd.DataFrame, *, step_seconds: int, idle_floor: float) -> pd.DataFrame:
    """Step rows -> sums of GPU-hours per (day, namespace, pod, model, profile).

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
    parts = _step_parts(frame, idle_floor=idle_floor)
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


def reduce_gpu_batch(frame: pd.DataFrame, *, step_seconds: int,
                     idle_floor: float) -> pd.DataFrame:
    """Step rows -> sums of GPU-hours per (hostname, uuid, model, namespace, pod, mode)."""
    if len(frame) == 0:
        return pd.DataFrame({**{k: pd.Series([], dtype=object) for k in GPU_KEYS},
                             **{m: pd.Series([], dtype=np.float64) for m in STEP_SUMS}})
    hours = step_seconds / 3600
    parts = pd.DataFrame({k: frame[k] for k in GPU_KEYS})
    for name, values in _step_parts(frame, idle_floor=idle_floor).items():
        parts[name] = values * hours
    return parts.groupby(list(GPU_KEYS), observed=True, sort=False,
                         as_index=False)[list(STEP_SUMS)].sum()


def combine_usage(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate reduced batches (different categories each) and sum them again."""
    frames = [part for part in parts if len(part)]
    if not frames:
        return empty_usage()
    whole = pd.concat([_plain(part) for part in frames], ignore_index=True)
    return (whole.groupby(["day", *KEYS], sort=True, as_index=False)[list(STEP_SUMS)].sum())


def _plain(part: pd.DataFrame, keys: tuple[str, ...] = KEYS) -> pd.DataFrame:
    out = part.copy()
    for key in keys:
        out[key] = out[key].astype(str)
    return out


@dataclass(frozen=True)
class WeekUsage:
    usage: pd.DataFrame  # per day and pod (reduce_batch)
    gpus: pd.DataFrame | None  # per GPU and tenant over the range (reduce_gpu_batch)


def aggregate_usage(source: SeriesSource, start: datetime, end: datetime, *,
                    idle_floor: float, threads: int | None = None) -> pd.DataFrame:
    """Read ``[start, end)`` from ``source`` and reduce it per day and pod."""
    return aggregate_week(source, start, end, idle_floor=idle_floor, threads=threads,
                          per_gpu=False).usage


def aggregate_week(source: SeriesSource, start: datetime, end: datetime, *,
                   idle_floor: float, threads: int | None = None,
                   per_gpu: bool = True) -> WeekUsage:
    """Read ``[start, end)`` from ``source`` batch by batch and reduce it (per GPU and
    tenant too with ``per_gpu``).

    Batches are reduced on a few threads (numpy releases the GIL), at most two per thread in
    flight, so memory stays bounded however long the range.
    """
    step = source.step_seconds
    workers = threads or min(8, os.cpu_count() or 1)
    parts: list[pd.DataFrame] = []
    gpu_parts: list[pd.DataFrame] = []

    def reduce(batch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        by_day = reduce_batch(batch, step_seconds=step, idle_floor=idle_floor)
        by_gpu = reduce_gpu_batch(batch, step_seconds=step, idle_floor=idle_floor) \
            if per_gpu else None
        return by_day, by_gpu

    def keep(done: tuple[pd.DataFrame, pd.DataFrame | None]) -> None:
        parts.append(done[0])
        if done[1] is not None:
            gpu_parts.append(done[1])

    with ThreadPoolExecutor(workers, thread_name_prefix="finops-reduce") as pool:
        pending: deque[Future[tuple[pd.DataFrame, pd.DataFrame | None]]] = deque()
        columns = REDUCE_COLUMNS if per_gpu else ("ts", *KEYS, "share", "util_mean",
                                                  "util_max")
        for batch in source.batches(start, end, columns=columns):
            pending.append(pool.submit(reduce, batch))
            if len(pending) >= 2 * workers:
                keep(pending.popleft().result())
        for future in pending:
            keep(future.result())
    return WeekUsage(combine_usage(parts), _combine_gpus(gpu_parts) if per_gpu else None)


def _combine_gpus(parts: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [p for p in parts if len(p)]
    if not frames:
        return reduce_gpu_batch(pd.DataFrame(), step_seconds=3600, idle_floor=0.0)
    whole = pd.concat([_plain(p, GPU_KEYS) for p in frames], ignore_index=True)
    return whole.groupby(list(GPU_KEYS), sort=True, as_index=False)[list(STEP_SUMS)].sum()


@dataclass(frozen=True)
class PricedUsage:
    rows: pd.DataFrame  # usage + price and every column of METRICS
    unpriced_models: tuple[str, ...] = ()  # left out of the cost (``strict=False`` only)
    gpus: pd.DataFrame | None = None  # per GPU and tenant, priced likewise


def price_usage(usage: pd.DataFrame, prices: PriceTable, *, strict: bool = True,
                gpus: pd.DataFrame | None = None) -> PricedUsage:
    """GPU-hours -> USD (shares are fractions of the physical GPU already).

    Raises MissingPriceError for a model without a price (unallocated GPUs included: their
    hours cost too); with ``strict=False`` (the previous week, whose models may since have
    left the price table) its cost is 0 and the model is listed in ``unpriced_models``.
    """
    rows = _priced(usage, prices)
    allocated = rows.groupby("model")["gpu_hours_allocated"].sum()
    if strict:
        prices.check({str(model): float(hours) for model, hours in allocated.items()})
    table = prices.usd_per_gpu_hour
    unpriced = tuple(sorted(str(m) for m in allocated.index if str(m) not in table))
    return PricedUsage(rows=rows, unpriced_models=unpriced,
                       gpus=_priced(gpus, prices) if gpus is not None else None)


def _priced(usage: pd.DataFrame, prices: PriceTable) -> pd.DataFrame:
    rows = usage.copy()
    for metric, step_sum in zip(METRICS[:4], STEP_SUMS, strict=True):
        rows[metric] = rows[step_sum].astype(np.float64)
    table = prices.usd_per_gpu_hour
    rows["price"] = rows["model"].map(lambda m: float(table.get(str(m), 0.0))) \
        .astype(np.float64)
    rows["cost"] = rows["gpu_hours_allocated"] * rows["price"]
    rows["idle_cost"] = rows["gpu_hours_idle"] * rows["price"]
    rows["unmeasured_cost"] = rows["gpu_hours_unmeasured"] * rows["price"]
    return rows


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
    # Per shared GPU and tenant (agent.finops.shares); empty when not computed.
    shared_gpus: pd.DataFrame = field(default_factory=pd.DataFrame)


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
    """Totals of the allocated rows, and of the GPUs' unallocated rows beside them:
    allocated + unallocated = capacity, every GPU's hours (and cost) in the range."""
    free = unallocated_rows(rows)
    held = rows[~free]
    totals = {metric: float(held[metric].sum()) if len(held) else 0.0 for metric in METRICS}
    unallocated = rows[free]
    totals["gpu_hours_unallocated"] = float(unallocated["gpu_hours_allocated"].sum())
    totals["unallocated_cost"] = float(unallocated["cost"].sum())
    totals["gpu_hours_capacity"] = totals["gpu_hours_allocated"] + totals["gpu_hours_unallocated"]
    totals["capacity_cost"] = totals["cost"] + totals["unallocated_cost"]
    return totals


def unallocated_rows(rows: pd.DataFrame) -> np.ndarray:
    """Rows of what nobody held (namespace and pod ``""``)."""
    if rows.empty:
        return np.zeros(0, dtype=bool)
    free = (rows["namespace"].astype(str) == "") & (rows["pod"].astype(str) == "")
    return np.asarray(free.to_numpy(), dtype=bool)


def build_tables(current: PricedUsage, previous: PricedUsage | None, *,
                 teams: Mapping[str, str], top_n: int = 10) -> FinopsTables:
    """Price-weighted tables for the week, with the previous week's cost where known."""
    totals = totals_of(current.rows)
    rows = current.rows[~unallocated_rows(current.rows)].copy()
    rows["team"] = rows["namespace"].map(lambda ns: teams.get(str(ns), UNASSIGNED))
    rows["workload"] = rows["pod"].map(lambda pod: workload_of(str(pod)))

    prev_team_cost: pd.Series = pd.Series(dtype=float)
    prev_ns_cost: pd.Series = pd.Series(dtype=float)
    if previous is not None:
        prev = previous.rows[~unallocated_rows(previous.rows)].copy()
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

    shared = shared_gpu_table(current.gpus, teams=teams) if current.gpus is not None \
        else pd.DataFrame()
    return FinopsTables(
        totals=totals, teams=team_table, namespaces=ns_table, models=model_table,
        top_idle_workloads=workloads, daily=daily,
        previous_totals=totals_of(previous.rows) if previous is not None else None,
        shared_gpus=shared)
