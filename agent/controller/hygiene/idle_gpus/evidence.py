"""The idle-GPU job's evidence: what Prometheus shows about each allocated GPU, and whether
it is complete enough to call the GPU idle.

``steward_gpu_allocation`` (GPU -> namespace/pod/container) is joined in Python on
(hostname, UUID) with each GPU's peak ``steward_gpu_utilization_ratio`` over window + grace.
A GPU whose peak is under the floor is then shown sample by sample: its raw utilization
samples and its allocation to the pod must cover the whole span, start, middle and end, with
no gap longer than ``GAP_TOLERANCE`` scrape intervals (``scrape_interval``); every sample
must be under the floor; the GPU must be up now (``steward_gpu_up``) and never reported lost
within the span (``steward_gpu_lost``). Each candidate's evidence carries that coverage
(samples seen of expected, largest gap, age of the last sample). ``max_over_time`` alone
cannot be trusted: it skips missing samples, so a GPU that fell off the bus looks idle.

On a shared GPU that is busy, a tenant is judged by its own use instead (``tenants``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from agent.clients.prometheus import PrometheusClient, PrometheusError, Sample, Series
from agent.config import IdleGpusConfig
from agent.controller.hygiene.idle_gpus.tenants import (
    TenantEvidence,
    sample_metrics,
    share_queries,
)
from agent.controller.hygiene.model import ScanFailed
from agent.durations import parse_duration

# The largest gap allowed between two samples of a GPU's evidence (and between the span's
# edges and the first and last sample), in scrape intervals: one missed scrape plus jitter
# passes, two missed scrapes in a row do not.
GAP_TOLERANCE: Final = 2.5
_UUIDS_PER_QUERY: Final = 100
# Raw-sample queries in flight at once (beside the instant ones still running): each is a
# few hundred series of the whole span.
_COVERAGE_CONCURRENCY: Final = 4


def _promql_duration(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def _span_text(seconds: float) -> str:
    """``2460`` -> ``41m``, ``5405`` -> ``1h30m5s``: a measured duration, to the second."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + \
        (f"{secs}s" if secs or not (hours or minutes) else "")
    return text


def _regex_literal(value: str) -> str:
    """``value`` matched literally inside a PromQL ``=~"..."`` (RE2, then string escapes)."""
    escaped = re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class Coverage:
    """How completely raw samples cover ``[end - span, end]`` at a scrape interval."""

    samples: int
    expected: int
    largest_gap: float  # seconds, the span's edges counted as samples
    gap_at: float | None  # end of the largest gap (unix seconds)
    first: float | None  # first and last sample (unix seconds)
    last: float | None
    end: float
    span: float

    @classmethod
    def of(cls, times: Iterable[float], *, end: float, span: float,
           interval: float) -> Coverage:
        points = sorted(set(times))
        start = end - span
        edges = [start, *points, end]
        gaps = [(b - a, b) for a, b in pairwise(edges)]
        largest, at = max(gaps) if gaps else (span, end)
        return cls(samples=len(points), expected=max(1, math.floor(span / interval)),
                   largest_gap=largest, gap_at=at, first=points[0] if points else None,
                   last=points[-1] if points else None, end=end, span=span)

    @property
    def last_age(self) -> float | None:
        return None if self.last is None else self.end - self.last

    def gap_text(self) -> str:
        """Where the largest gap is: at the start, inside, or at the end of the span."""
        size = _span_text(self.largest_gap)
        if self.last is None or self.first is None:
            return f"no sample in the last {_span_text(self.span)}"
        if self.gap_at is not None and self.gap_at >= self.end:
            return f"no sample since {_span_text(self.end - self.last)} ago"
        if self.gap_at is not None and self.gap_at <= self.first:
            return (f"samples begin only {_span_text(self.end - self.first)} ago, "
                    f"{size} into the {_span_text(self.span)} window")
        assert self.gap_at is not None
        return (f"a gap of {size} ending {_span_text(self.end - self.gap_at)} ago "
                f"({self.samples} of {self.expected} samples)")

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "expected": self.expected,
                "largest_gap_seconds": round(self.largest_gap, 3),
                "last_sample_age_seconds": None if self.last_age is None
                else round(self.last_age, 3)}


@dataclass(frozen=True)
class Allocation:
    namespace: str
    pod: str
    container: str
    hostname: str
    uuid: str
    gpu: str
    model: str
    mig_instance: str | None

    @property
    def gpu_key(self) -> tuple[str, str]:
        return (self.hostname, self.uuid)


@dataclass(frozen=True)
class Evidence:
    """The PromQL answers at ``at``, keyed by (hostname, UUID); raw samples only for the GPUs
    whose peak is under the floor (the only ones that can be judged idle)."""

    at: float
    allocations: list[Allocation]
    peak: dict[tuple[str, str], float]
    power: dict[tuple[str, str], float] | None
    up: dict[tuple[str, str], float]  # the newest steward_gpu_up, if recent
    lost: dict[tuple[str, str], float]  # steward_gpu_lost's peak over the span
    utilization: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    # (namespace, pod, hostname, UUID) -> times the allocation was seen
    allocated: dict[tuple[str, str, str, str], list[float]] = field(default_factory=dict)
    tenants: TenantEvidence = field(default_factory=TenantEvidence)  # shared GPUs


def _float_map(samples: Iterable[Sample], *, keep: Callable[[float, float], float] = max
               ) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for sample in samples:
        key = (sample.labels.get("hostname", ""), sample.labels.get("UUID", ""))
        out[key] = keep(out[key], sample.value) if key in out else sample.value
    return out


class IdleEvidence:
    """Reads the evidence at a moment and judges each pod's GPUs by it."""

    def __init__(self, settings: IdleGpusConfig, *, prometheus: PrometheusClient) -> None:
        self._settings = settings
        self._prometheus = prometheus
        self._window = parse_duration(settings.window)
        self._grace = parse_duration(settings.grace)
        self._interval = parse_duration(settings.scrape_interval)

    @property
    def span_seconds(self) -> float:
        """How far back the evidence looks: the window, plus the grace that covers lag."""
        return self._window + self._grace

    @property
    def max_gap(self) -> float:
        """The largest gap allowed in a GPU's samples (see ``GAP_TOLERANCE``)."""
        return GAP_TOLERANCE * self._interval

    def queries(self) -> dict[str, str]:
        """The instant PromQL every scan sends (the benchmark times these bare); the raw
        samples of the GPUs that look idle follow (``coverage_queries``)."""
        span = _promql_duration(self.span_seconds)
        recent = _promql_duration(self.max_gap)
        out = {
            "allocation": "steward_gpu_allocation == 1",
            "peak_utilization": "max by (hostname, UUID) "
                                f"(max_over_time(steward_gpu_utilization_ratio[{span}]))",
            "up": f"min by (hostname, UUID) (last_over_time(steward_gpu_up[{recent}]))",
            "lost": f"max by (hostname, UUID) (max_over_time(steward_gpu_lost[{span}]))",
        }
        if self._settings.power_idle_watts is not None:
            out["peak_power"] = ("max by (hostname, UUID) "
                                 f"(max_over_time(steward_gpu_power_watts[{span}]))")
        out.update(share_queries(span=span, recent=recent))
        return out

    def coverage_queries(self, uuids: Iterable[str]) -> list[str]:
        """Range selectors for the raw utilization and allocation samples of ``uuids``, a
        bounded number of GPUs per query."""
        span = _promql_duration(self.span_seconds)
        wanted = sorted(set(uuids))
        out = []
        for start in range(0, len(wanted), _UUIDS_PER_QUERY):
            chunk = "|".join(_regex_literal(u) for u in wanted[start:start + _UUIDS_PER_QUERY])
            for metric in ("steward_gpu_utilization_ratio", "steward_gpu_allocation",
                           *sample_metrics()):
                out.append(f'{metric}{{UUID=~"{chunk}"}}[{span}]')
        return out

    def read(self, at: float, *,
             looking_idle: Callable[[set[str]], None] | None = None,
             meanwhile: Callable[[Evidence, set[str]], None] | None = None) -> Evidence:
        """The evidence at ``at``; ScanFailed when Prometheus cannot give all of it.

        ``looking_idle`` is told the namespaces of the pods whose every GPU peaked under the
        floor, as soon as the instant answers show them and before their raw samples are
        read: the caller can start the Kubernetes reads those pods need meanwhile.
        ``meanwhile`` is then given the evidence of the instant answers and the UUIDs whose
        raw samples are still coming (the only ones those samples are about), while they
        are read: a pod with none of those GPUs can be judged already."""
        try:
            return self._read(at, looking_idle, meanwhile)
        except PrometheusError as exc:
            raise ScanFailed(str(exc)) from exc

    def _read(self, at: float, looking_idle: Callable[[set[str]], None] | None,
              meanwhile: Callable[[Evidence, set[str]], None] | None) -> Evidence:
        # Every instant query at once (Prometheus evaluates them in parallel); the raw samples
        # need only the allocations, the peaks and the shares, so they go as soon as those
        # are in.
        exprs = self.queries()
        with ThreadPoolExecutor(len(exprs) + _COVERAGE_CONCURRENCY,
                                thread_name_prefix="promql") as pool:
            futures = {name: pool.submit(self._prometheus.instant, expr, at=at)
                       for name, expr in exprs.items()}
            tenants = TenantEvidence.of({name: futures[name].result()
                                         for name in ("shares", "tenant_peak")})
            allocations = self._allocations(futures["allocation"].result(),
                                            futures["shares"].result())
            peak = _float_map(futures["peak_utilization"].result())
            floor = self._settings.utilization_floor
            low = {a.uuid for a in allocations
                   if a.mig_instance is None and (
                       peak.get(a.gpu_key, math.inf) < floor or tenants.looks_idle(
                           (a.namespace, a.pod, a.hostname, a.uuid), floor))}
            raw = [pool.submit(self._prometheus.samples, expr, at=at)
                   for expr in self.coverage_queries(low)]
            if looking_idle is not None:
                busy = {(a.namespace, a.pod) for a in allocations if a.uuid not in low}
                namespaces = {a.namespace for a in allocations
                              if a.uuid in low and (a.namespace, a.pod) not in busy}
                if namespaces:
                    looking_idle(namespaces)
            evidence = Evidence(
                at=at, allocations=allocations, peak=peak,
                power=_float_map(futures["peak_power"].result()) if "peak_power" in futures
                else None,
                up=_float_map(futures["up"].result(), keep=min),
                lost=_float_map(futures["lost"].result()),
                tenants=tenants)
            if meanwhile is not None:
                meanwhile(evidence, low)
            for future in raw:
                for series in future.result():
                    self._collect(series, evidence)
        return evidence

    @staticmethod
    def _allocations(samples: list[Sample], shares: list[Sample]) -> list[Allocation]:
        allocations: dict[tuple[str, ...], Allocation] = {}
        for sample in samples:
            labels = sample.labels
            allocation = Allocation(
                namespace=labels.get("namespace", ""), pod=labels.get("pod", ""),
                container=labels.get("container", ""), hostname=labels.get("hostname", ""),
                uuid=labels.get("UUID", ""), gpu=labels.get("gpu", ""),
                model=labels.get("modelName", ""), mig_instance=labels.get("GPU_I_ID") or None)
            if allocation.namespace and allocation.pod:
                key = (allocation.namespace, allocation.pod, allocation.container,
                       allocation.hostname, allocation.uuid, allocation.mig_instance or "")
                allocations[key] = allocation  # several scrape jobs: one allocation
        held = {(a.namespace, a.pod, a.hostname, a.uuid) for a in allocations.values()}
        for sample in shares:
            labels = sample.labels
            tenant = (labels.get("namespace", ""), labels.get("pod", ""),
                      labels.get("hostname", ""), labels.get("UUID", ""))
            if tenant in held or labels.get("GPU_I_ID") or not all(tenant):
                continue
            # A KAI fraction holds no device of its own: its share is its allocation.
            allocations[(*tenant, "", "")] = Allocation(
                namespace=tenant[0], pod=tenant[1], container="", hostname=tenant[2],
                uuid=tenant[3], gpu=labels.get("gpu", ""), model=labels.get("modelName", ""),
                mig_instance=None)
            held.add(tenant)
        return sorted(allocations.values(), key=lambda a: (a.namespace, a.pod, a.gpu))

    @staticmethod
    def _collect(series: Series, evidence: Evidence) -> None:
        """Raw samples into ``evidence``: several scrape jobs of one GPU merge into one
        series (a sample from either covers that moment)."""
        labels = series.labels
        key = (labels.get("hostname", ""), labels.get("UUID", ""))
        if labels.get("__name__") == "steward_gpu_pod_allocated_ratio" \
                and not labels.get("GPU_I_ID"):
            # A share is an allocation too (a KAI fraction has no other).
            owner = (labels.get("namespace", ""), labels.get("pod", ""), *key)
            evidence.allocated.setdefault(owner, []).extend(
                t for t, v in series.points if v > 0)
        if evidence.tenants.collect(series):
            return
        if labels.get("__name__") == "steward_gpu_allocation":
            if labels.get("GPU_I_ID"):
                return
            owner = (labels.get("namespace", ""), labels.get("pod", ""), *key)
            evidence.allocated.setdefault(owner, []).extend(
                t for t, v in series.points if v == 1)
        else:
            evidence.utilization.setdefault(key, []).extend(series.points)

    def judge(self, allocations: list[Allocation], evidence: Evidence
                    ) -> tuple[str | None, float, float | None, list[dict[str, Any]]]:
        """(why the pod is not idle or None, peak utilization, peak power, coverage)."""
        floor = self._settings.utilization_floor
        window = self._settings.window
        peak, power = 0.0, None
        coverage: list[dict[str, Any]] = []
        for allocation in allocations:
            where = f"GPU {allocation.uuid} on {allocation.hostname}"
            if allocation.mig_instance is not None:
                return (f"MIG instance {allocation.mig_instance} of {where}: NVML reports no "
                        "per-instance utilization, so idleness cannot be judged"), 0.0, None, []
            key = allocation.gpu_key
            if key not in evidence.peak:
                return (f"evidence incomplete: no utilization samples of {where} within "
                        f"{window} plus grace {self._settings.grace}"), 0.0, None, []
            if evidence.tenants.shared(key) and evidence.peak[key] >= floor:
                why = self._judge_tenant(allocation, where, evidence)
                if isinstance(why, str):
                    return why, peak, None, []
                peak = max(peak, why["peak_use_of_share"])
                coverage.append(why)
                continue
            peak = max(peak, evidence.peak[key])
            if evidence.peak[key] >= floor:
                return (f"in use: peak utilization {evidence.peak[key]:.1%} of {where} within "
                        f"{window} is at or above the floor {floor:.1%}"), peak, None, []
            why = self._incomplete(allocation, where, evidence)
            if isinstance(why, str):
                return f"evidence incomplete: {why}", peak, None, []
            coverage.append(why)
            if evidence.power is not None and self._settings.power_idle_watts is not None:
                watts = evidence.power.get(key)
                if watts is None or watts > self._settings.power_idle_watts:
                    shown = "unknown" if watts is None else f"{watts:.0f} W"
                    return (f"power draw of {where} peaked at {shown}, above the idle "
                            f"{self._settings.power_idle_watts:g} W"), peak, None, []
                power = max(power or 0.0, watts)
        return None, peak, power, coverage

    def _judge_tenant(self, allocation: Allocation, where: str, evidence: Evidence
                      ) -> str | dict[str, Any]:
        """A tenant of a busy shared GPU, by its own use (``tenants``); the GPU must be up
        and never lost within the span, as for a whole GPU."""
        lost = evidence.lost.get(allocation.gpu_key)
        up = evidence.up.get(allocation.gpu_key)
        if lost is None or lost > 0 or up is None or up < 1:
            state = "never reported" if lost is None or up is None else "lost or not up"
            return f"evidence incomplete: {where} was {state} within the span"
        limit = f"at most {_span_text(self.max_gap)} allowed at the " \
                f"{self._settings.scrape_interval} scrape interval"
        judged = evidence.tenants.judge(
            (allocation.namespace, allocation.pod, *allocation.gpu_key),
            floor=self._settings.utilization_floor, where=where, max_gap=self.max_gap,
            covers=lambda times: Coverage.of(times, end=evidence.at, span=self.span_seconds,
                                             interval=self._interval),
            limit=limit)
        if isinstance(judged, dict):
            judged = {"hostname": allocation.hostname, "UUID": allocation.uuid, **judged}
        return judged

    def _incomplete(self, allocation: Allocation, where: str, evidence: Evidence
                    ) -> str | dict[str, Any]:
        """What is missing from the evidence that ``allocation``'s GPU was idle for the whole
        span, or its coverage when nothing is."""
        key = allocation.gpu_key
        limit = f"at most {_span_text(self.max_gap)} allowed at the " \
                f"{self._settings.scrape_interval} scrape interval"
        lost = evidence.lost.get(key)
        if lost is None:
            return f"no steward_gpu_lost series for {where}"
        if lost > 0:
            return (f"{where} was reported lost (steward_gpu_lost=1) within the last "
                    f"{_span_text(self.span_seconds)}")
        up = evidence.up.get(key)
        if up is None:
            return f"no steward_gpu_up sample for {where} in the last {_span_text(self.max_gap)}"
        if up < 1:
            return f"{where} is not up (steward_gpu_up={up:g})"
        points = evidence.utilization.get(key, [])
        utilization = Coverage.of((t for t, _ in points), end=evidence.at,
                                  span=self.span_seconds, interval=self._interval)
        if utilization.largest_gap > self.max_gap:
            return f"utilization of {where}: {utilization.gap_text()} ({limit})"
        floor = self._settings.utilization_floor
        over = [v for _, v in points if v >= floor]
        if over:  # the peak query and the raw samples disagree: a sample arrived late
            return f"utilization of {where} reached {max(over):.1%} in its raw samples"
        owner = (allocation.namespace, allocation.pod, *key)
        allocated = Coverage.of(evidence.allocated.get(owner, []), end=evidence.at,
                                span=self.span_seconds, interval=self._interval)
        if allocated.largest_gap > self.max_gap:
            return (f"allocation of {where} to {allocation.namespace}/{allocation.pod}: "
                    f"{allocated.gap_text()} ({limit})")
        return {"hostname": allocation.hostname, "UUID": allocation.uuid,
                "utilization": utilization.to_json(), "allocation": allocated.to_json()}
