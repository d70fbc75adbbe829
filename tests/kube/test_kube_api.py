"""The Kubernetes API stand-in, exercised only through the official client over real HTTP."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from agent.clients.kubernetes.api import api_error_text, micro_time
from agent.sim.kube_api import KubeApiServer, standin_threads
from agent.sim.kube_api.selectors import _Selector
from tests.support.net import wait_until

ARGO = ("argoproj.io", "v1alpha1")


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == exc.status
    return body


def pod(name: str, *, node: str = "n1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]}}


def deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {"metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": "x"}]}}}}


def workflow(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"workflowTemplateRef": {"name": "nightly"}}}


def events_until(stream: Any, sentinel: str) -> list[tuple[str, str]]:
    """(type, name) of every event up to the one about ``sentinel``, which ends the watch."""
    seen: list[tuple[str, str]] = []
    for event in stream:
        name = event["raw_object"].get("metadata", {}).get("name", "")
        seen.append((event["type"], name))
        if name == sentinel:
            return seen
    raise AssertionError(f"stream ended before {sentinel!r}; saw {seen}")


@pytest.fixture(autouse=True)
def _no_leftover_faults(kube: KubeApiServer) -> Iterator[None]:
    yield
    kube.clear_faults()


# --------------------------------------------------------------------------- discovery


def test_discovery_documents(api_client: client.ApiClient, kube: KubeApiServer) -> None:
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = {g.name: g for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"apps", "batch", "coordination.k8s.io", "events.k8s.io", "argoproj.io"} <= set(groups)
    assert groups["apps"].preferred_version.group_version == "apps/v1"
    core_names = {r.name for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert {"pods", "pods/status", "namespaces", "nodes", "configmaps", "secrets", "events",
            "serviceaccounts"} <= core_names
    scale = next(r for r in client.AppsV1Api(api_client).get_api_resources().resources
                 if r.name == "deployments/scale")
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    argo = client.CustomObjectsApi(api_client).get_api_resources(*ARGO)
    assert {r.name for r in argo.resources} == {"workflows", "workflowtemplates"}
    assert requests.get(f"{kube.url}/apis/argoproj.io", timeout=5).json()["kind"] == "APIGroup"
    assert requests.get(f"{kube.url}/readyz", timeout=5).text == "ok"


def test_unknown_path_and_wrong_method_answer_status(kube: KubeApiServer) -> None:
    missing = requests.get(f"{kube.url}/apis/example.com/v1/widgets", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["reason"] == "NotFound"
    wrong = requests.put(f"{kube.url}/api/v1/namespaces/default/pods", json={}, timeout=5)
    assert wrong.status_code == 405
    assert wrong.json()["reason"] == "MethodNotAllowed"
    no_scale = requests.get(f"{kube.url}/apis/apps/v1/namespaces/default/daemonsets/x/scale",
                            timeout=5)
    assert no_scale.status_code == 404


# --------------------------------------------------------------------------- CRUD


def test_core_crud_and_metadata(core: client.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod("web"))
    meta = created.metadata
    assert meta.namespace == ns and meta.uid and meta.creation_timestamp is not None
    assert meta.generation == 1 and created.status.phase == "Pending"
    assert int(meta.resource_version) > 0

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(ns, pod("web"))
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"

    generated = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "cfg-"}})
    assert generated.metadata.name.startswith("cfg-") and len(generated.metadata.name) == 9

    fetched = core.read_namespaced_pod("web", ns)
    fetched.metadata.labels = {"tier": "front"}
    relabelled = core.replace_namespaced_pod("web", ns, fetched)
    assert int(relabelled.metadata.resource_version) > int(meta.resource_version)
    assert relabelled.metadata.generation == 1  # labels are not spec
    relabelled.spec.active_deadline_seconds = 60
    respecced = core.replace_namespaced_pod("web", ns, relabelled)
    assert respecced.metadata.generation == 2
    assert respecced.metadata.uid == meta.uid

    deleted = core.delete_namespaced_pod("web", ns, propagation_policy="Background")
    assert deleted.metadata.name == "web"  # pods answer DELETE with the object
    # Bound to a node: Terminating for its grace period, as on a real API server.
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("web", ns, grace_period_seconds=0)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("web", ns)
    body = status_of(err.value)
    assert err.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'pods "web" not found'
    assert body["details"] == {"name": "web", "kind": "pods"}


def test_other_core_resources(core: client.CoreV1Api, ns: str) -> None:
    secret = core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "type": "Opaque",
                                                "stringData": {"k": "v"}})
    assert secret.type == "Opaque"
    account = core.create_namespaced_service_account(ns, {"metadata": {"name": "runner"}})
    assert core.read_namespaced_service_account("runner", ns).metadata.uid == account.metadata.uid
    core.create_namespaced_config_map(ns, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    gone = core.delete_namespaced_config_map("c", ns)
    assert gone.status == "Success" and gone.details.name == "c"

    node_name = f"node-{ns}"
    node = core.create_node({"metadata": {"name": node_name, "labels": {"gpu": "true"}},
                             "status": {"capacity": {"nvidia.com/gpu": "8"}}})
    assert node.metadata.namespace is None
    assert node.status.capacity == {"nvidia.com/gpu": "8"}  # nodes may set status on create
    assert node_name in [n.metadata.name for n in core.list_node(label_selector="gpu=true").items]
    core.delete_node(node_name)


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("does-not-exist", {"metadata": {"name": "x"}})
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "does-not-exist" not found'


def test_invalid_names_and_labels_are_422(core: client.CoreV1Api, ns: str) -> None:
    for meta in ({"name": "Upper_Case"}, {"name": "ok", "labels": {"at": "2026-01-01T00:00:00Z"}},
                 {"name": "ok2", "labels": {"bad key!": "v"}}, {}):
        with pytest.raises(ApiException) as err:
            core.create_namespaced_config_map(ns, {"metadata": meta})
        body = status_of(err.value)
        assert err.value.status == 422 and body["reason"] == "Invalid"
        assert body["details"]["kind"] == "ConfigMap" and body["details"]["causes"]


def test_namespace_delete_takes_its_contents(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    created = core.read_namespace("doomed")
    assert created.status.phase == "Active"
    assert created.metadata.labels["kubernetes.io/metadata.name"] == "doomed"
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "inside"}})
    core.delete_namespace("doomed")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("inside", "doomed")
    assert err.value.status == 404


def test_finalizers_hold_deletion_until_removed(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "held", "finalizers": ["steward.io/restore-record"]}})
    core.delete_namespaced_config_map("held", ns)
    marked = core.read_namespaced_config_map("held", ns)
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("held", ns)
    assert err.value.status == 404


def test_a_bound_pod_terminates_for_its_grace_period() -> None:
    """As the real API server: a delete of a pod bound to a node only stamps
    ``deletionTimestamp``; a create of that name meanwhile is 409 AlreadyExists; the pod goes
    when the grace period ends, or at once when deleted again with grace 0."""
    now = [datetime(2026, 11, 22, 12, 0, tzinfo=UTC)]
    with KubeApiServer(clock=lambda: now[0], namespaces=("default", "ml")) as kube:
        core = client.CoreV1Api(kube.api_client())
        manifest = pod("notebook")
        manifest["spec"]["terminationGracePeriodSeconds"] = 45
        created = core.create_namespaced_pod("ml", manifest)
        answer = core.delete_namespaced_pod("notebook", "ml")
        assert answer.metadata.uid == created.metadata.uid
        assert answer.metadata.deletion_grace_period_seconds == 45
        assert answer.metadata.deletion_timestamp == datetime(2026, 11, 22, 12, 0, 45,
                                                               tzinfo=UTC)
        with pytest.raises(ApiException) as err:
            core.create_namespaced_pod("ml", pod("notebook"))
        assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"
        # Deleted again with the same grace: nothing moves; a status write keeps it too.
        assert core.delete_namespaced_pod("notebook", "ml").metadata.deletion_timestamp == \
            answer.metadata.deletion_timestamp
        core.patch_namespaced_pod_status("notebook", "ml", {"status": {"phase": "Running"}})
        now[0] = datetime(2026, 11, 22, 12, 0, 44, tzinfo=UTC)
        assert core.read_namespaced_pod("notebook", "ml").metadata.deletion_timestamp
        now[0] = datetime(2026, 11, 22, 12, 0, 45, tzinfo=UTC)
        with pytest.raises(ApiException) as err:
            core.read_namespaced_pod("notebook", "ml")
        assert err.value.status == 404
        assert core.create_namespaced_pod("ml", pod("notebook")).metadata.uid != \
            created.metadata.uid

        # Not bound to a node: nothing to wait for. Grace 0: gone at once.
        core.create_namespaced_pod("ml", {"metadata": {"name": "unscheduled"},
                                          "spec": {"containers": [{"name": "c", "image": "x"}]}})
        core.delete_namespaced_pod("unscheduled", "ml")
        core.delete_namespaced_pod("notebook", "ml")
        core.delete_namespaced_pod("notebook", "ml", grace_period_seconds=0)
        assert core.list_namespaced_pod("ml").items == []


def test_delete_collection_honours_selectors(core: client.CoreV1Api, ns: str) -> None:
    for name, team in (("a", "ml"), ("b", "ml"), ("c", "infra")):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name,
                                                            "labels": {"team": team}}})
    core.delete_collection_namespaced_config_map(ns, label_selector="team=ml")
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns).items] == ["c"]


def test_dry_run_changes_nothing(core: client.CoreV1Api, ns: str, kube: KubeApiServer) -> None:
    before = kube.resource_version
    answer = core.create_namespaced_config_map(ns, {"metadata": {"name": "dry"}}, dry_run="All")
    assert answer.metadata.name == "dry"
    assert kube.resource_version == before
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("dry", ns)


def test_delete_preconditions_conflict(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "guarded"}})
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map(
            "guarded", ns, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(resource_version="1")))
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"


def test_status_subresource(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("job-pod"))
    running = core.patch_namespaced_pod_status("job-pod", ns, {"status": {"phase": "Running"}})
    assert running.status.phase == "Running" and running.metadata.generation == 1
    # The main resource ignores status, as the real API does.
    ignored = core.patch_namespaced_pod("job-pod", ns, {"status": {"phase": "Failed"}})
    assert ignored.status.phase == "Running"
    assert ignored.metadata.resource_version == running.metadata.resource_version  # no-op write


# --------------------------------------------------------------------------- apps, batch


def test_deployment_scale_subresource(apps: client.AppsV1Api, ns: str) -> None:
    created = apps.create_namespaced_deployment(ns, deployment("trainer", replicas=3))
    scale = apps.read_namespaced_deployment_scale("trainer", ns)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 3 and scale.status.selector == "app=trainer"
    assert scale.metadata.resource_version == created.metadata.resource_version

    patched = apps.patch_namespaced_deployment_scale("trainer", ns, {"spec": {"replicas": 0}})
    assert patched.spec.replicas == 0
    stored = apps.read_namespaced_deployment("trainer", ns)
    assert stored.spec.replicas == 0 and stored.metadata.generation == 2

    stale = scale  # still carries the resourceVersion from before the patch
    stale.spec.replicas = 5
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment_scale("trainer", ns, stale)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    fresh = apps.read_namespaced_deployment_scale("trainer", ns)
    fresh.spec.replicas = 1
    assert apps.replace_namespaced_deployment_scale("trainer", ns, fresh).spec.replicas == 1
    assert apps.read_namespaced_deployment("trainer", ns).spec.replicas == 1

    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("trainer", ns, {"spec": {"replicas": -1}})
    assert err.value.status == 422


def test_statefulset_replicaset_daemonset(apps: client.AppsV1Api, ns: str) -> None:
    body = deployment("db", replicas=2)
    apps.create_namespaced_stateful_set(ns, {**body, "spec": {**body["spec"], "serviceName": "db"}})
    apps.patch_namespaced_stateful_set_scale("db", ns, {"spec": {"replicas": 0}})
    assert apps.read_namespaced_stateful_set("db", ns).spec.replicas == 0
    apps.create_namespaced_replica_set(ns, deployment("rs"))
    scale = apps.read_namespaced_replica_set_scale("rs", ns)
    scale.spec.replicas = 4
    apps.replace_namespaced_replica_set_scale("rs", ns, scale)
    assert apps.read_namespaced_replica_set("rs", ns).spec.replicas == 4
    apps.create_namespaced_daemon_set(ns, deployment("agent"))
    labelled = apps.patch_namespaced_daemon_set("agent", ns, {"metadata": {"labels": {"a": "b"}}})
    assert labelled.metadata.generation == 1
    assert [d.metadata.name for d in apps.list_daemon_set_for_all_namespaces(
        label_selector="a=b").items] == ["agent"]


def test_jobs_and_cronjobs(api_client: client.ApiClient, ns: str) -> None:
    batch = client.BatchV1Api(api_client)
    template = {"spec": {"restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "x"}]}}
    batch.create_namespaced_cron_job(ns, {
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}})
    batch.create_namespaced_job(ns, {"metadata": {"name": "nightly-1", "labels": {"p": "nightly"}},
                                     "spec": {"template": template}})
    done = [{"type": t, "status": "True", "lastTransitionTime": "2026-01-01T03:10:00Z"}
            for t in ("SuccessCriteriaMet", "Complete")]
    batch.patch_namespaced_job_status("nightly-1", ns, {"status": {
        "succeeded": 1, "startTime": "2026-01-01T03:00:00Z",
        "completionTime": "2026-01-01T03:10:00.5+00:00", "conditions": done}})
    job = batch.read_namespaced_job("nightly-1", ns)
    assert job.status.succeeded == 1
    assert job.status.completion_time == datetime(2026, 1, 1, 3, 10, tzinfo=UTC)
    jobs = batch.list_job_for_all_namespaces(label_selector="p=nightly",
                                             field_selector=f"metadata.namespace={ns}")
    assert [j.metadata.name for j in jobs.items] == ["nightly-1"]
    assert batch.read_namespaced_cron_job("nightly", ns).spec.schedule == "0 3 * * *"
    batch.delete_namespaced_cron_job("nightly", ns, propagation_policy="Foreground")
    assert batch.list_namespaced_cron_job(ns).items == []


# --------------------------------------------------------------------------- leases


def test_lease_optimistic_concurrency(api_client: client.ApiClient, ns: str,
                                      kube: KubeApiServer) -> None:
    leases = client.CoordinationV1Api(api_client)
    spec = client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15,
                              renew_time=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC))
    leases.create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name="steward-controller"), spec=spec))
    stored = kube.get("coordination.k8s.io/v1", "Lease", ns, "steward-controller")
    assert stored is not None and stored["spec"]["renewTime"] == "2026-01-01T12:00:00.123456Z"

    mine = leases.read_namespaced_lease("steward-controller", ns)
    theirs = leases.read_namespaced_lease("steward-controller", ns)
    mine.spec.holder_identity = "b"
    renewed = leases.replace_namespaced_lease("steward-controller", ns, mine)
    assert renewed.spec.holder_identity == "b"
    assert renewed.metadata.resource_version != theirs.metadata.resource_version

    theirs.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:
        leases.replace_namespaced_lease("steward-controller", ns, theirs)
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert body["details"] == {"name": "steward-controller", "kind": "leases",
                               "group": "coordination.k8s.io"}
    assert leases.read_namespaced_lease("steward-controller", ns).spec.holder_identity == "b"

    renewed.spec.holder_identity = "c"
    assert leases.replace_namespaced_lease(
        "steward-controller", ns, renewed).spec.holder_identity == "c"


def test_naive_timestamps_are_rejected(api_client: client.ApiClient, ns: str) -> None:
    leases = client.CoordinationV1Api(api_client)
    naive = client.V1Lease(metadata=client.V1ObjectMeta(name="naive"),
                           spec=client.V1LeaseSpec(renew_time=datetime(2026, 1, 1, 12, 0)))
    with pytest.raises(ApiException) as err:
        leases.create_namespaced_lease(ns, naive)
    assert err.value.status == 400 and status_of(err.value)["reason"] == "BadRequest"


# --------------------------------------------------------------------------- custom resources


def test_argo_workflows_through_custom_objects_api(custom: client.CustomObjectsApi,
                                                   ns: str) -> None:
    created = custom.create_namespaced_custom_object(*ARGO, ns, "workflows",
                                                     workflow("wf-1", {"team": "ml"}))
    assert created["metadata"]["namespace"] == ns and created["metadata"]["generation"] == 1
    custom.create_namespaced_custom_object(*ARGO, ns, "workflows", workflow("wf-2"))
    listed = custom.list_namespaced_custom_object(*ARGO, ns, "workflows", label_selector="team")
    assert listed["kind"] == "WorkflowList" and listed["apiVersion"] == "argoproj.io/v1alpha1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["wf-1"]
    assert listed["items"][0]["kind"] == "Workflow"  # custom list items keep their kind

    patched = custom.patch_namespaced_custom_object(
        *ARGO, ns, "workflows", "wf-1", {"status": {"phase": "Running"}})
    assert patched["status"] == {"phase": "Running"} and patched["metadata"]["generation"] == 2

    no_rv = workflow("wf-1")
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(*ARGO, ns, "workflows", "wf-1", no_rv)
    assert err.value.status == 422  # custom resources require resourceVersion on update
    patched["status"]["phase"] = "Succeeded"
    replaced = custom.replace_namespaced_custom_object(*ARGO, ns, "workflows", "wf-1", patched)
    assert replaced["status"]["phase"] == "Succeeded"

    json_patched = custom.patch_namespaced_custom_object(
        *ARGO, ns, "workflows", "wf-2", [{"op": "add", "path": "/metadata/labels/x", "value": "y"}],
        _content_type="application/json-patch+json")
    assert json_patched["metadata"]["labels"] == {"x": "y"}
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            *ARGO, ns, "workflows", "wf-2", {"metadata": {"labels": {"x": "z"}}},
            _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415  # no strategic merge patch for custom resources

    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *ARGO, ns, "workflows",
                                  resource_version=created["metadata"]["resourceVersion"],
                                  timeout_seconds=5)
    seen = []
    for event in stream:
        seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
        if len(seen) == 4:
            break
    assert seen == [("ADDED", "wf-2"), ("MODIFIED", "wf-1"), ("MODIFIED", "wf-1"),
                    ("MODIFIED", "wf-2")]

    gone = custom.delete_namespaced_custom_object(*ARGO, ns, "workflows", "wf-1")
    assert gone["metadata"]["name"] == "wf-1"
    cluster_wide = custom.list_cluster_custom_object(*ARGO, "workflows")
    assert f"{ns}/wf-2" in [f"{i['metadata']['namespace']}/{i['metadata']['name']}"
                            for i in cluster_wide["items"]]
    template = custom.create_namespaced_custom_object(
        *ARGO, ns, "workflowtemplates",
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
         "metadata": {"name": "nightly"}, "spec": {"entrypoint": "main"}})
    assert template["kind"] == "WorkflowTemplate"


def test_argo_absent_answers_404_everywhere() -> None:
    with KubeApiServer(crds=()) as bare:
        api = bare.api_client()
        try:
            custom = client.CustomObjectsApi(api)
            with pytest.raises(ApiException) as err:
                custom.list_namespaced_custom_object(*ARGO, "default", "workflows")
            assert err.value.status == 404 and status_of(err.value)["reason"] == "NotFound"
            with pytest.raises(ApiException) as err:
                custom.get_api_resources(*ARGO)
            assert err.value.status == 404
            groups = [g.name for g in client.ApisApi(api).get_api_versions().groups]
            assert "argoproj.io" not in groups and "apps" in groups
            bare.set_group_enabled("argoproj.io", True)
            listed = custom.list_namespaced_custom_object(*ARGO, "default", "workflows")
            assert listed["items"] == []
        finally:
            api.close()


# --------------------------------------------------------------------------- selectors and paging


def test_label_and_field_selectors(core: client.CoreV1Api, ns: str, kube: KubeApiServer) -> None:
    for name, node, phase, labels in (
        ("a", "n1", "Running", {"team": "ml", "tier": "gpu"}),
        ("b", "n1", "Pending", {"team": "infra"}),
        ("c", "n2", "Running", {"team": "ml"}),
        ("d", "", "Pending", {}),
    ):
        spec = pod(name, node=node, labels=labels)
        kube.create({"apiVersion": "v1", "kind": "Pod", **spec,
                     "metadata": {**spec["metadata"], "namespace": ns},
                     "status": {"phase": phase}})

    def names(**selectors: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(ns, **selectors).items]

    assert names(label_selector="team=ml") == ["a", "c"]
    assert names(label_selector="team==ml,tier") == ["a"]
    assert names(label_selector="team!=ml") == ["b", "d"]
    assert names(label_selector="team in (ml, infra)") == ["a", "b", "c"]
    assert names(label_selector="team notin (ml)") == ["b", "d"]
    assert names(label_selector="!team") == ["d"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "b"]
    assert names(field_selector="spec.nodeName=") == ["d"]
    assert names(field_selector="status.phase!=Running,spec.nodeName==n1") == ["b"]
    assert names(field_selector="metadata.name=c") == ["c"]
    everywhere = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns},"
                                                                 "spec.nodeName=n2")
    assert [p.metadata.name for p in everywhere.items] == ["c"]

    for bad in ({"label_selector": "team in (ml"}, {"label_selector": "a b"},
                {"field_selector": "spec.foo=bar"}, {"field_selector": "nonsense"}):
        with pytest.raises(ApiException) as err:
            core.list_namespaced_pod(ns, **bad)
        assert err.value.status == 400 and status_of(err.value)["reason"] == "BadRequest"


def test_list_shape_and_paging(core: client.CoreV1Api, ns: str, kube: KubeApiServer) -> None:
    for i in range(5):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}})
    raw = requests.get(f"{kube.url}/api/v1/namespaces/{ns}/configmaps", timeout=5).json()
    assert raw["kind"] == "ConfigMapList" and raw["apiVersion"] == "v1"
    assert raw["metadata"]["resourceVersion"] == str(kube.resource_version)
    assert "kind" not in raw["items"][0]  # built-in list items carry no kind on the wire

    first = core.list_namespaced_config_map(ns, limit=2)
    assert [c.metadata.name for c in first.items] == ["cm-0", "cm-1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    second = core.list_namespaced_config_map(ns, limit=2, _continue=first.metadata._continue)
    assert second.metadata.resource_version == first.metadata.resource_version
    third = core.list_namespaced_config_map(ns, limit=2, _continue=second.metadata._continue)
    assert [c.metadata.name for c in second.items + third.items] == ["cm-2", "cm-3", "cm-4"]
    assert third.metadata._continue is None


def test_a_page_costs_its_items_not_the_store(core: client.CoreV1Api, kube: KubeApiServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a real server reading a key range from etcd: a page copies the objects it
    returns (and one to know there are more), not every object of the kind, and namespaces
    whose names share a prefix stay apart."""
    for namespace in ("page-a", "page-a0", "page-b"):
        core.create_namespace({"metadata": {"name": namespace}})
    for i in range(40):
        for namespace in ("page-a", "page-a0", "page-b"):
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i:02d}"}})
    copied: list[str] = []
    looked_at: list[str] = []
    external, matches = kube._to_external, _Selector.matches

    def counting(res: Any, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
        copied.append(obj["metadata"]["name"])
        return external(res, obj, **kw)

    def looking(selector: _Selector, obj: dict[str, Any]) -> bool:
        looked_at.append(obj["metadata"]["name"])
        return matches(selector, obj)

    monkeypatch.setattr(kube, "_to_external", counting)
    monkeypatch.setattr(_Selector, "matches", looking)
    seen, token, remaining = [], None, []
    while True:
        page = core.list_namespaced_config_map("page-a", limit=7, _continue=token)
        seen += [c.metadata.name for c in page.items]
        remaining.append(page.metadata.remaining_item_count)
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"cm-{i:02d}" for i in range(40)]
    assert remaining == [33, 26, 19, 12, 5, None]
    assert len(copied) == 40  # each object of the namespace once, nothing of the others
    # Each page looks at its own objects and one more, not at all that sort before it.
    assert len(looked_at) == 40 + 5
    everything = core.list_config_map_for_all_namespaces(limit=500)
    assert sum(1 for c in everything.items if c.metadata.namespace.startswith("page-")) == 120


# --------------------------------------------------------------------------- patches


def test_merge_and_json_patch(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "p"}, "data": {"a": "1", "b": "2"}})
    merged = core.patch_namespaced_config_map("p", ns, {"data": {"a": None, "c": "3"}})
    assert merged.data == {"b": "2", "c": "3"}
    merged = core.patch_namespaced_config_map(
        "p", ns, {"metadata": {"labels": {"m": "1"}}},
        _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"m": "1"}

    patched = core.patch_namespaced_config_map("p", ns, [
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/metadata/annotations", "value": {"steward.io/by": "test"}},
        {"op": "remove", "path": "/data/c"},
    ])
    assert patched.data == {"b": "20"}
    assert patched.metadata.annotations == {"steward.io/by": "test"}

    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("p", ns, [
            {"op": "test", "path": "/data/b", "value": "2"},
            {"op": "replace", "path": "/data/b", "value": "21"}])
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert core.read_namespaced_config_map("p", ns).data == {"b": "20"}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("p", ns, [{"op": "frobnicate", "path": "/data"}])
    assert err.value.status == 400

    stale = [{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"},
             {"op": "replace", "path": "/data/b", "value": "22"}]
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("p", ns, stale)
    assert err.value.status == 409


# --------------------------------------------------------------------------- watch


def test_watch_from_list_resource_version_sees_exactly_later_changes(
        core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "before"}})
    listed = core.list_namespaced_config_map(ns)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "x"}})
    core.patch_namespaced_config_map("x", ns, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("x", ns)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "sentinel"}})

    stream = watch.Watch().stream(core.list_namespaced_config_map, ns,
                                  resource_version=listed.metadata.resource_version,
                                  timeout_seconds=5)
    seen: list[dict[str, Any]] = []
    for event in stream:
        seen.append(event)
        if event["object"].metadata.name == "sentinel":
            break
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [
        ("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "sentinel")]
    assert all(e["raw_object"]["metadata"]["namespace"] == ns for e in seen)
    assert all(e["raw_object"]["kind"] == "ConfigMap" for e in seen)
    versions = [int(e["object"].metadata.resource_version) for e in seen]
    assert versions == sorted(versions) and versions[0] > int(listed.metadata.resource_version)


def test_watch_without_resource_version_starts_with_current_state(
        core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "existing"}})
    stream = watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=5)
    first = next(iter(stream))
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "existing")
    stream.close()


def test_selector_watch_sees_objects_enter_and_leave(core: client.CoreV1Api, ns: str) -> None:
    rv = core.list_namespaced_pod(ns).metadata.resource_version
    core.create_namespaced_pod(ns, pod("p", labels={"team": "ml"}))
    core.create_namespaced_pod(ns, pod("other", node="n2", labels={"team": "ml"}))
    core.patch_namespaced_pod("p", ns, {"metadata": {"labels": {"team": "infra"}}})
    core.patch_namespaced_pod("p", ns, {"metadata": {"labels": {"team": "ml"}}})
    core.create_namespaced_pod(ns, pod("sentinel", labels={"team": "ml"}))
    stream = watch.Watch().stream(core.list_namespaced_pod, ns, resource_version=rv,
                                  label_selector="team=ml", field_selector="spec.nodeName=n1",
                                  timeout_seconds=5)
    assert events_until(stream, "sentinel") == [
        ("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p"), ("ADDED", "sentinel")]


def test_watch_bookmarks(core: client.CoreV1Api, ns: str, kube: KubeApiServer) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, ns, resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=5):
        if event["type"] == "BOOKMARK":
            bookmark = event["raw_object"]
            break
    else:
        pytest.fail("no BOOKMARK before the watch timed out")
    assert bookmark["kind"] == "ConfigMap"
    assert int(bookmark["metadata"]["resourceVersion"]) >= int(rv)
    assert w.resource_version == bookmark["metadata"]["resourceVersion"]


def test_watch_timeout_closes_cleanly(core: client.CoreV1Api, ns: str) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv,
                                       timeout_seconds=1))
    assert events == []
    assert 0.9 <= time.monotonic() - started < 4


def test_watch_from_compacted_version_gets_410(core: client.CoreV1Api, ns: str,
                                               kube: KubeApiServer) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "after"}})
    kube.compact()

    raw = requests.get(f"{kube.url}/api/v1/namespaces/{ns}/configmaps",
                       params={"watch": "1", "resourceVersion": rv}, stream=True, timeout=5)
    line = json.loads(next(raw.iter_lines()))
    raw.close()
    assert line["type"] == "ERROR"
    assert line["object"]["kind"] == "Status" and line["object"]["code"] == 410
    assert line["object"]["reason"] == "Expired"

    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv,
                                  timeout_seconds=5))
    assert err.value.status == 410
    # Without a timeout the client retries once from the same version, then gives up.
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv))
    assert err.value.status == 410


def test_watch_history_window_expires_old_versions(core: client.CoreV1Api) -> None:
    with KubeApiServer(history_limit=3) as small:
        api = small.api_client()
        try:
            small_core = client.CoreV1Api(api)
            rv = small_core.list_namespaced_config_map("default").metadata.resource_version
            for i in range(4):
                small_core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
            with pytest.raises(ApiException) as err:
                list(watch.Watch().stream(small_core.list_namespaced_config_map, "default",
                                          resource_version=rv, timeout_seconds=5))
            assert err.value.status == 410
        finally:
            api.close()


def test_drop_watches_cuts_the_stream(core: client.CoreV1Api, ns: str,
                                      kube: KubeApiServer) -> None:
    outcome: dict[str, BaseException | None] = {}

    def consume() -> None:
        try:
            for _ in watch.Watch().stream(core.list_namespaced_pod, ns):
                pass
            outcome["error"] = None
        except BaseException as exc:  # the point is to see how it ended
            outcome["error"] = exc

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    wait_until(lambda: kube.open_watches(path_regex=f"/namespaces/{ns}/pods$") == 1,
               timeout=5, what="the client's watch to open")
    assert kube.drop_watches() >= 1
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert isinstance(outcome["error"], urllib3.exceptions.ProtocolError)
    assert kube.open_watches(path_regex=f"/namespaces/{ns}/pods$") == 0


def test_server_notices_a_client_that_stops_watching(core: client.CoreV1Api, ns: str,
                                                     kube: KubeApiServer) -> None:
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, ns, allow_watch_bookmarks=True)
    assert next(iter(stream))["type"] == "BOOKMARK"
    stream.close()
    wait_until(lambda: kube.open_watches(path_regex=f"/namespaces/{ns}/configmaps$") == 0,
               timeout=5, what="the server to drop the closed watch")


# --------------------------------------------------------------------------- events


def test_events_core_and_events_k8s_io_share_storage(api_client: client.ApiClient,
                                                     ns: str) -> None:
    core = client.CoreV1Api(api_client)
    events = client.EventsV1Api(api_client)
    now = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    # eventTime is a MicroTime: six fraction digits, which isoformat() drops at 0 µs.
    micro = micro_time(now)
    core.create_namespaced_event(ns, client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="pod-idle.1"),
        involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace=ns),
        reason="GpuIdle", message="idle for 2h", type="Warning",
        source=client.V1EventSource(component="steward"),
        first_timestamp=now, last_timestamp=now, count=1))
    events.create_namespaced_event(ns, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="deploy-scaled.1"), event_time=micro,
        reporting_controller="steward.io/controller", reporting_instance="steward-0",
        action="ScaleToZero", reason="IdleGpuHygiene", note="scaled to zero", type="Normal",
        regarding=client.V1ObjectReference(kind="Deployment", name="trainer", namespace=ns)))

    listed = core.list_namespaced_event(ns)
    assert [e.metadata.name for e in listed.items] == ["deploy-scaled.1", "pod-idle.1"]
    scaled = core.read_namespaced_event("deploy-scaled.1", ns)
    assert scaled.message == "scaled to zero" and scaled.involved_object.kind == "Deployment"
    assert scaled.reporting_component == "steward.io/controller"
    assert events.read_namespaced_event("deploy-scaled.1", ns).note == "scaled to zero"
    by_kind = core.list_namespaced_event(ns, field_selector="involvedObject.kind=Pod")
    assert [e.reason for e in by_kind.items] == ["GpuIdle"]
    by_regarding = events.list_namespaced_event(ns, field_selector="regarding.kind=Deployment")
    assert [e.action for e in by_regarding.items] == ["ScaleToZero"]

    with pytest.raises(ApiException) as err:
        events.create_namespaced_event(ns, client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="incomplete"), event_time=micro, type="Normal",
            reason="X", regarding=client.V1ObjectReference(kind="Pod", name="p", namespace=ns)))
    causes = {c["field"] for c in status_of(err.value)["details"]["causes"]}
    assert err.value.status == 422 and causes == {"reportingController", "reportingInstance",
                                                  "action"}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_event(ns, client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="elsewhere"),
            involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace="other")))
    assert err.value.status == 422


# --------------------------------------------------------------------------- faults, log, direct


def test_injected_errors_and_delays(core: client.CoreV1Api, ns: str,
                                    kube: KubeApiServer) -> None:
    fault = kube.inject_fault(method="GET", path_regex=rf"/namespaces/{ns}/configmaps$",
                              status=500)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(ns)
    assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    assert fault.hits == 1
    core.list_namespaced_config_map(ns)  # times=1: the next one passes

    kube.inject_fault(path_regex=rf"/namespaces/{ns}/configmaps$", status=503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.create_namespaced_config_map(ns, {"metadata": {"name": "retry"}})
        assert err.value.status == 503
    core.create_namespaced_config_map(ns, {"metadata": {"name": "retry"}})

    kube.inject_fault(path_regex=rf"/namespaces/{ns}/configmaps/retry$", status=None, delay=0.3)
    started = time.monotonic()
    assert core.read_namespaced_config_map("retry", ns).metadata.name == "retry"
    assert time.monotonic() - started >= 0.3

    kube.inject_fault(method="DELETE", path_regex=".*", status=429)
    assert core.read_namespaced_config_map("retry", ns)  # the method filter spares GET
    # 429 comes with Retry-After, which urllib3 honours for idempotent methods: the client
    # waits a second and retries on its own, so the caller never sees this one.
    kube.clear_request_log()
    core.delete_namespaced_config_map("retry", ns)
    deletes = kube.request_log(method="DELETE")
    assert [r.status for r in deletes] == [429, 200]
    kube.inject_fault(method="POST", path_regex=".*", status=429, times=None)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "never"}})
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"


def test_request_log_records_what_callers_asked(api_client: client.ApiClient, ns: str,
                                                kube: KubeApiServer) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    kube.clear_request_log()
    core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    apps.create_namespaced_deployment(ns, deployment("scaled"))
    apps.patch_namespaced_deployment_scale("scaled", ns, {"spec": {"replicas": 0}})
    listed = kube.request_log(method="GET", path_regex=r"^/api/v1/pods$")
    assert [r.query["fieldSelector"] for r in listed] == ["spec.nodeName=n1"]
    assert listed[0].status == 200 and not listed[0].watch
    (scaled,) = kube.request_log(method="PATCH", path_regex=r"/deployments/scaled/scale$")
    assert scaled.body == {"spec": {"replicas": 0}}
    assert scaled.content_type == "application/strategic-merge-patch+json"


def test_direct_state_api_emits_watch_events(core: client.CoreV1Api, kube: KubeApiServer) -> None:
    ns = "direct-ns"  # created on the way by the direct API
    rv = core.list_namespaced_pod(ns).metadata.resource_version
    created = kube.create(client.V1Pod(
        metadata=client.V1ObjectMeta(name="gpu-job", namespace=ns,
                                     creation_timestamp=datetime(2025, 12, 1, tzinfo=UTC)),
        spec=client.V1PodSpec(node_name="n1",
                              containers=[client.V1Container(name="c", image="x")]),
        status=client.V1PodStatus(phase="Running")))
    assert created["status"]["phase"] == "Running"
    assert created["metadata"]["creationTimestamp"] == "2025-12-01T00:00:00Z"
    assert core.read_namespace(ns).status.phase == "Active"
    with pytest.raises(KeyError):
        kube.create({"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "x"}})

    updated = dict(created)
    updated["status"] = {"phase": "Succeeded"}
    kube.apply(updated)
    kube.apply({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sentinel", "namespace": ns},
                "spec": {"containers": [{"name": "c", "image": "x"}]}})
    stream = watch.Watch().stream(core.list_namespaced_pod, ns, resource_version=rv,
                                  timeout_seconds=5)
    assert events_until(stream, "sentinel") == [
        ("ADDED", "gpu-job"), ("MODIFIED", "gpu-job"), ("ADDED", "sentinel")]

    assert core.read_namespaced_pod("gpu-job", ns).status.phase == "Succeeded"
    assert [p["metadata"]["name"] for p in kube.list("Pod", namespace=ns)] == ["gpu-job",
                                                                               "sentinel"]
    stored = kube.get("v1", "Pod", ns, "gpu-job")
    assert stored is not None and stored["kind"] == "Pod"
    assert kube.delete("v1", "Pod", ns, "gpu-job") is not None
    assert kube.get("v1", "Pod", ns, "gpu-job") is None
    assert kube.delete("v1", "Pod", ns, "gpu-job") is None


# --------------------------------------------------------------------------- lifecycle


def test_kubeconfig_drives_the_official_loader(kube: KubeApiServer, tmp_path: Path) -> None:
    path = kube.kubeconfig(tmp_path / "kube" / "config")
    api = config.new_client_from_config(config_file=str(path))
    try:
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    finally:
        api.close()
    assert "default" in names and "kube-system" in names
    (last,) = kube.request_log(path_regex="^/api/v1/namespaces$")[-1:]
    assert last.method == "GET"
    assert last.headers["authorization"] == "Bearer steward-test-token"


def test_client_configuration_sends_the_bearer_token(core: client.CoreV1Api,
                                                     kube: KubeApiServer) -> None:
    core.list_namespace()
    (last,) = kube.request_log(path_regex="^/api/v1/namespaces$")[-1:]
    assert last.headers["authorization"] == "Bearer steward-test-token"


def test_connection_after_a_finished_watch_is_not_reused(core: client.CoreV1Api,
                                                         ns: str) -> None:
    for _ in range(3):
        rv = core.list_namespaced_config_map(ns).metadata.resource_version
        assert list(watch.Watch().stream(core.list_namespaced_config_map, ns,
                                         resource_version=rv, timeout_seconds=0)) == []
        # A POST is never retried by urllib3: it fails if it lands on a closed pooled socket.
        core.create_namespaced_config_map(ns, {"metadata": {"generateName": "after-watch-"}})


def test_stop_ends_watches_and_leaves_no_threads() -> None:
    server = KubeApiServer().start()
    port = server.port
    api = server.api_client()
    core = client.CoreV1Api(api)
    core.list_namespace()  # leaves an idle keep-alive connection behind
    ended = threading.Event()

    def consume() -> None:
        # Left alone this watch would run for a minute: stop() must end it now.
        with contextlib.suppress(Exception):
            for _ in watch.Watch().stream(core.list_namespaced_pod, "default",
                                          timeout_seconds=60):
                pass
        ended.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    wait_until(lambda: server.open_watches() == 1, timeout=5, what="the watch to open")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert standin_threads(port=port) == []
    assert ended.wait(timeout=10)
    api.close()


# --------------------------------------------------------------------------- like a real server


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_bookmarks_come_about_a_minute_apart_by_default() -> None:
    """A real API server sends watch bookmarks about a minute apart: code that expects one
    soon (to call a reconnected watch healthy, say) must fail here as it would there."""
    with KubeApiServer() as default:
        api = default.api_client()
        try:
            w = watch.Watch()
            started = time.monotonic()
            listing = client.CoreV1Api(api).list_config_map_for_all_namespaces
            events = [e["type"] for e in w.stream(listing, allow_watch_bookmarks=True,
                                                   timeout_seconds=2)]
        finally:
            api.close()
    assert "BOOKMARK" not in events
    assert time.monotonic() - started >= 1.5


def test_authorization_is_403_before_routing() -> None:
    """With grants, an ungranted request is 403 even for a group the server does not serve
    (authorization runs before routing); discovery stays open; namespaced grants hold only
    in their namespace; subresources are their own resource."""
    from agent.sim.kube_api import Grant

    grants = [Grant("", "pods", frozenset({"list"})),
              Grant("", "secrets", frozenset({"list"}), namespace="ml"),
              Grant("apps", "deployments/scale", frozenset({"get", "update", "patch"}))]
    with KubeApiServer(crds=(), namespaces=("default", "ml"), grants=grants) as kube:
        kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": "web", "namespace": "ml"}, **{
                         k: v for k, v in deployment("web").items() if k != "metadata"}})
        api = kube.api_client()
        try:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            custom = client.CustomObjectsApi(api)
            assert core.list_pod_for_all_namespaces().items == []
            with pytest.raises(ApiException) as unknown_group:
                custom.list_cluster_custom_object(*ARGO, "workflows")
            assert unknown_group.value.status == 403
            assert status_of(unknown_group.value)["reason"] == "Forbidden"
            assert 'cannot list resource "workflows" in API group "argoproj.io" at the ' \
                   'cluster scope' in status_of(unknown_group.value)["message"]
            # Discovery is every caller's: it tells "absent" (404) from "not granted".
            with pytest.raises(ApiException) as discovery:
                api.call_api("/apis/argoproj.io/v1alpha1", "GET", auth_settings=["BearerToken"])
            assert discovery.value.status == 404
            assert core.list_namespaced_secret("ml").items == []
            with pytest.raises(ApiException) as other_namespace:
                core.list_namespaced_secret("default")
            assert other_namespace.value.status == 403
            with pytest.raises(ApiException) as cluster_wide:
                core.list_secret_for_all_namespaces()
            assert cluster_wide.value.status == 403
            scale = apps.read_namespaced_deployment_scale("web", "ml")
            apps.patch_namespaced_deployment_scale("web", "ml", {"spec": {"replicas": 0}})
            assert apps.read_namespaced_deployment_scale("web", "ml").spec.replicas == 0
            assert scale.spec.replicas == 2
            with pytest.raises(ApiException) as template_patch:
                apps.patch_namespaced_deployment("web", "ml", {"spec": {"template": {
                    "spec": {"serviceAccountName": "admin"}}}})
            assert template_patch.value.status == 403
            assert status_of(template_patch.value)["message"].startswith(
                'deployments.apps "web" is forbidden')
            kube.set_grants(None)
            assert custom.list_cluster_custom_object
            with pytest.raises(ApiException) as absent:
                custom.list_cluster_custom_object(*ARGO, "workflows")
            assert absent.value.status == 404  # no authorization: routing answers
        finally:
            api.close()


def test_job_status_conditions_as_a_real_server_checks_them(kube: KubeApiServer,
                                                            ns: str) -> None:
    api = kube.api_client()
    batch = client.BatchV1Api(api)
    now = "2026-11-22T12:00:00Z"
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "x"}]}}

    def job(name: str) -> None:
        created = batch.create_namespaced_job(ns, {"metadata": {"name": name}, "spec": {
            "template": template}, "status": {"active": 3}})
        assert not created.status.active  # status in a create body is ignored

    def conditions(*types: str) -> list[dict[str, str]]:
        return [{"type": t, "status": "True", "lastTransitionTime": now} for t in types]

    try:
        refused = {
            "complete-alone": {"completionTime": now, "conditions": conditions("Complete")},
            "failed-alone": {"conditions": conditions("Failed")},
            "complete-no-time": {"conditions": conditions("SuccessCriteriaMet", "Complete")},
            "time-not-complete": {"completionTime": now, "conditions": []},
        }
        for name, status in refused.items():
            job(name)
            with pytest.raises(ApiException) as invalid:
                batch.patch_namespaced_job_status(name, ns, {"status": {"startTime": now,
                                                                        **status}})
            assert invalid.value.status == 422, name
        job("succeeded")
        batch.patch_namespaced_job_status("succeeded", ns, {"status": {
            "startTime": now, "completionTime": now, "succeeded": 1,
            "conditions": conditions("SuccessCriteriaMet", "Complete")}})
        job("failed")
        batch.patch_namespaced_job_status("failed", ns, {"status": {
            "startTime": now, "failed": 1, "conditions": conditions("FailureTarget", "Failed")}})
    finally:
        api.close()


def test_an_api_error_reads_in_one_line(core: client.CoreV1Api) -> None:
    """``agent.clients.kubernetes.api.api_error_text``: the status, its reason and the
    server's message, where the client's own text spans lines (headers, raw body)."""
    core.create_namespaced_pod("default", pod("twice"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", pod("twice"))
    assert "\n" in str(err.value)
    assert api_error_text(err.value) == 'HTTP 409 Conflict: pods "twice" already exists'
    proxy_page = ApiException(status=502, reason="Bad Gateway")
    proxy_page.body = b"<html>\n<h1>502</h1>\n</html>"
    assert api_error_text(proxy_page) == "HTTP 502 Bad Gateway"
    assert api_error_text(TimeoutError("read timed out\n(after 30 s)")) == \
        "read timed out (after 30 s)"
