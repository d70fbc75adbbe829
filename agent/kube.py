"""Connecting to the Kubernetes API: in-cluster, else ``kubernetes.kubeconfig``/``KUBECONFIG``.

Imports of the ``kubernetes`` package stay inside functions: it is large, and the node
agent must not pay for it when no cluster is configured (the simulated node).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
