"""PromQL for the report and the Prometheus source: chunked range queries through the one
Prometheus client (``agent.clients.prometheus``).

Prometheus reduces raw samples to one value per pod and GPU (or per GPU) per step, so what
comes back grows with GPUs x hours whatever the scrape interval, and the same queries run
against Thanos or Mimir through the same API. Within a step:

- a pod's share is the sum of its ``steward_gpu_pod_allocated_ratio`` samples over the
  number of scrapes of the GPU unit (``steward_gpu_info``): its share, averaged over the
  step, absent scrapes counting 0 (a pod that arrived mid-step held it for part of it);
- a GPU's unallocated share is 1 minus its pods' shares, for every step the physical GPU
  reported: the pods' shares plus it are exactly the GPU's hours;
- a pod's use of its share is the mean (and the peak) of its
  ``steward_gpu_pod_utilization_ratio`` over the mean (and the peak) of its share.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from agent.clients.prometheus import MAX_POINTS, PrometheusClient
from agent.finops.series import (
    LABEL_COLUMNS,
    SERIES_COLUMNS,
    FinopsInputError,
    Gap,
    merge_step_gaps,
)

NODE_JOB = "steward-node"
DEFAULT_CHUNK = timedelta(days=1)
_UNIT = "hostname, UUID, GPU_I_ID"
_TENANT = "hostname, UUID, GPU_I_ID, namespace, pod"
_HOLDER = "hostname, UUID, GPU_I_ID, GPU_I_PROFILE, modelName, namespace, pod, mode"
# Prometheus label -> series column
HOLDER_LABELS: Mapping[str, str] = {
    "hostname": "hostname", "uuid": "UUID", "gpu_i_id": "GPU_I_ID",
    "profile": "GPU_I_PROFILE", "model": "modelName", "namespace": "namespace", "pod": "pod",
    "mode": "mode",
}
_TENANT_LABELS: Mapping[str, str] = {"hostname": "hostname", "uuid": "UUID",
                                     "gpu_i_id": "GPU_I_ID", "namespace": "namespace",
                                     "pod": "pod"}
_GPU_LABELS: Mapping[str, str] = {"hostname": "hostname", "uuid": "UUID", "model": "modelName"}
_KEYS = ["ts", "hostname", "uuid", "gpu_i_id", "namespace", "pod"]


def allocation_share_query(*, selector: str, window: str) -> str:
    """Per pod and GPU unit: its share of the physical GPU over the step (module doc)."""
    return (
        f"clamp_max(\n"
        f"  max by ({_HOLDER}) (sum_over_time("
        f"steward_gpu_pod_allocated_ratio{{{selector}}}[{window}]))\n"
        f"  / on ({_UNIT}) group_left ()\n"
        f"  max by ({_UNIT}) (count_over_time(steward_gpu_info{{{selector}}}[{window}])),\n"
        f"  1)"
    )


def unallocated_query(*, selector: str, window: str) -> str:
    """Per physical GPU that reported in the step: the part of it no pod held."""
    present = (f"clamp_max(max by (hostname, UUID, modelName) (count_over_time("
               f"steward_gpu_info{{{selector}, GPU_I_ID=\"\"}}[{window}])), 1)")
    held = f"sum by (hostname, UUID) ({allocation_share_query(selector=selector, window=window)})"
    # group_left keeps the GPU's labels (modelName): a plain on() keeps only hostname, UUID.
    return (f"clamp_min({present}\n- on (hostname, UUID) group_left ()\n{held}, 0)\n"
            f"or {present}")


def utilization_query(function: str, *, selector: str, window: str) -> str:
    """``avg`` or ``max`` of each pod's use of its share over the step (module doc)."""
    return (f"max by ({_TENANT}) ({function}_over_time("
            f"steward_gpu_pod_utilization_ratio{{{selector}}}[{window}]))\n"
            f"/ on ({_TENANT})\n"
            f"max by ({_TENANT}) ({function}_over_time("
            f"steward_gpu_pod_allocated_ratio{{{selector}}}[{window}]) > 0)")


def scrape_health_query(*, selector: str, window: str) -> str:
    """Per node agent target: the share of its scrapes in the step that succeeded."""
    return f"min by (instance) (avg_over_time(up{{{selector}}}[{window}]))"


def matrix_frame(result: Sequence[Mapping[str, Any]], labels: Mapping[str, str], value: str,
                 *, shift: int) -> pd.DataFrame:
    """A matrix result -> one row per (series, point): ``ts`` (the point minus ``shift``,
    i.e. the start of its step), one column per label, and ``value``."""
    lengths = np.fromiter((len(series["values"]) for series in result), dtype=np.int64,
                          count=len(result))
    total = int(lengths.sum())
    ts = np.fromiter((point[0] for series in result for point in series["values"]),
                     dtype=np.float64, count=total)
    values = np.fromiter((float(point[1]) for series in result for point in series["values"]),
                         dtype=np.float64, count=total)
    owner = np.repeat(np.arange(len(result)), lengths)
    columns: dict[str, Any] = {"ts": np.rint(ts).astype(np.int64) - shift}
    for column, label in labels.items():
        per_series = np.array([series["metric"].get(label, "") for series in result],
                              dtype=object)
        columns[column] = per_series[owner] if total else np.array([], dtype=object)
    columns[value] = values
    return pd.DataFrame(columns)


def chunks(start: datetime, end: datetime, *, step: int,
           chunk: timedelta = DEFAULT_CHUNK) -> Iterator[tuple[int, int]]:
    """``[start, end)`` as step-aligned chunks of at most ``chunk`` (epoch seconds)."""
    size = max(step, int(chunk.total_seconds()) // step * step)
    size = min(size, (MAX_POINTS - 1) * step)
    first, last = int(start.timestamp()), int(end.timestamp())
    for lo in range(first, last, size):
        yield lo, min(lo + size, last)


@dataclass(frozen=True)
class RecordedSeries:
    """Names of the hourly recording rules (``agent.finops.recording``) that record the
    four reductions below, each over one hour, for the default selector."""

    share: str
    unallocated: str
    use_mean: str
    use_peak: str
    step_seconds: int = 3600


class PrometheusSource:
    """The hourly series from Prometheus (or Thanos, Mimir): one batch per chunk (a day).

    With ``recorded``, a chunk every step of which the recording rules cover is read from
    the recorded series instead of reduced from raw samples (``agent.finops.recording``)."""

    def __init__(self, client: PrometheusClient, *, step_seconds: int,
                 selector: str = f'job="{NODE_JOB}"', chunk: timedelta = DEFAULT_CHUNK,
                 recorded: RecordedSeries | None = None) -> None:
        self.client = client
        self._step = step_seconds
        self.selector = selector
        self.chunk = chunk
        self._recorded = recorded if recorded is not None \
            and recorded.step_seconds == step_seconds else None
        self.chunks_read = {"recorded": 0, "raw": 0}

    @property
    def step_seconds(self) -> int:
        return self._step

    def describe(self) -> str:
        text = f"Prometheus {self.client.url} ({{{self.selector}}}, step {self._step}s)"
        if self.chunks_read["recorded"]:
            total = sum(self.chunks_read.values())
            text += (f", hourly recording rules for {self.chunks_read['recorded']} of "
                     f"{total} chunks")
        return text

    def _recorded_covers(self, lo: int, hi: int) -> bool:
        """Whether every step of ``(lo, hi]`` has a recorded hour (one cheap query)."""
        if self._recorded is None:
            return False
        probe = f"count({recorded_step(self._recorded.unallocated, self._step)})"
        result = self._range(probe, lo, hi)
        return bool(result) and len(result[0]["values"]) == (hi - lo) // self._step

    def _range(self, query: str, lo: int, hi: int) -> list[dict[str, Any]]:
        # A point at t covers (t - step, t]: the first point of the chunk is lo + step.
        return self.client.query_range(query, start=lo + self._step, end=hi, step=self._step)

    def batches(self, start: datetime, end: datetime, *,
                columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """One frame per chunk with every column (``columns`` is only a lower bound)."""
        _check_aligned(start, end, self._step)
        window = f"{self._step}s"
        share_q = allocation_share_query(selector=self.selector, window=window)
        free_q = unallocated_query(selector=self.selector, window=window)
        mean_q = utilization_query("avg", selector=self.selector, window=window)
        peak_q = utilization_query("max", selector=self.selector, window=window)
        raw = (share_q, free_q, mean_q, peak_q)
        recorded = raw if self._recorded is None else tuple(
            recorded_step(name, self._step) for name in (
                self._recorded.share, self._recorded.unallocated, self._recorded.use_mean,
                self._recorded.use_peak))
        for lo, hi in chunks(start, end, step=self._step, chunk=self.chunk):
            use_recorded = self._recorded_covers(lo, hi)
            self.chunks_read["recorded" if use_recorded else "raw"] += 1
            share_q, free_q, mean_q, peak_q = recorded if use_recorded else raw
            shares = matrix_frame(self._range(share_q, lo, hi), HOLDER_LABELS, "share",
                                  shift=self._step)
            free = matrix_frame(self._range(free_q, lo, hi), _GPU_LABELS, "share",
                                shift=self._step)
            if shares.empty and free.empty:
                continue
            mean = matrix_frame(self._range(mean_q, lo, hi), _TENANT_LABELS, "util_mean",
                                shift=self._step)
            peak = matrix_frame(self._range(peak_q, lo, hi), _TENANT_LABELS, "util_max",
                                shift=self._step)
            yield join_utilization(shares, mean, peak, unallocated=free)

    def gaps(self, start: datetime, end: datetime) -> list[Gap]:
        _check_aligned(start, end, self._step)
        query = scrape_health_query(selector=self.selector, window=f"{self._step}s")
        seen: set[int] = set()
        down: dict[str, tuple[list[int], list[float]]] = {}
        for lo, hi in chunks(start, end, step=self._step, chunk=self.chunk):
            health = matrix_frame(self._range(query, lo, hi), {"instance": "instance"}, "up",
                                  shift=self._step)
            seen.update(int(ts) for ts in health["ts"].unique())
            failing = health[health["up"] < 1]
            for instance, rows in failing.groupby("instance", sort=True):
                steps, missing = down.setdefault(str(instance), ([], []))
                steps.extend(int(ts) for ts in rows["ts"])
                missing.extend(float(1 - up) for up in rows["up"])
        first, last = int(start.timestamp()), int(end.timestamp())
        empty = [ts for ts in range(first, last, self._step) if ts not in seen]
        gaps = merge_step_gaps(empty, kind="no_data", scope="fleet", step_seconds=self._step)
        for instance, (steps, missing) in sorted(down.items()):
            gaps.extend(merge_step_gaps(steps, kind="node_agent_down", scope=instance,
                                        step_seconds=self._step, missing=missing))
        return gaps


def recorded_step(name: str, step: int) -> str:
    """The recorded hour that answers for the step ending at the query time ``t``: the rules
    record at evaluation ``e`` the step ending at the last boundary strictly before ``e``
    (``agent.finops.recording``), so the step ending at ``t`` is the one evaluation in
    ``(t, t + step]``. The range is written 1 ms short so that ranges closed at both ends
    (before Prometheus 3) cannot take an evaluation exactly at ``t`` (the step before); left-
    open ranges (Prometheus 3) then miss only an evaluation exactly 1 ms after ``t``, whose
    chunk is reduced from raw samples: a missing hour, never a wrong one."""
    return f"last_over_time({name}[{step * 1000 - 1}ms] offset -{step}s)"


def join_utilization(shares: pd.DataFrame, mean: pd.DataFrame, peak: pd.DataFrame, *,
                     unallocated: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pod shares + their use + the GPUs' unallocated rows -> :data:`SERIES_COLUMNS`,
    labels categorical. MIG instances get no use: NVML has none per instance."""
    use = mean.merge(peak, on=_KEYS, how="outer")
    frame = shares.merge(use, on=_KEYS, how="left")
    mig = (frame["gpu_i_id"] != "").to_numpy()
    if mig.any():
        frame.loc[mig, ["util_mean", "util_max"]] = np.nan
    frame["container"] = ""
    parts = [frame]
    if unallocated is not None and not unallocated.empty:
        free = unallocated[unallocated["share"] > 0].copy()
        for column in ("gpu_i_id", "profile", "namespace", "pod", "container", "mode"):
            free[column] = ""
        free["util_mean"] = free["util_max"] = np.nan
        parts.append(free)
    whole = pd.concat([p[list(SERIES_COLUMNS)] for p in parts], ignore_index=True) \
        if len(parts) > 1 else frame[list(SERIES_COLUMNS)]
    for column in LABEL_COLUMNS:
        whole[column] = whole[column].astype("category")
    return whole


def _check_aligned(start: datetime, end: datetime, step: int) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if int(start.timestamp()) % step or int(end.timestamp()) % step:
        raise FinopsInputError(
            f"the report range {start.astimezone(UTC):%Y-%m-%d %H:%M} to "
            f"{end.astimezone(UTC):%Y-%m-%d %H:%M} is not aligned to the step ({step}s)")
