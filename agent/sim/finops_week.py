"""A simulated week of the FinOps report's hourly series, from the same scenarios the
simulated GPUs run, written as the report's Parquet input. The demo cannot wait a week
for Prometheus to fill; this is the week those GPUs would have had.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd

from agent.finops.parquet import write_series
from agent.finops.series import SERIES_COLUMNS
from agent.sim.nvml import SimulatedNvml
from agent.sim.pods import SimulatedPods
from agent.sim.scenarios import SCENARIOS, ScenarioContext

SAMPLES_PER_HOUR = 12  # one every 5 minutes, as a 5 m scrape would see


def _rows(hostname: str, scenarios: list[str], start: datetime, hours: int, *,
          seed: int) -> Iterator[dict[str, object]]:
    # The lost GPU falls off the bus half-way through the week.
    lost_after = hours * 3600 / 2
    lib = SimulatedNvml(scenarios, hostname=hostname, seed=seed, lost_after_seconds=lost_after)
    pods = SimulatedPods(lib, hostname)
    gpus = lib.gpus()
    holders: dict[str, int] = {}
    for entry in pods.list_devices():
        for device in entry.device_ids:
            holders[device.split("::")[0]] = holders.get(device.split("::")[0], 0) + 1
    for entry in pods.list_devices():
        device = entry.device_ids[0].split("::")[0]
        index = next((i for i, (uuid, _, _) in enumerate(gpus)
                      if uuid == device or device in lib.mig_uuids(i)), None)
        if index is None:
            continue
        uuid, name, _ = gpus[index]
        scenario = SCENARIOS[name]
        ctx = ScenarioContext(memory_total_bytes=80 * 1024**3, power_limit_watts=700,
                              phase=(seed * 7 + index * 1.3) % (2 * math.pi),
                              lost_after_seconds=lost_after)
        mig_slot = lib.mig_uuids(index).index(device) if device.startswith("MIG-") else None
        profile = lib.mig_profile(index, mig_slot) if mig_slot is not None else ""
        gi_id = str(scenario.state(0, ctx).mig[mig_slot].gpu_instance_id) \
            if mig_slot is not None else ""
        for hour in range(hours):
            samples = [scenario.state(hour * 3600 + k * 3600 / SAMPLES_PER_HOUR, ctx)
                       for k in range(SAMPLES_PER_HOUR)]
            if any(s.lost for s in samples):
                break  # a lost GPU has no data: the report shows a gap, not zero cost
            utils = [s.utilization for s in samples]
            yield {"ts": start.timestamp() + hour * 3600, "hostname": hostname, "uuid": uuid,
                   "gpu_i_id": gi_id, "profile": profile, "model": lib.model_name,
                   "namespace": entry.namespace, "pod": entry.pod,
                   "container": entry.container, "share": 1 / holders[device],
                   "util_mean": math.nan if profile else sum(utils) / len(utils),
                   "util_max": math.nan if profile else max(utils)}


def write_simulated_week(path: Path, *, start: datetime, end: datetime,
                         nodes: list[tuple[str, list[str]]], seed: int = 0) -> Path:
    """The report's Parquet input for ``[start, end)`` and the week before it, for the
    simulated ``nodes`` (hostname, scenario per GPU)."""
    previous = start - (end - start)
    hours = int((end - previous).total_seconds() // 3600)

    def frames() -> Iterator[pd.DataFrame]:
        for hostname, scenarios in nodes:
            rows = list(_rows(hostname, scenarios, previous, hours, seed=seed))
            yield pd.DataFrame(rows, columns=list(SERIES_COLUMNS))

    write_series(path, frames(), step_seconds=3600, start=previous, end=end, gaps=[],
                 source="steward demo: simulated cluster")
    return path
