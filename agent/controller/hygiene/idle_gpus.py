"""The idle-GPU job: GPUs allocated to a pod whose utilization stayed under a noise floor for
the whole window are reclaimed from the workload that holds them.

Evidence comes from Prometheus, and is complete or the pod is skipped ("evidence
incomplete: ..."): unknown is never idle. ``steward_gpu_allocation`` (GPU -> namespace/pod/
container) is joined in Python on (hostname, UUID) with each GPU's peak
``steward_gpu_utilization_ratio`` over window + grace. A GPU whose peak is under the floor is
then shown sample by sample: its raw utilization samples and its allocation to the pod must
cover the whole span, start, middle and end, with no gap longer than ``GAP_TOLERANCE``
scrape intervals (``scrape_interval``); every sample must be under the floor; the GPU must
be up now (``steward_gpu_up``) and never reported lost within the span
(``steward_gpu_lost``). Each candidate's evidence carries that coverage (samples seen of
expected, largest gap, age of the last sample). ``max_over_time`` alone cannot be trusted:
it skips missing samples, so a GPU that fell off the bus looks idle.

Pods younger than window + grace, MIG instances (NVML has no per-instance utilization),
exempt objects and workloads with a replica that is not idle are skipped, each with the
guard that held. On a shared GPU that is busy, a tenant is judged by its own use instead,
and only notified (:mod:`agent.controller.hygiene.gpu_tenants`).

Per-workload policy (``hygiene.idle_gpus``): notebooks (``notebook_labels`` on the pod or an
owner) -> ``notebook_action`` on their Deployment/StatefulSet; Deployments, StatefulSets and
bare ReplicaSets -> ``workload_action``; Jobs -> ``job_action`` (notify); bare pods ->
``pod_action`` (notify, or delete with the manifest kept to recreate it). A Kubeflow
``Notebook`` owner is only notified: its controller would undo a scale-down.

Nothing but replicas, through the ``/scale`` subresource, is ever written to a workload, and
nothing is written to a pod but its deletion: marks live in the engine's state store and are
announced with Events, the replica count to restore lives in the restore record.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from agent.config import IdleGpusConfig
from agent.controller.hygiene.gpu_tenants import (
    RESERVATION_REASON,
    SHARED_NOTE,
    TenantEvidence,
    is_reservation_pod,
    sample_metrics,
    share_queries,
)
from agent.controller.hygiene.guards import exempt_flag
from agent.controller.hygiene.model import (
    Candidate,
    Observed,
    ResourceReplaced,
    RestoreNotReady,
    Scan,
    ScanFailed,
    Skipped,
)
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.controller.hygiene.promql import PromQL, Sample, Series
from agent.controller.hygiene.registry import JobContext, JobUnavailable
from agent.controller.hygiene.workloads import (
    KINDS,
    SCALABLE,
    ClusterSnapshot,
    Conflict,
    JsonObj,
    KubeWorkloads,
    ObjectRef,
    Replaced,
    meta,
)
from agent.kube import timestamp

JOB_NAME: Final = "idle-gpus"
# On a pod a restore recreated: which restore did it, so a restore that died after the
# create and is tried again knows the pod for its own.
RESTORED_FROM: Final = "steward.io/restored-from"
GPU_RESOURCE_PREFIX: Final = "nvidia.com/"
# The largest gap allowed between two samples of a GPU's evidence (and between the span's
# edges and the first and last sample), in scrape intervals: one missed scrape plus jitter
# passes, two missed scrapes in a row do not.
GAP_TOLERANCE: Final = 2.5
_UUIDS_PER_QUERY: Final = 100
_CONFLICT_RETRIES: Final = 4
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                        "y": 31536000}
_OWNER_LABELS: Final = ("team", "owner")


def parse_duration(text: str) -> float:
    """A PromQL duration (``2h``, ``1h30m``, ``90s``) in seconds."""
    stripped = text.strip()
    if not stripped or _DURATION_RE.sub("", stripped):
        raise ValueError(f"{text!r} is not a duration like 2h, 90m or 1h30m")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(stripped)))


def _promql_duration(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


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


@dataclass
class _IdlePod:
    namespace: str
    name: str
    allocations: list[Allocation]
    peak: float
    power: float | None
    gpus: float  # GPUs this pod would free (a shared GPU counts a share)
    coverage: list[dict[str, Any]] = field(default_factory=list)
    obj: JsonObj | None = None
    age: float = 0.0
    own_use: bool = False  # judged by its own use on a busy shared GPU: notify only


@dataclass
class _Target:
    ref: ObjectRef | None  # None: the bare pod itself
    workload: str  # notebook, deployment, statefulset, replicaset, job, pod, other
    action: str
    note: str = ""
    obj: JsonObj | None = None
    pods: list[_IdlePod] = field(default_factory=list)


def _float_map(samples: Iterable[Sample], *, keep: Callable[[float, float], float] = max
               ) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for sample in samples:
        key = (sample.labels.get("hostname", ""), sample.labels.get("UUID", ""))
        out[key] = keep(out[key], sample.value) if key in out else sample.value
    return out


def requests_gpus(pod: JsonObj) -> bool:
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            if any(str(k).startswith(GPU_RESOURCE_PREFIX) for k in resources.get(section) or {}):
                return True
    return False


class IdleGpusJob:
    name = JOB_NAME
    unit = "gpus"

    def __init__(self, settings: IdleGpusConfig, *, prometheus: PromQL,
                 workloads: KubeWorkloads, clock: Callable[[], float] = time.time,
                 progress: Progress | None = None, recheck_max_age: float = 120.0) -> None:
        self._settings = settings
        self._prometheus = prometheus
        self._workloads = workloads
        self._clock = clock
        self._progress = progress or NoProgress()
        self._window = parse_duration(settings.window)
        self._grace = parse_duration(settings.grace)
        self._interval = parse_duration(settings.scrape_interval)
        self._recheck_max_age = recheck_max_age
        self._last_scan: tuple[float, Scan] | None = None

    # -- evidence ------------------------------------------------------------------------

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

    def evidence(self, at: float) -> Evidence:
        answers = {name: self._prometheus.instant(expr, at=at)
                   for name, expr in self.queries().items()}
        allocations: dict[tuple[str, ...], Allocation] = {}
        for sample in answers["allocation"]:
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
        peak = _float_map(answers["peak_utilization"])
        tenants = TenantEvidence.of(answers)
        held = {(a.namespace, a.pod, a.hostname, a.uuid) for a in allocations.values()}
        for sample in answers["shares"]:
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
        evidence = Evidence(
            at=at,
            allocations=sorted(allocations.values(), key=lambda a: (a.namespace, a.pod, a.gpu)),
            peak=peak, power=_float_map(answers["peak_power"]) if "peak_power" in answers
            else None,
            up=_float_map(answers["up"], keep=min), lost=_float_map(answers["lost"]),
            tenants=tenants)
        floor = self._settings.utilization_floor
        looking_idle = {a.uuid for a in evidence.allocations
                        if a.mig_instance is None and (
                            peak.get(a.gpu_key, math.inf) < floor or tenants.looks_idle(
                                (a.namespace, a.pod, a.hostname, a.uuid), floor))}
        for expr in self.coverage_queries(looking_idle):
            for series in self._prometheus.samples(expr, at=at):
                self._collect(series, evidence)
        return evidence

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

    # -- scan ----------------------------------------------------------------------------

    def scan(self) -> Scan:
        now = self._clock()
        scan = self._decide(self.evidence(now), now)
        self._last_scan = (now, scan)
        return scan

    def _judge_gpus(self, allocations: list[Allocation], evidence: Evidence
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
        """A tenant of a busy shared GPU, by its own use (gpu_tenants); the GPU must be up
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

    def _decide(self, evidence: Evidence, now: float) -> Scan:
        skipped: list[Skipped] = []
        by_pod: dict[tuple[str, str], list[Allocation]] = defaultdict(list)
        sharers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
        for allocation in evidence.allocations:
            by_pod[(allocation.namespace, allocation.pod)].append(allocation)
            if allocation.mig_instance is None:
                sharers[allocation.gpu_key].add((allocation.namespace, allocation.pod))
        idle: dict[tuple[str, str], _IdlePod] = {}
        for (namespace, pod), allocations in sorted(by_pod.items()):
            if is_reservation_pod(namespace, pod):
                skipped.append(Skipped(f"{namespace}/{pod}", RESERVATION_REASON))
                continue
            why, peak, power, coverage = self._judge_gpus(allocations, evidence)
            if why is not None:
                skipped.append(Skipped(f"{namespace}/{pod}", why))
                continue
            # What it would free: its share, where the node agent says (1/holders before).
            gpus = sum(evidence.tenants.share((namespace, pod, *a.gpu_key))
                       or 1.0 / max(1, len(sharers[a.gpu_key])) for a in allocations)
            idle[(namespace, pod)] = _IdlePod(
                namespace, pod, allocations, peak, power, gpus, coverage,
                own_use=any(c.get("judged_by") == "own use" for c in coverage))
        if not idle:
            return Scan(candidates=[], skipped=skipped)
        try:
            return self._decide_workloads(idle, skipped, by_pod, now)
        except ScanFailed:
            raise
        except Exception as exc:  # the API is down or refuses: decide nothing
            raise ScanFailed(f"Kubernetes API: {type(exc).__name__}: {exc}") from exc

    def _decide_workloads(self, idle: dict[tuple[str, str], _IdlePod], skipped: list[Skipped],
                          by_pod: dict[tuple[str, str], list[Allocation]], now: float) -> Scan:
        snapshot = ClusterSnapshot(self._workloads)
        snapshot.prefetch(namespace for namespace, _ in idle)
        targets: dict[tuple[str, ...], _Target] = {}
        accepted: set[tuple[str, str]] = set()
        self._progress.start(len(idle), "idle GPU pods checked in the Kubernetes API")
        try:
            for (namespace, name), pod in idle.items():
                self._progress.advance()
                resource = f"{namespace}/{name}"
                why = self._admit(pod, snapshot, now)
                if why is not None:
                    skipped.append(Skipped(resource, why))
                    continue
                assert pod.obj is not None
                target = self._target(pod.obj, snapshot)
                if isinstance(target, str):
                    skipped.append(Skipped(resource, target))
                    continue
                key = target.ref.as_tuple() if target.ref else ("Pod", namespace, name)
                targets.setdefault(key, target).pods.append(pod)
                accepted.add((namespace, name))
        finally:
            self._progress.finish()
        members: dict[str, dict[ObjectRef, list[str]]] = {}
        candidates = []
        for target in targets.values():
            blocker = self._busy_replica(target, snapshot, accepted, by_pod, members)
            if blocker is not None:
                for pod in target.pods:
                    skipped.append(Skipped(f"{pod.namespace}/{pod.name}", blocker))
                continue
            candidates.append(self._candidate(target, snapshot))
        return Scan(candidates=candidates, skipped=skipped)

    def _admit(self, pod: _IdlePod, snapshot: ClusterSnapshot, now: float) -> str | None:
        """Why this idle pod is left alone (gone, young, exempt), or None."""
        obj = snapshot.get("Pod", pod.namespace, pod.name)
        if obj is None:
            return "pod not found in the Kubernetes API (deleted since it was last scraped)"
        pod.obj = obj
        phase = str((obj.get("status") or {}).get("phase") or "Unknown")
        if phase != "Running":
            return f"pod is {phase}, not Running"
        created = timestamp(meta(obj).get("creationTimestamp"))
        pod.age = now - created if created is not None else 0.0
        if created is None or pod.age < self.span_seconds:
            return (f"younger than the window: created {_human(max(0.0, round(pod.age)))} ago, "
                    f"needs {self._settings.window} plus grace {self._settings.grace}")
        chain = snapshot.owner_chain(obj)
        namespace = snapshot.namespace(pod.namespace)
        for kind, holder in [("Pod", obj), *[(str(r.get("kind")), o) for r, o in chain],
                             ("Namespace", namespace)]:
            if holder is not None and exempt_flag(meta(holder).get("labels"),
                                                  meta(holder).get("annotations")):
                return f"exempt: steward.io/exempt=true on {kind} {meta(holder).get('name')}"
        return None

    def _is_notebook(self, objects: Iterable[JsonObj]) -> bool:
        wanted = self._settings.notebook_labels.items()
        return bool(wanted) and any(
            wanted <= (meta(o).get("labels") or {}).items() for o in objects)

    def _target(self, pod: JsonObj, snapshot: ClusterSnapshot) -> _Target | str:
        """What to act on for this pod, or why nothing can be."""
        settings = self._settings
        namespace = str(meta(pod).get("namespace"))
        chain = snapshot.owner_chain(pod)
        objects = [pod, *[o for _, o in chain if o is not None]]
        for ref, obj in chain:
            kind = str(ref.get("kind"))
            if kind == "Notebook":  # Kubeflow: its controller owns the StatefulSet's replicas
                ref_obj = ObjectRef(str(ref.get("apiVersion")), kind, namespace,
                                    str(ref.get("name")))
                return _Target(ref_obj, "notebook", "notify",
                               note="a Kubeflow Notebook: stop it from Kubeflow")
            if obj is None and kind in KINDS:
                return f"its owner {kind} {ref.get('name')} is not in the Kubernetes API"
        scalable: JsonObj | None = None
        if chain and chain[0][1] is not None:
            first_kind = str(chain[0][0].get("kind"))
            if first_kind == "ReplicaSet":
                parent = chain[1][1] if len(chain) > 1 else None
                scalable = parent if parent is not None and \
                    str(chain[1][0].get("kind")) == "Deployment" else chain[0][1]
            elif first_kind == "StatefulSet":
                scalable = chain[0][1]
        if scalable is not None and (scalable.get("spec") or {}).get("replicas", 1) == 0:
            # Scaled to zero (by us or its owner): its pods are stopping; marking it again
            # would only tell the owner twice.
            return (f"{scalable.get('kind')} {meta(scalable).get('name')} is at 0 replicas "
                    "already: its pods are stopping")
        if self._is_notebook(objects):
            if scalable is not None:
                return _Target(ObjectRef.of(scalable), "notebook", settings.notebook_action,
                               obj=scalable)
            if not chain:
                return _Target(None, "notebook", "notify", note="a bare notebook pod")
        if scalable is not None:
            kind = str(scalable.get("kind"))
            return _Target(ObjectRef.of(scalable), kind.lower(), settings.workload_action,
                           obj=scalable)
        if not chain:
            return _Target(None, "pod", settings.pod_action)
        top_ref, top_obj = chain[-1]
        kinds = {str(r.get("kind")) for r, _ in chain}
        if "Job" in kinds:
            job = next(o for r, o in chain if str(r.get("kind")) == "Job")
            assert job is not None
            return _Target(ObjectRef.of(job), "job", settings.job_action, obj=job)
        ref_obj = ObjectRef(str(top_ref.get("apiVersion")), str(top_ref.get("kind")),
                            namespace, str(top_ref.get("name")))
        return _Target(ref_obj, "other", "notify", obj=top_obj)

    def _members(self, namespace: str, snapshot: ClusterSnapshot,
                 by_pod: dict[tuple[str, str], list[Allocation]]) -> dict[ObjectRef, list[str]]:
        """The running GPU pods of ``namespace`` by the workload they belong to."""
        out: dict[ObjectRef, list[str]] = defaultdict(list)
        for name, pod in sorted(snapshot.objects("Pod", namespace).items()):
            if str((pod.get("status") or {}).get("phase")) != "Running":
                continue
            if not requests_gpus(pod) and (namespace, name) not in by_pod:
                continue
            target = self._target(pod, snapshot)
            if isinstance(target, _Target) and target.ref is not None:
                out[target.ref].append(name)
        return out

    def _busy_replica(self, target: _Target, snapshot: ClusterSnapshot,
                      accepted: set[tuple[str, str]],
                      by_pod: dict[tuple[str, str], list[Allocation]],
                      members: dict[str, dict[ObjectRef, list[str]]]) -> str | None:
        """Acting on a workload stops all its pods: every running GPU pod of it must be one
        of the idle pods admitted above."""
        if target.ref is None:
            return None
        namespace = target.ref.namespace
        if namespace not in members:
            members[namespace] = self._members(namespace, snapshot, by_pod)
        for name in members[namespace].get(target.ref, []):
            if (namespace, name) not in accepted:
                return (f"{target.ref.kind} {target.ref.name} also runs {namespace}/{name}, "
                        "which is not idle (or has no evidence); acting would stop it too")
        return None

    def _owner(self, target: _Target, snapshot: ClusterSnapshot) -> str:
        namespace = target.pods[0].namespace
        sources = [target.obj, target.pods[0].obj, snapshot.namespace(namespace)]
        for source in sources:
            labels = meta(source).get("labels") if source else None
            for key in _OWNER_LABELS:
                if labels and labels.get(key):
                    return str(labels[key])
        return namespace

    def _candidate(self, target: _Target, snapshot: ClusterSnapshot) -> Candidate:
        settings = self._settings
        first = target.pods[0]
        namespace = first.namespace
        if target.ref is None:
            resource = f"{namespace}/{first.name}"
            ref = ObjectRef("v1", "Pod", namespace, first.name)
            uid = meta(first.obj or {}).get("uid")
            what = f"pod {resource}"
        else:
            ref = target.ref
            resource = f"{namespace}/{ref.kind}/{ref.name}"
            uid = meta(target.obj).get("uid") if target.obj else None
            what = f"{target.workload} {namespace}/{ref.name}"
        gpus = sum(p.gpus for p in target.pods)
        peak = max(p.peak for p in target.pods)
        powers = [p.power for p in target.pods if p.power is not None]
        coverage = {(c["hostname"], c["UUID"]): c for p in target.pods for c in p.coverage}
        own_use = any(p.own_use for p in target.pods)
        evidence: dict[str, Any] = {
            "workload": target.workload,
            "pods": [f"{p.namespace}/{p.name}" for p in target.pods],
            "gpus": [{"hostname": a.hostname, "UUID": a.uuid, "gpu": a.gpu,
                      "modelName": a.model, "pod": f"{a.namespace}/{a.pod}",
                      "coverage": {k: v for k, v in coverage.get(a.gpu_key, {}).items()
                                   if k not in ("hostname", "UUID")}}
                     for p in target.pods for a in p.allocations],
            "peak_utilization": round(peak, 6),
            "utilization_floor": settings.utilization_floor,
            "window": settings.window,
            "grace": settings.grace,
            "scrape_interval": settings.scrape_interval,
            "max_gap_seconds": self.max_gap,
            "youngest_pod_age_seconds": round(min(p.age for p in target.pods)),
        }
        if uid:
            evidence["uid"] = uid
        if powers:
            evidence["peak_power_watts"] = round(max(powers), 1)
        if target.obj is not None and ref.kind in SCALABLE:
            evidence["replicas"] = int((target.obj.get("spec") or {}).get("replicas") or 0)
        count = f"{gpus:g} GPU" + ("" if gpus == 1 else "s")
        reason = (f"{count} allocated to {what} stayed under {settings.utilization_floor:.0%} "
                  f"utilization for {settings.window} (peak {peak:.2%})")
        action, note = target.action, target.note
        if own_use:
            # Its neighbours keep the GPU busy: never act on attribution alone.
            evidence["shared"] = True
            reason = (f"{count} (its share of a shared GPU) held by {what}: its own use stayed "
                      f"under {settings.utilization_floor:.0%} of its share for "
                      f"{settings.window} (peak {peak:.2%})")
            action, note = "notify", "; ".join(n for n in (note, SHARED_NOTE) if n)
        if note:
            reason = f"{reason}; {note}"
        return Candidate(resource=resource, action=action, reason=reason,
                         evidence=evidence, reclaim={"gpus": round(gpus, 3)},
                         owner=self._owner(target, snapshot), kube_object=ref.as_tuple())

    def recheck(self, resource: str) -> Candidate | None:
        """The candidate for ``resource`` from a scan at most ``recheck_max_age`` seconds
        old (the one this run just made), else from a new scan."""
        last = self._last_scan
        if last is None or self._clock() - last[0] > self._recheck_max_age:
            self.scan()
            last = self._last_scan
        assert last is not None
        return next((c for c in last[1].candidates if c.resource == resource), None)

    # -- acting --------------------------------------------------------------------------

    @staticmethod
    def ref_of(resource: str) -> ObjectRef | None:
        """``ns/Kind/name`` or ``ns/pod`` -> the object; None for kinds this job cannot write."""
        parts = resource.split("/")
        if len(parts) == 2:
            return ObjectRef("v1", "Pod", parts[0], parts[1])
        if len(parts) == 3 and parts[1] in KINDS:
            return ObjectRef(KINDS[parts[1]][0], parts[1], parts[0], parts[2])
        return None

    def mark(self, candidate: Candidate, *, deadline: str, run_id: str) -> None:
        """Nothing to write: the mark lives in the state store, announced by an Event."""

    def unmark(self, resource: str) -> None:
        """Nothing to write: see :meth:`mark`."""

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        ref = self.ref_of(candidate.resource)
        if ref is None:
            raise ValueError(f"cannot act on {candidate.resource}")
        obj = self._workloads.get(ref)
        if obj is None:
            raise LookupError(f"{candidate.resource} no longer exists")
        judged = candidate.evidence.get("uid")
        if judged and meta(obj).get("uid") != judged:
            raise ResourceReplaced(f"{candidate.resource} is a new object (uid "
                                   f"{meta(obj).get('uid')}, was {judged}) since it was judged")
        record: dict[str, Any] = {"action": candidate.action, "api_version": ref.api_version,
                                  "kind": ref.kind, "namespace": ref.namespace,
                                  "name": ref.name, "uid": meta(obj).get("uid")}
        if candidate.action == "scale_to_zero":
            replicas, _ = self._workloads.read_scale(ref)
            if replicas == 0:
                raise ValueError(f"{candidate.resource} is at 0 replicas already: no count "
                                 "to restore")
            record["replicas"] = replicas
        elif candidate.action == "delete":
            record["manifest"] = _recreatable(obj)
        else:
            raise ValueError(f"{candidate.action} is not an action of {JOB_NAME}")
        return record

    def act(self, candidate: Candidate) -> None:
        ref = self.ref_of(candidate.resource)
        if ref is None:
            raise ValueError(f"cannot act on {candidate.resource}")
        uid = candidate.evidence.get("uid")
        if candidate.action == "scale_to_zero":
            self._scale_to_zero(ref, uid=str(uid) if uid else None)
        elif candidate.action == "delete" and ref.kind == "Pod":
            try:
                self._workloads.delete_pod(ref.namespace, ref.name,
                                           uid=str(uid) if uid else None)
            except Replaced as exc:
                raise ResourceReplaced(f"pod {ref.namespace}/{ref.name} is another pod now: "
                                       f"{exc}") from exc
        else:
            raise ValueError(f"{candidate.action} is not an action of {JOB_NAME} on {ref.kind}")

    def _scale_to_zero(self, ref: ObjectRef, *, uid: str | None) -> None:
        """Scale to zero through the scale subresource, carrying the resourceVersion it read
        (a 409 re-reads), and nothing written when it is at zero already (a rerun)."""
        for _ in range(_CONFLICT_RETRIES):
            obj = self._workloads.get(ref)
            if obj is None:
                return  # gone: nothing holds the GPUs any more
            if uid and meta(obj).get("uid") != uid:
                raise ResourceReplaced(f"{ref.kind} {ref.namespace}/{ref.name} was replaced by "
                                       f"a new object (uid {meta(obj).get('uid')}, was {uid}) "
                                       "since it was judged; not acting")
            replicas, scale_version = self._workloads.read_scale(ref)
            if replicas == 0:
                return
            try:
                self._workloads.write_scale(ref, 0, resource_version=scale_version)
                return
            except Conflict:
                continue
        raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} kept changing "
                           f"(409 Conflict {_CONFLICT_RETRIES} times); try again next run")

    def observe(self, candidate: Candidate, record: dict[str, Any]) -> Observed:
        ref = ObjectRef(str(record["api_version"]), str(record["kind"]),
                        str(record["namespace"]), str(record["name"]))
        what = f"{ref.kind} {ref.namespace}/{ref.name}"
        obj = self._workloads.get(ref)
        same = obj is not None and (not record.get("uid") or meta(obj).get("uid") ==
                                    record["uid"])
        if record.get("action") == "delete":
            if not same:
                return Observed("done", f"{what} (uid {record.get('uid')}) is gone")
            assert obj is not None
            if meta(obj).get("deletionTimestamp"):
                return Observed("done", f"{what} is terminating")
            return Observed("not_done", f"{what} is still running")
        if obj is None:
            return Observed("vanished", f"{what} no longer exists")
        if not same:
            return Observed("vanished", f"{what} is a new object (uid {meta(obj).get('uid')}, "
                                        f"was {record.get('uid')})")
        replicas, _ = self._workloads.read_scale(ref)
        if replicas == 0:
            return Observed("done", f"{what} is at 0 replicas")
        return Observed("not_done", f"{what} is at {replicas} replicas")

    def restore(self, record: dict[str, Any], *, restore_id: str) -> str:
        action = record.get("action")
        ref = ObjectRef(str(record["api_version"]), str(record["kind"]),
                        str(record["namespace"]), str(record["name"]))
        if action == "delete":
            return self._recreate(ref, record, restore_id=restore_id)
        if action != "scale_to_zero":
            raise ValueError(f"nothing to restore for action {action!r}")
        wanted = int(record["replicas"])
        for _ in range(_CONFLICT_RETRIES):
            obj = self._workloads.get(ref)
            if obj is None:
                raise LookupError(f"{ref.kind} {ref.namespace}/{ref.name} no longer exists")
            if record.get("uid") and meta(obj).get("uid") != record["uid"]:
                raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} is a new object, "
                                   "not the one scaled down; not touching it")
            replicas, scale_version = self._workloads.read_scale(ref)
            if replicas != 0:
                # Back already: by an earlier try of this restore, or scaled up by hand.
                note = "" if replicas == wanted else f" (the record says {wanted}; left as is)"
                return f"{ref.kind} {ref.namespace}/{ref.name} runs {replicas} replicas{note}"
            try:
                self._workloads.write_scale(ref, wanted, resource_version=scale_version)
            except Conflict:
                continue
            back, _ = self._workloads.read_scale(ref)
            if back == wanted:
                return f"{ref.kind} {ref.namespace}/{ref.name} scaled back to {wanted} replicas"
        raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} kept changing (409)")

    def _recreate(self, ref: ObjectRef, record: dict[str, Any], *, restore_id: str) -> str:
        """Create the deleted pod again; a pod of that name still terminating is not ready
        (the API answers 409 until it is gone), another pod of that name is not ours."""
        what = f"pod {ref.namespace}/{ref.name}"
        manifest = json.loads(json.dumps(record["manifest"]))
        manifest["metadata"].setdefault("annotations", {})[RESTORED_FROM] = restore_id
        if self._workloads.create_pod(manifest):
            created = self._workloads.get(ref)
            if created is None or meta(created).get("annotations", {}).get(
                    RESTORED_FROM) != restore_id:
                raise RuntimeError(f"{what} was created but cannot be read back")
            return f"{what} recreated (uid {meta(created).get('uid')})"
        existing = self._workloads.get(ref)
        if existing is None:
            raise RestoreNotReady(f"{what} was just being removed", retry_after=1.0)
        existing_meta = meta(existing)
        if existing_meta.get("deletionTimestamp"):
            ends = timestamp(existing_meta.get("deletionTimestamp"))
            left = max(1.0, (ends - self._clock()) if ends is not None else 30.0)
            raise RestoreNotReady(f"{what} (uid {existing_meta.get('uid')}) is still "
                                  "terminating", retry_after=left)
        if (existing_meta.get("annotations") or {}).get(RESTORED_FROM) == restore_id:
            return f"{what} recreated (uid {existing_meta.get('uid')})"
        raise RuntimeError(f"another {what} exists (uid {existing_meta.get('uid')}), not "
                           "the one deleted; not replaced")


def _recreatable(pod: JsonObj) -> JsonObj:
    """The pod as a creatable manifest: no server-set fields, no node binding, no status."""
    metadata = {k: v for k, v in meta(pod).items()
                if k in ("name", "namespace", "labels", "annotations")}
    metadata["annotations"] = {k: v for k, v in (metadata.get("annotations") or {}).items()
                               if k != RESTORED_FROM}
    spec = dict(pod.get("spec") or {})
    spec.pop("nodeName", None)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def build(context: JobContext) -> IdleGpusJob:
    config = context.config
    settings = config.hygiene.idle_gpus
    for key in ("window", "grace", "scrape_interval"):
        try:
            parse_duration(getattr(settings, key))
        except ValueError as exc:
            raise JobUnavailable(f"hygiene.idle_gpus.{key}: {exc}") from None
    if context.api_client is None:
        raise JobUnavailable("idle-gpus needs the Kubernetes API: run in a pod, or set "
                             "kubernetes.kubeconfig or KUBECONFIG")
    if not context.for_restore and parse_duration(settings.scrape_interval) <= 0:
        raise JobUnavailable("hygiene.idle_gpus.scrape_interval: must be longer than 0s")
    return IdleGpusJob(settings,
                       prometheus=PromQL(config.prometheus.url,
                                         timeout=config.prometheus.timeout_seconds),
                       workloads=KubeWorkloads(context.api_client), clock=context.clock,
                       progress=context.progress)
