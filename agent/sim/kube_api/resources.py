"""The resources the stand-in serves (its discovery documents and storage), and the
constants of the API it imitates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonObj = dict[str, Any]

SERVER_VERSION: JsonObj = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-steward-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}
TEST_TOKEN = "steward-test-token"
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_SUB_VERBS = ["get", "patch", "update"]
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_THREAD_PREFIX = "kube-api-standin"




@dataclass(frozen=True)
class _Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status: bool = False  # has a status subresource: main writes keep the stored status
    scale: bool = False
    generation: bool = False
    custom: bool = False  # a CRD: unstructured, optimistic locking required on PUT
    storage: str = ""  # resources sharing storage (core and events.k8s.io Events)
    fields: tuple[tuple[str, str], ...] = ()  # field selector label -> path in storage form

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def storage_key(self) -> str:
        return self.storage or self.group_resource

    def field_path(self, label: str) -> str | None:
        if label in ("metadata.name", "metadata.namespace"):
            return label
        return dict(self.fields).get(label)


_POD_FIELDS = tuple(
    (f, f)
    for f in (
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
    )
)
_INVOLVED = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
_CORE_EVENT_FIELDS = (
    *((f"involvedObject.{f}", f"involvedObject.{f}") for f in _INVOLVED),
    ("reason", "reason"), ("reportingComponent", "reportingComponent"),
    ("source", "source.component"), ("type", "type"),
)
_EVENTS_V1_FIELDS = (
    *((f"regarding.{f}", f"involvedObject.{f}") for f in _INVOLVED),
    ("reason", "reason"), ("reportingController", "reportingComponent"), ("type", "type"),
)

_RESOURCES: tuple[_Resource, ...] = (
    _Resource("", "v1", "pods", "Pod", short_names=("po",), status=True, generation=True,
              fields=_POD_FIELDS),
    _Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
              status=True, fields=(("status.phase", "status.phase"),)),
    _Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",), status=True,
              fields=(("spec.unschedulable", "spec.unschedulable"),)),
    _Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _Resource("", "v1", "secrets", "Secret", fields=(("type", "type"),)),
    _Resource("", "v1", "events", "Event", short_names=("ev",), fields=_CORE_EVENT_FIELDS),
    _Resource("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _Resource("apps", "v1", "deployments", "Deployment", short_names=("deploy",), status=True,
              scale=True, generation=True),
    _Resource("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), status=True,
              scale=True, generation=True),
    _Resource("apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",), status=True,
              generation=True),
    _Resource("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",), status=True,
              scale=True, generation=True, fields=(("status.replicas", "status.replicas"),)),
    _Resource("batch", "v1", "jobs", "Job", status=True, generation=True,
              fields=(("status.successful", "status.successful"),)),
    _Resource("batch", "v1", "cronjobs", "CronJob", short_names=("cj",), status=True,
              generation=True),
    _Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    _Resource("events.k8s.io", "v1", "events", "Event", short_names=("ev",), storage="events",
              fields=_EVENTS_V1_FIELDS),
    # Argo's CRDs declare no status subresource: the workflow controller writes status in place.
    _Resource("argoproj.io", "v1alpha1", "workflows", "Workflow", short_names=("wf",),
              custom=True, generation=True),
    _Resource("argoproj.io", "v1alpha1", "workflowtemplates", "WorkflowTemplate",
              short_names=("wftmpl",), custom=True, generation=True),
)
_CRD_GROUPS = frozenset(r.group for r in _RESOURCES if r.custom)
# The real registries of these answer DELETE with the deleted object, the others with a Status.
_RETURNS_DELETED = {"pods", "serviceaccounts"}
# A pod's spec.terminationGracePeriodSeconds when it sets none (the API server's default).
_DEFAULT_POD_GRACE = 30
# Time (seconds, UTC "Z") and MicroTime fields the API server parses and re-renders.
_TIME_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    "leases.coordination.k8s.io": (("spec.acquireTime", True), ("spec.renewTime", True)),
    "events": (("firstTimestamp", False), ("lastTimestamp", False), ("eventTime", True),
               ("series.lastObservedTime", True)),
    "pods": (("status.startTime", False),),
    "jobs.batch": (("status.startTime", False), ("status.completionTime", False)),
    "cronjobs.batch": (("status.lastScheduleTime", False), ("status.lastSuccessfulTime", False)),
}
_META_TIMES = (("metadata.creationTimestamp", False), ("metadata.deletionTimestamp", False))
# events.k8s.io/v1 name <-> core/v1 name; the rest of the two Event shapes is shared.
_EVENT_RENAMES = (
    ("regarding", "involvedObject"), ("note", "message"), ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"), ("reportingController", "reportingComponent"),
)
