"""A simulated fortnight of the FinOps report's hourly series, for the demo's report.

The demo cannot wait a week for Prometheus to fill; this is the week its GPUs would have
had, shaped like a real one, and simple enough that a test checks every number of the
report against a closed form (``tests/finops/test_simulated_week.py``):

- training GPUs are held in office hours on weekdays (08:00-20:00 UTC, mean 0.65) and
  released at night and at the weekend, except for a training burst from Tuesday 00:00 to
  Friday 00:00 of the report week (mean 0.92, held around the clock);
- a notebook holds its GPU all week and uses it on Monday 09:00-12:00 only (0.35), idle the
  rest of the time;
- an inference API is held all week: busy in office hours (0.30), idle otherwise (0.004);
- the time-sliced inference server is busy on weekdays (0.85) and less at the weekend (0.45);
- the crash-looping fine-tune holds its GPU at 0.05 (peaks of 0.6: low, but not idle);
- the evaluation job runs on weekdays only (0.5);
- the GPU that is lost falls off the bus on Thursday 12:00 of the report week: its pod
  still holds it, with no utilization (unmeasured) from then on;
- MIG slices report no utilization (unmeasured) all the time;
- gpu-node-2's agent is down on Saturday 02:00-04:00 of the report week: no data (a gap).

The week before has no burst, no lost GPU and no gap, so the week-over-week change is the
burst. Hours are whole steps (the step is one hour); every value is constant in its hour.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from agent.finops.parquet import write_series
from agent.finops.series import SERIES_COLUMNS, Gap
from agent.sim.nvml import SimulatedNvml
from agent.sim.pods import SimulatedPods
from agent.sim.scenarios import MIG_LAYOUT

HOURS = 168
BURST = range(24, 96)  # Tuesday 00:00 to Friday 00:00 of the report week
LOST_AT = 84  # Thursday 12:00 of the report week
AGENT_DOWN = ("gpu-node-2", range(122, 124))  # Saturday 02:00-04:00 of the report week


@dataclass(frozen=True)
class HourUse:
    """One hour of one holder: the GPU's mean and peak utilization (NaN: not measured)."""

    mean: float
    peak: float


UNMEASURED = HourUse(math.nan, math.nan)
Pattern = Callable[[int, bool], HourUse | None]  # (hour of the week, report week?) -> use


def weekday(hour: int) -> bool:
    return hour // 24 < 5


def office(hour: int) -> bool:
    return weekday(hour) and 8 <= hour % 24 < 20


def _training(hour: int, this_week: bool) -> HourUse | None:
    if this_week and hour in BURST:
        return HourUse(0.92, 0.97)
    return HourUse(0.65, 0.9) if office(hour) else None


def _notebook(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.35, 0.8) if hour in (9, 10, 11) else HourUse(0.0, 0.0)


def _inference_api(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.30, 0.85) if office(hour) else HourUse(0.004, 0.008)


def _inference_server(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.85, 0.95) if weekday(hour) else HourUse(0.45, 0.7)


def _crash_loop(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.05, 0.6)


def _evaluation(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.5, 0.8) if weekday(hour) else None


def _lost(hour: int, this_week: bool) -> HourUse | None:
    return UNMEASURED if this_week and hour >= LOST_AT else HourUse(0.9, 0.95)


def _mig(hour: int, this_week: bool) -> HourUse | None:
    return UNMEASURED


# By the scenario the GPU runs in the demo's live cluster (agent.sim.scenarios).
PATTERNS: dict[str, Pattern] = {
    "training": _training, "idle_allocated": _notebook, "bursty": _inference_api,
    "thermal_throttling": _inference_server, "xid_storm": _crash_loop,
    "ecc_errors": _evaluation, "lost": _lost, "mig": _mig,
}


@dataclass(frozen=True)
class Holder:
    hostname: str
    uuid: str
    gpu_i_id: str
    profile: str
    namespace: str
    pod: str
    container: str
    share: float
    pattern: Pattern


def holders(hostname: str, scenarios: list[str], *, seed: int = 0,
            model: str = "NVIDIA H100 80GB HBM3") -> list[Holder]:
    """Who holds which GPU (unit) on a simulated node, as its simulated kubelet says."""
    lib = SimulatedNvml(scenarios, hostname=hostname, seed=seed, model_name=model)
    pods = SimulatedPods(lib, hostname)
    gpus = lib.gpus()
    per_unit: dict[str, int] = {}
    for entry in pods.list_devices():
        unit = entry.device_ids[0].split("::")[0]
        per_unit[unit] = per_unit.get(unit, 0) + 1
    found: list[Holder] = []
    for entry in pods.list_devices():
        unit = entry.device_ids[0].split("::")[0]
        index = next(i for i, (uuid, _, _) in enumerate(gpus)
                     if uuid == unit or unit in lib.mig_uuids(i))
        uuid, scenario, _ = gpus[index]
        slot = lib.mig_uuids(index).index(unit) if unit.startswith("MIG-") else None
        profile = lib.mig_profile(index, slot) if slot is not None else ""
        gi_id = str(MIG_LAYOUT[slot].gpu_instance_id) if slot is not None else ""
        found.append(Holder(hostname, uuid, gi_id, profile, entry.namespace, entry.pod,
                            entry.container, 1 / per_unit[unit], PATTERNS[scenario]))
    return found


def _rows(holder: Holder, start: datetime, *, this_week: bool,
          model: str) -> Iterator[dict[str, object]]:
    down_host, down_hours = AGENT_DOWN
    for hour in range(HOURS):
        if this_week and holder.hostname == down_host and hour in down_hours:
            continue
        use = holder.pattern(hour, this_week)
        if use is None:
            continue
        yield {"ts": (start + timedelta(hours=hour)).timestamp(), "hostname": holder.hostname,
               "uuid": holder.uuid, "gpu_i_id": holder.gpu_i_id, "profile": holder.profile,
               "model": model, "namespace": holder.namespace, "pod": holder.pod,
               "container": holder.container, "share": holder.share,
               "util_mean": use.mean, "util_max": use.peak}


def write_simulated_week(path: Path, *, start: datetime, end: datetime,
                         nodes: list[tuple[str, list[str]]], seed: int = 0,
                         model: str = "NVIDIA H100 80GB HBM3") -> Path:
    """The report's Parquet input for the week ``[start, end)`` and the week before it, for
    the simulated ``nodes`` (hostname, scenario per GPU)."""
    if end - start != timedelta(hours=HOURS):
        raise ValueError("the simulated week is one ISO week")
    previous = start - timedelta(hours=HOURS)
    everyone = [h for hostname, scenarios in nodes
                for h in holders(hostname, scenarios, seed=seed, model=model)]

    def frames() -> Iterator[pd.DataFrame]:
        for week_start, this_week in ((previous, False), (start, True)):
            rows = [row for h in everyone
                    for row in _rows(h, week_start, this_week=this_week, model=model)]
            yield pd.DataFrame(rows, columns=list(SERIES_COLUMNS))

    down_host, down_hours = AGENT_DOWN
    gaps = [Gap(kind="node_agent_down", scope=down_host,
                start=start + timedelta(hours=down_hours.start),
                end=start + timedelta(hours=down_hours.stop), hours=float(len(down_hours)))] \
        if any(h.hostname == down_host for h in everyone) else []
    write_series(path, frames(), step_seconds=3600, start=previous, end=end, gaps=gaps,
                 source="steward demo: a simulated week (agent/sim/finops_week.py)")
    return path
