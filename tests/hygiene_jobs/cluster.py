"""Kubernetes objects for the hygiene-jobs tests, in the API's own JSON shapes."""

from __future__ import annotations

from typing import Any

from agent.clients.kubernetes import objects

JsonObj = dict[str, Any]


def container(image: str, *, env: dict[str, str] | None = None, name: str = "main") -> JsonObj:
    return objects.container(image, name=name, env=env)


def pod_spec(image: str, *, env: dict[str, str] | None = None,
             init_image: str | None = None) -> JsonObj:
    spec: JsonObj = {"containers": [container(image, env=env)]}
    if init_image:
        spec["initContainers"] = [container(init_image, name="init")]
    return spec


def pod(name: str, image: str, *, namespace: str = "ml", image_id: str | None = None,
        env: dict[str, str] | None = None) -> JsonObj:
    obj: JsonObj = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": pod_spec(image, env=env), "status": {"phase": "Running"}}
    if image_id:
        obj["status"]["containerStatuses"] = [{
            "name": "main", "image": image, "imageID": image_id, "ready": True,
            "restartCount": 0, "state": {"running": {}}}]
    return obj


def workload(kind: str, name: str, image: str, *, namespace: str = "ml",
             env: dict[str, str] | None = None) -> JsonObj:
    """A Deployment, StatefulSet, DaemonSet or ReplicaSet running ``image``."""
    return objects.workload(kind, name, namespace, replicas=None,
                            containers=pod_spec(image, env=env)["containers"])


def job(name: str, image: str, *, namespace: str = "ml") -> JsonObj:
    template = {"spec": {**pod_spec(image), "restartPolicy": "Never"}}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"template": template}}


def cronjob(name: str, image: str, *, namespace: str = "ml",
            env: dict[str, str] | None = None) -> JsonObj:
    template = {"spec": {**pod_spec(image, env=env), "restartPolicy": "Never"}}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": template}}}}


def configmap(name: str, data: dict[str, str], *, namespace: str = "ml") -> JsonObj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}


def secret(name: str, data: dict[str, str], *, namespace: str = "ml",
           annotations: dict[str, str] | None = None) -> JsonObj:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def workflow_template(name: str, image: str, *, bucket: str, namespace: str = "ml") -> JsonObj:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"entrypoint": "main", "templates": [{
                "name": "main", "container": {"image": image},
                "outputs": {"artifacts": [{"name": "out", "s3": {"bucket": bucket,
                                                                 "key": "out.tgz"}}]}}]}}
