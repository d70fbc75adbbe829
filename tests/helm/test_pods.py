"""Pod security and wiring of every rendered workload: hardened security contexts, resources,
writable paths only on emptyDir/PVC, the node agent's host access, Secrets and state."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.helm.chart import (
    COMPONENTS,
    NAMESPACE,
    RELEASE,
    VALUES_FILES,
    containers,
    pod_spec,
    render,
    render_error,
)

CONFIG_PATH = "/etc/steward/steward.yaml"
STATE_PATH = "/var/lib/steward"
PG_URL = "postgresql+psycopg://steward@postgres.db.svc:5432/steward"


def component(workload: dict[str, Any]) -> str:
    return str(workload["metadata"]["labels"]["app.kubernetes.io/component"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def workload(helm: str, values: str, name: str, kind: str = "Deployment") -> dict[str, Any]:
    return render(helm, values).get(kind, f"{RELEASE}-{name}")


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_every_container_is_hardened(helm: str, values: str) -> None:
    workloads = render(helm, values).workloads()
    assert {component(w) for w in workloads} >= {"node", "controller"}
    for item in workloads:
        pod = pod_spec(item)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostIPC")
        for container in containers(item):
            context = container["securityContext"]
            where = f"{item['kind']}/{item['metadata']['name']}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_only_the_node_agent_runs_as_root(helm: str, values: str) -> None:
    """The kubelet's pod-resources socket is root-owned and not writable by others, so the
    node agent is UID 0 (without any capability); every other pod is non-root."""
    for item in render(helm, values).workloads():
        pod_context = pod_spec(item)["securityContext"]
        if component(item) == "node":
            assert pod_context["runAsUser"] == 0
            assert pod_context["runAsNonRoot"] is False
            continue
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == 65532
        assert pod_context["fsGroup"] == 65532
        for container in containers(item):
            assert container["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"].get("runAsUser", 65532) != 0


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_resources_and_probes_set(helm: str, values: str) -> None:
    for item in render(helm, values).workloads():
        for container in containers(item):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_writable_paths_are_emptydir_or_pvc(helm: str, values: str) -> None:
    for item in render(helm, values).workloads():
        volumes = {v["name"]: v for v in pod_spec(item).get("volumes") or []}
        for container in containers(item):
            for mount in container.get("volumeMounts") or []:
                volume = volumes[mount["name"]]
                if mount.get("readOnly"):
                    continue
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, \
                    (item["metadata"]["name"], mount)
            mounted = {m["mountPath"] for m in container.get("volumeMounts") or []}
            assert "/tmp" in mounted


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_host_access_is_the_node_agents_only(helm: str, values: str) -> None:
    for item in render(helm, values).workloads():
        pod = pod_spec(item)
        host_paths = [v for v in pod.get("volumes") or [] if "hostPath" in v]
        if component(item) != "node":
            assert not host_paths and not pod.get("hostPID")
            continue
        (volume,) = host_paths
        assert volume["hostPath"]["type"] == "Directory"
        (agent,) = pod["containers"]
        (mount,) = [m for m in agent["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert mount["mountPath"] == "/var/lib/kubelet/pod-resources"


def test_node_agent_daemonset_defaults(helm: str) -> None:
    daemonset = workload(helm, "default", "node", "DaemonSet")
    pod = pod_spec(daemonset)
    (agent,) = pod["containers"]
    env = env_of(agent)
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Reads every GPU without taking any from the workloads.
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "nvidia.com/gpu" not in str(agent["resources"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    assert pod["hostPID"] is True
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}
    assert "priorityClassName" not in pod and "runtimeClassName" not in pod
    (volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert volume["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    assert agent["args"] == ["node"]
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]


def test_node_agent_daemonset_values(helm: str) -> None:
    daemonset = workload(helm, "all-features", "node", "DaemonSet")
    pod = pod_spec(daemonset)
    assert pod["priorityClassName"] == "steward-node-critical"
    assert pod["runtimeClassName"] == "nvidia"
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 2}
    (volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert volume["hostPath"]["path"] == "/var/lib/k0s/kubelet/pod-resources"
    env = env_of(pod["containers"][0])
    assert env["STEWARD_NODE__COLLECT_INTERVAL_SECONDS"]["value"] == "5"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    image = pod["containers"][0]["image"]
    assert image.startswith("ghcr.io/steward-ops/steward@sha256:")


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_every_component_reads_the_config_file(helm: str, values: str) -> None:
    rendered = render(helm, values)
    for item in rendered.workloads():
        pod = pod_spec(item)
        (container,) = pod["containers"]
        env = env_of(container)
        assert env["STEWARD_CONFIG"]["value"] == CONFIG_PATH
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/steward"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mount["name"]]["configMap"]["name"] == f"{RELEASE}-config"
        assert container["args"] == [component(item)]
        # A config change rolls the pods.
        assert item["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_config_change_rolls_the_pods(helm: str) -> None:
    def checksum(sets: dict[str, str]) -> str:
        deployment = render(helm, sets=sets).get("Deployment", f"{RELEASE}-controller")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config.prometheus.url": "http://prom:9090"})


def test_slack_token_from_existing_secret(helm: str) -> None:
    controller = workload(helm, "default", "controller")
    notifier = workload(helm, "default", "notifier")
    for item, optional in ((controller, True), (notifier, False)):
        ref = env_of(pod_spec(item)["containers"][0])["SLACK_BOT_TOKEN"]["valueFrom"]
        assert ref == {"secretKeyRef": {"name": "steward-slack", "key": "token",
                                        "optional": optional}}
    node = pod_spec(workload(helm, "default", "node", "DaemonSet"))["containers"][0]
    assert "SLACK_BOT_TOKEN" not in env_of(node)


def test_aws_credentials_from_existing_secret(helm: str) -> None:
    env = env_of(pod_spec(workload(helm, "all-features", "controller"))["containers"][0])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "steward-aws", "key": name}
    for name in ("node", "notifier"):
        kind = "DaemonSet" if name == "node" else "Deployment"
        assert not any(k.startswith("AWS_") for k in
                       env_of(pod_spec(workload(helm, "all-features", name, kind))
                              ["containers"][0]))


def test_irsa_annotates_the_controller_service_account_only(helm: str) -> None:
    rendered = render(helm, "irsa")
    role_arn = "arn:aws:iam::111122223333:role/steward-controller"
    for name in COMPONENTS:
        account = rendered.get("ServiceAccount", f"{RELEASE}-{name}")
        annotations = account["metadata"].get("annotations") or {}
        if name == "controller":
            assert annotations["eks.amazonaws.com/role-arn"] == role_arn
        else:
            assert annotations == {}
    env = env_of(pod_spec(rendered.get("Deployment", f"{RELEASE}-controller"))["containers"][0])
    assert not any(k.startswith("AWS_") for k in env)


def test_notifier_bearer_token_is_a_mounted_file(helm: str) -> None:
    for values, secret_name in (("all-features", "steward-alertmanager-token"),
                                ("default", f"{RELEASE}-notifier-auth")):
        rendered = render(helm, values)
        pod = pod_spec(rendered.get("Deployment", f"{RELEASE}-notifier"))
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        token_file = rendered.config()["notifier"]["auth_token_file"]
        (mount,) = [m for m in container["volumeMounts"]
                    if token_file.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == secret_name
        assert secret["items"] == [{"key": "token", "path": token_file.rsplit("/", 1)[1]}]
        # Not through the environment.
        assert not any("TOKEN" in name and name != "SLACK_BOT_TOKEN" for name in env_of(container))
        assert "allow_unauthenticated" not in rendered.config()["notifier"]


def test_the_chart_makes_a_random_token_when_none_is_given(helm: str) -> None:
    (secret,) = [s for s in render(helm).of_kind("Secret")
                 if s["metadata"]["name"] == f"{RELEASE}-notifier-auth"]
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 48 and token.isalnum()
    # helm template cannot look the Secret up: each render draws a new one (an install
    # keeps the first, see templates/notifier-auth.yaml).
    again = render(helm, sets={"commonLabels.x": "y"})
    (other,) = [s for s in again.of_kind("Secret")
                if s["metadata"]["name"] == f"{RELEASE}-notifier-auth"]
    assert other["data"]["token"] != secret["data"]["token"]
    assert not [s for s in render(helm, "all-features").of_kind("Secret")
                if s["metadata"]["name"] == f"{RELEASE}-notifier-auth"]


def test_notifier_replicas_need_postgresql(helm: str) -> None:
    error = render_error(helm, sets={"notifier.replicas": "3"})
    assert "notifier.replicas is 3: more than one notifier needs config.state.url on " \
           "PostgreSQL" in error
    rendered = render(helm, sets={"notifier.replicas": "3",
                                  "config.state.url": PG_URL})
    deployment = rendered.get("Deployment", f"{RELEASE}-notifier")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    pod = pod_spec(deployment)
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert "emptyDir" in state  # nothing of the notifier's on a volume
    assert not rendered.has("PersistentVolumeClaim", f"{RELEASE}-notifier-state")
    assert rendered.config()["state"]["url"] == PG_URL


def test_notifier_replicas_spread_and_are_evicted_one_at_a_time(helm: str) -> None:
    rendered = render(helm)
    pod = pod_spec(rendered.get("Deployment", f"{RELEASE}-notifier"))
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "notifier"
    pdb = rendered.get("PodDisruptionBudget", f"{RELEASE}-notifier")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        rendered.get("Deployment", f"{RELEASE}-notifier")["spec"]["template"]["metadata"][
            "labels"].items()
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    custom = render(helm, sets={
        "notifier.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key": "pool",
        "notifier.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator": "In",
        "notifier.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].values[0]": "system"})
    assert pod_spec(custom.get("Deployment", f"{RELEASE}-notifier"))["affinity"] == own
    assert not render(helm, sets={"notifier.podDisruptionBudget.enabled": "false"}).has(
        "PodDisruptionBudget", f"{RELEASE}-notifier")


def test_network_policies_admit_only_alertmanager_and_prometheus(helm: str) -> None:
    rendered = render(helm)
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert sorted(policies) == [f"{RELEASE}-{c}" for c in ("controller", "node", "notifier")]
    alertmanager = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}}
    prometheus = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    for name, kind, port, sources in (
            ("notifier", "Deployment", "http", [alertmanager, prometheus]),
            ("controller", "Deployment", "metrics", [prometheus]),
            ("node", "DaemonSet", "metrics", [prometheus])):
        policy = policies[f"{RELEASE}-{name}"]["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        labels = rendered.get(kind, f"{RELEASE}-{name}")["spec"]["template"]["metadata"][
            "labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        (rule,) = policy["ingress"]
        assert rule["from"] == sources
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        (container,) = pod_spec(rendered.get(kind, f"{RELEASE}-{name}"))["containers"]
        assert port in {p["name"] for p in container["ports"]}
    assert not render(helm, sets={"networkPolicy.enabled": "false"}).of_kind("NetworkPolicy")


@pytest.mark.parametrize("name", ["controller", "notifier"])
def test_state_on_a_pvc(helm: str, name: str) -> None:
    rendered = render(helm)
    deployment = rendered.get("Deployment", f"{RELEASE}-{name}")
    pod = pod_spec(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == STATE_PATH]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = rendered.get("PersistentVolumeClaim", claim)
    assert pvc["metadata"]["namespace"] == NAMESPACE
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # A ReadWriteOnce volume cannot follow a rolling update onto another node.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert rendered.config()["state"]["url"] == f"sqlite:///{STATE_PATH}/state.db"
    assert rendered.config()["finops"]["out_dir"].startswith(STATE_PATH + "/")


def test_state_volume_options(helm: str) -> None:
    rendered = render(helm, "all-features")
    pvc = rendered.get("PersistentVolumeClaim", f"{RELEASE}-controller-state")
    assert pvc["spec"]["storageClassName"] == "gp3"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    # An existing claim is used, not created.
    assert not rendered.has("PersistentVolumeClaim", f"{RELEASE}-notifier-state")
    pod = pod_spec(rendered.get("Deployment", f"{RELEASE}-notifier"))
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["steward-notifier-state"]
    minimal = render(helm, "minimal")
    assert not minimal.of_kind("PersistentVolumeClaim")
    pod = pod_spec(minimal.get("Deployment", f"{RELEASE}-controller"))
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert "emptyDir" in state


def test_services_select_their_component(helm: str) -> None:
    rendered = render(helm)
    for name, port in (("node", 9400), ("controller", 9401), ("notifier", 9500)):
        service = rendered.get("Service", f"{RELEASE}-{name}")
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == name
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port
        kind = "DaemonSet" if name == "node" else "Deployment"
        item = rendered.get(kind, f"{RELEASE}-{name}")
        labels = item["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        (container,) = pod_spec(item)["containers"]
        assert service_port["targetPort"] in {p["name"] for p in container["ports"]}


def test_monitors_are_opt_in_and_honor_labels(helm: str) -> None:
    assert not render(helm).of_kind("ServiceMonitor", "PodMonitor", "PrometheusRule")
    rendered = render(helm, "all-features")
    monitors = rendered.of_kind("ServiceMonitor")
    # The node agents are scraped through the PodMonitor there, not twice.
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        f"{RELEASE}-controller", f"{RELEASE}-notifier"]
    (pod_monitor,) = rendered.of_kind("PodMonitor")
    endpoints = [e for m in monitors for e in m["spec"]["endpoints"]]
    endpoints += pod_monitor["spec"]["podMetricsEndpoints"]
    # The series carry the GPU's pod's namespace/pod labels, not Steward's.
    assert all(e["honorLabels"] is True for e in endpoints)
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"


def test_slack_actions_signing_secret_ingress_and_network_policy(helm: str) -> None:
    rendered = render(helm, sets={
        "notifier.slackActions.enabled": "true",
        "notifier.slackActions.ingress.enabled": "true",
        "notifier.slackActions.ingress.host": "steward.example.com",
        "notifier.slackActions.ingress.tlsSecretName": "steward-tls"})
    assert rendered.config()["slack"]["signing_secret_file"] == \
        "/etc/steward-slack-signing/signing-secret"
    spec = pod_spec(rendered.get("Deployment", f"{RELEASE}-notifier"))
    volume = next(v for v in spec["volumes"] if v["name"] == "slack-signing")
    assert volume["secret"]["secretName"] == "steward-slack-signing"
    assert volume["secret"]["items"] == [{"key": "signing-secret", "path": "signing-secret"}]
    ingress = rendered.get("Ingress", f"{RELEASE}-slack-actions")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "steward.example.com"
    # Only the signed endpoint faces Slack: never /alertmanager or /metrics.
    assert rule["http"]["paths"] == [{"path": "/slack/actions", "pathType": "Exact",
                                      "backend": {"service": {"name": f"{RELEASE}-notifier",
                                                              "port": {"name": "http"}}}}]
    assert ingress["spec"]["tls"] == [{"hosts": ["steward.example.com"],
                                       "secretName": "steward-tls"}]
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-notifier")["spec"]
    sources = policy["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                  "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}} \
        in sources
    # Off by default: no secret mounted, no Ingress, the ingress controller not admitted.
    default = render(helm)
    assert "signing_secret_file" not in default.config().get("slack", {})
    assert not default.of_kind("Ingress")
    assert len(default.get("NetworkPolicy", f"{RELEASE}-notifier")["spec"]["ingress"][0][
        "from"]) == 2
    assert "host is required" in render_error(helm, sets={
        "notifier.slackActions.enabled": "true", "notifier.slackActions.ingress.enabled": "true"})
