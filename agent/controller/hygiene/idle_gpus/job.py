"""The idle-GPU job: GPUs allocated to a pod whose utilization stayed under a noise floor for
the whole window are reclaimed from the workload that holds them.

The evidence (``evidence``) is complete or the pod is skipped ("evidence incomplete: ..."):
unknown is never idle. The policy (``policy``) picks the workload to act on and what to do.
MIG instances are skipped: NVML has no per-instance utilization. On a shared GPU that is
busy, a tenant is judged by its own use instead, and only notified (``tenants``); KAI
Scheduler's reservation pods are never judged.

Nothing but replicas, through the ``/scale`` subresource, is ever written to a workload, and
nothing is written to a pod but its deletion: marks live in the engine's state store and are
announced with Events, the replica count to restore lives in the restore record.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from agent.clients.kubernetes.api import timestamp
from agent.clients.kubernetes.gpus import is_reservation_pod
from agent.clients.kubernetes.objects import JsonObj, meta
from agent.clients.prometheus import PrometheusClient
from agent.config import IdleGpusConfig
from agent.controller.hygiene.context import JobContext, JobUnavailable
from agent.controller.hygiene.idle_gpus.evidence import (
    Allocation,
    Evidence,
    IdleEvidence,
)
from agent.controller.hygiene.idle_gpus.policy import IdlePod, WorkloadPolicy
from agent.controller.hygiene.idle_gpus.tenants import RESERVATION_REASON
from agent.controller.hygiene.idle_gpus.workloads import (
    KINDS,
    ClusterSnapshot,
    Conflict,
    KubeWorkloads,
    ObjectRef,
    Replaced,
)
from agent.controller.hygiene.model import (
    Candidate,
    Observed,
    ResourceReplaced,
    RestoreNotReady,
    Scan,
    ScanFailed,
    Skipped,
    Unit,
)
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.durations import parse_duration

JOB_NAME: Final = "idle-gpus"
# On a pod a restore recreated: which restore did it, so a restore that died after the
# create and is tried again knows the pod for its own.
RESTORED_FROM: Final = "steward.io/restored-from"
_CONFLICT_RETRIES: Final = 4


class IdleGpusJob:
    name = JOB_NAME
    unit: Unit = "gpus"

    def __init__(self, settings: IdleGpusConfig, *, prometheus: PrometheusClient,
                 workloads: KubeWorkloads, clock: Callable[[], float] = time.time,
                 progress: Progress | None = None, recheck_max_age: float = 120.0) -> None:
        self._settings = settings
        self._workloads = workloads
        self._clock = clock
        self._evidence = IdleEvidence(settings, prometheus=prometheus)
        self._policy = WorkloadPolicy(settings, workloads=workloads,
                                      span_seconds=self._evidence.span_seconds,
                                      max_gap=self._evidence.max_gap,
                                      progress=progress or NoProgress())
        self._recheck_max_age = recheck_max_age
        self._last_scan: tuple[float, Scan] | None = None

    # -- evidence ------------------------------------------------------------------------

    @property
    def span_seconds(self) -> float:
        return self._evidence.span_seconds

    @property
    def max_gap(self) -> float:
        return self._evidence.max_gap

    def queries(self) -> dict[str, str]:
        return self._evidence.queries()

    def coverage_queries(self, uuids: Iterable[str]) -> list[str]:
        return self._evidence.coverage_queries(uuids)

    def evidence(self, at: float, snapshot: ClusterSnapshot | None = None, *,
                 meanwhile: Callable[[Evidence, set[str]], None] | None = None) -> Evidence:
        """The evidence at ``at``; with ``snapshot``, the Kubernetes lists of the pods that
        look idle start as soon as the instant answers name them, beside the raw samples
        (``meanwhile``: see ``IdleEvidence.read``)."""
        if snapshot is None:
            return self._evidence.read(at, meanwhile=meanwhile)
        return self._evidence.read(at, looking_idle=snapshot.prefetch_early,
                                   meanwhile=meanwhile)

    def decide_workloads(self, idle: dict[tuple[str, str], IdlePod], skipped: list[Skipped],
                         by_pod: dict[tuple[str, str], list[Allocation]], now: float,
                         snapshot: ClusterSnapshot | None = None) -> Scan:
        return self._policy.decide(idle, skipped, by_pod, now, snapshot=snapshot)

    # -- scan ----------------------------------------------------------------------------

    def scan(self) -> Scan:
        now = self._clock()
        judged = _Judged()
        with _cycle_collector_paused(), ClusterSnapshot(self._workloads) as snapshot:
            evidence = self.evidence(now, snapshot, meanwhile=lambda partial, raw_for:
                                     self._prejudge(judged, partial, raw_for))
            scan = self._decide(evidence, now, snapshot, judged)
        self._last_scan = (now, scan)
        return scan

    def _prejudge(self, judged: _Judged, evidence: Evidence, raw_for: set[str]) -> None:
        """While the raw samples are read: the verdict of every pod none of whose GPUs they
        are about (in use, MIG, no peak, a tenant busy on its own), from the instant
        answers alone, exactly as ``judge`` gives it once they are in (it reads nothing
        else for such a pod)."""
        judged.group(evidence)
        for key, allocations in judged.by_pod.items():
            if not any(a.uuid in raw_for for a in allocations):
                judged.verdicts[key] = self._evidence.judge(allocations, evidence)

    def _decide(self, evidence: Evidence, now: float,
                snapshot: ClusterSnapshot | None = None,
                judged: _Judged | None = None) -> Scan:
        skipped: list[Skipped] = []
        if judged is None or not judged.grouped:
            judged = _Judged()
            judged.group(evidence)
        by_pod, sharers = judged.by_pod, judged.sharers
        idle: dict[tuple[str, str], IdlePod] = {}
        for (namespace, pod), allocations in sorted(by_pod.items()):
            if is_reservation_pod(namespace, pod):
                skipped.append(Skipped(f"{namespace}/{pod}", RESERVATION_REASON))
                continue
            verdict = judged.verdicts.get((namespace, pod))
            why, peak, power, coverage = verdict if verdict is not None else \
                self._evidence.judge(allocations, evidence)
            if why is not None:
                skipped.append(Skipped(f"{namespace}/{pod}", why))
                continue
            # What it would free: its share, where the node agent says (1/holders before).
            gpus = sum(evidence.tenants.share((namespace, pod, *a.gpu_key))
                       or 1.0 / max(1, len(sharers[a.gpu_key])) for a in allocations)
            idle[(namespace, pod)] = IdlePod(
                namespace, pod, allocations, peak, power, gpus, coverage,
                own_use=any(c.get("judged_by") == "own use" for c in coverage))
        if not idle:
            return Scan(candidates=[], skipped=skipped)
        try:
            return self.decide_workloads(idle, skipped, by_pod, now, snapshot)
        except ScanFailed:
            raise
        except Exception as exc:  # the API is down or refuses: decide nothing
            raise ScanFailed(f"Kubernetes API: {type(exc).__name__}: {exc}") from exc

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
                       prometheus=PrometheusClient(config.prometheus.url,
                                                    timeout=config.prometheus.timeout_seconds),
                       workloads=KubeWorkloads(context.api_client), clock=context.clock,
                       progress=context.progress)


class _CollectorPause:
    """The cycle collector off for a scan (reference counting still frees what it drops).

    A scan decodes thousands of pods and series and keeps them to the end: acyclic data
    the collector would walk again and again (measured: ~200 ms of a 2,000-GPU plan, half
    its CPU) and find nothing to free. Cycles made meanwhile wait for the scan's end. The
    switch is the process's: scans in several threads share it, the last one out restores
    it, and a collector someone else turned off stays off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


_cycle_collector_paused = _CollectorPause()


Verdict = tuple[str | None, float, float | None, list[dict[str, Any]]]


class _Judged:
    """The evidence's allocations by pod, and the verdicts given before the raw samples."""

    def __init__(self) -> None:
        self.grouped = False
        self.by_pod: dict[tuple[str, str], list[Allocation]] = defaultdict(list)
        self.sharers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
        self.verdicts: dict[tuple[str, str], Verdict] = {}

    def group(self, evidence: Evidence) -> None:
        if self.grouped:
            return
        for allocation in evidence.allocations:
            self.by_pod[(allocation.namespace, allocation.pod)].append(allocation)
            if allocation.mig_instance is None:
                self.sharers[allocation.gpu_key].add((allocation.namespace, allocation.pod))
        self.grouped = True
