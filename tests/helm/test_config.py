"""The steward.yaml the chart renders is a config Steward accepts, agrees with what the chart
deploys (ports, mounts, feature toggles), and the values schema knows every config key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from agent.config import StewardConfig, load_config
from tests.helm.chart import CHART, NAMESPACE, RELEASE, VALUES_FILES, pod_spec, render

SCHEMA = CHART / "values.schema.json"


def load_rendered(helm: str, values: str, tmp_path: Path) -> StewardConfig:
    path = tmp_path / "steward.yaml"
    path.write_text(render(helm, values).get("ConfigMap", f"{RELEASE}-config")
                    ["data"]["steward.yaml"], encoding="utf-8")
    # The environment the pods give it (no STEWARD_* overrides).
    return load_config(path, environ={"POD_NAMESPACE": NAMESPACE, "POD_NAME": "p",
                                      "NODE_NAME": "gpu-node-1"})


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_rendered_config_loads(helm: str, values: str, tmp_path: Path) -> None:
    config = load_rendered(helm, values, tmp_path)
    rendered = render(helm, values)
    ports = {}
    for item in rendered.workloads():
        (container,) = pod_spec(item)["containers"]
        ports[item["metadata"]["labels"]["app.kubernetes.io/component"]] = \
            container["ports"][0]["containerPort"]
    listens = {"node": config.node.listen, "controller": config.controller.listen,
               "notifier": config.notifier.listen}
    for name, port in ports.items():
        assert listens[name] == f"0.0.0.0:{port}"
    assert str(config.node.pod_resources_socket) == \
        "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert config.controller.lease_name == f"{RELEASE}-controller"
    assert config.state.url == "sqlite:////var/lib/steward/state.db"


def test_feature_toggles_reach_the_config(helm: str, tmp_path: Path) -> None:
    defaults = load_rendered(helm, "default", tmp_path)
    assert defaults.controller.apply is False
    assert (defaults.hygiene.idle_gpus.enabled, defaults.hygiene.idle_gpus.apply) == (True, False)
    # config.py enables every job by default; the chart turns off those it grants nothing to.
    assert defaults.hygiene.stale_images.enabled is False
    assert defaults.hygiene.orphaned_buckets.enabled is False
    everything = load_rendered(helm, "all-features", tmp_path)
    assert everything.controller.apply is True
    hygiene = everything.hygiene
    assert all(job.enabled and job.apply for job in
               (hygiene.idle_gpus, hygiene.stale_images, hygiene.orphaned_buckets))
    assert hygiene.idle_gpus.pod_action == "delete"
    # What values.config set is kept next to what the chart set.
    assert hygiene.idle_gpus.window == "4h"
    assert everything.registries[0].repositories == ["ml/train", "ml/serve"]
    assert everything.finops.prices == {"NVIDIA H100 80GB HBM3": 4.1}
    assert str(everything.notifier.auth_token_file) == "/etc/steward-notifier-auth/token"


def test_user_may_point_state_elsewhere(helm: str) -> None:
    rendered = render(helm, sets={"config.state.url": "postgresql://steward@db/steward"})
    assert rendered.config()["state"]["url"] == "postgresql://steward@db/steward"


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        for candidate in (annotation, *args):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys |= _model_keys(candidate, f"{prefix}{name}.")
    return keys


def _schema_keys(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    if node.get("type") == "array" and "items" in node:
        return _schema_keys(schema, node["items"], prefix)
    keys = set()
    for name, sub in (node.get("properties") or {}).items():
        keys.add(prefix + name)
        keys |= _schema_keys(schema, sub, f"{prefix}{name}.")
    return keys


def test_values_schema_covers_every_config_key() -> None:
    """scripts/sync-chart-files.sh writes the config schema from agent/config.py: every key
    but slack.token (a Secret, never in the ConfigMap) is there, and nothing else."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    in_schema = _schema_keys(schema, schema["properties"]["config"])
    in_code = _model_keys(StewardConfig)
    assert in_code - in_schema == {"slack.token"}
    assert in_schema <= in_code
    assert len(in_schema) > 60


def test_values_schema_describes_every_value() -> None:
    """Every key of values.yaml has a schema, and every object refuses unknown keys."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
        if not isinstance(value, dict) or path == "config":
            return
        assert node.get("additionalProperties") is not True, path
        properties = node.get("properties")
        if properties is None:  # a free-form map (labels, annotations, affinity)
            return
        assert node.get("additionalProperties") is False, path
        for key, sub in value.items():
            assert key in properties, f"{path}.{key} has no schema"
            walk(sub, properties[key], f"{path}.{key}".lstrip("."))

    walk(values, schema, "")
