"""The pods of this node: a list-then-watch cache, and the pod health metrics built from it.

The cache watches only pods with ``spec.nodeName`` = this node (a DaemonSet of N agents must
not each watch the whole cluster), resumes from the last resourceVersion when a watch ends,
relists on 410 Gone, and backs off on errors. Collection reads the cache; it never calls the
API server.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.api import KubeApiError, timestamp
from agent.clients.kubernetes.calls import PodEvents, PodWatching
from agent.clients.kubernetes.gpus import pod_json_gpus
from agent.node.device_health import DeviceHealth, build_device_health_family, device_health
from agent.node.workloads import BARE_POD, build_workload_family, owning_workload

log = logging.getLogger(__name__)

# Annotations kept in the cache, for GPU shares: KAI Scheduler's fraction requests and HAMi's
# assignment. Every other annotation is dropped (some are large, all are untrusted text).
SHARE_ANNOTATIONS = frozenset({
    "gpu-fraction", "gpu-memory", "gpu-fraction-num-devices",
    "hami.io/vgpu-devices-allocated",
})


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    restarts: int
    waiting_reason: str | None
    last_terminated_reason: str | None
    last_terminated_at: float | None  # unix seconds


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    phase: str
    gpus_requested: int
    containers: tuple[ContainerInfo, ...]
    created_at: float | None = None
    # metadata.deletionTimestamp, set once the pod is being deleted (kubectl's
    # "Terminating"): deletion time plus the grace period. The phase stays what it was until
    # the kubelet has stopped the containers.
    deleted_at: float | None = None
    # The owning workload (agent.node.workloads) and the devices' health from pod status
    # (agent.node.device_health): who to tell when a GPU under the pod fails.
    workload_kind: str = BARE_POD
    workload: str = ""
    device_health: tuple[DeviceHealth, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    # Only the keys of SHARE_ANNOTATIONS.
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    # nvidia.com/* resource limits summed over containers (HAMi's gpucores, gpumem).
    gpu_resources: dict[str, int] = field(default_factory=dict, hash=False)


def _nvidia_quantities(resources: Mapping[str, Any] | None) -> dict[str, int]:
    if not resources:
        return {}
    # Limits are what the device plugin allocates; requests must equal them for GPUs.
    quantities = resources.get("limits") or resources.get("requests") or {}
    out: dict[str, int] = {}
    for name, quantity in quantities.items():
        if str(name).startswith("nvidia.com/"):
            try:
                out[str(name)] = int(str(quantity))
            except ValueError:
                continue
    return out


def pod_info_from_api(pod: Mapping[str, Any]) -> PodInfo:
    """A pod as the API's JSON has it, reduced to what the metrics need (and memory allows)."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or []}
    containers = []
    for container in spec.get("containers") or []:
        cs = statuses.get(container.get("name"))
        state = (cs or {}).get("state") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        terminated = None
        if cs is not None:
            terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        containers.append(ContainerInfo(
            name=str(container.get("name")),
            restarts=int(cs.get("restartCount") or 0) if cs else 0,
            waiting_reason=waiting,
            last_terminated_reason=terminated.get("reason") if terminated else None,
            last_terminated_at=timestamp(terminated.get("finishedAt")) if terminated else None,
        ))
    owner = owning_workload(metadata.get("ownerReferences"), metadata.get("labels"),
                            str(metadata.get("name")))
    return PodInfo(
        uid=str(metadata.get("uid")),
        namespace=str(metadata.get("namespace")),
        name=str(metadata.get("name")),
        phase=str(status.get("phase") or "Unknown"),
        gpus_requested=pod_json_gpus(pod),
        containers=tuple(containers),
        created_at=timestamp(metadata.get("creationTimestamp")),
        deleted_at=timestamp(metadata.get("deletionTimestamp")),
        workload_kind=owner.kind, workload=owner.name,
        device_health=device_health(status.get("containerStatuses")),
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        annotations={k: str(v) for k, v in (metadata.get("annotations") or {}).items()
                     if k in SHARE_ANNOTATIONS},
        gpu_resources=_sum_quantities(spec.get("containers") or []),
    )


def _sum_quantities(containers: Iterable[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for container in containers:
        for name, n in _nvidia_quantities(container.get("resources")).items():
            total[name] = total.get(name, 0) + n
    return total


class PodSource(Protocol):
    """Where the pod collector reads pods from: the watch cache or the simulated node."""

    def pods(self) -> list[PodInfo]: ...

    def health(self) -> str | None:
        """None when current, else why the pods may be stale or missing."""
        ...


class PodCache:
    """List-then-watch of this node's pods on a background thread."""

    def __init__(self, api: PodWatching, node_name: str, *, watch_timeout_seconds: int = 300,
                 request_timeout: float = 30.0,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0,
                 page_size: int = 100) -> None:
        self._api = api
        self._node = node_name
        self._selector = f"spec.nodeName={node_name}"
        self._watch_timeout = watch_timeout_seconds
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._page_size = page_size
        self._pods: dict[str, PodInfo] = {}
        self._lock = threading.Lock()
        self._synced = False
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current_watch: PodEvents | None = None
        self._resume_from: str | None = None
        self.relists = 0  # how many full lists were needed (tests, debugging)
        self.failures = 0
        self.last_failure: str | None = None

    # -- PodSource --
    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._pods.values())

    def by_uid(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def health(self) -> str | None:
        if not self._synced:
            return self._error or "pod list not synced yet"
        return self._error

    # -- lifecycle --
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        current = self._current_watch
        if current is not None:
            current.stop()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        backoff = self._backoff_initial
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                # Returns when the server ends the watch (timeoutSeconds): resume from
                # where it stopped, with no new list.
                resource_version = self._watch(resource_version)
                backoff = self._backoff_initial
                continue
            except KubeApiError as exc:
                if exc.status == 410:
                    # Our resourceVersion was compacted away: relist, no backoff needed.
                    log.info("pod watch expired (410 Gone), relisting",
                             extra={"node": self._node})
                    resource_version = None
                    continue
                self._failed(str(exc))
            except Exception as exc:  # a dropped connection, a timeout, a decoding problem
                if self._stop.is_set():
                    break
                self._failed(f"{type(exc).__name__}: {exc}")
            if resource_version is not None:
                resource_version = self._resume_from
            # A broken watch resumes from the last resourceVersion it saw (the API replays
            # what happened meanwhile, or answers 410 and we relist); a failed list retries.
            # Full jitter keeps N node agents from hitting the API in lockstep after an outage.
            self._stop.wait(random.uniform(0, backoff))
            backoff = min(self._backoff_max, backoff * 2)

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.last_failure = message
        if message != self._error:
            log.warning("pod watch failed; keeping the last known pods",
                        extra={"node": self._node, "detail": message})
        self._error = message

    def _relist(self) -> str:
        # Paged like every list: a page size bounds what one response costs in memory (a
        # node holds at most a few hundred pods). Every page carries the snapshot's
        # resourceVersion; the watch resumes from it.
        pods: dict[str, PodInfo] = {}
        token: str | None = None
        while True:
            page = self._api.list_pods(field_selector=self._selector, limit=self._page_size,
                                       continue_token=token, timeout=self._request_timeout)
            pods.update((info.uid, info) for info in map(pod_info_from_api, page.items))
            token = page.continue_token
            if not token:
                break
        with self._lock:
            self._pods = pods
        self.relists += 1
        self._synced, self._error = True, None
        return page.resource_version

    def _watch(self, resource_version: str) -> str:
        self._resume_from = resource_version
        watch = self._api.watch_pods(
            field_selector=self._selector, resource_version=resource_version,
            timeout_seconds=self._watch_timeout,
            request_timeout=self._watch_timeout + self._request_timeout)
        self._current_watch = watch
        if self._stop.is_set():  # stop() ran before the watch could be stopped
            watch.stop()
        # The server accepted the watch (an error status raises before this): the cache is
        # live again from here, though a real server may send no event or bookmark for
        # minutes. What it missed meanwhile is replayed from resource_version, or the
        # server answers 410 and the cache relists.
        self._error = None
        try:
            for kind, obj in watch.events():
                if self._stop.is_set():
                    break
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion"))
                if kind != "BOOKMARK":
                    info = pod_info_from_api(obj)
                    with self._lock:
                        if kind == "DELETED":
                            self._pods.pop(info.uid, None)
                        else:
                            self._pods[info.uid] = info
                # A bookmark only moves the resourceVersion on: the watch is live, even
                # with no pod changes.
                self._resume_from = resource_version
                self._error = None
        finally:
            self._current_watch = None
        return resource_version


def build_pod_families(pods: Iterable[PodInfo], hostname: str) -> list[Metric]:
    phase = Metric("steward_pod_phase", "The pod's phase; always 1.", "gauge")
    gpus = Metric("steward_pod_gpu_requested", "GPUs (and MIG slices) the pod requests.",
                  "gauge")
    restarts = Metric("steward_container_restarts", "The container's restartCount.", "gauge")
    waiting = Metric("steward_container_waiting",
                     "1 while the container waits for that reason.", "gauge")
    terminated = Metric("steward_container_last_terminated_timestamp_seconds",
                        "When the container last terminated, by reason.", "gauge")
    deleting = Metric("steward_pod_deletion_timestamp_seconds",
                      "The pod's deletionTimestamp (when its grace period ends): present "
                      "while it is Terminating, whatever its phase.", "gauge")
    ordered = sorted(pods, key=lambda p: (p.namespace, p.name))
    for pod in ordered:
        labels = {"namespace": pod.namespace, "pod": pod.name, "hostname": hostname}
        phase.add_sample("steward_pod_phase", {**labels, "phase": pod.phase}, 1.0)
        if pod.deleted_at is not None:
            deleting.add_sample(deleting.name, labels, pod.deleted_at)
        if pod.gpus_requested:
            gpus.add_sample("steward_pod_gpu_requested", labels, float(pod.gpus_requested))
        for container in pod.containers:
            c_labels = {**labels, "container": container.name}
            restarts.add_sample("steward_container_restarts", c_labels, float(container.restarts))
            if container.waiting_reason:
                waiting.add_sample("steward_container_waiting",
                                   {**c_labels, "reason": container.waiting_reason}, 1.0)
            if container.last_terminated_reason and container.last_terminated_at is not None:
                terminated.add_sample(
                    "steward_container_last_terminated_timestamp_seconds",
                    {**c_labels, "reason": container.last_terminated_reason},
                    container.last_terminated_at)
    workloads = build_workload_family(ordered, hostname)
    health = build_device_health_family(ordered, hostname)
    return [m for m in (phase, deleting, gpus, restarts, waiting, terminated, workloads, health)
            if m.samples]
