"""The node's pod cache against the Kubernetes API stand-in, through the node's own thin
client (``agent.clients.kubernetes.rest``) configured from a kubeconfig as in production."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agent.clients.kubernetes import objects
from agent.clients.kubernetes.rest import PodListWatch
from agent.node.pods import PodCache, build_pod_families
from agent.sim.kube_api import KubeApiServer
from tests.support.kube import KubeStandIns
from tests.support.net import metric_value, wait_until


def pod(name: str, node: str, *, namespace: str = "ml", gpus: int = 1,
        waiting: str | None = None, terminated: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "containerStatuses": [{
        "name": "main", "restartCount": 3 if waiting else 0, "ready": waiting is None,
        "image": "img", "imageID": "", "state": {"waiting": {"reason": waiting}} if waiting
        else {"running": {"startedAt": "2026-11-22T10:00:00Z"}},
        "lastState": {"terminated": {"reason": terminated, "exitCode": 137,
                                     "finishedAt": "2026-11-22T09:59:00Z"}} if terminated else {},
    }]}
    return objects.pod(name, namespace, node=node,
                       containers=[objects.container("img", gpus=gpus)], status=status)


def names(cache: PodCache) -> list[str]:
    return sorted(p.name for p in cache.pods())


def test_lists_then_watches_only_its_node(kube: KubeApiServer, cache: PodCache) -> None:
    kube.create(pod("a", "n1"))
    kube.create(pod("other-node", "n2"))
    cache.start()
    wait_until(lambda: names(cache) == ["a"], timeout=5, what="initial list")
    assert cache.health() is None
    kube.create(pod("b", "n1", waiting="CrashLoopBackOff"))
    kube.create(pod("c", "n2"))
    wait_until(lambda: names(cache) == ["a", "b"], timeout=5, what="watched add")
    requests = [r for r in kube.request_log(method="GET") if r.path == "/api/v1/pods"]
    assert requests and all(r.query.get("fieldSelector") == "spec.nodeName=n1"
                            for r in requests)
    assert any(r.watch for r in requests)
    assert cache.relists == 1


def test_updates_and_deleted_pods_series_disappear(kube: KubeApiServer,
                                                   cache: PodCache) -> None:
    kube.create(pod("a", "n1"))
    kube.create(pod("gone-soon", "n1", terminated="OOMKilled"))
    cache.start()
    wait_until(lambda: names(cache) == ["a", "gone-soon"], timeout=5, what="list")
    kube.apply(pod("a", "n1", waiting="CrashLoopBackOff"))
    wait_until(lambda: any(c.waiting_reason == "CrashLoopBackOff" for p in cache.pods()
                           for c in p.containers), timeout=5, what="modified pod")
    families = {m.name: m for m in build_pod_families(cache.pods(), "n1")}
    waiting = families["steward_container_waiting"].samples
    assert [(s.labels["pod"], s.labels["reason"]) for s in waiting] == [("a", "CrashLoopBackOff")]
    oom = families["steward_container_last_terminated_timestamp_seconds"].samples
    assert [(s.labels["pod"], s.labels["reason"]) for s in oom] == [("gone-soon", "OOMKilled")]
    kube.delete("v1", "Pod", "ml", "gone-soon")
    wait_until(lambda: names(cache) == ["a"], timeout=5, what="deletion")
    rendered = build_pod_families(cache.pods(), "n1")
    assert all(s.labels["pod"] != "gone-soon" for m in rendered for s in m.samples)


def test_dropped_watch_resumes_without_relisting(kube: KubeApiServer, cache: PodCache) -> None:
    kube.create(pod("a", "n1"))
    cache.start()
    wait_until(lambda: kube.open_watches() == 1, timeout=5, what="watch open")
    kube.drop_watches()
    kube.create(pod("while-down", "n1"))  # must be replayed from the resourceVersion
    wait_until(lambda: names(cache) == ["a", "while-down"], timeout=10, what="resumed watch")
    assert cache.relists == 1


def test_410_gone_relists(kube: KubeApiServer, cache: PodCache) -> None:
    kube.create(pod("a", "n1"))
    cache.start()
    wait_until(lambda: kube.open_watches() == 1, timeout=5, what="watch open")
    # Hold the re-watch while the history it would resume from changes and is compacted.
    kube.inject_fault(path_regex=r"^/api/v1/pods$", status=None, delay=1.0, times=1)
    kube.drop_watches()
    kube.delete("v1", "Pod", "ml", "a")
    kube.create(pod("b", "n1"))
    kube.compact()
    wait_until(lambda: cache.relists >= 2 and names(cache) == ["b"], timeout=10,
               what="relist after 410")
    assert cache.health() is None


def test_api_errors_back_off_keep_last_pods_and_recover(kube: KubeApiServer,
                                                         cache: PodCache) -> None:
    kube.create(pod("a", "n1"))
    cache.start()
    wait_until(lambda: names(cache) == ["a"], timeout=5, what="list")
    # Until cleared: with a few faults only, the retries (backoff from 50 ms) could all
    # pass between two looks at health().
    kube.inject_fault(path_regex=r"^/api/v1/pods$", status=500, times=None)
    kube.drop_watches()
    wait_until(lambda: "500" in str(cache.health()), timeout=5, what="the 500 noticed")
    assert names(cache) == ["a"]  # stale but kept, and reported as such
    wait_until(lambda: cache.failures >= 3, timeout=5, what="retries")
    assert "500" in str(cache.health())
    kube.clear_faults()
    wait_until(lambda: cache.health() is None, timeout=10, what="recovery")
    assert names(cache) == ["a"]


@pytest.mark.slow  # waits out a request timeout
def test_timeout_is_reported(kube: KubeApiServer, cache: PodCache) -> None:
    # The thin client does not retry: the first timed-out read (2 s) reaches the cache.
    kube.inject_fault(path_regex=r"^/api/v1/pods$", delay=3.0, times=1)
    cache.start()
    wait_until(lambda: cache.failures >= 1, timeout=10, what="timeout noticed")
    assert "Read timed out" in str(cache.last_failure)
    wait_until(lambda: cache.health() is None, timeout=10, what="recovery after the delay")


@pytest.mark.integration  # starts `steward node`
def test_node_agent_with_a_cluster_reads_pods_from_the_api(kube: KubeApiServer,
                                                           tmp_path: Path) -> None:
    """``steward node`` with a kubeconfig: pods come from the API (not the simulation), and a
    missing kubelet socket fails attribution alone."""
    from tests.support.steward import start_node

    kube.create(pod("from-the-api", "gpu-node-7", waiting="CrashLoopBackOff"))
    kube.create(pod("elsewhere", "gpu-node-8"))
    node = start_node(tmp_path, env={"KUBECONFIG": str(kube.kubeconfig(tmp_path / "kc")),
                                     "NODE_NAME": "gpu-node-7"},
                      config=f"node: {{collect_interval_seconds: 0.2, "
                             f"pod_resources_socket: {tmp_path / 'missing.sock'}}}\n")
    try:
        def body() -> str:
            with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
                return str(response.read().decode())

        wait_until(lambda: metric_value(body(), "steward_pod_phase", pod="from-the-api") == 1,
                   timeout=10, what="pod from the API")
        text = body()
        assert metric_value(text, "steward_pod_phase", pod="elsewhere") is None
        assert metric_value(text, "steward_pod_phase", pod="jupyter-alice-2") is None  # no sim
        assert metric_value(text, "steward_container_waiting", pod="from-the-api",
                            reason="CrashLoopBackOff") == 1
        assert metric_value(text, "steward_collector_up", collector="pods") == 1
        assert metric_value(text, "steward_collector_up", collector="attribution") == 0
        assert metric_value(text, "steward_collector_errors_total", collector="attribution",
                            error="socket_missing") is not None
        assert metric_value(text, "steward_collector_up", collector="gpu") == 1
    finally:
        node.stop()


@pytest.mark.slow  # waits out a watch
def test_a_resumed_watch_is_healthy_before_any_event_or_bookmark(
        make_kube: KubeStandIns, pod_api: Callable[[KubeApiServer], PodListWatch]) -> None:
    """After a reconnect without a relist, a real server may send nothing for minutes (no
    pod changes, bookmarks about a minute apart): the watch it accepted is healthy."""
    quiet = make_kube(bookmark_interval=600, namespaces=("default", "ml"))
    quiet.create(pod("a", "n1"))
    cache = PodCache(pod_api(quiet), "n1", watch_timeout_seconds=30, request_timeout=2,
                     backoff_initial=0.05, backoff_max=0.2)
    try:
        cache.start()
        wait_until(lambda: quiet.open_watches() == 1, timeout=5, what="watch open")
        quiet.inject_fault(path_regex=r"^/api/v1/pods$", status=500, times=1)
        quiet.drop_watches()
        wait_until(lambda: cache.failures >= 1, timeout=5, what="the 500 noticed")
        wait_until(lambda: quiet.open_watches() == 1, timeout=5, what="watch resumed")
        wait_until(lambda: cache.health() is None, timeout=2, what="healthy again")
        assert cache.relists == 1  # resumed from its resourceVersion, no new list
    finally:
        cache.stop()


def test_terminating_pods_carry_their_deletion_timestamp(kube: KubeApiServer,
                                                         cache: PodCache) -> None:
    terminating = pod("draining", "n1")
    terminating["metadata"]["finalizers"] = ["steward.io/test-hold"]
    kube.create(terminating)
    kube.create(pod("running", "n1"))
    cache.start()
    wait_until(lambda: names(cache) == ["draining", "running"], timeout=5, what="list")
    api = kube.api_client()
    try:
        client.CoreV1Api(api).delete_namespaced_pod("draining", "ml", grace_period_seconds=30)
    finally:
        api.close()
    wait_until(lambda: any(p.deleted_at for p in cache.pods()), timeout=5, what="terminating")
    families = {m.name: m for m in build_pod_families(cache.pods(), "n1")}
    (sample,) = families["steward_pod_deletion_timestamp_seconds"].samples
    assert sample.labels == {"namespace": "ml", "pod": "draining", "hostname": "n1"}
    stored = kube.get("v1", "Pod", "ml", "draining")
    assert stored is not None
    from agent.clients.kubernetes.api import timestamp

    assert sample.value == timestamp(stored["metadata"]["deletionTimestamp"])
    # The phase is still the kubelet's (Running): the timestamp is what says Terminating.
    phases = {s.labels["pod"]: s.labels["phase"] for s in families["steward_pod_phase"].samples}
    assert phases == {"draining": "Running", "running": "Running"}
