"""The hourly series the report reads, whatever their source: columns, gaps, the source protocol.

One row is one step (``finops.step``, 1 h by default) of one pod holding a share of one
GPU or MIG instance, or of what nobody held of one physical GPU:

- ``ts``: start of the step, epoch seconds (the step covers ``[ts, ts + step)``);
- ``hostname``, ``uuid``, ``gpu_i_id`` (``""`` for a whole GPU), ``profile`` (MIG profile,
  ``""`` for a whole GPU), ``model``: the GPU (or MIG instance);
- ``namespace``, ``pod``: who held it (``container`` is kept for older exports, ``""``);
  both ``""`` on the GPU's **unallocated** row: the part of the step nobody held;
- ``mode``: how the share was given (exclusive, mig, time_sliced, fraction, mps; ``""`` on
  the unallocated row);
- ``share``: the part of the physical GPU held over the step, 0-1
  (``steward_gpu_pod_allocated_ratio`` averaged over the step: a MIG ``3g.40gb`` held all
  step is 3/7, a KAI ``gpu-fraction: 0.25`` a quarter). A GPU's rows, its unallocated row
  included, add up to 1 for every step it reported, so charges reconcile with its cost;
- ``util_mean``, ``util_max``: the holder's own use of its share over the step (used ÷
  held: 0.5 = half of what it holds; above 1 when a tenant of a time-sliced GPU borrows
  time its neighbours leave idle); NaN where it is not measured (MIG instances, a GPU that
  did not answer, a shared GPU whose per-process use could not be attributed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import pandas as pd

from agent.durations import parse_duration

LABEL_COLUMNS = ("hostname", "uuid", "gpu_i_id", "profile", "model", "namespace", "pod",
                 "container", "mode")
VALUE_COLUMNS = ("share", "util_mean", "util_max")
SERIES_COLUMNS = ("ts", *LABEL_COLUMNS, *VALUE_COLUMNS)

UNALLOCATED_MODE = ""  # the mode of a GPU's unallocated row (namespace and pod "" too)
MODES = ("exclusive", "mig", "time_sliced", "fraction", "mps")
SHARED_MODES = frozenset({"mig", "time_sliced", "fraction", "mps"})
GapKind = Literal["no_data", "node_agent_down", "utilization_unavailable"]


class FinopsInputError(Exception):
    """Input a user can fix (bad step, week, price table, file): one line, exit code 2."""


def parse_step(text: str) -> int:
    """``1h``, ``15m``, ``1h30m`` -> seconds. The step must divide a day (chunks are days)."""
    try:
        exact = parse_duration(text)
    except ValueError:
        raise FinopsInputError(f"finops.step: {text!r} is not a duration like 1h or 15m") \
            from None
    seconds = int(exact)
    if seconds != exact or seconds < 60 or 86400 % seconds:
        raise FinopsInputError(
            f"finops.step: {text!r} must be at least 1m and divide 24h evenly (1h, 30m, 5m)")
    return seconds


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Gap:
    """Data the report could not see: a time range, what was missing, and how much.

    ``hours`` is wall-clock hours for ``no_data``, hours of that node agent's scrapes that
    failed for ``node_agent_down``, and GPU-hours for ``utilization_unavailable``.
    """

    kind: GapKind
    scope: str
    start: datetime
    end: datetime
    hours: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "start": iso(self.start),
                "end": iso(self.end), "hours": round(self.hours, 6)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gap:
        return cls(kind=data["kind"], scope=str(data["scope"]),
                   start=datetime.fromisoformat(data["start"]),
                   end=datetime.fromisoformat(data["end"]), hours=float(data["hours"]))


class SeriesSource(Protocol):
    """Where the hourly series come from: Prometheus (or Thanos, Mimir) or a Parquet file."""

    @property
    def step_seconds(self) -> int: ...

    def describe(self) -> str:
        """Where the data came from, for logs and the report footer."""
        ...

    def batches(self, start: datetime, end: datetime, *,
                columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """Frames for the steps starting in ``[start, end)``, with at least ``ts`` and
        ``columns`` (default: all of :data:`SERIES_COLUMNS`)."""
        ...

    def gaps(self, start: datetime, end: datetime) -> list[Gap]:
        """Time ranges in ``[start, end)`` without data: Prometheus or a node agent down."""
        ...


def merge_step_gaps(steps: list[int], *, kind: GapKind, scope: str, step_seconds: int,
                    missing: list[float] | None = None) -> list[Gap]:
    """Consecutive step starts (epoch seconds) -> one gap per run; ``missing`` is the share
    of each step that was missing (1.0 when not given)."""
    gaps: list[Gap] = []
    if not steps:
        return gaps
    order = sorted(range(len(steps)), key=steps.__getitem__)
    run_start = prev = steps[order[0]]
    hours = 0.0
    for position, index in enumerate(order):
        ts = steps[index]
        if position and ts != prev + step_seconds:
            gaps.append(_gap(kind, scope, run_start, prev + step_seconds, hours))
            run_start, hours = ts, 0.0
        hours += (missing[index] if missing is not None else 1.0) * step_seconds / 3600
        prev = ts
    gaps.append(_gap(kind, scope, run_start, prev + step_seconds, hours))
    return gaps


def _gap(kind: GapKind, scope: str, start: int, end: int, hours: float) -> Gap:
    return Gap(kind=kind, scope=scope, start=datetime.fromtimestamp(start, UTC),
               end=datetime.fromtimestamp(end, UTC), hours=hours)
