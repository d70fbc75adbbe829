"""Connecting to the Kubernetes API: in-cluster, else ``kubernetes.kubeconfig``/``KUBECONFIG``.

Imports of the ``kubernetes`` package stay inside functions: it is large, and the node
agent must not pay for it when no cluster is configured (the simulated node).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.config import KubernetesConfig

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"
# Six fraction digits always: the API server's MicroTime refuses a time without them.
_MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class KubeConfigError(Exception):
    """No usable cluster configuration: names where Steward looked (a usage error, exit 2)."""


class KubeApiError(Exception):
    """The one error type of a call the API server refused or failed, in one line
    (``api_error_text``); ``status`` is the HTTP status when the server answered."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what}: {api_error_text(exc)}")
        self.status: int | None = getattr(exc, "status", None)


@contextmanager
def refusals(what: str) -> Iterator[None]:
    """An ``ApiException`` raised inside, as a one-line :class:`KubeApiError`."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise KubeApiError(what, exc) from exc


def cluster_configured(config: KubernetesConfig, *,
                       environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(config.kubeconfig or env.get(IN_CLUSTER_ENV) or env.get("KUBECONFIG"))


def user_agent(component: str) -> str:
    """``steward/<version> (<component>)``: audit logs and API priority and fairness can then
    tell Steward's components apart (the client's default names only the generator)."""
    return f"steward/{__version__} ({component})"


def api_client(config: KubernetesConfig, component: str, *,
               environ: Mapping[str, str] | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the configured cluster, saying which Steward
    component (``node``, ``controller``, ``hygiene``, ``finops``) makes its requests."""
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
    api = client.ApiClient(configuration)
    api.user_agent = user_agent(component)
    return api


def timestamp(value: Any) -> float | None:
    """A Kubernetes time (datetime from the client, or RFC 3339 text) as unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def api_error_text(exc: BaseException) -> str:
    """One line for a failed API call: ``HTTP 409 Conflict: <the server's message>``.

    The client's own text of an ``ApiException`` spans lines (the response headers and the
    raw body): put into a command's error or a log field, it breaks the one-line error and
    buries the server's reason. Anything else: its text, whitespace collapsed."""
    # Only a process that loaded the official client can hold its ApiException; the node
    # agent never loads it (its thin client's errors are plain text already).
    client_errors = sys.modules.get("kubernetes.client.exceptions")
    if client_errors is None or not isinstance(exc, client_errors.ApiException):
        return " ".join(str(exc).split())
    text = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return f"{text}: {' '.join(str(message).split())}" if message else text


def micro_time(value: datetime) -> str:
    """A ``MicroTime`` field's text (a Lease's ``renewTime``), fraction always present:
    ``datetime.isoformat()`` drops it when the microsecond is 0, and the server answers 400."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(_MICRO_TIME)


def paged(list_call: Callable[..., Any], *, page_size: int = 500,
          **kwargs: Any) -> Iterable[Any]:
    """Every item of a list call, a page at a time (``limit``/``continue``): a large
    cluster's Jobs or pods never arrive as one giant response. Works for the typed calls
    (models with ``.items``) and for ``CustomObjectsApi`` lists (plain dicts)."""
    token = None
    while True:
        page = list_call(limit=page_size, _continue=token, _request_timeout=30, **kwargs)
        if isinstance(page, dict):
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
        else:
            yield from page.items
            token = page.metadata._continue
        if not token:
            return


def served_resources(api: Any, group: str, version: str, *,
                     request_timeout: float = 30.0) -> frozenset[str]:
    """The resources ``group/version`` serves, from discovery; empty when it is not installed.

    A list cannot tell "not installed" from "not granted": authorization runs before routing,
    so an unauthorised list of a group the server does not know is 403, not 404. Discovery
    is open to every authenticated user (``system:discovery``) and answers 404 only when
    the group is absent.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        response = api.call_api(
            f"/apis/{group}/{version}", "GET", header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=request_timeout)
    except ApiException as exc:
        if exc.status == 404:
            return frozenset()
        raise
    body = json.loads(response.data)
    return frozenset(str(r["name"]) for r in body.get("resources") or []
                     if isinstance(r, dict) and r.get("name"))
