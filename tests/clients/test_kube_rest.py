"""The node agent's thin Kubernetes client (``agent.clients.kubernetes.rest``): where it
connects, what it sends, and how it fails. Its list/watch behaviour under faults is in
tests/node/test_pod_watch.py; TLS with a real CA and ServiceAccount token in
tests/realk8s/test_node_agent.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import yaml

from agent.clients.kubernetes import objects
from agent.clients.kubernetes.api import KubeApiError, KubeConfigError, user_agent
from agent.clients.kubernetes.rest import PodListWatch, load_endpoint
from agent.config import KubernetesConfig
from agent.sim.kube_api import KubeApiServer


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(namespaces=("default", "ml")) as server:
        yield server


def write_kubeconfig(path: Path, *, server: str, user: dict[str, object],
                     cluster_extra: dict[str, object] | None = None,
                     context: str = "dev") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster_extra or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
    }), encoding="utf-8")
    return path


def test_lists_pages_with_the_token_file_read_on_every_request(kube: KubeApiServer,
                                                                tmp_path: Path) -> None:
    for i in range(5):
        kube.create(objects.pod(f"p{i}", "ml", node="n1"))
    kube.create(objects.pod("elsewhere", "ml", node="n2"))
    token = tmp_path / "token"
    token.write_text("first-token\n", encoding="utf-8")
    # A relative tokenFile is relative to the kubeconfig, as kubectl reads it.
    config = write_kubeconfig(tmp_path / "kc", server=kube.url, user={"tokenFile": "token"})
    api = PodListWatch(load_endpoint(KubernetesConfig(kubeconfig=config), environ={}))

    names: list[str] = []
    tokens_seen: list[str] = []
    continue_token: str | None = None
    while True:
        page = api.list_pods(field_selector="spec.nodeName=n1", limit=2,
                             continue_token=continue_token, timeout=5)
        names.extend(p["metadata"]["name"] for p in page.items)
        tokens_seen.append(kube.request_log(method="GET")[-1].headers["authorization"])
        token.write_text("rotated-token\n", encoding="utf-8")  # the kubelet rotates it
        continue_token = page.continue_token
        if continue_token is None:
            break
    assert sorted(names) == [f"p{i}" for i in range(5)]
    assert int(page.resource_version) > 0
    assert tokens_seen[0] == "Bearer first-token"
    assert set(tokens_seen[1:]) == {"Bearer rotated-token"}
    requests = [r for r in kube.request_log(method="GET") if r.path == "/api/v1/pods"]
    assert [r.query.get("limit") for r in requests] == ["2", "2", "2"]
    assert all(r.headers["user-agent"] == user_agent("node") for r in requests)


def test_a_refusal_is_one_line_with_its_status(kube: KubeApiServer, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", server=kube.url, user={"token": "t"})
    api = PodListWatch(load_endpoint(KubernetesConfig(kubeconfig=config), environ={}))
    kube.inject_fault(path_regex=r"^/api/v1/pods$", status=403, times=1)
    with pytest.raises(KubeApiError) as refused:
        api.list_pods(field_selector="spec.nodeName=n1", limit=10, continue_token=None,
                      timeout=5)
    assert refused.value.status == 403
    assert str(refused.value).startswith("list pods: HTTP 403")
    assert "\n" not in str(refused.value)


def test_a_watch_resumes_from_a_resource_version_and_sees_bookmarks(kube: KubeApiServer,
                                                                     tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", server=kube.url, user={"token": "t"})
    api = PodListWatch(load_endpoint(KubernetesConfig(kubeconfig=config), environ={}))
    listed = api.list_pods(field_selector="spec.nodeName=n1", limit=10, continue_token=None,
                           timeout=5)
    kube.create(objects.pod("new", "ml", node="n1"))
    watch = api.watch_pods(field_selector="spec.nodeName=n1",
                           resource_version=listed.resource_version, timeout_seconds=1,
                           request_timeout=5)
    events = list(watch.events())  # the server ends it after timeoutSeconds
    assert ("ADDED", "new") in [(k, o["metadata"].get("name")) for k, o in events]
    (request,) = [r for r in kube.request_log(method="GET") if r.query.get("watch")]
    assert request.query["resourceVersion"] == listed.resource_version
    assert request.query["allowWatchBookmarks"] == "true"
    assert request.query["timeoutSeconds"] == "1"


def test_in_cluster_uses_the_service_account_and_the_service_address(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token", encoding="utf-8")
    (tmp_path / "ca.crt").write_text(Path(certifi.where()).read_text(encoding="utf-8"),
                                     encoding="utf-8")
    endpoint = load_endpoint(KubernetesConfig(), environ={
        "KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
        service_account_dir=tmp_path)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("https", "fd00::1", 6443)
    assert endpoint.bearer() == "sa-token"
    (tmp_path / "token").write_text("rotated", encoding="utf-8")
    assert endpoint.bearer() == "rotated"
    # The kubeconfig setting wins over the pod's ServiceAccount (development, tests).
    kc = write_kubeconfig(tmp_path / "kc", server="http://127.0.0.1:1", user={"token": "x"})
    assert load_endpoint(KubernetesConfig(kubeconfig=kc), environ={
        "KUBERNETES_SERVICE_HOST": "10.0.0.1"}).host == "127.0.0.1"


def test_in_cluster_without_a_mounted_token_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="token is missing"):
        load_endpoint(KubernetesConfig(), environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
                      service_account_dir=tmp_path)


def test_nothing_configured_is_a_config_error() -> None:
    with pytest.raises(KubeConfigError, match="no Kubernetes cluster configured"):
        load_endpoint(KubernetesConfig(), environ={})


@pytest.mark.parametrize(("user", "message"), [
    ({"exec": {"command": "aws"}}, "uses 'exec'"),
    ({"auth-provider": {"name": "gcp"}}, "uses 'auth-provider'"),
    ({"username": "admin", "password": "p"}, "uses 'username'"),
])
def test_credentials_it_cannot_use_are_refused_by_name(tmp_path: Path, user: dict[str, object],
                                                       message: str) -> None:
    kc = write_kubeconfig(tmp_path / "kc", server="https://127.0.0.1:6443", user=user)
    with pytest.raises(KubeConfigError, match=message):
        load_endpoint(KubernetesConfig(kubeconfig=kc), environ={})


def test_the_context_is_chosen_and_kubeconfig_lists_merge_first_wins(tmp_path: Path) -> None:
    first = write_kubeconfig(tmp_path / "a", server="http://first.example:8080",
                             user={"token": "a"})
    second = tmp_path / "b"
    second.write_text(json.dumps({
        "current-context": "other",
        "clusters": [{"name": "c", "cluster": {"server": "http://ignored.example"}},
                     {"name": "c2", "cluster": {"server": "http://second.example:9090"}}],
        "users": [{"name": "u2", "user": {"token": "b"}}],
        "contexts": [{"name": "other", "context": {"cluster": "c2", "user": "u2"}}],
    }), encoding="utf-8")
    env = {"KUBECONFIG": f"{first}:{second}"}
    current = load_endpoint(KubernetesConfig(), environ=env)
    assert (current.host, current.port, current.bearer()) == ("first.example", 8080, "a")
    chosen = load_endpoint(KubernetesConfig(context="other"), environ=env)
    assert (chosen.host, chosen.port, chosen.bearer()) == ("second.example", 9090, "b")
    with pytest.raises(KubeConfigError, match="no context 'missing'"):
        load_endpoint(KubernetesConfig(context="missing"), environ=env)
