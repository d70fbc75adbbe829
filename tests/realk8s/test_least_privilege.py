"""Least privilege, proven on a real API server: the chart's RBAC (helm template: defaults,
apply, every opt-in) applied as rendered, a bound token minted per ServiceAccount, each
component's own code run with its own token, and the audit log read back: no 403 for what a
component needs, a 403 for what it must not do. Above all, the apply-mode controller cannot
change any workload's spec or pod template, in any namespace."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

from agent.clients.kubernetes.api import user_agent
from agent.clients.kubernetes.rest import PodListWatch, load_endpoint
from agent.config import KubernetesConfig, StewardConfig
from agent.controller.hygiene.idle_gpus.workloads import KINDS, KubeWorkloads, ObjectRef, Replaced
from agent.controller.hygiene.references import ClusterReferences, ReferencesUnavailable
from agent.controller.leader import LeaderElector
from agent.controller.owners import node_remediation_collector
from agent.controller.pending import pending_pods_collector
from agent.controller.pipelines import pipelines_collector
from agent.finops.team_info import namespace_teams_collector
from agent.finops.teams import KubernetesNamespaceLabels
from agent.node.pods import PodCache
from tests.helm.chart import NAMESPACE, RELEASE, Rendered, render
from tests.realk8s import workloads as w
from tests.realk8s.cluster import AuditEvent, RealCluster, http_status, service_account_user
from tests.realk8s.rbac import apply_chart_rbac, wait_revoked
from tests.support.binaries import require_binary
from tests.support.net import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "kubernetes-behaviours.md"
CONTROLLER = service_account_user(NAMESPACE, f"{RELEASE}-controller")
NODE = service_account_user(NAMESPACE, f"{RELEASE}-node")
NOTIFIER = service_account_user(NAMESPACE, f"{RELEASE}-notifier")
APP_NS, OTHER_NS = "lp-ml", "lp-other"
NODE_NAME = "lp-gpu-1"


@dataclass(frozen=True)
class Scenario:
    values: str
    sets: Mapping[str, str] = field(default_factory=dict)
    argo_installed: bool = False

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.sets.items())
        argo = "+argo" if self.argo_installed else ""
        return f"{self.values}{'+' + extra if extra else ''}{argo}"


SCENARIOS = [
    Scenario("default"),
    Scenario("minimal"),
    Scenario("default", {"controller.apply": "true", "hygiene.idleGpus.apply": "true"}),
    Scenario("irsa"),
    Scenario("default", {"hygiene.staleImages.enabled": "true", "pipelines.argo": "false"}),
    # pipelines.argo=false where Argo IS installed: one 403 for the pipeline collector (its
    # choice, logged), and the inventory jobs refuse to judge without Argo's templates.
    Scenario("default", {"hygiene.staleImages.enabled": "true", "pipelines.argo": "false"},
             argo_installed=True),
    Scenario("all-features", argo_installed=True),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def helm() -> str:
    return require_binary("helm")


@pytest.fixture(scope="module")
def world(real_k8s: RealCluster) -> Iterator[RealCluster]:
    """Objects in an application namespace, in another one, and in kube-system, created by
    the admin: what each component reads, and what the controller must never change."""
    for namespace in (APP_NS, OTHER_NS, "ml-data", "ml-team-a"):
        real_k8s.namespace(namespace)
    real_k8s.node(NODE_NAME)
    admin = real_k8s.admin
    # The verb table starts from a cluster without the controller's Lease (created once).
    try:
        client.CoordinationV1Api(admin).delete_namespaced_lease(f"{RELEASE}-controller",
                                                                NAMESPACE)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    w.create(admin, w.deployment("trainer", APP_NS, image="registry.example/ml/train:v1",
                                 env={"OUT": "s3://lp-train-out/x"}))
    w.create(admin, w.configmap("settings", APP_NS, {"BUCKET": "s3://lp-cm-bucket"}))
    w.create(admin, w.service_account("irsa", APP_NS, {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/lp", "steward.io/bucket": "lp-sa-bkt"}))
    w.create(admin, w.secret("lp-secret-bucket", "ml-data"))
    w.create(admin, w.secret("never-read-bucket", OTHER_NS))
    w.create(admin, w.pod("bare", APP_NS, node=NODE_NAME, gpus=1))
    w.create(admin, w.deployment("coredns", "kube-system", image="registry.k8s.io/coredns:1.11"))
    w.create(admin, w.statefulset("etcd-backup", "kube-system"))
    w.create(admin, w.daemonset("kube-proxy", "kube-system"))
    w.create(admin, w.job("cleanup", "kube-system"))
    w.create(admin, w.pod("static-agent", "kube-system", node=NODE_NAME))
    yield real_k8s


def argo(cluster: RealCluster, installed: bool) -> None:
    if installed:
        w.install_argo_crds(cluster.admin)
    else:
        w.remove_argo_crds(cluster.admin)


# --------------------------------------------------------------------------- each component


def controller_config(rendered: Rendered) -> StewardConfig:
    raw = rendered.config()
    raw.pop("state", None)
    raw["controller"] = {**raw.get("controller", {}), "lease_namespace": NAMESPACE}
    return StewardConfig.model_validate(raw)


def run_controller_code(api: client.ApiClient, config: StewardConfig,
                        scenario: Scenario) -> list[str]:
    """What the controller's code calls for the features this render enables, through the
    product's own classes. Returns what the run noticed (for the caller's assertions)."""
    notes: list[str] = []
    ctl, hygiene = config.controller, config.hygiene
    elector = LeaderElector(client.CoordinationV1Api(api), name=ctl.lease_name,
                            namespace=NAMESPACE, identity="lp-test", lease_duration=15,
                            renew_deadline=10, retry_period=2)
    elector.run_once()  # create (or take over) the lease
    elector.run_once()  # renew
    assert elector.is_leader, "the controller could not take its Lease"
    elector.stop()  # release
    pipelines_collector(client.BatchV1Api(api), client.CustomObjectsApi(api), 30).collect()
    pending_pods_collector(client.CoreV1Api(api), 30).collect()
    KubernetesNamespaceLabels(lambda: api).namespace_labels()
    # The owners of a failed GPU's workload and the node's remediation state: read only.
    teams = namespace_teams_collector(client.CoreV1Api(api), 30, static={}, label="team")
    assert any(s.labels["namespace"] == APP_NS for m in teams.collect().families
               for s in m.samples)
    nodes = node_remediation_collector(client.CoreV1Api(api), 30,
                                       taint_keys=ctl.remediation_taint_keys)
    assert any(s.labels["hostname"] == NODE_NAME for m in nodes.collect().families
               for s in m.samples)
    any_hygiene = hygiene.idle_gpus.enabled or hygiene.stale_images.enabled \
        or hygiene.orphaned_buckets.enabled
    if any_hygiene:
        from agent.controller.hygiene.guards import KillSwitch

        KillSwitch(configured=False, configmap=hygiene.kill_switch_configmap,
                   namespace=NAMESPACE, api_client=api).engaged()
    if hygiene.idle_gpus.enabled:
        workloads = KubeWorkloads(api)
        for kind in KINDS:
            workloads.list(kind, APP_NS)
        workloads.namespace(APP_NS)
        if ctl.apply and hygiene.idle_gpus.apply:
            act_on_idle_gpus(api, workloads, pod_action=hygiene.idle_gpus.pod_action)
    if hygiene.stale_images.enabled or hygiene.orphaned_buckets.enabled:
        references = ClusterReferences(
            api, secret_namespaces=hygiene.orphaned_buckets.secret_namespaces)
        try:
            images = references.image_references()
            assert images.find("ml/train", tags=["v1"], digests=[]) is not None
            if hygiene.orphaned_buckets.enabled:
                buckets = references.bucket_references()
                for bucket in ("lp-train-out", "lp-cm-bucket", "lp-sa-bkt"):
                    assert buckets.find(bucket) is not None, bucket
                assert (buckets.find("lp-secret-bucket") is not None) == (
                    "ml-data" in hygiene.orphaned_buckets.secret_namespaces)
                assert buckets.find("never-read-bucket") is None
        except ReferencesUnavailable as exc:
            notes.append(f"references unavailable: {exc}")
    return notes


def act_on_idle_gpus(api: client.ApiClient, workloads: KubeWorkloads, *,
                     pod_action: str) -> None:
    """The acting verbs the chart grants: the target re-read, replicas through the scale
    subresource only (replace, and patch), an Event announcing it, a bare pod deleted with
    a uid precondition."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ref = ObjectRef("apps/v1", "Deployment", APP_NS, "trainer")
    before = apps.read_namespaced_deployment("trainer", APP_NS)
    replicas, version = workloads.read_scale(ref)
    workloads.write_scale(ref, 0, resource_version=version)
    apps.patch_namespaced_deployment_scale("trainer", APP_NS, {"spec": {"replicas": replicas}})
    after = apps.read_namespaced_deployment("trainer", APP_NS)
    # /scale changed replicas and nothing else: the pod template is untouched.
    assert after.spec.template == before.spec.template
    assert after.spec.replicas == replicas
    now = dt.datetime.now(dt.UTC)
    event = core.create_namespaced_event(APP_NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="trainer."),
        involved_object=client.V1ObjectReference(
            api_version="apps/v1", kind="Deployment", name="trainer", namespace=APP_NS,
            uid=before.metadata.uid),
        reason="IdleGpuScaledToZero", message="least-privilege test", type="Normal",
        source=client.V1EventSource(component="steward"), first_timestamp=now,
        last_timestamp=now, count=1))
    core.patch_namespaced_event(event.metadata.name, APP_NS, {"count": 2})
    pod = core.read_namespaced_pod("bare", APP_NS)
    if pod_action == "delete":
        # A stale uid is refused (409): the pod was replaced since it was judged idle.
        with pytest.raises(Replaced) as refused:
            workloads.delete_pod(APP_NS, "bare", uid="0" * 8 + "-stale")
        assert refused.value.status == 409
        assert workloads.delete_pod(APP_NS, "bare", uid=pod.metadata.uid)


def restore_bare_pod(admin: client.ApiClient) -> None:
    """The test's own reset (admin): the bare pod back, whatever a scenario did to it."""
    w.recreate_pod(admin, w.pod("bare", APP_NS, node=NODE_NAME, gpus=1))


def run_node_code(cluster: RealCluster, token: str, workdir: Path) -> None:
    # The node agent's own thin client, connected through a kubeconfig holding its token.
    kubeconfig = cluster.write_kubeconfig(workdir / "node.kubeconfig", token)
    endpoint = load_endpoint(KubernetesConfig(kubeconfig=kubeconfig), environ={})
    cache = PodCache(PodListWatch(endpoint), NODE_NAME, watch_timeout_seconds=5,
                     request_timeout=5, backoff_initial=0.1, backoff_max=0.5)
    cache.start()
    try:
        wait_until(lambda: cache.health() is None and any(
            p.name == "bare" for p in cache.pods()), timeout=15, what="node pod cache synced")
    finally:
        cache.stop()


# --------------------------------------------------------------------------- must nots


def controller_must_nots(api: client.ApiClient, *, acting: bool, deleting: bool,
                         secret_namespaces: list[str]) -> dict[str, int]:
    """Every attempt and the status it got. Writes that could change a workload's spec or
    pod template are tried on kube-system objects that exist."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    batch = client.BatchV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    image = {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "attacker.example/own:1"}]}}}}
    account = {"spec": {"template": {"spec": {"serviceAccountName": "default"}}}}
    attempts = {
        "patch kube-system Deployment image": http_status(
            apps.patch_namespaced_deployment, "coredns", "kube-system", image),
        "patch kube-system Deployment serviceAccountName": http_status(
            apps.patch_namespaced_deployment, "coredns", "kube-system", account),
        "update kube-system Deployment": http_status(
            apps.replace_namespaced_deployment, "coredns", "kube-system",
            w.deployment("coredns", "kube-system", image="attacker.example/own:1")),
        "patch kube-system StatefulSet": http_status(
            apps.patch_namespaced_stateful_set, "etcd-backup", "kube-system", image),
        "patch kube-system DaemonSet": http_status(
            apps.patch_namespaced_daemon_set, "kube-proxy", "kube-system", image),
        "patch a ReplicaSet": http_status(
            apps.patch_namespaced_replica_set, "any", "kube-system", image),
        "patch kube-system Job": http_status(
            batch.patch_namespaced_job, "cleanup", "kube-system",
            {"metadata": {"annotations": {"x": "y"}}}),
        "patch a CronJob": http_status(
            batch.patch_namespaced_cron_job, "any", "kube-system", image),
        "patch kube-system Pod": http_status(
            core.patch_namespaced_pod, "static-agent", "kube-system",
            {"metadata": {"annotations": {"steward.io/marked": "x"}}}),
        "patch an application Deployment's annotations": http_status(
            apps.patch_namespaced_deployment, "trainer", APP_NS,
            {"metadata": {"annotations": {"steward.io/marked": "x"}}}),
        "create a Pod": http_status(
            core.create_namespaced_pod, "kube-system", w.pod("intruder", "kube-system")),
        "create a pod eviction": http_status(
            core.create_namespaced_pod_eviction, "static-agent", "kube-system",
            {"metadata": {"name": "static-agent", "namespace": "kube-system"}}),
        "create a ServiceAccount token": http_status(
            core.create_namespaced_service_account_token, "default", "kube-system",
            {"spec": {"audiences": []}}),
        "list Secrets cluster-wide": http_status(core.list_secret_for_all_namespaces),
        "list Secrets in kube-system": http_status(core.list_namespaced_secret, "kube-system"),
        "get a Secret": http_status(core.read_namespaced_secret, "lp-secret-bucket", "ml-data"),
        "bind a ClusterRole": http_status(rbac.create_cluster_role_binding, {
            "metadata": {"name": "steward-escalate"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": f"{RELEASE}-controller",
                          "namespace": NAMESPACE}]}),
        # Steward shows remediation state; it never cordons, taints or drains.
        "cordon a Node": http_status(core.patch_node, NODE_NAME,
                                     {"spec": {"unschedulable": True}}),
        "update a Lease that is not its own": http_status(
            client.CoordinationV1Api(api).replace_namespaced_lease, "kube-controller-manager",
            "kube-system", {"metadata": {"name": "kube-controller-manager"}}),
    }
    if "ml-data" not in secret_namespaces:
        attempts["list Secrets in ml-data"] = http_status(core.list_namespaced_secret, "ml-data")
    if not acting:
        attempts["scale a Deployment"] = http_status(
            apps.patch_namespaced_deployment_scale, "trainer", APP_NS,
            {"spec": {"replicas": 0}})
        attempts["create an Event"] = http_status(
            core.create_namespaced_event, APP_NS, {"metadata": {"name": "x"},
                                                   "involvedObject": {"name": "x"}})
    if not deleting:
        attempts["delete a Pod"] = http_status(core.delete_namespaced_pod, "bare", APP_NS)
    return attempts


def node_must_nots(api: client.ApiClient) -> dict[str, int]:
    core = client.CoreV1Api(api)
    return {
        "get a Pod": http_status(core.read_namespaced_pod, "bare", APP_NS),
        "patch a Pod": http_status(core.patch_namespaced_pod, "bare", APP_NS,
                                   {"metadata": {"labels": {"x": "y"}}}),
        "delete a Pod": http_status(core.delete_namespaced_pod, "bare", APP_NS),
        "list Secrets": http_status(core.list_secret_for_all_namespaces),
        "list Nodes": http_status(core.list_node),
        "list ConfigMaps": http_status(core.list_config_map_for_all_namespaces),
    }


def notifier_must_nots(api: client.ApiClient) -> dict[str, int]:
    core = client.CoreV1Api(api)
    return {
        "list Pods": http_status(core.list_pod_for_all_namespaces),
        "list Secrets": http_status(core.list_secret_for_all_namespaces),
        "get its own ConfigMap": http_status(core.read_namespaced_config_map,
                                             f"{RELEASE}-config", NAMESPACE),
    }


# --------------------------------------------------------------------------- the test

# Every request of every scenario, for the verb table checked after the last one.
SEEN: list[AuditEvent] = []
RAN: set[str] = set()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_each_component_has_what_it_needs_and_nothing_more(
        helm: str, world: RealCluster, scenario: Scenario, tmp_path: Path) -> None:
    cluster = world
    restore_bare_pod(cluster.admin)
    rendered = render(helm, scenario.values, sets=dict(scenario.sets))
    config = controller_config(rendered)
    argo(cluster, scenario.argo_installed)
    apply_chart_rbac(cluster, rendered)
    ctl = config.controller
    acting = bool(ctl.apply and config.hygiene.idle_gpus.enabled and config.hygiene.idle_gpus.apply)
    deleting = acting and config.hygiene.idle_gpus.pod_action == "delete"
    secret_namespaces = config.hygiene.orphaned_buckets.secret_namespaces
    # What a previous render granted and this one does not must be gone before judging.
    if not acting:
        wait_revoked(cluster, CONTROLLER, "patch", "apps", "deployments/scale",
                     namespace=APP_NS)
    if not deleting:
        wait_revoked(cluster, CONTROLLER, "delete", "", "pods", namespace=APP_NS)
    if "ml-data" not in secret_namespaces:
        wait_revoked(cluster, CONTROLLER, "list", "", "secrets", namespace="ml-data")

    controller_api = cluster.client(cluster.token(NAMESPACE, f"{RELEASE}-controller"),
                                    user_agent("controller"))
    node_token = cluster.token(NAMESPACE, f"{RELEASE}-node")
    node_api = cluster.client(node_token, user_agent("node"))
    notifier_api = cluster.client(cluster.token(NAMESPACE, f"{RELEASE}-notifier"),
                                  "steward-tests/notifier")
    try:
        mark = cluster.audit_mark()
        notes = run_controller_code(controller_api, config, scenario)
        restore_bare_pod(cluster.admin)
        run_node_code(cluster, node_token, tmp_path)
        needed = cluster.audit(since=mark)

        argo_refused = scenario.argo_installed and "argoproj.io" not in str(
            rendered.get("ClusterRole", f"{RELEASE}-controller"))
        # Steward's own requests: the controller-manager's controllers run beside them.
        refused = [e for e in needed if e.code in (401, 403)
                   and e.user in (CONTROLLER, NODE, NOTIFIER)]
        if argo_refused:
            # Installed but not granted (pipelines.argo=false): the collector's one list,
            # and the inventory read that then refuses to judge.
            assert {(e.user, e.group, e.resource) for e in refused} == {
                (CONTROLLER, "argoproj.io", "workflows")}
            assert any("pipelines.argo=true" in n for n in notes), notes
        else:
            assert refused == [], "\n".join(f"{e.user} {e.verb} {e.uri} -> {e.code}"
                                            for e in refused)
            assert notes == []
        assert {e.user_agent for e in needed if e.user in (CONTROLLER, NODE)} == {
            user_agent("controller"), user_agent("node")}

        mark = cluster.audit_mark()
        attempts = {
            "controller": controller_must_nots(controller_api, acting=acting, deleting=deleting,
                                               secret_namespaces=secret_namespaces),
            "node": node_must_nots(node_api),
            "notifier": notifier_must_nots(notifier_api),
        }
        for component, results in attempts.items():
            wrong = {what: code for what, code in results.items() if code != 403}
            assert wrong == {}, f"{component} was not refused: {wrong}"
        # (A watch from the node's run above is audited when it closes: not an attempt.)
        tried = [e for e in cluster.audit(since=mark)
                 if e.verb != "watch" and e.user in (CONTROLLER, NODE, NOTIFIER)]
        denied = {(e.user, e.code) for e in tried}
        assert denied <= {(CONTROLLER, 403), (NODE, 403), (NOTIFIER, 403)}, denied
        # Nothing in kube-system changed.
        coredns = client.AppsV1Api(cluster.admin).read_namespaced_deployment("coredns",
                                                                             "kube-system")
        template = coredns.spec.template.spec
        assert template.containers[0].image == "registry.k8s.io/coredns:1.11"
        assert template.service_account_name in (None, "coredns")

        SEEN.extend(needed + tried)
        RAN.add(scenario.id)
        if {s.id for s in SCENARIOS} == RAN:  # every render ran: the table is complete
            assert_verb_table(SEEN)
    finally:
        for api in (controller_api, node_api, notifier_api):
            api.close()


# --------------------------------------------------------------------------- the verb table


def verb_rows(events: list[AuditEvent]) -> list[str]:
    rows: dict[tuple[str, str, str, str], set[int]] = {}
    for event in events:
        if event.user not in (CONTROLLER, NODE, NOTIFIER):
            continue
        account = event.user.rsplit(":", 1)[1]
        resource = f"{event.group}/{event.resource}" if event.group else event.resource
        if event.namespace in (None, ""):
            scope = "cluster"
        elif event.namespace == NAMESPACE:
            scope = "own namespace"
        else:
            scope = "namespace"
        rows.setdefault((account, resource, event.verb, scope), set()).add(event.code)
    return [f"| {a} | {r} | {v} | {s} | {', '.join(str(c) for c in sorted(codes))} |"
            for (a, r, v, s), codes in sorted(rows.items())]


def assert_verb_table(events: list[AuditEvent]) -> None:
    """The table in docs/kubernetes-behaviours.md is what the audit log shows."""
    rows = verb_rows(events)
    text = DOC.read_text(encoding="utf-8")
    begin, end = "<!-- verb-table:begin -->", "<!-- verb-table:end -->"
    documented = [line for line in text.split(begin, 1)[1].split(end, 1)[0].splitlines()
                  if line.startswith("| ") and not line.startswith("| service")
                  and not line.startswith("|---")]
    assert documented == rows, "docs/kubernetes-behaviours.md verb table is stale; now:\n" + \
        "\n".join(rows)
