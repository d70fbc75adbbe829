"""The idle-GPU job: GPUs allocated to a pod whose utilization stayed under a noise floor for
the whole window are reclaimed from the workload that holds them.

Evidence comes from Prometheus: ``steward_gpu_allocation`` (GPU -> namespace/pod/container)
joined in Python on (hostname, UUID) with the GPU's peak ``steward_gpu_utilization_ratio``
over window + grace, a check that the utilization series already existed before that span
began (no verdict on half a window), and optionally the peak power draw. Pods younger than
window + grace, MIG instances (NVML has no per-instance utilization), exempt objects and
workloads with a replica that is not idle are skipped, each with the guard that held.

Per-workload policy (``hygiene.idle_gpus``): notebooks (``notebook_labels`` on the pod or an
owner) -> ``notebook_action`` on their Deployment/StatefulSet; Deployments, StatefulSets and
bare ReplicaSets -> ``workload_action``; Jobs -> ``job_action`` (notify); bare pods ->
``pod_action`` (notify, or delete with the manifest kept to recreate it). A Kubeflow
``Notebook`` owner is only notified: its controller would undo a scale-down.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.config import IdleGpusConfig
from agent.controller.hygiene.crashpoints import ACT_ANNOTATED, checkpoint
from agent.controller.hygiene.guards import exempt_flag
from agent.controller.hygiene.model import Candidate, Scan, ScanFailed, Skipped
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.controller.hygiene.promql import PromQL, Sample
from agent.controller.hygiene.registry import JobContext, JobUnavailable
from agent.controller.hygiene.workloads import (
    KINDS,
    SCALABLE,
    ClusterSnapshot,
    Conflict,
    JsonObj,
    KubeWorkloads,
    ObjectRef,
    meta,
)
from agent.kube import timestamp

JOB_NAME: Final = "idle-gpus"
RESTORE_ANNOTATION: Final = "steward.io/restore-replicas"
MARK_JOB: Final = "steward.io/hygiene-job"
MARK_DEADLINE: Final = "steward.io/hygiene-deadline"
MARK_REASON: Final = "steward.io/hygiene-reason"
GPU_RESOURCE_PREFIX: Final = "nvidia.com/"
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
    """The PromQL answers, keyed by (hostname, UUID)."""

    allocations: list[Allocation]
    peak: dict[tuple[str, str], float]
    covered: set[tuple[str, str]]
    power: dict[tuple[str, str], float] | None


@dataclass
class _IdlePod:
    namespace: str
    name: str
    allocations: list[Allocation]
    peak: float
    power: float | None
    gpus: float  # GPUs this pod would free (a shared GPU counts a share)
    obj: JsonObj | None = None
    age: float = 0.0


@dataclass
class _Target:
    ref: ObjectRef | None  # None: the bare pod itself
    workload: str  # notebook, deployment, statefulset, replicaset, job, pod, other
    action: str
    note: str = ""
    obj: JsonObj | None = None
    pods: list[_IdlePod] = field(default_factory=list)


def _float_map(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for sample in samples:
        key = (sample.labels.get("hostname", ""), sample.labels.get("UUID", ""))
        out[key] = max(out.get(key, -math.inf), sample.value)
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
        self._recheck_max_age = recheck_max_age
        self._last_scan: tuple[float, Scan] | None = None

    # -- evidence ------------------------------------------------------------------------

    @property
    def span_seconds(self) -> float:
        """How far back the evidence looks: the window, plus the grace that covers lag."""
        return self._window + self._grace

    def queries(self) -> dict[str, str]:
        """The PromQL the evidence is made of (the benchmark times these bare)."""
        span = _promql_duration(self.span_seconds)
        out = {
            "allocation": "steward_gpu_allocation == 1",
            "peak_utilization": "max by (hostname, UUID) "
                                f"(max_over_time(steward_gpu_utilization_ratio[{span}]))",
            # Present only if the GPU was monitored before the span began.
            "coverage": f"max by (hostname, UUID) (steward_gpu_utilization_ratio offset {span})",
        }
        if self._settings.power_idle_watts is not None:
            out["peak_power"] = ("max by (hostname, UUID) "
                                 f"(max_over_time(steward_gpu_power_watts[{span}]))")
        return out

    def evidence(self, at: float) -> Evidence:
        queries = self.queries()
        answers = {name: self._prometheus.instant(expr, at=at) for name, expr in queries.items()}
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
        return Evidence(
            allocations=sorted(allocations.values(), key=lambda a: (a.namespace, a.pod, a.gpu)),
            peak=_float_map(answers["peak_utilization"]),
            covered=set(_float_map(answers["coverage"])),
            power=_float_map(answers["peak_power"]) if "peak_power" in answers else None)

    # -- scan ----------------------------------------------------------------------------

    def scan(self) -> Scan:
        now = self._clock()
        scan = self._decide(self.evidence(now), now)
        self._last_scan = (now, scan)
        return scan

    def _judge_gpus(self, allocations: list[Allocation], evidence: Evidence
                    ) -> tuple[str | None, float, float | None]:
        """(why the pod is not idle or None, peak utilization, peak power)."""
        floor = self._settings.utilization_floor
        window = self._settings.window
        peak, power = 0.0, None
        for allocation in allocations:
            where = f"GPU {allocation.uuid} on {allocation.hostname}"
            if allocation.mig_instance is not None:
                return (f"MIG instance {allocation.mig_instance} of {where}: NVML reports no "
                        "per-instance utilization, so idleness cannot be judged"), 0.0, None
            key = allocation.gpu_key
            if key not in evidence.peak:
                return f"no utilization series for {where}", 0.0, None
            if key not in evidence.covered:
                return (f"utilization of {where} is recorded for less than the window "
                        f"{window} plus grace {self._settings.grace}"), 0.0, None
            peak = max(peak, evidence.peak[key])
            if evidence.peak[key] >= floor:
                return (f"in use: peak utilization {evidence.peak[key]:.1%} of {where} within "
                        f"{window} is at or above the floor {floor:.1%}"), peak, None
            if evidence.power is not None and self._settings.power_idle_watts is not None:
                watts = evidence.power.get(key)
                if watts is None or watts > self._settings.power_idle_watts:
                    shown = "unknown" if watts is None else f"{watts:.0f} W"
                    return (f"power draw of {where} peaked at {shown}, above the idle "
                            f"{self._settings.power_idle_watts:g} W"), peak, None
                power = max(power or 0.0, watts)
        return None, peak, power

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
            why, peak, power = self._judge_gpus(allocations, evidence)
            if why is not None:
                skipped.append(Skipped(f"{namespace}/{pod}", why))
                continue
            gpus = sum(1.0 / max(1, len(sharers[a.gpu_key])) for a in allocations)
            idle[(namespace, pod)] = _IdlePod(namespace, pod, allocations, peak, power, gpus)
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
        evidence: dict[str, Any] = {
            "workload": target.workload,
            "pods": [f"{p.namespace}/{p.name}" for p in target.pods],
            "gpus": [{"hostname": a.hostname, "UUID": a.uuid, "gpu": a.gpu,
                      "modelName": a.model, "pod": f"{a.namespace}/{a.pod}"}
                     for p in target.pods for a in p.allocations],
            "peak_utilization": round(peak, 6),
            "utilization_floor": settings.utilization_floor,
            "window": settings.window,
            "grace": settings.grace,
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
        if target.note:
            reason = f"{reason}; {target.note}"
        return Candidate(resource=resource, action=target.action, reason=reason,
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
        ref = self.ref_of(candidate.resource)
        if ref is None:
            return  # e.g. a Kubeflow Notebook: the mark lives in the state store only
        self._workloads.annotate(ref, {MARK_JOB: JOB_NAME, MARK_DEADLINE: deadline,
                                       MARK_REASON: candidate.reason[:500]})

    def unmark(self, resource: str) -> None:
        ref = self.ref_of(resource)
        if ref is not None:
            self._workloads.annotate(ref, {MARK_JOB: None, MARK_DEADLINE: None,
                                           MARK_REASON: None})

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        ref = self.ref_of(candidate.resource)
        if ref is None:
            raise ValueError(f"cannot act on {candidate.resource}")
        obj = self._workloads.get(ref)
        if obj is None:
            raise LookupError(f"{candidate.resource} no longer exists")
        record: dict[str, Any] = {"action": candidate.action, "api_version": ref.api_version,
                                  "kind": ref.kind, "namespace": ref.namespace,
                                  "name": ref.name, "uid": meta(obj).get("uid")}
        if candidate.action == "scale_to_zero":
            replicas, _ = self._workloads.read_scale(ref)
            kept = (meta(obj).get("annotations") or {}).get(RESTORE_ANNOTATION)
            record["replicas"] = int(kept) if replicas == 0 and kept else replicas
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
            self._workloads.delete_pod(ref.namespace, ref.name, uid=str(uid) if uid else None)
        else:
            raise ValueError(f"{candidate.action} is not an action of {JOB_NAME} on {ref.kind}")

    def _scale_to_zero(self, ref: ObjectRef, *, uid: str | None) -> None:
        """Keep the replica count in an annotation, then scale to zero through the scale
        subresource. Each write carries the resourceVersion it read (a 409 re-reads), and
        nothing is written when the work is done already (a rerun after a crash)."""
        for _ in range(_CONFLICT_RETRIES):
            obj = self._workloads.get(ref)
            if obj is None:
                return  # gone: nothing holds the GPUs any more
            if uid and meta(obj).get("uid") != uid:
                raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} was replaced by a "
                                   "new object since it was marked; not acting")
            replicas, scale_version = self._workloads.read_scale(ref)
            if replicas == 0:
                return
            annotations = meta(obj).get("annotations") or {}
            try:
                if RESTORE_ANNOTATION not in annotations:
                    self._workloads.annotate(
                        ref, {RESTORE_ANNOTATION: str(replicas)},
                        resource_version=str(meta(obj).get("resourceVersion")))
                    checkpoint(ACT_ANNOTATED)
                    replicas, scale_version = self._workloads.read_scale(ref)
                self._workloads.write_scale(ref, 0, resource_version=scale_version)
                return
            except Conflict:
                continue
        raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} kept changing "
                           f"(409 Conflict {_CONFLICT_RETRIES} times); try again next run")

    def restore(self, record: dict[str, Any]) -> None:
        action = record.get("action")
        ref = ObjectRef(str(record["api_version"]), str(record["kind"]),
                        str(record["namespace"]), str(record["name"]))
        if action == "delete":
            self._workloads.create_pod(record["manifest"])
            return
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
            try:
                if replicas != wanted:
                    self._workloads.write_scale(ref, wanted, resource_version=scale_version)
                self._workloads.annotate(ref, {RESTORE_ANNOTATION: None, MARK_JOB: None,
                                               MARK_DEADLINE: None, MARK_REASON: None})
                return
            except Conflict:
                continue
        raise RuntimeError(f"{ref.kind} {ref.namespace}/{ref.name} kept changing (409)")


def _recreatable(pod: JsonObj) -> JsonObj:
    """The pod as a creatable manifest: no server-set fields, no node binding, no status."""
    metadata = {k: v for k, v in meta(pod).items()
                if k in ("name", "namespace", "labels", "annotations")}
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items()
                   if k not in (MARK_JOB, MARK_DEADLINE, MARK_REASON)}
    metadata["annotations"] = annotations
    spec = dict(pod.get("spec") or {})
    spec.pop("nodeName", None)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def build(context: JobContext) -> IdleGpusJob:
    config = context.config
    settings = config.hygiene.idle_gpus
    for key in ("window", "grace"):
        try:
            parse_duration(getattr(settings, key))
        except ValueError as exc:
            raise JobUnavailable(f"hygiene.idle_gpus.{key}: {exc}") from None
    if context.api_client is None:
        raise JobUnavailable("idle-gpus needs the Kubernetes API: run in a pod, or set "
                             "kubernetes.kubeconfig or KUBECONFIG")
    return IdleGpusJob(settings,
                       prometheus=PromQL(config.prometheus.url,
                                         timeout=config.prometheus.timeout_seconds),
                       workloads=KubeWorkloads(context.api_client), clock=context.clock,
                       progress=context.progress)
