"""The Kubernetes side of the idle-GPU job: pods, their owners, namespaces, the scale
subresource, and deleting or recreating a bare pod. Nothing else is ever written.

Reads ask for raw JSON (``_preload_content=False``): the client's model classes cost about
a millisecond per pod to build, which a cluster-wide scan would pay thousands of times.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from agent.clients.kubernetes.api import KubeApiError, refusals
from agent.clients.kubernetes.objects import JsonObj, controller_ref, meta

# kind -> (apiVersion, client API, snake-case name in the client's method names)
KINDS: Final[dict[str, tuple[str, str, str]]] = {
    "Pod": ("v1", "core", "pod"),
    "ReplicaSet": ("apps/v1", "apps", "replica_set"),
    "Deployment": ("apps/v1", "apps", "deployment"),
    "StatefulSet": ("apps/v1", "apps", "stateful_set"),
    "DaemonSet": ("apps/v1", "apps", "daemon_set"),
    "Job": ("batch/v1", "batch", "job"),
    "CronJob": ("batch/v1", "batch", "cron_job"),
}
SCALABLE: Final = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})
_TIMEOUT: Final = 30


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: JsonObj, *, kind: str | None = None) -> ObjectRef:
        meta = obj.get("metadata") or {}
        kind = kind or str(obj.get("kind") or "")
        api_version = str(obj.get("apiVersion") or KINDS.get(kind, ("v1",))[0])
        return cls(api_version, kind, str(meta.get("namespace") or ""), str(meta.get("name")))

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.api_version, self.kind, self.namespace, self.name)


class Conflict(KubeApiError):
    """409 on a write carrying a resourceVersion: re-read and try again."""


class Replaced(KubeApiError):
    """409 on a delete carrying a uid precondition: the object of that name is another one
    now (deleted and created again since it was read). Nothing was deleted."""



class KubeWorkloads:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._apis = {"core": client.CoreV1Api(api_client), "apps": client.AppsV1Api(api_client),
                      "batch": client.BatchV1Api(api_client)}

    def _call(self, kind: str, verb: str, suffix: str = "") -> Callable[..., Any]:
        if kind not in KINDS:
            raise KeyError(f"no client for kind {kind}")
        _, group, snake = KINDS[kind]
        return getattr(self._apis[group], f"{verb}_namespaced_{snake}{suffix}")  # type: ignore[no-any-return]

    @staticmethod
    def _json(response: Any) -> JsonObj:
        data = json.loads(response.data)
        if not isinstance(data, dict):
            raise ValueError("the API answered something other than an object")
        return data

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        from kubernetes.client.exceptions import ApiException

        return exc.status if isinstance(exc, ApiException) else None

    # -- reads ---------------------------------------------------------------------------

    def list(self, kind: str, namespace: str) -> list[JsonObj]:
        """Every object of ``kind`` in ``namespace``, a page at a time."""
        items: list[JsonObj] = []
        token: str | None = None
        call = self._call(kind, "list")
        while True:
            with refusals(f"list {kind} in {namespace}"):
                page = self._json(call(namespace, limit=500, _continue=token,
                                       _preload_content=False, _request_timeout=_TIMEOUT))
            for item in page.get("items") or []:
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", KINDS[kind][0])
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def get(self, ref: ObjectRef) -> JsonObj | None:
        """The object, or None when it does not exist (404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._json(self._call(ref.kind, "read")(
                ref.name, ref.namespace, _preload_content=False, _request_timeout=_TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeApiError(f"get {ref.kind} {ref.namespace}/{ref.name}", exc) from exc
        obj.setdefault("kind", ref.kind)
        obj.setdefault("apiVersion", ref.api_version)
        return obj

    def namespace(self, name: str) -> JsonObj | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._json(self._apis["core"].read_namespace(
                name, _preload_content=False, _request_timeout=_TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeApiError(f"get Namespace {name}", exc) from exc

    # -- writes --------------------------------------------------------------------------

    def read_scale(self, ref: ObjectRef) -> tuple[int, str]:
        with refusals(f"get {ref.kind} {ref.namespace}/{ref.name}/scale"):
            scale = self._json(self._call(ref.kind, "read", "_scale")(
                ref.name, ref.namespace, _preload_content=False, _request_timeout=_TIMEOUT))
        return int((scale.get("spec") or {}).get("replicas") or 0), \
            str(meta(scale).get("resourceVersion") or "")

    def write_scale(self, ref: ObjectRef, replicas: int, *, resource_version: str) -> None:
        body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": ref.name, "namespace": ref.namespace,
                             "resourceVersion": resource_version},
                "spec": {"replicas": replicas}}
        try:
            self._call(ref.kind, "replace", "_scale")(
                ref.name, ref.namespace, body, _preload_content=False,
                _request_timeout=_TIMEOUT)
        except Exception as exc:
            what = f"update {ref.kind} {ref.namespace}/{ref.name}/scale"
            if self._status(exc) == 409:
                raise Conflict(what, exc) from exc
            if self._status(exc) is not None:
                raise KubeApiError(what, exc) from exc
            raise

    def delete_pod(self, namespace: str, name: str, *, uid: str | None) -> bool:
        """Delete the pod if it is still the one with ``uid``; False when it is gone,
        ``Replaced`` when another pod has its name now."""
        body: JsonObj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._apis["core"].delete_namespaced_pod(name, namespace, body=body,
                                                     _preload_content=False,
                                                     _request_timeout=_TIMEOUT)
        except Exception as exc:
            what = f"delete Pod {namespace}/{name}"
            if self._status(exc) == 404:
                return False
            if self._status(exc) == 409 and uid:
                raise Replaced(f"{what} (uid {uid})", exc) from exc
            if self._status(exc) is not None:
                raise KubeApiError(what, exc) from exc
            raise
        return True

    def create_pod(self, manifest: JsonObj) -> bool:
        """Create the pod; False when one of that name exists already."""
        namespace = str(meta(manifest).get("namespace") or "default")
        try:
            self._apis["core"].create_namespaced_pod(namespace, manifest,
                                                     _preload_content=False,
                                                     _request_timeout=_TIMEOUT)
        except Exception as exc:
            if self._status(exc) == 409:
                return False
            if self._status(exc) is not None:
                raise KubeApiError(f"create Pod {namespace}/{meta(manifest).get('name')}",
                                   exc) from exc
            raise
        return True


class ClusterSnapshot:
    """One scan's cached view: each namespace's objects of a kind are listed at most once.

    ``prefetch_early`` starts the lists in the background while the evidence is still being
    read; ``prefetch`` (and every read) waits for them first, and a failure of theirs is
    raised there, where the scan needs the API, not where it merely hoped to save time."""

    def __init__(self, workloads: KubeWorkloads, *, concurrency: int = 4) -> None:
        self._workloads = workloads
        self._concurrency = concurrency
        self._lists: dict[tuple[str, str], dict[str, JsonObj]] = {}
        self._namespaces: dict[str, JsonObj | None] = {}
        self._early: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._owner_chains: dict[int, tuple[JsonObj, list[tuple[JsonObj, JsonObj | None]]]] = {}

    def __enter__(self) -> ClusterSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the background lists (their failure no longer matters)."""
        if self._early is not None:
            self._early.shutdown(wait=True)
            self._early = None

    def prefetch_early(self, namespaces: Iterable[str]) -> None:
        """Start ``prefetch(namespaces)`` in the background."""
        wanted = set(namespaces)
        if self._pending is not None or not wanted:
            return
        self._early = ThreadPoolExecutor(1, thread_name_prefix="kube-prefetch")
        self._pending = self._early.submit(self._prefetch, wanted)

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def prefetch(self, namespaces: Iterable[str]) -> None:
        """List the pods of ``namespaces`` and, wave by wave, the kinds of their owners, a
        few requests at a time: the API server answers in parallel what a scan would
        otherwise wait for one list after another."""
        self._settle()
        self._prefetch(namespaces)

    def _prefetch(self, namespaces: Iterable[str]) -> None:
        wanted = sorted(set(namespaces))
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="kube-list") as pool:
            unread = [n for n in wanted if n not in self._namespaces]
            reads = [pool.submit(self._workloads.namespace, n) for n in unread]
            wave = {("Pod", namespace) for namespace in wanted}
            while wave:
                keys = sorted(k for k in wave if k not in self._lists)
                for key, items in zip(keys, pool.map(lambda k: self._workloads.list(*k), keys),
                                      strict=True):
                    self._lists[key] = {str(meta(o).get("name")): o for o in items}
                wave = set()
                for kind, namespace in keys:
                    for obj in self._lists[(kind, namespace)].values():
                        ref = controller_ref(obj)
                        owner_kind = str(ref.get("kind")) if ref else ""
                        if owner_kind in KINDS and (owner_kind, namespace) not in self._lists:
                            wave.add((owner_kind, namespace))
            for namespace, future in zip(unread, reads, strict=True):
                self._namespaces.setdefault(namespace, future.result())

    def objects(self, kind: str, namespace: str) -> dict[str, JsonObj]:
        self._settle()
        key = (kind, namespace)
        if key not in self._lists:
            self._lists[key] = {str(meta(o).get("name")): o
                                for o in self._workloads.list(kind, namespace)}
        return self._lists[key]

    def get(self, kind: str, namespace: str, name: str) -> JsonObj | None:
        if kind not in KINDS:
            return None
        return self.objects(kind, namespace).get(name)

    def namespace(self, name: str) -> JsonObj | None:
        self._settle()
        if name not in self._namespaces:
            self._namespaces[name] = self._workloads.namespace(name)
        return self._namespaces[name]

    def owner_chain(self, obj: JsonObj) -> list[tuple[JsonObj, JsonObj | None]]:
        """The controllers above ``obj``, nearest first: (ownerReference, the object or
        None when its kind is not one this job reads, e.g. a Kubeflow Notebook)."""
        # Walked once per object: the policy asks again for every GPU pod of a workload.
        known = self._owner_chains.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        namespace = str(meta(obj).get("namespace") or "")
        chain: list[tuple[JsonObj, JsonObj | None]] = []
        current: JsonObj | None = obj
        seen: set[str] = set()
        while current is not None and len(chain) < 5:
            ref = controller_ref(current)
            if ref is None or str(ref.get("uid")) in seen:
                break
            seen.add(str(ref.get("uid")))
            owner = self.get(str(ref.get("kind")), namespace, str(ref.get("name")))
            if owner is not None and ref.get("uid") and \
                    meta(owner).get("uid") not in (None, ref.get("uid")):
                owner = None  # a newer object with the old owner's name
            chain.append((ref, owner))
            current = owner
        self._owner_chains[id(obj)] = (obj, chain)  # the object kept: its id stays its own
        return chain
