"""``steward_namespace_team_info{namespace, team}``: the team of every namespace, by the
mapping the FinOps report uses (``finops.namespace_teams`` first, then the namespace's
``finops.team_label``, else ``unassigned``), for the GPU fault alerts' owners. Teams are
namespace label values or config: bounded, never free text. Runs on the controller's leader
(the CLI composes it there, as it does the weekly report)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

from agent.clients.kubernetes.api import paged
from agent.exporter.collection import Collector, CollectorFailed, CollectResult
from agent.finops.teams import resolve_teams


class _Labels:
    """resolve_teams' source, holding labels already read (a failed read fails the run)."""

    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self._labels = labels

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        return self._labels


def _list_failed(exc: Exception) -> CollectorFailed:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return CollectorFailed(f"api_{exc.status}", f"listing namespaces: {exc.reason}")
    return CollectorFailed(type(exc).__name__.lower(), f"listing namespaces: {exc}")


def team_info_family(teams: Mapping[str, str]) -> Metric:
    """``steward_namespace_team_info`` of a namespace -> team mapping."""
    family = Metric("steward_namespace_team_info",
                    "The namespace's team (finops.namespace_teams, else its "
                    "finops.team_label label, else unassigned); always 1.", "gauge")
    for namespace, team in sorted(teams.items()):
        family.add_sample(family.name, {"namespace": namespace, "team": team}, 1.0)
    return family


def namespace_teams_collector(core_api: Any, interval: float, *, static: Mapping[str, str],
                              label: str) -> Collector:
    def collect() -> CollectResult:
        try:
            labels = {ns.metadata.name: dict(ns.metadata.labels or {})
                      for ns in paged(core_api.list_namespace)}
        except Exception as exc:
            # Every namespace "unassigned" would be a wrong answer; none is an honest one.
            raise _list_failed(exc) from exc
        mapping = resolve_teams([*labels, *static], static=static, label=label,
                                source=_Labels(labels))
        family = team_info_family(mapping.teams)
        return CollectResult([family] if family.samples else [])

    return Collector("namespace_teams", collect, interval)
