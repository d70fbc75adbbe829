"""Applying the chart's rendered RBAC to the real API server, and waiting until the
authorizer enforces it (RBAC reaches the authorizer through an informer: a request right
after a write may still see the old rules)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helm.chart import NAMESPACE, RELEASE, Rendered
from tests.realk8s.cluster import RealCluster, service_account_user

INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def _rbac(cluster: RealCluster) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(cluster.admin)


def remove_chart_rbac(cluster: RealCluster) -> None:
    rbac = _rbac(cluster)
    for role in rbac.list_cluster_role(label_selector=INSTANCE).items:
        rbac.delete_cluster_role(role.metadata.name)
    for binding in rbac.list_cluster_role_binding(label_selector=INSTANCE).items:
        rbac.delete_cluster_role_binding(binding.metadata.name)
    for role in rbac.list_role_for_all_namespaces(label_selector=INSTANCE).items:
        rbac.delete_namespaced_role(role.metadata.name, role.metadata.namespace)
    for binding in rbac.list_role_binding_for_all_namespaces(label_selector=INSTANCE).items:
        rbac.delete_namespaced_role_binding(binding.metadata.name, binding.metadata.namespace)


def apply_chart_rbac(cluster: RealCluster, rendered: Rendered) -> None:
    """Exactly the rendered ServiceAccounts and RBAC, nothing left from an earlier render;
    returns once every rendered rule is enforced."""
    remove_chart_rbac(cluster)
    cluster.namespace(NAMESPACE)
    core, rbac = client.CoreV1Api(cluster.admin), _rbac(cluster)
    for doc in rendered.of_kind("ServiceAccount"):
        try:
            core.create_namespaced_service_account(NAMESPACE, doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for doc in rendered.of_kind(*RBAC_KINDS):
        namespace = doc["metadata"].get("namespace")
        if namespace:
            cluster.namespace(namespace)
        if doc["kind"] == "ClusterRole":
            rbac.create_cluster_role(doc)
        elif doc["kind"] == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(doc)
        elif doc["kind"] == "Role":
            rbac.create_namespaced_role(namespace, doc)
        else:
            rbac.create_namespaced_role_binding(namespace, doc)
    wait_enforced(cluster, rendered)


def bound_rules(rendered: Rendered, service_account: str
                ) -> list[tuple[str | None, dict[str, Any]]]:
    """(namespace or None for cluster-wide, rule) for every rule bound to the account."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    for binding in rendered.of_kind("RoleBinding", "ClusterRoleBinding"):
        if not any(s["name"] == service_account for s in binding.get("subjects") or []):
            continue
        namespace = binding["metadata"].get("namespace")
        role = rendered.get(binding["roleRef"]["kind"], binding["roleRef"]["name"],
                            namespace=namespace)
        found.extend((namespace, rule) for rule in role["rules"])
    return found


def allowed(cluster: RealCluster, user: str, verb: str, group: str, resource: str, *,
            namespace: str | None = None, name: str | None = None) -> bool:
    plural, _, sub = resource.partition("/")
    attributes: dict[str, Any] = {"verb": verb, "group": group, "resource": plural}
    if sub:
        attributes["subresource"] = sub
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    namespace_of_account = user.split(":")[2]
    review = client.AuthorizationV1Api(cluster.admin).create_subject_access_review({
        "spec": {"user": user, "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{namespace_of_account}",
                                          "system:authenticated"],
                 "resourceAttributes": attributes}})
    return bool(review.status.allowed)


def wait_enforced(cluster: RealCluster, rendered: Rendered, *, timeout: float = 20) -> None:
    checks: list[tuple[str, str, str, str, str | None, str | None]] = []
    for component in ("controller", "node", "notifier"):
        account = f"{RELEASE}-{component}"
        user = service_account_user(NAMESPACE, account)
        for namespace, rule in bound_rules(rendered, account):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            checks.append((user, verb, group, resource, namespace or "default",
                                           name))
    deadline = time.monotonic() + timeout
    pending: Iterable[tuple[str, str, str, str, str | None, str | None]] = checks
    while True:
        pending = [c for c in pending
                   if not allowed(cluster, c[0], c[1], c[2], c[3], namespace=c[4], name=c[5])]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"RBAC not enforced after {timeout} s: {pending[:5]}")
        time.sleep(0.1)


def wait_revoked(cluster: RealCluster, user: str, verb: str, group: str, resource: str, *,
                 namespace: str | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while allowed(cluster, user, verb, group, resource, namespace=namespace):
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} may still {verb} {resource} after {timeout} s")
        time.sleep(0.1)
