"""The idle-GPU job's policy (``hygiene.idle_gpus``): which workload holds each idle pod, what
to do with it, and what leaves it alone.

Pods younger than window + grace, exempt objects and workloads with a replica that is not
idle are skipped, each with the guard that held. Notebooks (``notebook_labels`` on the pod or
an owner) -> ``notebook_action`` on their Deployment/StatefulSet; Deployments, StatefulSets
and bare ReplicaSets -> ``workload_action``; Jobs -> ``job_action`` (notify); bare pods ->
``pod_action`` (notify, or delete with the manifest kept to recreate it). A Kubeflow
``Notebook`` owner is only notified: its controller would undo a scale-down, and so is a
tenant of a busy shared GPU judged by its own use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.clients.kubernetes.api import timestamp
from agent.clients.kubernetes.gpus import pod_json_gpus
from agent.clients.kubernetes.objects import JsonObj, controller_ref, meta
from agent.config import IdleGpusConfig
from agent.controller.hygiene.guards import exempt_flag
from agent.controller.hygiene.idle_gpus.evidence import Allocation
from agent.controller.hygiene.idle_gpus.tenants import SHARED_NOTE
from agent.controller.hygiene.idle_gpus.workloads import (
    KINDS,
    SCALABLE,
    ClusterSnapshot,
    KubeWorkloads,
    ObjectRef,
)
from agent.controller.hygiene.model import Candidate, Scan, Skipped
from agent.controller.hygiene.progress import Progress

_OWNER_LABELS: Final = ("team", "owner")


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


@dataclass
class IdlePod:
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
class Target:
    ref: ObjectRef | None  # None: the bare pod itself
    workload: str  # notebook, deployment, statefulset, replicaset, job, pod, other
    action: str
    note: str = ""
    obj: JsonObj | None = None
    pods: list[IdlePod] = field(default_factory=list)


class WorkloadPolicy:
    """Decides, for the pods whose GPUs the evidence shows idle, what to act on and how."""

    def __init__(self, settings: IdleGpusConfig, *, workloads: KubeWorkloads,
                 span_seconds: float, max_gap: float, progress: Progress) -> None:
        self._settings = settings
        self._workloads = workloads
        self.span_seconds = span_seconds
        self.max_gap = max_gap
        self._progress = progress

    def decide(self, idle: dict[tuple[str, str], IdlePod], skipped: list[Skipped],
                          by_pod: dict[tuple[str, str], list[Allocation]], now: float, *,
                          snapshot: ClusterSnapshot | None = None) -> Scan:
        if snapshot is None:
            snapshot = ClusterSnapshot(self._workloads)
        snapshot.prefetch(namespace for namespace, _ in idle)
        targets: dict[tuple[str, ...], Target] = {}
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

    def _admit(self, pod: IdlePod, snapshot: ClusterSnapshot, now: float) -> str | None:
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

    def _target(self, pod: JsonObj, snapshot: ClusterSnapshot) -> Target | str:
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
                return Target(ref_obj, "notebook", "notify",
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
                return Target(ObjectRef.of(scalable), "notebook", settings.notebook_action,
                               obj=scalable)
            if not chain:
                return Target(None, "notebook", "notify", note="a bare notebook pod")
        if scalable is not None:
            kind = str(scalable.get("kind"))
            return Target(ObjectRef.of(scalable), kind.lower(), settings.workload_action,
                           obj=scalable)
        if not chain:
            return Target(None, "pod", settings.pod_action)
        top_ref, top_obj = chain[-1]
        kinds = {str(r.get("kind")) for r, _ in chain}
        if "Job" in kinds:
            job = next(o for r, o in chain if str(r.get("kind")) == "Job")
            assert job is not None
            return Target(ObjectRef.of(job), "job", settings.job_action, obj=job)
        ref_obj = ObjectRef(str(top_ref.get("apiVersion")), str(top_ref.get("kind")),
                            namespace, str(top_ref.get("name")))
        return Target(ref_obj, "other", "notify", obj=top_obj)

    def _members(self, namespace: str, snapshot: ClusterSnapshot,
                 by_pod: dict[tuple[str, str], list[Allocation]]) -> dict[ObjectRef, list[str]]:
        """The running GPU pods of ``namespace`` by the workload they belong to."""
        out: dict[ObjectRef, list[str]] = defaultdict(list)
        for name, pod in sorted(snapshot.objects("Pod", namespace).items()):
            if str((pod.get("status") or {}).get("phase")) != "Running":
                continue
            if controller_ref(pod) is None:
                continue  # a bare pod is its own target: it belongs to no workload
            if not pod_json_gpus(pod) and (namespace, name) not in by_pod:
                continue
            target = self._target(pod, snapshot)
            if isinstance(target, Target) and target.ref is not None:
                out[target.ref].append(name)
        return out

    def _busy_replica(self, target: Target, snapshot: ClusterSnapshot,
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

    def _owner(self, target: Target, snapshot: ClusterSnapshot) -> str:
        namespace = target.pods[0].namespace
        sources = [target.obj, target.pods[0].obj, snapshot.namespace(namespace)]
        for source in sources:
            labels = meta(source).get("labels") if source else None
            for key in _OWNER_LABELS:
                if labels and labels.get(key):
                    return str(labels[key])
        return namespace

    def _candidate(self, target: Target, snapshot: ClusterSnapshot) -> Candidate:
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
