"""In-process stand-in for the Kubernetes API server, driven through the official client.

A ``ThreadingHTTPServer`` on 127.0.0.1 keeps objects in memory and serves the real API's JSON
shapes: discovery, CRUD, selectors, paging, watch (bookmarks, 410 Gone), merge and JSON patch,
optimistic concurrency, the scale subresource, Events, and fault injection for callers' tests.

What it deliberately does not do: no controllers run (a Deployment never gets pods, status is
only what a test writes), no garbage collection of owned objects, no admission, no
authentication, no server-side apply, and strategic merge patch is applied as a plain JSON
merge patch. Authorization is optional (``grants``): with it, a request no grant covers is
403 before routing, as on a real server, so an unknown group is 403, not 404. Which
behaviours a real kube-apiserver proves instead: docs/kubernetes-behaviours.md.
"""

from __future__ import annotations

import base64
import bisect
import builtins
import contextlib
import copy
import json
import random
import re
import select
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

import yaml

from agent.sim.kube_api.authorization import Grant, _forbidden, _request_attributes
from agent.sim.kube_api.errors import (
    _REASONS,
    _STALE,
    KubeApiError,
    _already_exists,
    _bad_value,
    _Cause,
    _conflict,
    _error,
    _invalid,
    _not_found,
    _res_details,
    _status,
)
from agent.sim.kube_api.patches import _json_patch, _merge_patch, _same_json
from agent.sim.kube_api.plumbing import _as_json_obj, _Handler, _HttpServer
from agent.sim.kube_api.records import Fault, RequestRecord, _Change, _OpenWatch
from agent.sim.kube_api.resources import (
    _CRD_GROUPS,
    _DEFAULT_POD_GRACE,
    _EVENT_RENAMES,
    _RESOURCES,
    _RETURNS_DELETED,
    _SUB_VERBS,
    _THREAD_PREFIX,
    _TRUE,
    _VERBS,
    SERVER_VERSION,
    TEST_TOKEN,
    JsonObj,
    _Resource,
)
from agent.sim.kube_api.selectors import (
    _parse_field_selector,
    _Selector,
    _selector_string,
    parse_label_selector,
)
from agent.sim.kube_api.validation import (
    _STATUS_COUNTERS,
    _format_time,
    _normalise_times,
    _parse_time,
    _validate_event,
    _validate_job_status,
    _validate_meta,
    _validate_spec,
)

if TYPE_CHECKING:
    import kubernetes.client


class KubeApiServer:
    """The stand-in: start it, point a client at it, seed and inspect state directly.

    ``crds`` names the custom resource groups that are installed (``argoproj.io`` by default);
    a group left out answers 404 everywhere, as on a cluster without that CRD. ``history_limit``
    is how many changes watches can replay; older resourceVersions get 410 Gone.

    ``bookmark_interval`` is how often a watch that asked for bookmarks gets one; a real API
    server sends them about a minute apart (more when idle), so that is the default: a watch
    that trusts a bookmark to come soon fails here as it would there. Tests and the demo
    that want a quick resume may shorten it.

    ``grants`` turns on authorization: every resource request must be covered by a
    :class:`Grant`, else it is 403 (before routing: a group that does not exist is 403 too,
    as on a real server). None (the default) allows everything.
    """

    def __init__(
        self,
        *,
        crds: Iterable[str] = ("argoproj.io",),
        bookmark_interval: float = 60.0,
        grants: Iterable[Grant] | None = None,
        user: str = "system:serviceaccount:steward:steward-test",
        history_limit: int = 10_000,
        namespaces: Iterable[str] = ("default", "kube-system", "kube-public", "kube-node-lease"),
        clock: Callable[[], datetime] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        unknown = set(crds) - _CRD_GROUPS
        if unknown:
            raise ValueError(f"unknown CRD groups {sorted(unknown)}; known: {sorted(_CRD_GROUPS)}")
        self._crds = set(crds)
        self._bookmark_interval = bookmark_interval
        self._grants: tuple[Grant, ...] | None = None if grants is None else tuple(grants)
        self._user = user
        self._history_limit = history_limit
        self._clock = clock or (lambda: datetime.now(UTC))
        self._address = (host, port)
        self._cond = threading.Condition(threading.RLock())
        self._objects: dict[str, dict[tuple[str, str], JsonObj]] = {}
        # Each store's keys in (namespace, name) order, kept as objects come and go: a list
        # page is a range of it, as etcd's key order serves a real server (no sort per list).
        self._keys: dict[str, builtins.list[tuple[str, str]]] = {}
        # Pods deleted with a grace period, due to go when it ends (see _expire_terminating).
        self._terminating: set[tuple[str, str]] = set()
        self._history: deque[_Change] = deque()
        self._rv = 0
        self._compacted_rv = 0  # changes with rv > this are retained
        self._log: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._watches: set[_OpenWatch] = set()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        for name in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _HttpServer(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{_THREAD_PREFIX}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every watch and connection, and join the threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # no new connections from here on
        server.server_close()
        with self._cond:
            self._cond.notify_all()
            connections = builtins.list(self._connections)
            handlers = builtins.list(self._handler_threads)
        # Idle keep-alive connections block their threads in a read: end them too.
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        for handler in handlers:
            handler.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path | str, *, namespace: str = "default") -> Path:
        """Write a kubeconfig pointing at this server (for ``load_kube_config``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        name = "steward-standin"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": TEST_TOKEN}}],
            "contexts": [{"name": name,
                          "context": {"cluster": name, "user": name, "namespace": namespace}}],
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def client_configuration(self) -> kubernetes.client.Configuration:
        from kubernetes.client import Configuration

        config = Configuration(host=self.url)
        # Client 36 looks the token and its prefix up under "BearerToken".
        config.api_key = {"BearerToken": TEST_TOKEN}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        return config

    def api_client(self) -> kubernetes.client.ApiClient:
        from kubernetes.client import ApiClient

        return ApiClient(self.client_configuration())

    # ----------------------------------------------------------------- test hooks

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def set_group_enabled(self, group: str, enabled: bool) -> None:
        """Install or remove a CRD group while running (objects are kept, only hidden)."""
        if group not in _CRD_GROUPS:
            raise ValueError(f"unknown CRD group {group!r}")
        with self._cond:
            (self._crds.add if enabled else self._crds.discard)(group)

    def set_grants(self, grants: Iterable[Grant] | None) -> None:
        """Replace the grants (None: authorization off, everything allowed)."""
        with self._cond:
            self._grants = None if grants is None else tuple(grants)

    def _authorize(self, method: str, path: str, query: Mapping[str, str]) -> None:
        with self._cond:
            grants = self._grants
        if grants is None:
            return
        attrs = _request_attributes(method, path, query)
        if attrs is None:
            return
        for grant in grants:
            if (grant.group == attrs.group and grant.resource == attrs.resource
                    and attrs.verb in grant.verbs
                    and (grant.namespace is None or grant.namespace == attrs.namespace)):
                return
        raise _forbidden(attrs, self._user)

    def compact(self) -> None:
        """Forget all history: a watch from any earlier resourceVersion now gets 410 Gone."""
        with self._cond:
            self._history.clear()
            self._compacted_rv = self._rv
            self._cond.notify_all()

    def inject_fault(self, *, path_regex: str = ".*", method: str | None = None,
                     status: int | None = 500, times: int | None = 1,
                     delay: float = 0.0) -> Fault:
        """Make the next ``times`` matching requests wait ``delay`` s, then fail with ``status``.

        ``path_regex`` is searched in the URL path (no query). ``status=None`` only delays;
        ``times=None`` keeps the fault until :meth:`clear_faults`.
        """
        fault = Fault(re.compile(path_regex), method, status, times, delay)
        with self._cond:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def drop_watches(self) -> int:
        """Cut every open watch connection abruptly (no final chunk); returns how many."""
        with self._cond:
            watches = list(self._watches)
            for watch in watches:
                watch.dropped = True
            self._cond.notify_all()
        for watch in watches:
            with contextlib.suppress(OSError):
                watch.sock.shutdown(socket.SHUT_RDWR)
        return len(watches)

    def open_watches(self, *, path_regex: str | None = None) -> int:
        """How many watch streams are open now (optionally only those on matching paths)."""
        pattern = re.compile(path_regex) if path_regex else None
        with self._cond:
            return sum(1 for w in self._watches
                       if not w.dropped and (pattern is None or pattern.search(w.path)))

    def request_log(self, *, method: str | None = None,
                    path_regex: str | None = None) -> builtins.list[RequestRecord]:
        pattern = re.compile(path_regex) if path_regex else None
        with self._cond:
            records = builtins.list(self._log)
        return [r for r in records
                if (method is None or r.method == method.upper())
                and (pattern is None or pattern.search(r.path))]

    def clear_request_log(self) -> None:
        with self._cond:
            self._log.clear()

    # ----------------------------------------------------------------- direct state API

    def create(self, obj: Any) -> JsonObj:
        """Create as if through the API, but keep the given status and creationTimestamp,
        and create a missing namespace on the way."""
        body = _as_json_obj(obj)
        res = self._resource_for(body.get("apiVersion", ""), body.get("kind", ""))
        with self._cond:
            self._expire_terminating()
        return self._create(res, body.get("metadata", {}).get("namespace"), body, via_http=False)

    def apply(self, obj: Any) -> JsonObj:
        """Create, or replace whatever is stored (no resourceVersion check), status included."""
        body = _as_json_obj(obj)
        res = self._resource_for(body.get("apiVersion", ""), body.get("kind", ""))
        meta = body.setdefault("metadata", {})
        if res.namespaced:
            meta.setdefault("namespace", "default")
        with self._cond:
            self._expire_terminating()
            current = self._stored(res, meta.get("namespace", ""), meta.get("name", ""))
            if current is None:
                return self._create(res, meta.get("namespace"), body, via_http=False)
            new = self._to_storage(res, body)
            new["metadata"].pop("resourceVersion", None)
            return self._to_external(res, self._update(res, current, new, mode="apply"))

    def get(self, api_version: str, kind: str, namespace: str | None,
            name: str) -> JsonObj | None:
        res = self._resource_for(api_version, kind)
        with self._cond:
            self._expire_terminating()
            stored = self._stored(res, namespace or "", name)
            return None if stored is None else self._to_external(res, stored)

    def delete(self, api_version: str, kind: str, namespace: str | None,
               name: str, *, grace_period_seconds: int | None = 0) -> JsonObj | None:
        """Delete as through the API (finalizers only mark); None when there was nothing.

        A pod goes at once unless ``grace_period_seconds`` is None (its own grace period, as
        a plain API delete) or positive: tests that only want a pod gone do not wait for it.
        """
        res = self._resource_for(api_version, kind)
        options: JsonObj = {}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        with self._cond:
            self._expire_terminating()
            stored = self._stored(res, namespace or "", name)
            if stored is None:
                return None
            return self._delete(res, stored, options=options, dry_run=False)[0]

    def list(self, kind: str, *, api_version: str | None = None, namespace: str | None = None,
             label_selector: str = "") -> builtins.list[JsonObj]:
        candidates = [r for r in _RESOURCES if r.kind == kind
                      and (api_version is None or r.api_version == api_version)]
        if not candidates:
            raise KeyError(f"no resource of kind {kind!r} ({api_version or 'any version'})")
        res = candidates[0]
        selector = _Selector(tuple(parse_label_selector(label_selector)))
        with self._cond:
            self._expire_terminating()
            items, _ = self._select(res, namespace, selector)
            return [self._to_external(res, item) for item in items]

    # ----------------------------------------------------------------- storage

    def _resource_for(self, api_version: str, kind: str) -> _Resource:
        for res in _RESOURCES:
            if res.api_version == api_version and res.kind == kind:
                if res.custom and res.group not in self._crds:
                    raise _error(404, f'no matches for kind "{kind}" in version "{api_version}"')
                return res
        raise KeyError(f"the stand-in serves no apiVersion={api_version!r} kind={kind!r}; "
                       "objects given to the direct API need both")

    def _primary(self, storage_key: str) -> _Resource:
        return next(r for r in _RESOURCES if r.storage_key == storage_key)

    def _stored(self, res: _Resource, namespace: str, name: str) -> JsonObj | None:
        return self._objects.get(res.storage_key, {}).get(
            (namespace if res.namespaced else "", name))

    def _select(self, res: _Resource, namespace: str | None, selector: _Selector, *,
                after: tuple[str, str] | None = None, limit: int = 0
                ) -> tuple[builtins.list[JsonObj], int]:
        """The objects of ``namespace`` (all when None) matching ``selector``, in key order
        from just after ``after``, at most ``limit`` (0: all); and how many keys of the range
        lie beyond the last one returned (lock held)."""
        store = self._objects.get(res.storage_key, {})
        keys = self._keys.get(res.storage_key, [])
        if namespace:
            low = bisect.bisect_left(keys, (namespace, ""))
            high = bisect.bisect_left(keys, (namespace + "\x00", ""))
        else:
            low, high = 0, len(keys)
        if after is not None:
            low = max(low, bisect.bisect_right(keys, after))
        out: builtins.list[JsonObj] = []
        index = low
        while index < high and (not limit or len(out) < limit):
            obj = store[keys[index]]
            index += 1
            if selector.matches(obj):
                out.append(obj)
        return out, high - index

    def _to_storage(self, res: _Resource, obj: JsonObj) -> JsonObj:
        obj = copy.deepcopy(obj)
        if res.group == "events.k8s.io":
            for external, internal in _EVENT_RENAMES:
                obj.pop(internal, None)
                if external in obj:
                    obj[internal] = obj.pop(external)
        primary = self._primary(res.storage_key)
        obj["apiVersion"], obj["kind"] = primary.api_version, primary.kind
        obj.setdefault("metadata", {})
        return obj

    def _to_external(self, res: _Resource, obj: JsonObj, *, in_list: bool = False) -> JsonObj:
        obj = copy.deepcopy(obj)
        if res.group == "events.k8s.io":
            for external, internal in _EVENT_RENAMES:
                obj.pop(external, None)
                if internal in obj:
                    obj[external] = obj.pop(internal)
        if in_list and not res.custom:
            # Items of built-in lists carry no kind/apiVersion on the wire.
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
        else:
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        return obj

    def _commit(self, res: _Resource, change: str, obj: JsonObj, old: JsonObj | None) -> JsonObj:
        """Store one change under a new resourceVersion and wake the watches (lock held)."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        store = self._objects.setdefault(res.storage_key, {})
        keys = self._keys.setdefault(res.storage_key, [])
        if change == "DELETED":
            if store.pop(key, None) is not None:
                del keys[bisect.bisect_left(keys, key)]
        else:
            if key not in store:
                bisect.insort(keys, key)
            store[key] = obj
        if res.storage_key == "pods":
            if change != "DELETED" and meta.get("deletionTimestamp") and \
                    meta.get("deletionGracePeriodSeconds") and not meta.get("finalizers"):
                self._terminating.add(key)
            else:
                self._terminating.discard(key)
        self._history.append(_Change(self._rv, res.storage_key, change, copy.deepcopy(obj), old))
        while len(self._history) > self._history_limit:
            self._compacted_rv = self._history.popleft().rv
        self._cond.notify_all()
        return obj

    def _now(self) -> str:
        return _format_time(self._clock(), micro=False)

    def _check_body(self, res: _Resource, body: Any, *, kind: str | None = None) -> JsonObj:
        if not isinstance(body, dict):
            raise _error(400, f'{res.kind} in version "{res.version}" cannot be handled as a '
                              f"{res.kind}: the body is not a JSON object")
        want_kind = kind or res.kind
        got_kind, got_version = body.get("kind"), body.get("apiVersion")
        if (got_kind and got_kind != want_kind) or (
                got_version and kind is None and got_version != res.api_version):
            raise _error(400, f"the API version in the data ({got_version}) or kind ({got_kind}) "
                              f"does not match the expected {res.api_version} {want_kind}")
        if not isinstance(body.get("metadata", {}), dict):
            raise _error(400, "metadata must be an object")
        return body

    def _create(self, res: _Resource, namespace: str | None, body: JsonObj, *, via_http: bool,
                dry_run: bool = False) -> JsonObj:
        self._check_body(res, body)
        obj = self._to_storage(res, body)
        meta = obj["metadata"]
        if res.namespaced:
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                raise _error(400, "the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if via_http:
            for system in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                           "deletionGracePeriodSeconds", "generation", "managedFields"):
                meta.pop(system, None)
            if res.status and res.plural != "nodes":
                obj["status"] = ({"phase": "Pending"} if res.plural == "pods" else {})
        with self._cond:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(res, meta)
            causes = _validate_meta(res, meta) + _validate_spec(res, obj)
            if res.plural == "events" and via_http:
                causes += _validate_event(res, obj)
            if causes:
                raise _invalid(res.qualified_kind, res.group, meta.get("name", ""), causes)
            _normalise_times(res, obj, strict=via_http)
            if res.namespaced:
                namespaces = self._objects.get("namespaces", {})
                if ("", meta["namespace"]) not in namespaces:
                    if via_http:
                        raise _error(404, f'namespaces "{meta["namespace"]}" not found',
                                     {"name": meta["namespace"], "kind": "namespaces"})
                    if not dry_run:
                        self.create({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": meta["namespace"]}})
            if self._stored(res, meta.get("namespace", ""), meta["name"]) is not None:
                raise _already_exists(res, meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta.setdefault("creationTimestamp", self._now())
            if res.generation:
                meta["generation"] = 1
            self._apply_defaults(res, obj)
            if dry_run:
                return self._to_external(res, obj)
            return self._to_external(res, self._commit(res, "ADDED", obj, None))

    def _generate_name(self, res: _Resource, meta: JsonObj) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        while True:
            name = str(meta["generateName"]) + "".join(random.choices(alphabet, k=5))
            if self._stored(res, meta.get("namespace", ""), name) is None:
                return name

    def _apply_defaults(self, res: _Resource, obj: JsonObj) -> None:
        if res.scale:
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("replicas", 1)
        if res.status:
            status = obj.setdefault("status", {})
            # Go serialises these status counters even when zero (no omitempty).
            for counter in _STATUS_COUNTERS.get(res.plural, ()):
                if isinstance(status, dict):
                    status.setdefault(counter, 0)
        if res.plural == "namespaces":
            name = obj["metadata"]["name"]
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")

    def _update(self, res: _Resource, current: JsonObj, new: JsonObj, *, mode: str,
                dry_run: bool = False) -> JsonObj:
        """Write ``new`` over ``current`` (lock held). ``mode``: main, status, scale, apply.

        Returns the stored object (storage form). A write that changes nothing is not a write:
        no new resourceVersion and no watch event, as on the real server.
        """
        old_meta = current["metadata"]
        if mode in ("status", "scale"):
            result = copy.deepcopy(current)
            if mode == "status":
                result["status"] = copy.deepcopy(new.get("status", {}))
            else:
                result["spec"] = copy.deepcopy(new["spec"])
        else:
            result = copy.deepcopy(new)
            if mode == "main" and res.status:
                if "status" in current:
                    result["status"] = copy.deepcopy(current["status"])
                else:
                    result.pop("status", None)
        meta = result["metadata"]
        for system in ("uid", "creationTimestamp", "deletionTimestamp",
                       "deletionGracePeriodSeconds", "generation", "name", "namespace"):
            if mode == "apply" and system == "creationTimestamp" and meta.get(system):
                continue  # the direct API may backdate an object
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        self._apply_defaults(res, result)
        causes = _validate_meta(res, meta) + _validate_spec(res, result)
        if mode == "status" and res.plural == "jobs":
            causes += _validate_job_status(result)
        if causes:
            raise _invalid(res.qualified_kind, res.group, meta.get("name", ""), causes)
        _normalise_times(res, result, strict=mode != "apply")
        if res.generation and self._spec_changed(res, current, result):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if _same_json(result, current):
            return current
        if dry_run:
            return result
        if meta.get("deletionTimestamp") and not meta.get("finalizers") \
                and not meta.get("deletionGracePeriodSeconds"):
            return self._commit(res, "DELETED", result, current)
        return self._commit(res, "MODIFIED", result, current)

    @staticmethod
    def _spec_changed(res: _Resource, old: JsonObj, new: JsonObj) -> bool:
        if res.custom and not res.status:
            # Without a status subresource every non-metadata change is a new generation.
            strip = ("metadata",)
        else:
            return not _same_json(old.get("spec"), new.get("spec"))
        return not _same_json({k: v for k, v in old.items() if k not in strip},
                              {k: v for k, v in new.items() if k not in strip})

    def _delete(self, res: _Resource, current: JsonObj, *, options: JsonObj,
                dry_run: bool) -> tuple[JsonObj, bool]:
        """Delete, or only mark for deletion while finalizers remain (lock held).

        Returns the object as last stored (external form) and whether it is gone now.
        """
        meta = current["metadata"]
        preconditions = options.get("preconditions") or {}
        for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = preconditions.get(field_name)
            if want and want != meta.get(field_name):
                raise _conflict(res, meta["name"],
                                f"Precondition failed: {label} in precondition: {want}, "
                                f"{label} in object meta: {meta.get(field_name)}")
        policy = options.get("propagationPolicy")
        if policy not in (None, "", "Orphan", "Background", "Foreground"):
            raise _invalid("DeleteOptions.meta.k8s.io", "", "", [_Cause(
                "propagationPolicy", "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                '"Orphan", "nil"')])
        grace = self._pod_grace(current, options) if res.plural == "pods" else 0
        if grace > 0:
            return self._delete_gracefully(res, current, grace, dry_run=dry_run)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return self._to_external(res, current), False
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = self._now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if not dry_run:
                marked = self._commit(res, "MODIFIED", marked, current)
            return self._to_external(res, marked), False
        if res.plural == "namespaces" and not dry_run:
            # No namespace controller here: the contents go at once, then the namespace.
            for storage_key, store in builtins.list(self._objects.items()):
                owner = self._primary(storage_key)
                for key, obj in builtins.list(store.items()):
                    if owner.namespaced and key[0] == meta["name"]:
                        self._commit(owner, "DELETED", copy.deepcopy(obj), obj)
        gone = copy.deepcopy(current)
        if not dry_run:
            gone = self._commit(res, "DELETED", gone, current)
        return self._to_external(res, gone), True

    @staticmethod
    def _pod_grace(pod: JsonObj, options: JsonObj) -> int:
        """Seconds a pod deletion waits, as the API server's pod strategy decides: the
        request's ``gracePeriodSeconds``, else the pod's own, else 30; 0 for a pod that is
        not bound to a node or has already finished."""
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        asked = options.get("gracePeriodSeconds")
        if asked is None:
            asked = spec.get("terminationGracePeriodSeconds", _DEFAULT_POD_GRACE)
        try:
            return max(0, int(asked))
        except (TypeError, ValueError):
            raise _error(400, f"gracePeriodSeconds must be an integer, not {asked!r}") from None

    def _delete_gracefully(self, res: _Resource, current: JsonObj, grace: int, *,
                           dry_run: bool) -> tuple[JsonObj, bool]:
        """A bound pod: only marked (``deletionTimestamp`` = now + grace), Terminating until
        the grace period ends; a shorter grace period asked later brings that forward, and
        0 removes it at once (lock held)."""
        meta = current["metadata"]
        deadline = self._clock().timestamp() + grace
        stamped = meta.get("deletionTimestamp")
        if stamped and _parse_time(stamped) <= deadline:
            return self._to_external(res, current), False
        marked = copy.deepcopy(current)
        marked["metadata"]["deletionTimestamp"] = _format_time(
            datetime.fromtimestamp(deadline, UTC), micro=False)
        marked["metadata"]["deletionGracePeriodSeconds"] = grace
        if not dry_run:
            marked = self._commit(res, "MODIFIED", marked, current)
        return self._to_external(res, marked), False

    def _expire_terminating(self) -> None:
        """Remove the pods whose grace period has ended and that hold no finalizer: what the
        kubelet's final delete does on a real cluster (lock held)."""
        if not self._terminating:
            return
        res = self._primary("pods")
        now = self._clock().timestamp()
        store = self._objects.get(res.storage_key, {})
        for key in sorted(self._terminating):
            obj = store[key]
            meta = obj["metadata"]
            if (meta.get("deletionTimestamp") and not meta.get("finalizers")
                    and meta.get("deletionGracePeriodSeconds")
                    and _parse_time(meta["deletionTimestamp"]) <= now):
                self._commit(res, "DELETED", copy.deepcopy(obj), obj)

    @staticmethod
    def _delete_response(res: _Resource, obj: JsonObj, gone: bool) -> JsonObj:
        """What DELETE answers: most registries a success Status, some the deleted object."""
        if not gone or res.custom or res.plural in _RETURNS_DELETED:
            return obj
        if res.plural == "namespaces":
            obj["status"] = {"phase": "Terminating"}
            return obj
        details = _res_details(res, obj["metadata"]["name"])
        details["uid"] = obj["metadata"].get("uid")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details}

    # ----------------------------------------------------------------- scale subresource

    @staticmethod
    def _scale_of(current: JsonObj) -> JsonObj:
        meta = current["metadata"]
        spec = current.get("spec") or {}
        status = current.get("status") or {}
        scale_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                           "creationTimestamp") if k in meta}
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": scale_meta,
            "spec": {"replicas": int(spec.get("replicas", 1))},
            "status": {"replicas": int(status.get("replicas", 0)),
                       "selector": _selector_string(spec.get("selector"))},
        }

    def _write_scale(self, res: _Resource, current: JsonObj, scale: Any, *,
                     dry_run: bool) -> JsonObj:
        self._check_body(res, scale, kind="Scale")
        name = current["metadata"]["name"]
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"].get("resourceVersion"):
            raise _conflict(res, name, _STALE)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise _invalid("Scale.autoscaling", "autoscaling", name, [
                _bad_value("spec.replicas", replicas, "must be greater than or equal to 0")])
        new = copy.deepcopy(current)
        new.setdefault("spec", {})["replicas"] = replicas
        stored = self._update(res, current, new, mode="scale", dry_run=dry_run)
        return self._scale_of(stored)

    # ----------------------------------------------------------------- HTTP dispatch

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
                self._handler_threads.add(threading.current_thread())
                if self._stopping.is_set():  # accepted while stop() was running
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            else:
                self._connections.discard(conn)
                self._handler_threads.discard(threading.current_thread())

    def _serve(self, handler: _Handler) -> None:
        method = handler.command
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RequestRecord(method, path, query, body, content_type, headers)
        with self._cond:
            self._log.append(record)
            self._expire_terminating()
        try:
            self._apply_fault(method, path)
            self._authorize(method, path, query)
            if isinstance(body, str) and content_type != "application/apply-patch+yaml":
                raise _error(400, "the request body is not valid JSON")
            code, payload = self._route(handler, record)
        except KubeApiError as exc:
            code, payload = exc.code, exc.status
        except Exception as exc:  # a bug in the stand-in: answer like the server, show the trace
            traceback.print_exc()
            code, payload = 500, _status(500, "InternalError", f"Internal error occurred: {exc}")
        if code == 0:
            handler.close_connection = True  # a watch answered on its own
            return
        record.status = code
        self._send(handler, code, payload)

    def _apply_fault(self, method: str, path: str) -> None:
        with self._cond:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.hits += 1
        if fault is None:
            return
        if fault.delay:
            self._stopping.wait(fault.delay)
        if fault.status is not None:
            reason = _REASONS.get(fault.status, "InternalError")
            message = ("Internal error occurred: injected by the test"
                       if fault.status >= 500 else f"injected by the test: {reason}")
            details: JsonObj = {"retryAfterSeconds": 1} if fault.status == 429 else {}
            raise KubeApiError(_status(fault.status, reason, message, details))

    @staticmethod
    def _send(handler: _Handler, code: int, payload: Any) -> None:
        text = isinstance(payload, str)  # /healthz and friends answer plain text
        data = payload.encode() if text else json.dumps(payload, separators=(",", ":")).encode()
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "text/plain; charset=utf-8" if text
                                else "application/json")
            handler.send_header("Content-Length", str(len(data)))
            if code == 429:
                handler.send_header("Retry-After", "1")
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            handler.close_connection = True

    def _route(self, handler: _Handler, record: RequestRecord) -> tuple[int, Any]:
        method, path, query = record.method, record.path, record.query
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"
        if method != "GET" and path in ("/version", "/api", "/apis"):
            raise self._method_not_allowed()
        if path == "/version":
            return 200, SERVER_VERSION
        if path == "/api":
            address = {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [address]}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [self._group_doc(g) for g in self._groups()]}
        segments = path.strip("/").split("/")
        if segments[0] == "api" and len(segments) >= 2:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[0] == "apis" and len(segments) >= 2:
            group = segments[1]
            if group not in self._groups():
                raise self._no_such_path()
            if len(segments) == 2:
                if method != "GET":
                    raise self._method_not_allowed()
                return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group)}
            version, rest = segments[2], segments[3:]
        else:
            raise self._no_such_path()
        served = [r for r in self._served() if r.group == group and r.version == version]
        if not served:
            raise self._no_such_path()
        if not rest:
            if method != "GET":
                raise self._method_not_allowed()
            return 200, self._resource_list(group, version, served)
        namespace: str | None = None
        by_plural = {r.plural: r for r in served}
        if (rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in by_plural
                and by_plural[rest[2]].namespaced):
            namespace, rest = rest[1], rest[2:]
        res = by_plural.get(rest[0])
        if res is None or len(rest) > 3 or (res.namespaced and namespace is None and len(rest) > 1):
            raise self._no_such_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not ((sub == "status" and res.status)
                                    or (sub == "scale" and res.scale)):
            raise self._no_such_path()
        dry_run = self._dry_run(query)
        if name is None:
            if method == "GET":
                if query.get("watch", "") in _TRUE:
                    self._watch(handler, record, res, namespace)
                    return 0, None
                return 200, self._list(res, namespace, query)
            if method == "POST" and (namespace is not None or not res.namespaced):
                return 201, self._create(res, namespace, self._check_body(res, record.body),
                                         via_http=True, dry_run=dry_run)
            if method == "DELETE" and (namespace is not None or not res.namespaced):
                return 200, self._delete_collection(res, namespace, query, dry_run=dry_run)
            raise self._method_not_allowed()
        if method == "GET":
            with self._cond:
                current = self._stored(res, namespace or "", name)
                if current is None:
                    raise _not_found(res, name)
                return 200, (self._scale_of(current) if sub == "scale"
                             else self._to_external(res, current))
        if method == "PUT":
            return 200, self._replace(res, namespace, name, record.body, sub, dry_run=dry_run)
        if method == "PATCH":
            return 200, self._patch(res, namespace, name, record, sub, dry_run=dry_run)
        if method == "DELETE" and sub is None:
            options = dict(record.body) if isinstance(record.body, dict) else {}
            if "propagationPolicy" in query:
                options["propagationPolicy"] = query["propagationPolicy"]
            if "gracePeriodSeconds" in query:
                options["gracePeriodSeconds"] = query["gracePeriodSeconds"]
            with self._cond:
                current = self._stored(res, namespace or "", name)
                if current is None:
                    raise _not_found(res, name)
                obj, gone = self._delete(res, current, options=options, dry_run=dry_run)
                return 200, self._delete_response(res, obj, gone)
        raise self._method_not_allowed()

    @staticmethod
    def _no_such_path() -> KubeApiError:
        return _error(404, "the server could not find the requested resource", {})

    @staticmethod
    def _method_not_allowed() -> KubeApiError:
        return _error(405, "the server does not allow this method on the requested resource", {})

    @staticmethod
    def _dry_run(query: Mapping[str, str]) -> bool:
        value = query.get("dryRun", "")
        if value not in ("", "All"):
            raise _error(400, f'Invalid dry run value: "{value}"; only "All" is supported')
        return value == "All"

    def _served(self) -> builtins.list[_Resource]:
        return [r for r in _RESOURCES if not r.custom or r.group in self._crds]

    def _groups(self) -> builtins.list[str]:
        groups: list[str] = []
        for res in self._served():
            if res.group and res.group not in groups:
                groups.append(res.group)
        return groups

    def _group_doc(self, group: str) -> JsonObj:
        versions: list[JsonObj] = []
        for res in self._served():
            if res.group == group and res.version not in [v["version"] for v in versions]:
                versions.append({"groupVersion": res.api_version, "version": res.version})
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    @staticmethod
    def _resource_list(group: str, version: str, served: Iterable[_Resource]) -> JsonObj:
        resources: list[JsonObj] = []
        for res in served:
            entry: JsonObj = {"name": res.plural, "singularName": res.kind.lower(),
                              "namespaced": res.namespaced, "kind": res.kind, "verbs": _VERBS}
            if res.short_names:
                entry["shortNames"] = builtins.list(res.short_names)
            resources.append(entry)
            if res.status:
                resources.append({"name": f"{res.plural}/status", "singularName": "",
                                  "namespaced": res.namespaced, "kind": res.kind,
                                  "verbs": _SUB_VERBS})
            if res.scale:
                resources.append({"name": f"{res.plural}/scale", "singularName": "",
                                  "namespaced": res.namespaced, "group": "autoscaling",
                                  "version": "v1", "kind": "Scale", "verbs": _SUB_VERBS})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    def _selector(self, res: _Resource, query: Mapping[str, str]) -> _Selector:
        return _Selector(tuple(parse_label_selector(query.get("labelSelector", ""))),
                         tuple(_parse_field_selector(res, query.get("fieldSelector", ""))))

    # ----------------------------------------------------------------- verbs

    def _list(self, res: _Resource, namespace: str | None, query: Mapping[str, str]) -> JsonObj:
        selector = self._selector(res, query)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise _error(400, f"invalid limit {query.get('limit')!r}") from None
        with self._cond:
            list_rv, after = self._rv, None
            if query.get("continue"):
                list_rv, after = self._decode_continue(query["continue"])
            # One past the page: whether anything matches beyond it decides the token.
            items, beyond = self._select(res, namespace, selector, after=after,
                                         limit=limit + 1 if limit > 0 else 0)
            metadata: JsonObj = {"resourceVersion": str(list_rv)}
            if limit > 0 and len(items) > limit:
                last = self._key(items[limit - 1])
                token = json.dumps({"rv": list_rv, "start": list(last)})
                metadata["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
                if selector.empty:
                    metadata["remainingItemCount"] = beyond + 1
                items = items[:limit]
            return {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                    "metadata": metadata,
                    "items": [self._to_external(res, i, in_list=True) for i in items]}

    @staticmethod
    def _key(obj: JsonObj) -> tuple[str, str]:
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, start = int(decoded["rv"]), (str(decoded["start"][0]), str(decoded["start"][1]))
        except (ValueError, KeyError, TypeError, IndexError):
            raise _error(400, "continue key is not valid: incorrect encoded start "
                              "resourceVersion (version meta.k8s.io/v1)") from None
        if rv < self._compacted_rv:
            raise _error(410, "The provided continue parameter is too old to display a "
                              "consistent list result. You can start a new list without the "
                              "continue parameter.")
        return rv, start

    def _delete_collection(self, res: _Resource, namespace: str | None,
                           query: Mapping[str, str], *, dry_run: bool) -> JsonObj:
        selector = self._selector(res, query)
        with self._cond:
            deleted = [self._delete(res, obj, options={}, dry_run=dry_run)[0]
                       for obj in self._select(res, namespace, selector)[0]]
            return {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(self._rv)}, "items": deleted}

    def _replace(self, res: _Resource, namespace: str | None, name: str, body: Any,
                 sub: str | None, *, dry_run: bool) -> JsonObj:
        if sub == "scale":
            with self._cond:
                current = self._stored(res, namespace or "", name)
                if current is None:
                    raise _not_found(res, name)
                return self._write_scale(res, current, body, dry_run=dry_run)
        body = self._check_body(res, body)
        meta = body.get("metadata", {})
        if meta.get("name") != name:
            raise _error(400, f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        if res.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise _error(400, "the namespace of the provided object does not match the "
                              "namespace sent on the request")
        with self._cond:
            current = self._stored(res, namespace or "", name)
            if current is None:
                raise _not_found(res, name)
            rv = meta.get("resourceVersion")
            if rv and rv != current["metadata"].get("resourceVersion"):
                raise _conflict(res, name, _STALE)
            if not rv and res.custom:
                raise _invalid(res.qualified_kind, res.group, name, [_bad_value(
                    "metadata.resourceVersion", "0x0", "must be specified for an update")])
            new = self._to_storage(res, body)
            stored = self._update(res, current, new, mode=sub or "main", dry_run=dry_run)
            return self._to_external(res, stored)

    def _patch(self, res: _Resource, namespace: str | None, name: str, record: RequestRecord,
               sub: str | None, *, dry_run: bool) -> JsonObj:
        kinds = ["application/json-patch+json", "application/merge-patch+json"]
        if not res.custom:
            kinds.append("application/strategic-merge-patch+json")
        if record.content_type == "application/apply-patch+yaml":
            raise _error(415, "server-side apply is not implemented by the test stand-in")
        if record.content_type not in kinds:
            raise _error(415, "the body of the request was in an unknown format - accepted media "
                              "types include: " + ", ".join(
                                  [*kinds, "application/apply-patch+yaml"]))
        with self._cond:
            current = self._stored(res, namespace or "", name)
            if current is None:
                raise _not_found(res, name)
            base = self._scale_of(current) if sub == "scale" else self._to_external(res, current)
            if record.content_type == "application/json-patch+json":
                patched = _json_patch(base, record.body)
            else:
                # Strategic merge patch is applied as a JSON merge patch: lists are replaced
                # whole, never merged by key, and $patch directives are not understood.
                if not isinstance(record.body, dict):
                    raise _error(400, "Invalid JSON Patch")
                patched = _merge_patch(base, record.body)
            if sub == "scale":
                return self._write_scale(res, current, patched, dry_run=dry_run)
            patched = self._check_body(res, patched)
            meta = patched.get("metadata") or {}
            if meta.get("name") != name:
                raise _error(400, f"the name of the object ({meta.get('name')}) does not match "
                                  f"the name on the URL ({name})")
            if res.namespaced and meta.get("namespace") != namespace:
                raise _error(400, "the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            rv = meta.get("resourceVersion")
            if rv and rv != current["metadata"].get("resourceVersion"):
                raise _conflict(res, name, _STALE)
            new = self._to_storage(res, patched)
            stored = self._update(res, current, new, mode=sub or "main", dry_run=dry_run)
            return self._to_external(res, stored)

    # ----------------------------------------------------------------- watch

    def _watch(self, handler: _Handler, record: RequestRecord, res: _Resource,
               namespace: str | None) -> None:
        query = record.query
        selector = self._selector(res, query)
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
            start = query.get("resourceVersion", "")
            start_rv = int(start) if start not in ("", "0") else None
        except ValueError:
            raise _error(400, "invalid resourceVersion or timeoutSeconds") from None
        bookmarks = query.get("allowWatchBookmarks", "") in _TRUE
        watch = _OpenWatch(record.path, handler.connection)
        initial: list[JsonObj] = []
        with self._cond:
            if start_rv is None:
                cursor = self._rv
                initial = [{"type": "ADDED", "object": self._to_external(res, obj)}
                           for obj in self._select(res, namespace, selector)[0]]
            else:
                cursor = start_rv
        try:
            record.status = 200
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.send_header("Cache-Control", "no-cache, private")
            # This connection closes when the watch ends; say so, or the client pools it and
            # its next request fails on a dead socket.
            handler.send_header("Connection", "close")
            handler.end_headers()
            # Only now is it a watch that drop_watches() can cut: cut earlier, the client
            # would just retry the GET and watch on as if nothing happened.
            with self._cond:
                self._watches.add(watch)
            self._stream(handler, watch, res, namespace, selector, cursor, initial,
                         timeout=timeout, bookmarks=bookmarks)
        except OSError:
            pass
        finally:
            with self._cond:
                self._watches.discard(watch)

    def _stream(self, handler: _Handler, watch: _OpenWatch, res: _Resource,  # noqa: PLR0917
                namespace: str | None, selector: _Selector, cursor: int,
                initial: builtins.list[JsonObj], *, timeout: float | None,
                bookmarks: bool) -> None:
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        next_bookmark = started + self._bookmark_interval if bookmarks else None
        pending = builtins.list(initial)
        while True:
            if pending and not self._write_events(handler, pending):
                return
            pending = []
            with self._cond:
                if cursor >= self._compacted_rv and self._rv == cursor and not self._halted(watch):
                    wake = [0.25]  # also poll for clients that went away
                    wake += [t - time.monotonic()
                             for t in (deadline, next_bookmark) if t is not None]
                    self._cond.wait(timeout=max(0.0, min(wake)))
                    self._expire_terminating()
                if self._halted(watch):
                    break
                if cursor < self._compacted_rv:
                    gone = _status(410, "Expired", f"too old resource version: {cursor} "
                                                   f"({self._compacted_rv + 1})")
                    self._write_events(handler, [{"type": "ERROR", "object": gone}])
                    self._end_stream(handler)
                    return
                changes = [c for c in self._history
                           if c.rv > cursor and c.storage == res.storage_key]
                cursor = self._rv
            for change in changes:
                event = self._watch_event(res, namespace, selector, change)
                if event is not None:
                    pending.append(event)
            now = time.monotonic()
            if next_bookmark is not None and now >= next_bookmark:
                pending.append({"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(cursor)}}})
                next_bookmark = now + self._bookmark_interval
            if deadline is not None and now >= deadline:
                if pending:
                    self._write_events(handler, pending)
                self._end_stream(handler)
                return
            if not pending and self._client_gone(watch.sock):
                return
        if not watch.dropped:
            # Server shutting down: end the stream cleanly so the client sees EOF, not garbage.
            self._end_stream(handler)

    def _halted(self, watch: _OpenWatch) -> bool:
        return watch.dropped or self._stopping.is_set()

    def _watch_event(self, res: _Resource, namespace: str | None, selector: _Selector,
                     change: _Change) -> JsonObj | None:
        obj = change.obj
        if namespace and obj["metadata"].get("namespace") != namespace:
            return None
        now_matches = selector.matches(obj)
        if change.type == "MODIFIED" and not selector.empty:
            # A selector watch sees objects enter and leave its set as ADDED and DELETED.
            was_matching = change.old is not None and selector.matches(change.old)
            kind = {(True, True): "MODIFIED", (False, True): "ADDED",
                    (True, False): "DELETED"}.get((was_matching, now_matches))
        else:
            kind = change.type if now_matches else None
        if kind is None:
            return None
        return {"type": kind, "object": self._to_external(res, obj)}

    @staticmethod
    def _write_events(handler: _Handler, events: Iterable[JsonObj]) -> bool:
        try:
            for event in events:
                data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()
        except OSError:
            return False
        return True

    @staticmethod
    def _end_stream(handler: _Handler) -> None:
        with contextlib.suppress(OSError):
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()

    @staticmethod
    def _client_gone(sock: socket.socket) -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


def standin_threads(*, port: int | None = None) -> list[threading.Thread]:
    """Live threads of stand-ins (of the one on ``port``), for leak checks after ``stop()``."""
    return [t for t in threading.enumerate() if t.name.startswith(_THREAD_PREFIX)
            and (port is None or t.name.endswith(f":{port}"))]
