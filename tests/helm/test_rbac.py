"""The RBAC the chart renders: no wildcard anywhere, and exactly the verbs each enabled
feature's code calls (list of pods of its node for the node agent; nothing for the
notifier; per hygiene job, write verbs only in apply mode for the controller)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.helm.chart import NAMESPACE, RELEASE, VALUES_FILES, Rendered, render, render_error

Grants = dict[tuple[str, str], set[str]]

# What the controller always needs: the cluster collectors (pending GPU pods, CronJobs and
# Jobs, paged lists), Argo Workflows (pipelines.argo, on by default), the FinOps team
# labels of namespaces (also exported for the GPU fault alerts' owners) and the nodes'
# remediation state (read only: never a write verb on nodes).
CONTROLLER_BASE: Grants = {
    ("", "pods"): {"list"},
    ("batch", "jobs"): {"list"},
    ("batch", "cronjobs"): {"list"},
    ("", "namespaces"): {"list"},
    ("", "nodes"): {"list"},
    ("argoproj.io", "workflows"): {"list"},
}
# The idle-gpus scan: each kind of a pod's owner chain listed per namespace, the namespace
# read for its exemption and owner labels (pods, jobs and cronjobs are in the base).
IDLE_GPUS_READ: Grants = {
    ("", "namespaces"): {"get"},
    ("apps", "replicasets"): {"list"},
    ("apps", "deployments"): {"list"},
    ("apps", "statefulsets"): {"list"},
    ("apps", "daemonsets"): {"list"},
}
# Acting: targets re-read before acting, replicas through the scale subresource only, marks
# in the state store announced with Events (created, patched to count repeats). No patch or
# update on any workload or pod: that could rewrite a pod template (image,
# serviceAccountName) anywhere, kube-system included.
IDLE_GPUS_WRITE: Grants = {
    ("", "pods"): {"get"},
    ("", "events"): {"create", "patch"},
    ("apps", "deployments"): {"get"},
    ("apps", "statefulsets"): {"get"},
    ("apps", "replicasets"): {"get"},
    ("apps", "deployments/scale"): {"get", "update", "patch"},
    ("apps", "statefulsets/scale"): {"get", "update", "patch"},
    ("apps", "replicasets/scale"): {"get", "update", "patch"},
}
# Kinds whose spec holds a pod template (or is one): no write verb on them, ever.
POD_TEMPLATE_KINDS = {("", "pods"), ("apps", "deployments"), ("apps", "statefulsets"),
                      ("apps", "replicasets"), ("apps", "daemonsets"), ("batch", "jobs"),
                      ("batch", "cronjobs"), ("", "replicationcontrollers"),
                      ("", "podtemplates")}
# stale-images and orphaned-buckets: every pod spec and workload template in the cluster.
INVENTORY_READ: Grants = {
    ("apps", "deployments"): {"list"},
    ("apps", "statefulsets"): {"list"},
    ("apps", "daemonsets"): {"list"},
    ("apps", "replicasets"): {"list"},
    ("argoproj.io", "workflows"): {"list"},
    ("argoproj.io", "workflowtemplates"): {"list"},
    ("argoproj.io", "cronworkflows"): {"list"},
}
# orphaned-buckets: ConfigMaps and ServiceAccount annotations, cluster-wide; no Secrets.
BUCKETS_READ: Grants = {("", "configmaps"): {"list"}, ("", "serviceaccounts"): {"list"}}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def union(*parts: Grants) -> Grants:
    merged: Grants = {}
    for part in parts:
        for key, verbs in part.items():
            merged.setdefault(key, set()).update(verbs)
    return merged


def without(grants: Grants, *keys: tuple[str, str]) -> Grants:
    return {k: v for k, v in grants.items() if k not in keys}


def roles(rendered: Rendered) -> list[dict[str, Any]]:
    return rendered.of_kind("Role", "ClusterRole")


def grants_of(rendered: Rendered, service_account: str) -> dict[str | None, Grants]:
    """Namespace (None: cluster-wide) -> (apiGroup, resource) -> verbs bound to the SA.
    Rules restricted to resourceNames are left out (see test_namespaced_controller_role)."""
    by_scope: dict[str | None, Grants] = {}
    for binding in rendered.of_kind("RoleBinding", "ClusterRoleBinding"):
        subjects = binding.get("subjects") or []
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account
                   and s["namespace"] == NAMESPACE for s in subjects):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" \
            else None
        role = rendered.get(ref["kind"], ref["name"], namespace=namespace)
        scope = by_scope.setdefault(namespace, {})
        for rule in role["rules"]:
            if rule.get("resourceNames"):
                continue
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    scope.setdefault((group, resource), set()).update(rule["verbs"])
    return by_scope


def controller_cluster_grants(rendered: Rendered) -> Grants:
    return grants_of(rendered, f"{RELEASE}-controller").get(None, {})


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_no_wildcards(helm: str, values: str) -> None:
    rendered = render(helm, values)
    assert roles(rendered)
    for role in roles(rendered):
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames",
                          "nonResourceURLs"):
                assert "*" not in (rule.get(field) or []), (role["metadata"]["name"], rule)
            assert not any("*" in r for r in rule["resources"]), rule
            assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_every_role_is_bound_to_its_component_only(helm: str, values: str) -> None:
    rendered = render(helm, values)
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
             for b in rendered.of_kind("RoleBinding", "ClusterRoleBinding")}
    for role in roles(rendered):
        assert (role["kind"], role["metadata"]["name"], role["metadata"].get("namespace")) \
            in bound
    for binding in rendered.of_kind("RoleBinding", "ClusterRoleBinding"):
        assert binding["roleRef"]["name"].startswith(f"{RELEASE}-")
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        assert subject["namespace"] == NAMESPACE
        component = binding["metadata"]["labels"]["app.kubernetes.io/component"]
        assert subject["name"] == f"{RELEASE}-{component}"


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_node_agent_only_lists_and_watches_pods(helm: str, values: str) -> None:
    assert grants_of(render(helm, values), f"{RELEASE}-node") == {
        None: {("", "pods"): {"list", "watch"}}}


@pytest.mark.parametrize("values", [v for v in VALUES_FILES if v != "minimal"])
def test_notifier_has_no_kubernetes_api_access(helm: str, values: str) -> None:
    rendered = render(helm, values)
    account = rendered.get("ServiceAccount", f"{RELEASE}-notifier")
    assert account["automountServiceAccountToken"] is False
    pod = rendered.get("Deployment", f"{RELEASE}-notifier")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert grants_of(rendered, f"{RELEASE}-notifier") == {}


@pytest.mark.parametrize(("sets", "expected"), [
    pytest.param({}, union(CONTROLLER_BASE, IDLE_GPUS_READ), id="defaults"),
    pytest.param({"hygiene.idleGpus.enabled": "false"}, CONTROLLER_BASE, id="no-hygiene"),
    pytest.param({"hygiene.idleGpus.enabled": "false", "pipelines.argo": "false"},
                 without(CONTROLLER_BASE, ("argoproj.io", "workflows")), id="no-argo"),
    # The job alone in apply mode does nothing while the controller is in dry-run.
    pytest.param({"hygiene.idleGpus.apply": "true"}, union(CONTROLLER_BASE, IDLE_GPUS_READ),
                 id="idle-gpus-job-apply-only"),
    pytest.param({"controller.apply": "true"}, union(CONTROLLER_BASE, IDLE_GPUS_READ),
                 id="controller-apply-only"),
    pytest.param({"controller.apply": "true", "hygiene.idleGpus.apply": "true"},
                 union(CONTROLLER_BASE, IDLE_GPUS_READ, IDLE_GPUS_WRITE), id="idle-gpus-apply"),
    pytest.param({"controller.apply": "true", "hygiene.idleGpus.apply": "true",
                  "hygiene.idleGpus.podAction": "delete"},
                 union(CONTROLLER_BASE, IDLE_GPUS_READ, IDLE_GPUS_WRITE,
                       {("", "pods"): {"delete"}}), id="idle-gpus-apply-delete-pods"),
    pytest.param({"hygiene.idleGpus.podAction": "delete"},
                 union(CONTROLLER_BASE, IDLE_GPUS_READ), id="delete-pods-dry-run"),
    pytest.param({"hygiene.idleGpus.enabled": "false", "hygiene.staleImages.enabled": "true"},
                 union(CONTROLLER_BASE, INVENTORY_READ), id="stale-images"),
    pytest.param({"hygiene.idleGpus.enabled": "false", "hygiene.staleImages.enabled": "true",
                  "pipelines.argo": "false"},
                 without(union(CONTROLLER_BASE, INVENTORY_READ), ("argoproj.io", "workflows"),
                         ("argoproj.io", "workflowtemplates"), ("argoproj.io", "cronworkflows")),
                 id="stale-images-no-argo"),
    # Images and buckets live outside Kubernetes: acting grants no Kubernetes write.
    pytest.param({"hygiene.idleGpus.enabled": "false",
                  "hygiene.orphanedBuckets.enabled": "true",
                  "controller.apply": "true", "hygiene.orphanedBuckets.apply": "true"},
                 union(CONTROLLER_BASE, INVENTORY_READ, BUCKETS_READ),
                 id="orphaned-buckets-apply"),
    # Secret namespaces never widen the cluster-wide grants.
    pytest.param({"hygiene.idleGpus.enabled": "false",
                  "hygiene.orphanedBuckets.enabled": "true",
                  "hygiene.secrets.namespaces": "{ml,data}"},
                 union(CONTROLLER_BASE, INVENTORY_READ, BUCKETS_READ),
                 id="orphaned-buckets-secret-namespaces"),
])
def test_controller_cluster_verbs_per_feature(helm: str, sets: Mapping[str, str],
                                              expected: Grants) -> None:
    assert controller_cluster_grants(render(helm, sets=sets)) == expected


def test_cluster_wide_secrets_list_is_refused_with_the_way_out(helm: str) -> None:
    error = render_error(helm, sets={"hygiene.orphanedBuckets.enabled": "true",
                                     "hygiene.secrets.list": "true"})
    assert "hygiene.secrets.list" in error and "hygiene.secrets.namespaces" in error


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_no_secret_read_cluster_wide(helm: str, values: str) -> None:
    for scope, grants in grants_of(render(helm, values), f"{RELEASE}-controller").items():
        if scope is None:
            assert ("", "secrets") not in grants


def test_secrets_listed_only_in_the_namespaces_named(helm: str) -> None:
    sets = {"hygiene.orphanedBuckets.enabled": "true", "hygiene.secrets.namespaces": "{ml,data}"}
    rendered = render(helm, sets=sets)
    scopes = grants_of(rendered, f"{RELEASE}-controller")
    assert {ns: grants for ns, grants in scopes.items() if ns in ("ml", "data")} == {
        "ml": {("", "secrets"): {"list"}}, "data": {("", "secrets"): {"list"}}}
    assert rendered.config()["hygiene"]["orphaned_buckets"]["secret_namespaces"] == ["ml", "data"]
    # Without orphaned-buckets the namespaces grant nothing.
    off = render(helm, sets={"hygiene.secrets.namespaces": "{ml}"})
    assert set(grants_of(off, f"{RELEASE}-controller")) == {None, NAMESPACE}


def test_all_features_grants(helm: str) -> None:
    rendered = render(helm, "all-features")
    expected = union(CONTROLLER_BASE, IDLE_GPUS_READ, IDLE_GPUS_WRITE, INVENTORY_READ,
                     BUCKETS_READ, {("", "pods"): {"delete"}})
    assert grants_of(rendered, f"{RELEASE}-controller") == {
        None: expected,
        NAMESPACE: {("coordination.k8s.io", "leases"): {"create"}},
        "ml-data": {("", "secrets"): {"list"}},
        "ml-team-a": {("", "secrets"): {"list"}},
    }


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_controller_cannot_write_any_pod_template(helm: str, values: str) -> None:
    """The apply-mode privilege escalation: patch/update on a workload or pod lets the token
    change its image or serviceAccountName. Replicas change through ``<kind>/scale`` only."""
    for grants in grants_of(render(helm, values), f"{RELEASE}-controller").values():
        for key in POD_TEMPLATE_KINDS:
            assert not grants.get(key, set()) & {"create", "update", "patch"}, key


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_controller_never_creates_pods(helm: str, values: str) -> None:
    """Creating pods would let the controller run as any ServiceAccount of a namespace."""
    for verbs in grants_of(render(helm, values), f"{RELEASE}-controller").values():
        assert "create" not in verbs.get(("", "pods"), set())


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_write_verbs_only_where_the_features_act(helm: str, values: str) -> None:
    rendered = render(helm, values)
    cluster = controller_cluster_grants(rendered)
    writes = {key for key, verbs in cluster.items() if verbs & WRITE_VERBS}
    if values == "all-features":  # podAction: delete adds pods delete
        assert writes == {key for key, verbs in IDLE_GPUS_WRITE.items()
                          if verbs & WRITE_VERBS} | {("", "pods")}
        assert cluster[("", "pods")] & WRITE_VERBS == {"delete"}
    else:  # dry-run: no write at all, not even an Event
        assert writes == set()


def test_namespaced_controller_role(helm: str) -> None:
    rendered = render(helm)
    role = rendered.get("Role", f"{RELEASE}-controller", namespace=NAMESPACE)
    rules = [(r["apiGroups"], r["resources"], r.get("resourceNames"), sorted(r["verbs"]))
             for r in role["rules"]]
    config = rendered.config()
    lease = config["controller"]["lease_name"]
    kill_switch = config["hygiene"]["kill_switch_configmap"]
    assert (lease, kill_switch) == (f"{RELEASE}-controller", f"{RELEASE}-hygiene")
    assert rules == [
        # A create cannot be limited to a name; reading and renewing can.
        (["coordination.k8s.io"], ["leases"], None, ["create"]),
        (["coordination.k8s.io"], ["leases"], [lease], ["get", "update"]),
        ([""], ["configmaps"], [kill_switch], ["get"]),
    ]


def test_lease_and_kill_switch_names_follow_config(helm: str) -> None:
    rendered = render(helm, sets={"config.controller.lease_name": "gpu-steward",
                                  "config.hygiene.kill_switch_configmap": "stop-hygiene"})
    role = rendered.get("Role", f"{RELEASE}-controller", namespace=NAMESPACE)
    names = {r["resources"][0]: r.get("resourceNames") for r in role["rules"]
             if r.get("resourceNames")}
    assert names == {"leases": ["gpu-steward"], "configmaps": ["stop-hygiene"]}


def test_no_kill_switch_read_without_hygiene(helm: str) -> None:
    rendered = render(helm, "minimal")
    role = rendered.get("Role", f"{RELEASE}-controller", namespace=NAMESPACE)
    assert [r["resources"] for r in role["rules"]] == [["leases"], ["leases"]]


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    rendered = render(helm, "all-features", sets={"rbac.create": "false"})
    assert not rendered.of_kind("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
