"""A real Prometheus scrapes ``steward node --gpu-backend sim``; PromQL checks every family.

The simulated node runs the default scenarios (see agent/sim/scenarios.py):
0,1 training, 2 idle_allocated, 3 lost, 4 xid_storm, 5 ecc_errors, 6 thermal_throttling, 7 mig.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sim.scenarios import GIB
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus
from tests.support.steward import StewardProcess, start_node

pytestmark = pytest.mark.integration
HOST = "gpu-node-1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StewardProcess]:
    workdir: Path = tmp_path_factory.mktemp("node")
    process = start_node(workdir, env={"NODE_NAME": HOST}, config=(
        "node:\n  collect_interval_seconds: 0.5\n  sim: {lost_after_seconds: 3}\n"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def prom(node: StewardProcess) -> Iterator[Prometheus]:
    prometheus = start_prometheus([ScrapeJob("steward-node", [f"127.0.0.1:{node.port}"])])
    yield prometheus
    prometheus.stop()


def one(prom: Prometheus, expr: str, *, timeout: float = 20.0) -> float:
    """The single value of ``expr``, waiting until Prometheus has it."""
    result = prom.wait_for(expr, timeout=timeout)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_targets_and_labels(prom: Prometheus) -> None:
    result = prom.wait_for('steward_gpu_info{job="steward-node"}')
    # 8 GPUs plus 3 MIG instances on GPU 7
    prom.wait_for("count(steward_gpu_info) == 11")
    sample = next(r["metric"] for r in result if r["metric"]["gpu"] == "0"
                  and "GPU_I_ID" not in r["metric"])
    assert sample["hostname"] == HOST
    assert sample["device"] == "nvidia0"
    assert sample["UUID"].startswith("GPU-")
    assert sample["pci_bus_id"] == "00000000:18:00.0"
    assert sample["modelName"] == "NVIDIA H100 80GB HBM3"
    assert sample["driver_version"] == "550.90.07"
    assert sample["mig_mode"] == "disabled"
    assert one(prom, 'count(steward_gpu_info{gpu="7", mig_mode="enabled"})') == 4
    assert one(prom, 'steward_gpu_info{GPU_I_ID="5", GPU_I_PROFILE="2g.20gb"}') == 1


def test_utilization_memory_and_power(prom: Prometheus) -> None:
    assert one(prom, 'steward_gpu_utilization_ratio{gpu="2"}') == 0
    assert 0.88 <= one(prom, 'steward_gpu_utilization_ratio{gpu="0"}') <= 0.98
    assert one(prom, 'steward_gpu_memory_copy_utilization_ratio{gpu="2"}') == 0
    assert 0.45 <= one(prom, 'steward_gpu_memory_copy_utilization_ratio{gpu="1"}') <= 0.65
    # MIG-enabled GPU: NVML has no utilization for it, so no series rather than a fake 0
    assert prom.query('steward_gpu_utilization_ratio{gpu="7"}') == []
    assert one(prom, 'steward_gpu_memory_used_bytes{gpu="2"}') == int(1.25 * GIB)
    assert one(prom, 'steward_gpu_memory_total_bytes{gpu="0"}') == 80 * GIB
    assert one(prom, 'steward_gpu_memory_used_bytes{GPU_I_ID="1"}') == 30 * GIB
    assert one(prom, 'steward_gpu_memory_total_bytes{GPU_I_ID="13"}') == 10 * GIB
    assert one(prom, 'steward_gpu_power_watts{gpu="2"}') == 72
    assert one(prom, 'steward_gpu_power_limit_watts{gpu="0"}') == 700
    assert 86 <= one(prom, 'steward_gpu_temperature_celsius{gpu="6"}') <= 95
    assert one(prom, 'steward_gpu_sm_clock_hertz{gpu="2"}') == 345e6
    assert one(prom, 'steward_gpu_sm_clock_hertz{gpu="6"}') == 1100e6


def test_energy_counter_rate_is_the_power(prom: Prometheus) -> None:
    # An idle GPU draws a steady 72 W, so its energy counter grows at 72 J/s. The slope is
    # taken from the scraped samples: rate() over a series younger than its window divides
    # by the whole window and would read low.
    prom.wait_for('count_over_time(steward_gpu_energy_joules_total{gpu="2"}[10s]) >= 3')
    series = prom.query('steward_gpu_energy_joules_total{gpu="2"}[10s]')
    assert len(series) == 1
    (t0, v0), (t1, v1) = series[0]["values"][0], series[0]["values"][-1]
    assert (float(v1) - float(v0)) / (t1 - t0) == pytest.approx(72, rel=0.1)


def test_clock_events(prom: Prometheus) -> None:
    assert one(prom, 'steward_gpu_clock_event_active{gpu="6", reason="hw_thermal"}') == 1
    assert one(prom, 'steward_gpu_clock_event_active{gpu="6", reason="sw_thermal"}') == 1
    assert one(prom, 'steward_gpu_clock_event_active{gpu="2", reason="gpu_idle"}') == 1
    assert one(prom, 'steward_gpu_clock_event_active{gpu="0", reason="power_cap"}') == 0
    reasons = {r["metric"]["reason"] for r in prom.wait_for(
        'steward_gpu_clock_event_active{gpu="0"}')}
    assert reasons == {"gpu_idle", "clocks_setting", "power_cap", "hw_slowdown", "sync_boost",
                       "sw_thermal", "hw_thermal", "hw_power_brake", "display_clocks"}


def test_ecc_row_remap_and_xid(prom: Prometheus) -> None:
    # the ecc_errors scenario turns uncorrectable 10 s after start
    assert one(prom, 'steward_gpu_ecc_errors_total{gpu="5", type="uncorrected"} == 1',
               timeout=30) == 1
    assert one(prom, 'steward_gpu_ecc_errors_total{gpu="5", type="corrected"}') >= 40
    assert one(prom, 'steward_gpu_ecc_errors_total{gpu="0", type="uncorrected"}') == 0
    assert one(prom, 'steward_gpu_remapped_rows{gpu="5", state="failure"} == 1') == 1
    assert one(prom, 'steward_gpu_remapped_rows{gpu="5", state="correctable"}') == 3
    assert one(prom, 'steward_gpu_xid_errors_total{gpu="5", xid="48"}') == 1
    assert one(prom, 'steward_gpu_xid_errors_total{gpu="4", xid="13"} >= 2', timeout=30) >= 2
    last = one(prom, 'steward_gpu_xid_last_timestamp_seconds{gpu="4", xid="13"}')
    assert time.time() - 60 < last <= time.time()


def test_lost_gpu_reported_while_others_keep_reporting(prom: Prometheus) -> None:
    assert one(prom, 'steward_gpu_lost{gpu="3"} == 1', timeout=30) == 1
    assert one(prom, 'steward_gpu_up{gpu="3"}') == 0
    assert one(prom, 'steward_gpu_xid_errors_total{gpu="3", xid="79"}') == 1
    assert prom.query('steward_gpu_utilization_ratio{gpu="3"}') == []
    assert one(prom, 'count(steward_gpu_up{GPU_I_ID=""} == 1)') == 7
    assert one(prom, 'sum(steward_gpu_lost)') == 1


def test_self_monitoring(prom: Prometheus) -> None:
    assert one(prom, 'steward_collector_up{collector="gpu"}') == 1
    assert one(prom, 'steward_collector_up{collector="xid_events"}') == 1
    assert one(prom, 'steward_collector_duration_seconds{collector="gpu"}') < 0.5
    assert one(prom, 'steward_collector_errors_total{collector="gpu", error="gpu_lost"} > 0',
               timeout=30) > 0
