"""Rendering helm/steward with the real Helm binary, and reading what it rendered.

Renders are cached per (values file, --set, kube version): the chart tests ask for the same
few renders many times, and `helm template` is the slow part.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "steward"
RELEASE = "steward"
NAMESPACE = "steward"
# The chart's ci/*-values.yaml, plus the defaults (None).
VALUES_FILES: dict[str, Path | None] = {
    "default": None,
    **{p.name.removesuffix("-values.yaml"): p
       for p in sorted((CHART / "ci").glob("*-values.yaml"))},
}
WORKLOAD_KINDS = ("DaemonSet", "Deployment", "StatefulSet", "Job", "CronJob")
COMPONENTS = ("node", "controller", "notifier")


class HelmFailed(Exception):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        self.stderr = result.stderr


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)


def template_args(values: str = "default", *, sets: Mapping[str, str] | None = None,
                  kube_version: str | None = None) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    values_file = VALUES_FILES[values]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    return args


@dataclass(frozen=True)
class Rendered:
    """The documents one `helm template` produced."""

    text: str
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name and
                 (namespace is None or d["metadata"].get("namespace") == namespace)]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.of_kind(kind))

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind(*WORKLOAD_KINDS)

    def config(self) -> dict[str, Any]:
        """steward.yaml as the ConfigMap carries it."""
        cm = self.get("ConfigMap", f"{RELEASE}-config")
        loaded = yaml.safe_load(cm["data"]["steward.yaml"])
        assert isinstance(loaded, dict)
        return loaded


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


@functools.cache
def _render_cached(helm: str, args: tuple[str, ...]) -> Rendered:
    result = run_helm(helm, *args)
    if result.returncode != 0:
        raise HelmFailed(list(args), result)
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Rendered(result.stdout, docs)


def render(helm: str, values: str = "default", *, sets: Mapping[str, str] | None = None,
           kube_version: str | None = None) -> Rendered:
    """`helm template` of the chart; raises HelmFailed with Helm's message on failure."""
    return _render_cached(helm, tuple(template_args(values, sets=sets,
                                                    kube_version=kube_version)))


def render_error(helm: str, values: str = "default", *,
                 sets: Mapping[str, str] | None = None) -> str:
    """Helm's error message for a render that must fail."""
    result = run_helm(helm, *template_args(values, sets=sets))
    assert result.returncode != 0, f"helm template unexpectedly succeeded with {sets}"
    return result.stderr
