"""Which team a namespace belongs to: ``finops.namespace_teams`` first, then the namespace's
``finops.team_label`` read through the Kubernetes API, else ``unassigned``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

log = logging.getLogger("agent.finops.teams")
# Here, not in aggregate (pandas): the controller's team collector reads this module too.
UNASSIGNED: Final = "unassigned"
_PAGE = 500


class NamespaceLabelsSource(Protocol):
    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Every namespace's labels."""
        ...


class KubernetesNamespaceLabels:
    """``CoreV1Api.list_namespace``, paged; the ApiClient factory is called once per read."""

    def __init__(self, api_client: Callable[[], Any]) -> None:
        self._api_client = api_client

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        from kubernetes import client

        labels: dict[str, dict[str, str]] = {}
        api = self._api_client()
        try:
            core = client.CoreV1Api(api)
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"limit": _PAGE, "_request_timeout": 30}
                if token:
                    kwargs["_continue"] = token
                page = core.list_namespace(**kwargs)
                for item in page.items:
                    labels[item.metadata.name] = dict(item.metadata.labels or {})
                token = page.metadata._continue if page.metadata else None
                if not token:
                    return labels
        finally:
            api.close()


@dataclass(frozen=True)
class TeamMapping:
    teams: dict[str, str]  # namespace -> team, for every namespace asked about
    sources: dict[str, str]  # namespace -> "config" | "label" | "none"
    warnings: list[str] = field(default_factory=list)

    def team_of(self, namespace: str) -> str:
        return self.teams.get(namespace, UNASSIGNED)


def resolve_teams(namespaces: Iterable[str], *, static: Mapping[str, str], label: str,
                  source: NamespaceLabelsSource | None) -> TeamMapping:
    """Map each namespace to a team. An unreachable API leaves only the static map, with a
    warning in the report rather than a failed report."""
    wanted = sorted(set(namespaces))
    warnings: list[str] = []
    labels: dict[str, dict[str, str]] = {}
    if source is not None and any(ns not in static for ns in wanted):
        try:
            labels = source.namespace_labels()
        except Exception as exc:
            log.warning("cannot read namespace labels; teams come from finops.namespace_teams "
                        "only", extra={"error": str(exc)[:300]})
            warnings.append(f"namespace labels unavailable ({type(exc).__name__}); namespaces "
                            "not in finops.namespace_teams are reported as unassigned")
    teams: dict[str, str] = {}
    sources: dict[str, str] = {}
    for namespace in wanted:
        if namespace in static:
            teams[namespace], sources[namespace] = static[namespace], "config"
        elif labels.get(namespace, {}).get(label):
            teams[namespace], sources[namespace] = labels[namespace][label], "label"
        else:
            teams[namespace], sources[namespace] = UNASSIGNED, "none"
    return TeamMapping(teams=teams, sources=sources, warnings=warnings)
