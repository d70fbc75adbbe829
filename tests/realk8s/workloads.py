"""Objects the real-server tests create (as the admin), in the shapes a cluster holds."""

from __future__ import annotations

import base64
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from agent.clients.kubernetes import objects

JsonObj = dict[str, Any]
GPU = objects.GPU_RESOURCE  # the hygiene tests' GPU pods ask for it by this name


def container(image: str = "registry.example/app:1", *, env: dict[str, str] | None = None,
              gpus: int = 0, name: str = "main") -> JsonObj:
    return objects.container(image, name=name, gpus=gpus, env=env, with_requests=True)


def pod(name: str, namespace: str, *, node: str | None = None, gpus: int = 0,
        image: str = "registry.example/app:1", labels: dict[str, str] | None = None) -> JsonObj:
    return objects.pod(name, namespace, containers=[container(image, gpus=gpus)], node=node,
                       labels=labels, restart_policy="Always")


def _template(app: str, image: str, env: dict[str, str] | None = None,
              restart: str = "Always") -> JsonObj:
    return {"metadata": {"labels": {"app": app}},
            "spec": {"containers": [container(image, env=env)], "restartPolicy": restart}}


def deployment(name: str, namespace: str, *, image: str = "registry.example/app:1",
               replicas: int = 1, env: dict[str, str] | None = None) -> JsonObj:
    obj = objects.workload("Deployment", name, namespace, replicas=replicas,
                           containers=[container(image, env=env)])
    obj["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    return obj


def statefulset(name: str, namespace: str) -> JsonObj:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0, "serviceName": name,
                     "selector": {"matchLabels": {"app": name}},
                     "template": _template(name, "registry.example/backup:1")}}


def daemonset(name: str, namespace: str) -> JsonObj:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {**_template(name, "registry.k8s.io/kube-proxy:1"), "spec": {
                         "containers": [container("registry.k8s.io/kube-proxy:1")],
                         "nodeSelector": {"steward.io/no-such-node": "true"}}}}}


def job(name: str, namespace: str, *, node: str | None = None, labels: dict[str, str] | None
        = None, backoff_limit: int = 0, suspend: bool = True) -> JsonObj:
    template = _template(name, "registry.example/job:1", restart="Never")
    template["metadata"]["labels"] = {}
    if node:
        template["spec"]["nodeName"] = node
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"backoffLimit": backoff_limit, "suspend": suspend, "template": template}}


def configmap(name: str, namespace: str, data: dict[str, str]) -> JsonObj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}


def secret(name: str, namespace: str) -> JsonObj:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"value": base64.b64encode(b"s3://a-secret-value-bucket").decode()}}


def service_account(name: str, namespace: str, annotations: dict[str, str]) -> JsonObj:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations}}


_CREATE = {
    "Pod": lambda api, ns, body: client.CoreV1Api(api).create_namespaced_pod(ns, body),
    "ConfigMap": lambda api, ns, body: client.CoreV1Api(api).create_namespaced_config_map(
        ns, body),
    "Secret": lambda api, ns, body: client.CoreV1Api(api).create_namespaced_secret(ns, body),
    "ServiceAccount": lambda api, ns, body: client.CoreV1Api(
        api).create_namespaced_service_account(ns, body),
    "Deployment": lambda api, ns, body: client.AppsV1Api(api).create_namespaced_deployment(
        ns, body),
    "StatefulSet": lambda api, ns, body: client.AppsV1Api(
        api).create_namespaced_stateful_set(ns, body),
    "DaemonSet": lambda api, ns, body: client.AppsV1Api(api).create_namespaced_daemon_set(
        ns, body),
    "Job": lambda api, ns, body: client.BatchV1Api(api).create_namespaced_job(ns, body),
}


def create(api: client.ApiClient, body: JsonObj) -> None:
    """Create ``body``; one that exists already is left as it is."""
    try:
        _CREATE[body["kind"]](api, body["metadata"]["namespace"], body)
    except ApiException as exc:
        if exc.status != 409:
            raise


def recreate_pod(api: client.ApiClient, body: JsonObj, *, timeout: float = 30) -> None:
    """Force-delete the pod if it exists (no kubelet finishes a graceful deletion here),
    wait until it is gone, create it again."""
    core = client.CoreV1Api(api)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            core.create_namespaced_pod(namespace, body)
            return
        except ApiException as exc:
            if exc.status != 409 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# --------------------------------------------------------------------------- Argo's CRDs

ARGO_KINDS = (("workflows", "Workflow", "wf"), ("workflowtemplates", "WorkflowTemplate",
                                                 "wftmpl"),
              ("cronworkflows", "CronWorkflow", "cwf"))


def argo_crd(plural: str, kind: str, short: str) -> JsonObj:
    """Argo's CRDs as its "minimal" install ships them: schema-less, no status subresource."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.argoproj.io"},
            "spec": {"group": "argoproj.io", "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "listKind": f"{kind}List", "shortNames": [short]},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}}


def _discovered(api: client.ApiClient) -> set[str]:
    try:
        response = api.call_api("/apis/argoproj.io/v1alpha1", "GET",
                                auth_settings=["BearerToken"], _preload_content=False,
                                _return_http_data_only=True)
    except ApiException as exc:
        if exc.status == 404:
            return set()
        raise
    import json

    return {r["name"] for r in json.loads(response.data).get("resources", [])}


def install_argo_crds(api: client.ApiClient, *, timeout: float = 60) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for plural, kind, short in ARGO_KINDS:
        try:
            extensions.create_custom_resource_definition(argo_crd(plural, kind, short))
        except ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    while not {p for p, _, _ in ARGO_KINDS} <= _discovered(api):
        if time.monotonic() > deadline:
            raise AssertionError("Argo CRDs not served")
        time.sleep(0.2)
    # Served in discovery is not yet listable everywhere: wait for a list to answer.
    while True:
        try:
            client.CustomObjectsApi(api).list_cluster_custom_object("argoproj.io", "v1alpha1",
                                                                    "workflows")
            return
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def remove_argo_crds(api: client.ApiClient, *, timeout: float = 60) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for plural, _, _ in ARGO_KINDS:
        try:
            extensions.delete_custom_resource_definition(f"{plural}.argoproj.io")
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while _discovered(api):
        if time.monotonic() > deadline:
            raise AssertionError("Argo CRDs still served")
        time.sleep(0.2)
