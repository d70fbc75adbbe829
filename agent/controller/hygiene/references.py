"""What the cluster references: images (by tag and by digest) and bucket names.

Read fresh from the Kubernetes API on every call: a cached answer could let a job delete an
image or a bucket that was deployed a minute ago.

Bucket references come from what a workload can see without a Secret: container env values,
commands and args, pod and pod-template annotations, ConfigMaps, and ServiceAccount
annotations (IRSA ``eks.amazonaws.com/role-arn``, GKE/Azure workload identity). Secrets are
read only in the namespaces the operator lists (``secret_namespaces``; the chart grants
``secrets list`` there through RoleBindings, never cluster-wide), and then only their names
and annotations, asked for as metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.errors import plain_cause

# Where workloads keep their pod spec, by (API path, kind).
_WORKLOADS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/api/v1/pods", "Pod", ("spec",)),
    ("/apis/apps/v1/deployments", "Deployment", ("spec", "template", "spec")),
    ("/apis/apps/v1/statefulsets", "StatefulSet", ("spec", "template", "spec")),
    ("/apis/apps/v1/daemonsets", "DaemonSet", ("spec", "template", "spec")),
    # A Deployment's old ReplicaSets are its rollback targets: their images must survive.
    ("/apis/apps/v1/replicasets", "ReplicaSet", ("spec", "template", "spec")),
    ("/apis/batch/v1/jobs", "Job", ("spec", "template", "spec")),
    ("/apis/batch/v1/cronjobs", "CronJob", ("spec", "jobTemplate", "spec", "template", "spec")),
)
# Argo's CRDs may be absent; their specs are walked whole, whatever the template type.
_ARGO_GROUP, _ARGO_VERSION = "argoproj.io", "v1alpha1"
_ARGO: tuple[tuple[str, str], ...] = (
    ("workflows", "Workflow"),
    ("workflowtemplates", "WorkflowTemplate"),
    ("cronworkflows", "CronWorkflow"),
)
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
# Asks the API server for metadata only: Secret values never leave the server.
_METADATA_ONLY = ("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
                  "application/json")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_BUCKET_TOKEN_RE = re.compile(r"[a-z0-9][a-z0-9.-]*")


class ReferencesUnavailable(Exception):
    """The cluster could not be read: no job may decide that something is unreferenced."""


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageReference:
    """One image as a pod spec or a container status names it."""

    host: str | None  # registry host (with port); None for Docker Hub short names
    repository: str
    tag: str | None
    digest: str | None


def parse_image(text: str) -> ImageReference | None:
    """``[host[:port]/]path[:tag][@digest]``, or a runtime's ``docker-pullable://...``."""
    value = text.strip()
    for prefix in ("docker-pullable://", "docker://", "containerd://"):
        value = value.removeprefix(prefix)
    if not value:
        return None
    if _DIGEST_RE.match(value):  # a bare image ID
        return ImageReference(None, "", None, value.lower())
    name, _, digest = value.partition("@")
    if digest and not _DIGEST_RE.match(digest):
        return None
    first, slash, rest = name.partition("/")
    host: str | None = None
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, name = first.lower(), rest
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1:]
    if not name:
        return None
    return ImageReference(host, name, tag or None, digest.lower() or None)


@dataclass(frozen=True)
class ImageReferences:
    """Every image the cluster uses, indexed for the stale-images policy."""

    by_digest: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Keyed by repository path, whatever the host: a registry reached through an alias, a
    # mirror or a pull-through cache must still count as referenced (over-protecting is safe).
    by_tag: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def find(self, repository: str, *, tags: Iterable[str], digests: Iterable[str]
             ) -> str | None:
        """``referenced by ml/CronJob/nightly (digest)``, or None when nothing uses it."""
        for digest in digests:
            where = self.by_digest.get(digest.lower())
            if where:
                return f"referenced by {_first(where)} (digest)"
        for tag in tags:
            where = self.by_tag.get((repository, tag))
            if where:
                return f"referenced by {_first(where)} (tag {tag})"
        return None


def _first(where: tuple[str, ...]) -> str:
    ordered = sorted(set(where))
    return ordered[0] + (f" and {len(ordered) - 1} more" if len(ordered) > 1 else "")


def index_images(found: Iterable[tuple[str, str]]) -> ImageReferences:
    """``(image text, where)`` pairs -> :class:`ImageReferences`."""
    by_digest: dict[str, set[str]] = {}
    by_tag: dict[tuple[str, str], set[str]] = {}
    for text, where in found:
        ref = parse_image(text)
        if ref is None:
            continue
        if ref.digest:
            by_digest.setdefault(ref.digest, set()).add(where)
        if ref.repository:
            # The runtime pulls ":latest" when a spec names neither tag nor digest.
            tag = ref.tag or (None if ref.digest else "latest")
            if tag:
                by_tag.setdefault((ref.repository, tag), set()).add(where)
    return ImageReferences({k: tuple(sorted(v)) for k, v in by_digest.items()},
                           {k: tuple(sorted(v)) for k, v in by_tag.items()})


# --------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class BucketReferences:
    """Every word of cluster text that could be a bucket name, and where it was seen.

    Text is cut at characters a bucket name cannot hold; a dotted run (``name.s3.amazonaws.com``)
    also yields each of its dot-separated sub-runs, so ``s3://logs/x``, ``arn:aws:s3:::logs``
    and ``logs.s3.eu-west-1.amazonaws.com`` all reference ``logs``.
    """

    words: Mapping[str, str] = field(default_factory=dict)

    def find(self, bucket: str) -> str | None:
        where = self.words.get(bucket.lower())
        return f"referenced by {where}" if where else None


def bucket_words(text: str) -> set[str]:
    found: set[str] = set()
    for token in _BUCKET_TOKEN_RE.findall(text.lower()):
        parts = [p for p in token.strip(".-").split(".") if p]
        if len(parts) > 16:  # not a host name: keep the whole run and its parts only
            found.update(parts)
            found.add(".".join(parts))
            continue
        for start in range(len(parts)):
            for end in range(start + 1, len(parts) + 1):
                found.add(".".join(parts[start:end]))
    return found


def index_buckets(found: Iterable[tuple[str, str]]) -> BucketReferences:
    """``(text, where)`` pairs -> :class:`BucketReferences` (first place seen wins)."""
    words: dict[str, str] = {}
    for text, where in found:
        for word in bucket_words(text):
            if word not in words or where < words[word]:
                words[word] = where
    return BucketReferences(words)


# --------------------------------------------------------------------------- sources


class ImageReferenceSource(Protocol):
    def image_references(self) -> ImageReferences:
        """Raises :class:`ReferencesUnavailable` when the answer would be incomplete."""
        ...


class BucketReferenceSource(Protocol):
    def bucket_references(self) -> BucketReferences:
        """Raises :class:`ReferencesUnavailable` when the answer would be incomplete."""
        ...


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _containers(pod_spec: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(pod_spec, dict):
        return
    for key in _CONTAINER_LISTS:
        for container in pod_spec.get(key) or []:
            if isinstance(container, dict):
                yield container


def _walk_strings(obj: Any, *, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string value) in a JSON document, depth first."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_strings(v, key=str(k))
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk_strings(item, key=key)
    elif isinstance(obj, str):
        yield key, obj


def _container_texts(container: dict[str, Any]) -> Iterator[str]:
    for env in container.get("env") or []:
        if isinstance(env, dict) and isinstance(env.get("value"), str):
            yield env["value"]
    for key in ("command", "args"):
        for arg in container.get(key) or []:
            if isinstance(arg, str):
                yield arg


class ClusterReferences:
    """Both reference sources over one ``kubernetes.client.ApiClient``.

    Lists are read raw (JSON, ``limit``/``continue`` pages) rather than as client models: a
    large cluster's pods and ReplicaSets deserialise many times faster this way.
    """

    def __init__(self, api_client: Any, *, page_size: int = 500,
                 request_timeout: float = 30.0,
                 secret_namespaces: Iterable[str] = ()) -> None:
        self._api = api_client
        self._page_size = page_size
        self._timeout = request_timeout
        self._secret_namespaces = tuple(sorted(set(secret_namespaces)))

    def image_references(self) -> ImageReferences:
        found: list[tuple[str, str]] = []
        for _obj, pod_spec, status, where in self._pod_specs():
            for container in _containers(pod_spec):
                if isinstance(container.get("image"), str):
                    found.append((container["image"], where))
            for key in _STATUS_LISTS:
                for entry in (status or {}).get(key) or []:
                    # imageID is the digest actually running, even if the tag moved since.
                    for field_name in ("imageID", "image"):
                        if isinstance(entry, dict) and isinstance(entry.get(field_name), str):
                            found.append((entry[field_name], where))
        for obj, where in self._argo_objects():
            found.extend((value, where) for key, value in _walk_strings(obj.get("spec"))
                         if key == "image")
        return index_images(found)

    def bucket_references(self) -> BucketReferences:
        found: list[tuple[str, str]] = []
        for obj, pod_spec, _status, where in self._pod_specs():
            for container in _containers(pod_spec):
                found.extend((text, f"{where} (env)") for text in _container_texts(container))
            found.extend((f"{k} {v}", f"{where} (annotation)")
                         for k, v in _template_annotations(obj))
        for obj in self._list("/api/v1/configmaps"):
            where = _where(obj, "ConfigMap")
            for key, value in (obj.get("data") or {}).items():
                found.append((f"{key} {value}", where))
            found.extend((f"{k} {v}", where) for k, v in _annotations(obj).items())
        for obj in self._list("/api/v1/serviceaccounts"):
            # IRSA and workload-identity annotations name the role or identity a workload
            # reaches its buckets with.
            found.extend((f"{k} {v}", f"{_where(obj, 'ServiceAccount')} (annotation)")
                         for k, v in _annotations(obj).items())
        for obj in self._secrets():
            # Names and annotations only; ``data`` is dropped unread even when a server that
            # ignores the metadata-only Accept header sends it.
            where = _where(obj, "Secret")
            found.append((str(_dig(obj, ("metadata", "name")) or ""), f"{where} (name)"))
            found.extend((f"{k} {v}", f"{where} (annotation)")
                         for k, v in _annotations(obj).items())
        for obj, where in self._argo_objects():
            found.extend((value, where) for _key, value in _walk_strings(obj.get("spec")))
        return index_buckets(found)

    # ------------------------------------------------------------------ reading

    def _pod_specs(self) -> Iterator[tuple[dict[str, Any], Any, Any, str]]:
        for path, kind, spec_path in _WORKLOADS:
            for obj in self._list(path):
                status = obj.get("status") if kind == "Pod" else None
                yield obj, _dig(obj, spec_path), status, _where(obj, kind)

    def _secrets(self) -> Iterator[dict[str, Any]]:
        for namespace in self._secret_namespaces:
            yield from self._list(f"/api/v1/namespaces/{namespace}/secrets",
                                  accept=_METADATA_ONLY)

    def _argo_objects(self) -> Iterator[tuple[dict[str, Any], str]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from agent.clients.kubernetes.api import served_resources

        # Discovery, not the lists, tells "Argo is not installed" (nothing to reference)
        # from "Argo is installed but not granted" (its templates cannot be read: the
        # answer would be incomplete). Both make a list answer 403.
        try:
            served = served_resources(self._api, _ARGO_GROUP, _ARGO_VERSION,
                                      request_timeout=self._timeout)
        except ApiException as exc:
            raise ReferencesUnavailable(
                f"cannot discover {_ARGO_GROUP}: HTTP {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise ReferencesUnavailable(
                f"cannot discover {_ARGO_GROUP}: {plain_cause(exc)}") from exc
        for plural, kind in _ARGO:
            if plural not in served:
                continue
            path = f"/apis/{_ARGO_GROUP}/{_ARGO_VERSION}/{plural}"
            for obj in self._list(path, missing_ok=True, forbidden_hint=(
                    "Argo Workflows are installed but not readable: grant the list "
                    "(chart: pipelines.argo=true)")):
                yield obj, _where(obj, kind)

    def _list(self, path: str, *, accept: str = "application/json",
              missing_ok: bool = False, forbidden_hint: str = "") -> Iterator[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        token: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", self._page_size)]
            if token:
                query.append(("continue", token))
            try:
                response = self._api.call_api(
                    path, "GET", query_params=query, header_params={"Accept": accept},
                    auth_settings=["BearerToken"], _preload_content=False,
                    _return_http_data_only=True, _request_timeout=self._timeout)
                body = json.loads(response.data)
            except ApiException as exc:
                if exc.status == 404 and missing_ok:
                    return  # the CRD went away after discovery: nothing of that kind exists
                hint = f" ({forbidden_hint})" if exc.status == 403 and forbidden_hint else ""
                raise ReferencesUnavailable(
                    f"cannot list {path}: HTTP {exc.status} {exc.reason}{hint}") from exc
            except (HTTPError, OSError, ValueError) as exc:
                # Connection failures, timeouts, a truncated or non-JSON body.
                raise ReferencesUnavailable(f"cannot list {path}: {plain_cause(exc)}") from exc
            yield from (item for item in body.get("items") or [] if isinstance(item, dict))
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return


def _where(obj: Mapping[str, Any], kind: str) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{kind}/{meta.get('name')}" if namespace else f"{kind}/{meta.get('name')}"


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in annotations.items()}


def _template_annotations(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A workload's own annotations and its pod template's (a CronJob's is two levels down)."""
    found = list(_annotations(obj).items())
    spec = obj.get("spec") or {}
    for template in (_dig(spec, ("template",)), _dig(spec, ("jobTemplate", "spec", "template"))):
        if isinstance(template, dict):
            found.extend(_annotations(template).items())
    return found
