"""Optional authorization (``grants``): RBAC-like rules checked before routing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.sim.kube_api.errors import KubeApiError, _error
from agent.sim.kube_api.resources import _TRUE, JsonObj


@dataclass(frozen=True)
class Grant:
    """One grant of the stand-in's optional authorization, shaped like an RBAC rule: ``verbs``
    on ``group``/``resource`` (``deployments/scale`` for a subresource), in ``namespace``
    only, or everywhere when it is None (a ClusterRoleBinding)."""

    group: str
    resource: str
    verbs: frozenset[str]
    namespace: str | None = None


@dataclass(frozen=True)
class _Attributes:
    verb: str
    group: str
    resource: str  # with "/subresource" when there is one
    namespace: str | None
    name: str | None


# Path segments after /namespaces/<name> that are the namespace's own subresources.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def _request_attributes(method: str, path: str, query: Mapping[str, str]
                        ) -> _Attributes | None:
    """What the API server's RequestInfo makes of a request, from its path alone (it does not
    need the group to exist); None for non-resource paths (discovery, health, version),
    which every authenticated caller may read (``system:discovery``)."""
    segments = path.strip("/").split("/")
    if segments[0] == "api" and len(segments) >= 3:
        group, rest = "", segments[2:]
    elif segments[0] == "apis" and len(segments) >= 4:
        group, rest = segments[1], segments[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else None
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch", "") in _TRUE else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
        if method == "DELETE":
            verb = "delete" if name else "deletecollection"
    return _Attributes(verb, group, resource, namespace, name)


def _forbidden(attrs: _Attributes, user: str) -> KubeApiError:
    """The real server's wording, e.g. ``deployments.apps "web" is forbidden: User "u"
    cannot patch resource "deployments" in API group "apps" in the namespace "ml"``."""
    plural = attrs.resource.split("/")[0]
    qualified = f"{plural}.{attrs.group}" if attrs.group else plural
    target = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    scope = (f'in the namespace "{attrs.namespace}"' if attrs.namespace
             else "at the cluster scope")
    message = (f'{target} is forbidden: User "{user}" cannot {attrs.verb} resource '
               f'"{attrs.resource}" in API group "{attrs.group}" {scope}')
    details: JsonObj = {"group": attrs.group, "kind": plural}
    if attrs.name:
        details["name"] = attrs.name
    return _error(403, message, details)
