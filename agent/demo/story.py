"""What the demo simulates, when each fault happens, and the alert each fault must raise.

The demo prints this before it starts, watches for exactly these alerts, and says which of
the catalog's alerts no simulated fault can raise (Steward's own health: they need a broken
Steward, and their promtool tests in ``alerts/tests/`` cover them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.alerts.catalog import CATALOG

NODES: Final[tuple[tuple[str, list[str]], ...]] = (
    ("gpu-node-1", ["training", "training", "idle_allocated", "lost", "xid_storm",
                    "ecc_errors", "thermal_throttling", "mig"]),
    ("gpu-node-2", ["training", "training", "time_sliced", "bursty", "idle_allocated",
                    "kai_fraction", "idle_free", "hami"]),
)
# Seconds after a node agent starts. Late enough that Prometheus has scraped the GPUs
# healthy first: GpuXidCritical tells a new XID from one it saw at start-up only then.
ECC_AFTER_SECONDS: Final = 20.0
LOST_AFTER_SECONDS: Final = 25.0
# Seconds after the controller starts: a pipeline run fails while Steward watches.
PIPELINE_FAILS_AFTER_SECONDS: Final = 15.0

SCENARIO_TEXT: Final[dict[str, str]] = {
    "training": "training, busy",
    "idle_allocated": "allocated to a notebook, idle",
    "idle_free": "free, idle",
    "bursty": "inference, 30 s busy every 5 minutes",
    "lost": f"falls off the bus at {LOST_AFTER_SECONDS:g} s (XID 79); its job's team is "
            "told in its own channel",
    "xid_storm": "XIDs 13, 31, 43 every few seconds; its pod crash-loops",
    "ecc_errors": f"uncorrectable ECC error at {ECC_AFTER_SECONDS:g} s (XID 48), "
                  "row remap failure",
    "thermal_throttling": "91 °C, thermal clock events; two time-sliced inference "
                          "replicas, one OOM-killed",
    "mig": "MIG mode, three slices (the 1g.10gb one 97% full)",
    "time_sliced": "time-sliced by four tenants, a quarter each (an LLM server at 45% of the "
                   "GPU, an API at 20%, a notebook idle, an evaluation at 5%)",
    "kai_fraction": "KAI Scheduler fractions behind a reservation pod: a LoRA job with 0.5 "
                    "at 30%, a notebook with a quarter (gpu-memory) idle, a quarter free",
    "hami": "HAMi: a reranker with 30% of the cores and 24 GiB, at 25%; the rest free",
}


@dataclass(frozen=True)
class Fault:
    what: str
    alert: str


FAULTS: Final[tuple[Fault, ...]] = (
    Fault("gpu-node-1 GPU 3 falls off the bus", "GpuLost"),
    Fault("XID 79 (GPU lost) and XID 48 (double-bit ECC): reset, reboot or RMA", "GpuXidCritical"),
    Fault("gpu-node-1 GPU 4: application XIDs 13, 31, 43 repeating", "GpuXidErrors"),
    Fault("gpu-node-1 GPU 5: an uncorrectable ECC error", "GpuEccUncorrectable"),
    Fault("gpu-node-1 GPU 5: a memory row could not be remapped", "GpuRowRemapFailure"),
    Fault("gpu-node-1 GPU 6 at 91 °C", "GpuTemperatureHigh"),
    Fault("gpu-node-1 GPU 6: thermal clock events", "GpuThermalThrottling"),
    Fault("gpu-node-1 GPU 7: the 1g.10gb MIG slice is 97% full", "GpuMemoryNearlyFull"),
    Fault("notebooks and an inference server holding GPUs they do not use", "GpuIdleAllocated"),
    Fault("ml-research/finetune-crashloop in CrashLoopBackOff", "PodCrashLooping"),
    Fault("an inference replica OOM-killed", "PodOomKilled"),
    Fault("ml-research/train-gpt-xl-0 pending for 45 minutes", "GpuPodPendingTooLong"),
    Fault(f"a feature-refresh run fails {PIPELINE_FAILS_AFTER_SECONDS:g} s in",
          "PipelineRunFailed"),
    Fault("nightly-etl last succeeded 30 hours ago", "PipelineStale"),
    Fault("train-sweep has been running for 7 hours", "PipelineRunTooLong"),
)
EXPECTED_ALERTS: Final[tuple[str, ...]] = tuple(dict.fromkeys(f.alert for f in FAULTS))
NOT_SIMULATED: Final[tuple[str, ...]] = tuple(
    alert.name for alert in CATALOG if alert.name not in EXPECTED_ALERTS)
