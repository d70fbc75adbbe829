"""The calls each component makes to the Kubernetes API, as Protocols: a component takes the
narrowest one it uses, so its signature says what it reads or writes (the node's pod cache
lists pods and nothing else), tests can hand it a stand-in, and mypy checks every call site.

The official client's API classes (``CoreV1Api``, ``BatchV1Api``, ``CoordinationV1Api``,
``CustomObjectsApi``) provide these methods; what they return are the client's models,
untyped, hence ``Any``. Keyword arguments are the client's (``limit``, ``_continue``,
``field_selector``, ``watch``, ``_request_timeout`` ...).
"""

from __future__ import annotations

from typing import Any, Protocol


class PodListing(Protocol):
    """``CoreV1Api`` as the node's pod cache and the controller's pending pods use it:
    list (and watch) pods across namespaces."""

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any: ...


class LeaseCalls(Protocol):
    """``CoordinationV1Api`` as leader election uses it: one Lease, read and written."""

    def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> Any: ...

    def create_namespaced_lease(self, namespace: str, body: Any, **kwargs: Any) -> Any: ...

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any,
                                 **kwargs: Any) -> Any: ...


class JobListing(Protocol):
    """``BatchV1Api`` as the pipeline collector uses it: Jobs and CronJobs, read only."""

    def list_job_for_all_namespaces(self, **kwargs: Any) -> Any: ...

    def list_cron_job_for_all_namespaces(self, **kwargs: Any) -> Any: ...


class CustomObjectListing(Protocol):
    """``CustomObjectsApi`` as the pipeline collector uses it for Argo Workflows: its API
    client (for discovery) and cluster-wide lists."""

    api_client: Any

    def list_cluster_custom_object(self, group: str, version: str, plural: str,
                                   **kwargs: Any) -> Any: ...
