"""A synthetic fortnight of node agent series whose report numbers are known in closed form.

Report week 2026-W45 (hours 0-168 from Monday 2026-11-02 00:00 UTC) and the week before
(hours -168-0). Samples every 15 minutes at hh:07:30, hh:22:30, ... so that no sample sits on
a step boundary. The expected numbers in ``test_report.py`` are worked out by hand from the
story below, not by the code under test.

- node-a (10.0.0.1:9400), two H100s ($4/GPU-h):
  a0 held all fortnight by ml-train/trainer-0, utilization 0.8.
  a1 this week: ml-infer/chat-7d9fbc6d58-x2x4z for hours 0-72 at 0.005 (idle), nothing for
  72-95.5, ml-infer/chat-7d9fbc6d58-q7k9p from 95:30 on at 0.5 (so hour 95: half held, mean
  0.25, peak 0.5). Free and at 0 in the previous week.
- node-b (10.0.0.2:9400), two A100s ($2/GPU-h):
  b0 in MIG mode, no utilization: GI 1 (3g.40gb) held by research/nb-alice all week, GI 2
  (2g.20gb) by research/nb-bob for hours 0-100.
  b1 time-sliced all fortnight between ml-infer/embed-0 and shared-tools/tool-0 (half each),
  at 0.3: 0.15 each.
- node-c (10.0.0.3:9400), one H100: c0 held all week by scratch/debug-shell at 0.0. Its agent
  is down (up 0, no GPU samples) from hour 100 to 105:30.
- Prometheus itself has nothing at all for hours 150-152.

Each holder exports what the node agent does: ``steward_gpu_allocation`` (per container),
``steward_gpu_pod_allocated_ratio`` (its share and mode) and, but on MIG,
``steward_gpu_pod_utilization_ratio`` (its own use: the GPU's when it holds it whole).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

WEEK = "2026-W45"
T0 = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # the report runs two weeks later
FIRST_HOUR, LAST_HOUR = -168, 168
SAMPLE_EVERY, SAMPLE_OFFSET = 900, 450
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PRICES = {H100: 4.0, A100: 2.0}
JOB = "steward-node"
NODES = {"node-a": "10.0.0.1:9400", "node-b": "10.0.0.2:9400", "node-c": "10.0.0.3:9400"}
NAMESPACE_TEAMS = {"ml-train": "training", "scratch": "platform"}
# Namespace labels in the (stand-in) Kubernetes API; ml-train's label loses to the config.
NAMESPACE_LABELS = {
    "ml-train": {"team": "not-this-one"},
    "ml-infer": {"team": "inference"},
    "research": {"team": "research", "cost-center": "42"},
    "shared-tools": {"owner": "nobody"},
}

Value = Callable[[float], float | None]  # hour (may be fractional) -> value, None = absent


@dataclass(frozen=True)
class Series:
    name: str
    labels: dict[str, str]
    value: Value


def prometheus_down(h: float) -> bool:
    return 150 <= h < 152


def node_down(host: str, h: float) -> bool:
    return host == "node-c" and 100 <= h < 105.5


def gpu_labels(host: str, index: int, uuid: str, model: str, *, gi: str | None = None,
               profile: str | None = None) -> dict[str, str]:
    labels = {"job": JOB, "instance": NODES[host], "hostname": host, "gpu": str(index),
              "UUID": uuid, "pci_bus_id": f"00000000:{18 + index:02X}:00.0",
              "device": f"nvidia{index}", "modelName": model}
    if gi is not None and profile is not None:
        labels |= {"GPU_I_ID": gi, "GPU_I_PROFILE": profile}
    return labels


def during(lo: float, hi: float, value: float) -> Value:
    return lambda h: value if lo <= h < hi else None


def always(value: float) -> Value:
    return lambda h: value


def a1_utilization(h: float) -> float:
    if 0 <= h < 72:
        return 0.005
    if h >= 95.5:
        return 0.5
    return 0.0


def fleet() -> list[Series]:
    series: list[Series] = []
    gpus = [
        ("node-a", 0, "GPU-a0", H100, None, None),
        ("node-a", 1, "GPU-a1", H100, None, None),
        ("node-b", 0, "GPU-b0", A100, None, None),
        ("node-b", 0, "GPU-b0", A100, "1", "3g.40gb"),
        ("node-b", 0, "GPU-b0", A100, "2", "2g.20gb"),
        ("node-b", 1, "GPU-b1", A100, None, None),
        ("node-c", 0, "GPU-c0", H100, None, None),
    ]
    for host, index, uuid, model, gi, profile in gpus:
        mig = "enabled" if uuid == "GPU-b0" else "disabled"
        labels = gpu_labels(host, index, uuid, model, gi=gi, profile=profile) | {
            "driver_version": "550.90.07", "mig_mode": mig}
        series.append(Series("steward_gpu_info", labels, always(1.0)))

    def util(host: str, index: int, uuid: str, model: str, value: Value) -> None:
        series.append(Series("steward_gpu_utilization_ratio",
                             gpu_labels(host, index, uuid, model), value))

    util("node-a", 0, "GPU-a0", H100, always(0.8))
    util("node-a", 1, "GPU-a1", H100, a1_utilization)
    util("node-b", 1, "GPU-b1", A100, always(0.3))
    util("node-c", 0, "GPU-c0", H100, always(0.0))

    def held(host: str, index: int, uuid: str, model: str, ns: str, pod: str, container: str,
             value: Value, *, gi: str | None = None, profile: str | None = None,
             ratio: float = 1.0, mode: str = "exclusive", use: Value | None = None) -> None:
        labels = gpu_labels(host, index, uuid, model, gi=gi, profile=profile) | {
            "namespace": ns, "pod": pod}
        series.append(Series("steward_gpu_allocation", labels | {"container": container},
                             value))
        series.append(Series("steward_gpu_pod_allocated_ratio", labels | {"mode": mode},
                             lambda h: None if value(h) is None else ratio))
        if use is not None:
            series.append(Series("steward_gpu_pod_utilization_ratio", labels,
                                 lambda h: None if value(h) is None else use(h)))

    held("node-a", 0, "GPU-a0", H100, "ml-train", "trainer-0", "main", always(1.0),
         use=always(0.8))
    held("node-a", 1, "GPU-a1", H100, "ml-infer", "chat-7d9fbc6d58-x2x4z", "server",
         during(0, 72, 1.0), use=a1_utilization)
    held("node-a", 1, "GPU-a1", H100, "ml-infer", "chat-7d9fbc6d58-q7k9p", "server",
         during(95.5, LAST_HOUR, 1.0), use=a1_utilization)
    held("node-b", 0, "GPU-b0", A100, "research", "nb-alice", "notebook", during(0, 168, 1.0),
         gi="1", profile="3g.40gb", ratio=3 / 7, mode="mig")
    held("node-b", 0, "GPU-b0", A100, "research", "nb-bob", "notebook", during(0, 100, 1.0),
         gi="2", profile="2g.20gb", ratio=2 / 7, mode="mig")
    held("node-b", 1, "GPU-b1", A100, "ml-infer", "embed-0", "c", always(1.0), ratio=0.5,
         mode="time_sliced", use=always(0.15))
    held("node-b", 1, "GPU-b1", A100, "shared-tools", "tool-0", "c", always(1.0), ratio=0.5,
         mode="time_sliced", use=always(0.15))
    held("node-c", 0, "GPU-c0", H100, "scratch", "debug-shell", "sh", during(0, 168, 1.0),
         use=always(0.0))
    for host, instance in NODES.items():
        series.append(Series("up", {"job": JOB, "instance": instance},
                             lambda h, host=host: 0.0 if node_down(host, h) else 1.0))
    return series


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def write_openmetrics(path: Path) -> int:
    """The fortnight as OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.
    Returns the number of samples."""
    times = range(T0 + FIRST_HOUR * 3600 + SAMPLE_OFFSET, T0 + LAST_HOUR * 3600, SAMPLE_EVERY)
    by_family: dict[str, list[Series]] = {}
    for item in fleet():
        by_family.setdefault(item.name, []).append(item)
    lines: list[str] = []
    samples = 0
    for name, members in by_family.items():
        lines.append(f"# TYPE {name} gauge")
        for item in members:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(item.labels.items()))
            host = item.labels.get("hostname") or next(
                h for h, i in NODES.items() if i == item.labels["instance"])
            for t in times:
                h = (t - T0) / 3600
                if prometheus_down(h):
                    continue
                if item.name != "up" and node_down(host, h):
                    continue
                value = item.value(h)
                if value is None:
                    continue
                lines.append(f"{name}{{{labels}}} {value!r} {t}")
                samples += 1
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return samples
