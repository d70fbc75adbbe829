"""Kubernetes objects in the API's own JSON shapes: reading their metadata, and building them.

The builders are shared by the simulated cluster (``agent.sim``), the tests and the bench,
so that every pod, workload and owner chain they create has the one shape a cluster holds.
Each builder returns a plain dict; nothing here calls the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

JsonObj = dict[str, Any]
GPU_RESOURCE: Final = "nvidia.com/gpu"
# apiVersion of the workload kinds the builders make.
API_VERSIONS: Final = {"Pod": "v1", "Namespace": "v1", "Deployment": "apps/v1",
                       "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1",
                       "DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}


def meta(obj: JsonObj) -> JsonObj:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def controller_ref(obj: JsonObj) -> JsonObj | None:
    """The ownerReference with ``controller: true`` (the object that manages this one)."""
    for ref in meta(obj).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None


def iso_time(moment: datetime) -> str:
    """A Kubernetes ``Time``: RFC 3339 in UTC, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_reference(owner: JsonObj) -> JsonObj:
    """A controller reference to ``owner`` (as stored: it must carry the server's uid)."""
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def metadata(name: str, namespace: str | None = None, *,
             labels: Mapping[str, str] | None = None,
             annotations: Mapping[str, str] | None = None, owner: JsonObj | None = None,
             created: datetime | None = None, uid: str | None = None) -> JsonObj:
    out: JsonObj = {"name": name}
    if namespace is not None:
        out["namespace"] = namespace
    out["labels"] = dict(labels or {})
    if annotations:
        out["annotations"] = dict(annotations)
    if uid is not None:
        out["uid"] = uid
    if created is not None:
        out["creationTimestamp"] = iso_time(created)
    if owner is not None:
        out["ownerReferences"] = [owner_reference(owner)]
    return out


def container(image: str, *, name: str = "main", gpus: int = 0,
              env: Mapping[str, str] | None = None, gpu_resource: str = GPU_RESOURCE,
              with_requests: bool = False) -> JsonObj:
    """A container; ``gpus`` as limits (and requests, ``with_requests``), as the device
    plugin allocates them."""
    body: JsonObj = {"name": name, "image": image}
    if env:
        body["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if gpus:
        body["resources"] = {"limits": {gpu_resource: str(gpus)}}
        if with_requests:
            body["resources"]["requests"] = {gpu_resource: str(gpus)}
    return body


def pod(name: str, namespace: str, *, containers: list[JsonObj] | None = None,
        image: str = "registry.example/app:1", gpus: int = 0, node: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None, owner: JsonObj | None = None,
        created: datetime | None = None, uid: str | None = None,
        status: JsonObj | None = None, restart_policy: str | None = None) -> JsonObj:
    """A pod; one ``main`` container running ``image`` unless ``containers`` are given."""
    spec: JsonObj = {"containers": containers if containers is not None
                     else [container(image, gpus=gpus)]}
    if node is not None:
        spec["nodeName"] = node
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    obj: JsonObj = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": metadata(name, namespace, labels=labels,
                                         annotations=annotations, owner=owner,
                                         created=created, uid=uid),
                    "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def workload(kind: str, name: str, namespace: str, *, image: str = "registry.example/app:1",
             replicas: int | None = 1, labels: Mapping[str, str] | None = None,
             template_labels: Mapping[str, str] | None = None,
             containers: list[JsonObj] | None = None, owner: JsonObj | None = None,
             created: datetime | None = None, uid: str | None = None) -> JsonObj:
    """A Deployment, ReplicaSet, StatefulSet, DaemonSet or Job whose pods run ``image``
    (selected by ``app: <name>``; a Job has no selector and restarts never)."""
    selector = {"app": name}
    template_spec: JsonObj = {"containers": containers if containers is not None
                              else [container(image)]}
    spec: JsonObj = {}
    if kind == "Job":
        template_spec["restartPolicy"] = "Never"
    else:
        spec["selector"] = {"matchLabels": selector}
        if replicas is not None and kind != "DaemonSet":
            spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    spec["template"] = {"metadata": {"labels": {**selector, **(template_labels or {})}},
                        "spec": template_spec}
    return {"apiVersion": API_VERSIONS[kind], "kind": kind,
            "metadata": metadata(name, namespace, labels=labels, owner=owner, created=created,
                                 uid=uid),
            "spec": spec}


def namespace(name: str, *, labels: Mapping[str, str] | None = None) -> JsonObj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, labels=labels)}
