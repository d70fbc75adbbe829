"""The chart against the real tools: `helm lint --strict`, `helm template`, and every rendered
manifest through `kubernetes-validate --strict` for the oldest and a recent supported
Kubernetes. Also: the values schema and the chart's own guards refuse bad values."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm.chart import CHART, VALUES_FILES, render, render_error, run_helm, template_args
from tests.support.binaries import require_binary

KUBE_VERSIONS = ("1.29.0", "1.33.0")
# prometheus-operator kinds: kubernetes-validate has no schema for CRDs and only warns.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    beside_python = Path(sys.executable).with_name("kubernetes-validate")
    if beside_python.exists():
        return str(beside_python)
    return require_binary("kubernetes-validate")


def validate(tool: str, path: Path, kube_version: str) -> subprocess.CompletedProcess[str]:
    # kubernetes-validate wants its options before the file names.
    return subprocess.run([tool, "--strict", "--kubernetes-version", kube_version, str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_helm_is_version_4(helm: str) -> None:
    result = run_helm(helm, "version", "--template", "{{.Version}}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v4."), result.stdout


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_lint_strict(helm: str, values: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    if VALUES_FILES[values] is not None:
        args += ["--values", str(VALUES_FILES[values])]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_rendered_manifests_validate(helm: str, kubernetes_validate: str, tmp_path: Path,
                                     values: str, kube_version: str) -> None:
    rendered = render(helm, values, kube_version=kube_version)
    manifest = tmp_path / f"{values}.yaml"
    manifest.write_text(rendered.text, encoding="utf-8")
    result = validate(kubernetes_validate, manifest, kube_version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output
    # Every other kind was validated: a warning may only name a CRD kind.
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    validated = [d for d in rendered.docs if d["kind"] not in CRD_KINDS]
    assert len(validated) >= 8


def test_validation_catches_an_invalid_manifest(helm: str, kubernetes_validate: str,
                                                tmp_path: Path) -> None:
    """The check above can fail: an unknown field in a container is rejected (--strict)."""
    rendered = render(helm)
    deployment = copy.deepcopy(rendered.get("Deployment", "steward-controller"))
    deployment["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = True
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    result = validate(kubernetes_validate, manifest, KUBE_VERSIONS[0])
    assert result.returncode != 0
    assert "runAsRoot" in result.stdout + result.stderr


def test_kube_version_floor(helm: str) -> None:
    result = run_helm(helm, *template_args(kube_version="1.28.0"))
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


@pytest.mark.parametrize(("key", "value", "message"), [
    ("bogus", "1", "additional properties 'bogus' not allowed"),
    ("config.bogus", "1", "additional properties 'bogus' not allowed"),
    ("config.node.gpu_backend", "gpu", "/config/node/gpu_backend"),
    ("config.node.collect_interval_seconds", "0", "/config/node/collect_interval_seconds"),
    # Secrets never go into the ConfigMap.
    ("config.slack.token", "xoxb-1", "additional properties 'token' not allowed"),
    ("node.port", "0", "/node/port"),
    ("node.updateStrategy.maxUnavailable", "ten", "/node/updateStrategy/maxUnavailable"),
    ("hygiene.idleGpus.podAction", "kill", "/hygiene/idleGpus/podAction"),
    ("image.digest", "latest", "/image/digest"),
    ("monitoring.serviceMonitor.interval", "often", "/monitoring/serviceMonitor/interval"),
])
def test_schema_refuses_bad_values(helm: str, key: str, value: str, message: str) -> None:
    error = render_error(helm, sets={key: value})
    assert "schema" in error
    assert message in error


def test_config_may_not_contradict_chart_owned_keys(helm: str) -> None:
    error = render_error(helm, sets={"config.hygiene.idle_gpus.apply": "true"})
    assert "config.hygiene.idle_gpus.apply is set by the chart from hygiene.idleGpus.apply" \
        in error
    error = render_error(helm, sets={"config.controller.listen": "0.0.0.0:1234"})
    assert "controller.port" in error


def test_config_may_repeat_chart_owned_keys(helm: str) -> None:
    rendered = render(helm, sets={"config.hygiene.idle_gpus.enabled": "true",
                                  "config.controller.apply": "false"})
    assert rendered.config()["hygiene"]["idle_gpus"]["enabled"] is True


def test_several_controllers_need_a_shared_state_store(helm: str) -> None:
    error = render_error(helm, sets={"controller.replicas": "2"})
    assert "controller.replicas > 1 needs config.state.url" in error
    rendered = render(helm, sets={"controller.replicas": "2",
                                  "config.state.url": "postgresql://steward@db/steward"})
    assert rendered.get("Deployment", "steward-controller")["spec"]["replicas"] == 2


def test_service_account_names_required_when_not_created(helm: str) -> None:
    error = render_error(helm, sets={"serviceAccount.create": "false"})
    assert "serviceAccountName is required when serviceAccount.create is false" in error
    rendered = render(helm, sets={"serviceAccount.create": "false",
                                  "node.serviceAccountName": "gpu-agent",
                                  "controller.serviceAccountName": "steward-ctl",
                                  "notifier.serviceAccountName": "steward-notify"})
    assert not rendered.of_kind("ServiceAccount")
    daemonset = rendered.get("DaemonSet", "steward-node")
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "gpu-agent"
