"""Connecting to the Kubernetes API: in-cluster, else ``kubernetes.kubeconfig``/``KUBECONFIG``.

Imports of the ``kubernetes`` package stay inside functions: it is large, and the node
agent must not pay for it when no cluster is configured (the simulated node).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from agent.config import KubernetesConfig

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


class KubeConfigError(Exception):
    """No usable cluster configuration: names where Steward looked."""


def cluster_configured(config: KubernetesConfig, *,
                       environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(config.kubeconfig or env.get(IN_CLUSTER_ENV) or env.get("KUBECONFIG"))


def api_client(config: KubernetesConfig, *, environ: Mapping[str, str] | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the configured cluster."""
    from kubernetes import client
    from kubernetes import config as kube_config

    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    try:
        if config.kubeconfig is not None or (env.get("KUBECONFIG") and not env.get(IN_CLUSTER_ENV)):
            path = str(config.kubeconfig) if config.kubeconfig else env["KUBECONFIG"]
            kube_config.load_kube_config(config_file=path, context=config.context,
                                         client_configuration=configuration)
        elif env.get(IN_CLUSTER_ENV):
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            raise KubeConfigError("no Kubernetes cluster configured: not in a pod, and neither "
                                  "kubernetes.kubeconfig nor KUBECONFIG is set")
    except kube_config.ConfigException as exc:
        raise KubeConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    return client.ApiClient(configuration)


def timestamp(value: Any) -> float | None:
    """A Kubernetes time (datetime from the client, or RFC 3339 text) as unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def paged(list_call: Callable[..., Any], *, page_size: int = 500,
          **kwargs: Any) -> Iterable[Any]:
    """Every item of a list call, a page at a time (``limit``/``continue``): a large
    cluster's Jobs or pods never arrive as one giant response."""
    token = None
    while True:
        page = list_call(limit=page_size, _continue=token, _request_timeout=30, **kwargs)
        yield from page.items
        token = page.metadata._continue
        if not token:
            return
