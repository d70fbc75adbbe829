"""The calls each component makes to the Kubernetes API, as Protocols: a component takes the
narrowest one it uses, so its signature says what it reads or writes (the node's pod cache
lists pods and nothing else), tests can hand it a stand-in, and mypy checks every call site.

The official client's API classes (``CoreV1Api``, ``BatchV1Api``, ``CoordinationV1Api``,
``CustomObjectsApi``) provide these methods, but for ``PodWatching`` (the node agent's own
thin client, ``rest``); what they return are the client's models, untyped, hence ``Any``.
Keyword arguments are the client's (``limit``, ``_continue``, ``field_selector``,
``watch``, ``_request_timeout`` ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class PodListing(Protocol):
    """``CoreV1Api`` as the controller's pending pods use it: list pods across namespaces."""

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any: ...


class PodEvents(Protocol):
    """One open watch of pods: ``(type, object)`` as the API's JSON, bookmarks included."""

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def stop(self) -> None:
        """Ends the watch from another thread."""
        ...


class PodPageLike(Protocol):
    """One page of a pod list: the snapshot's resourceVersion, the next page's token."""

    @property
    def items(self) -> list[dict[str, Any]]: ...

    @property
    def resource_version(self) -> str: ...

    @property
    def continue_token(self) -> str | None: ...


class PodWatching(Protocol):
    """What the node's pod cache calls: pods across namespaces by field selector, listed a
    page at a time and watched, as plain JSON (``rest.PodListWatch``, not the official
    client: the node agent never loads it)."""

    def list_pods(self, *, field_selector: str, limit: int, continue_token: str | None,
                  timeout: float) -> PodPageLike: ...

    def watch_pods(self, *, field_selector: str, resource_version: str, timeout_seconds: int,
                   request_timeout: float) -> PodEvents: ...


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
