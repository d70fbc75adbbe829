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
- a GPU time-sliced by four tenants (a quarter each), all week: an LLM server at 0.22 of
  the GPU on weekdays and 0.12 at the weekend, an embedding API at 0.15 in office hours
  and 0.05 otherwise, a notebook that runs nothing, a nightly evaluation at 0.2 from 02:00
  to 06:00 and nothing otherwise;
- a KAI Scheduler GPU: a LoRA tuning job with ``gpu-fraction: 0.5`` at 0.3 of the GPU on
  weekdays and nothing at the weekend, a notebook with ``gpu-memory`` of a quarter that
  runs only on Wednesday 14:00-16:00 (0.2); a quarter nobody holds;
- a HAMi GPU: a reranker with 30 % of the cores (a 0.3 share) at 0.24 of the GPU all week;
  the rest nobody holds;
- a free GPU nobody holds all week;
- gpu-node-2's agent is down on Saturday 02:00-04:00 of the report week: no data (a gap).

Shares are what the node agent would export for the simulated cluster
(``agent.node.shares`` over the simulated NVML and kubelet); ``util_mean``/``util_max``
are the holder's use of its share (the figures above are of the whole GPU, divided by the
share). Every hour a GPU reported, its holders' shares and its unallocated row add up to 1.
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
from agent.finops.series import SERIES_COLUMNS, UNALLOCATED_MODE, Gap
from agent.sim.nvml import SimulatedNvml
from agent.sim.pods import SimulatedPods, simulated_shares

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


def _llm_serve(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.22, 0.3) if weekday(hour) else HourUse(0.12, 0.2)


def _embed_api(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.15, 0.2) if office(hour) else HourUse(0.05, 0.1)


def _idle_tenant(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.0, 0.0)


def _nightly_eval(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.2, 0.25) if 2 <= hour % 24 < 6 else HourUse(0.0, 0.0)


def _lora(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.3, 0.4) if weekday(hour) else HourUse(0.0, 0.0)


def _kai_notebook(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.2, 0.3) if hour // 24 == 2 and 14 <= hour % 24 < 16 else HourUse(0.0, 0.0)


def _reranker(hour: int, this_week: bool) -> HourUse | None:
    return HourUse(0.24, 0.27)


# By the scenario the GPU runs in the demo's live cluster (agent.sim.scenarios); the
# tenants of shared GPUs by their workload. Figures are of the whole GPU.
PATTERNS: dict[str, Pattern] = {
    "training": _training, "idle_allocated": _notebook, "bursty": _inference_api,
    "thermal_throttling": _inference_server, "xid_storm": _crash_loop,
    "ecc_errors": _evaluation, "lost": _lost, "mig": _mig,
}
TENANT_PATTERNS: dict[str, Pattern] = {
    "llm-serve": _llm_serve, "embed-api": _embed_api, "jupyter-carol": _idle_tenant,
    "eval-nightly": _nightly_eval, "tune-lora": _lora, "jupyter-dave": _kai_notebook,
    "rerank-hami": _reranker,
}


@dataclass(frozen=True)
class Holder:
    """One pod's share of one GPU unit, or a GPU's unallocated rest (``pod`` ``""``)."""

    hostname: str
    uuid: str
    gpu_i_id: str
    profile: str
    namespace: str
    pod: str
    mode: str
    share: float
    pattern: Pattern | None  # None: the GPU's unallocated rest


def holders(hostname: str, scenarios: list[str], *, seed: int = 0,
            model: str = "NVIDIA H100 80GB HBM3") -> list[Holder]:
    """Who holds what share of which GPU (unit) on a simulated node, as its node agent
    would export it, and one unallocated holder per physical GPU."""
    lib = SimulatedNvml(scenarios, hostname=hostname, seed=seed, model_name=model)
    scenario_of = {uuid: scenario for uuid, scenario, _ in lib.gpus()}
    found: list[Holder] = []
    for share in simulated_shares(lib, SimulatedPods(lib, hostname)):
        ident = share.identity
        workload = share.pod.rsplit("-", 1)[0]
        pattern = TENANT_PATTERNS.get(workload) or PATTERNS[scenario_of[ident.uuid]]
        found.append(Holder(hostname, ident.uuid, str(ident.gpu_instance_id or ""),
                            ident.gpu_instance_profile or "", share.namespace, share.pod,
                            share.mode, share.ratio,
                            pattern))
    found += [Holder(hostname, uuid, "", "", "", "", UNALLOCATED_MODE, 0.0, None)
              for uuid, _, _ in lib.gpus()]
    return found


def _rows(gpu_holders: list[Holder], start: datetime, *, this_week: bool,
          model: str) -> Iterator[dict[str, object]]:
    """One GPU's rows: its holders' shares and use, and its unallocated rest."""
    down_host, down_hours = AGENT_DOWN
    tenants = [h for h in gpu_holders if h.pattern is not None]
    free = next(h for h in gpu_holders if h.pattern is None)
    for hour in range(HOURS):
        if this_week and free.hostname == down_host and hour in down_hours:
            continue
        ts = (start + timedelta(hours=hour)).timestamp()
        held = 0.0
        for holder in tenants:
            assert holder.pattern is not None
            use = holder.pattern(hour, this_week)
            if use is None:
                continue
            held += holder.share
            # A tenant's figures are of the whole GPU; a pod holding the whole GPU (or a
            # replica of a workload whose pattern is the GPU's) uses its share at that rate.
            scale = holder.share if holder.pod.rsplit("-", 1)[0] in TENANT_PATTERNS else 1.0
            yield _row(holder, ts, model, holder.share, mean=use.mean / scale,
                       peak=use.peak / scale)
        if 1.0 - held > 1e-9:
            yield _row(free, ts, model, 1.0 - held, mean=math.nan, peak=math.nan)


def _row(holder: Holder, ts: float, model: str, share: float, *, mean: float,
         peak: float) -> dict[str, object]:
    return {"ts": ts, "hostname": holder.hostname, "uuid": holder.uuid,
            "gpu_i_id": holder.gpu_i_id, "profile": holder.profile, "model": model,
            "namespace": holder.namespace, "pod": holder.pod, "container": "",
            "mode": holder.mode, "share": share, "util_mean": mean, "util_max": peak}


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
    by_gpu: dict[tuple[str, str], list[Holder]] = {}
    for holder in everyone:
        by_gpu.setdefault((holder.hostname, holder.uuid), []).append(holder)

    def frames() -> Iterator[pd.DataFrame]:
        for week_start, this_week in ((previous, False), (start, True)):
            rows = [row for gpu_holders in by_gpu.values()
                    for row in _rows(gpu_holders, week_start, this_week=this_week, model=model)]
            yield pd.DataFrame(rows, columns=list(SERIES_COLUMNS))

    down_host, down_hours = AGENT_DOWN
    gaps = [Gap(kind="node_agent_down", scope=down_host,
                start=start + timedelta(hours=down_hours.start),
                end=start + timedelta(hours=down_hours.stop), hours=float(len(down_hours)))] \
        if any(h.hostname == down_host for h in everyone) else []
    write_series(path, frames(), step_seconds=3600, start=previous, end=end, gaps=gaps,
                 source="steward demo: a simulated week (agent/sim/finops_week.py)")
    return path
