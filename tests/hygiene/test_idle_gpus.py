"""The idle-GPU job against a real Prometheus scraping simulated GPU nodes and the Kubernetes
API stand-in: the plan, two-phase apply, restore, and every guard."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from agent.controller.hygiene.commands import restore_hygiene, run_hygiene
from agent.controller.hygiene.idle_gpus import MARK_DEADLINE, RESTORE_ANNOTATION
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.sim.kube_api import KubeApiServer
from tests.hygiene import world
from tests.hygiene.conftest import Fleet, RecordingNotifier, hygiene_config, make_runtime
from tests.support.net import free_port

pytestmark = pytest.mark.integration

DS = "data-science"
EXPECTED = {
    "data-science/StatefulSet/jupyter-alice": "scale_to_zero",  # notebook
    "data-science/Deployment/trainer-dev": "scale_to_zero",
    "data-science/Job/batch-eval": "notify",
    "data-science/jupyter-alice-7": "notify",  # bare pod
}
GUARDS = {
    "inference/chat-api-0": "in use: peak utilization",  # bursty
    "ml-research/train-llama-2": "in use: peak utilization",  # training
    "data-science/jupyter-alice-4": "exempt: steward.io/exempt=true on Deployment shared-dev",
    "data-science/jupyter-alice-8": "younger than the window",
    "data-science/jupyter-alice-9": "Deployment mixed also runs data-science/jupyter-bob-3",
    "data-science/jupyter-bob-3": "MIG instance 5 of GPU",
    "inference/embedder-3": "MIG instance 1 of GPU",
    "inference/reranker-3": "MIG instance 13 of GPU",
}


def writes(kube: KubeApiServer, path_regex: str = ".*") -> list[Any]:
    return [r for r in kube.request_log(path_regex=path_regex)
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and "/events" not in r.path]


def replicas(kube: KubeApiServer, kind: str, name: str) -> int:
    obj = kube.get("apps/v1", kind, DS, name)
    assert obj is not None
    return int(obj["spec"]["replicas"])


def annotations(kube: KubeApiServer, api_version: str, kind: str, name: str) -> dict[str, str]:
    obj = kube.get(api_version, kind, DS, name)
    assert obj is not None
    return dict(obj["metadata"].get("annotations") or {})


def test_the_plan_marks_exactly_the_idle_allocated_gpus(fleet: Fleet) -> None:
    outcome = fleet.first_plan
    assert outcome.result == "succeeded", outcome.reason
    assert outcome.plan is not None
    plan = outcome.plan.to_json()
    assert set(plan) == {"job", "mode", "started_at", "candidates", "skipped", "reclaimable"}
    assert plan["job"] == "idle-gpus" and plan["mode"] == "dry_run"
    assert {c["resource"]: c["action"] for c in plan["candidates"]} == EXPECTED
    for candidate in plan["candidates"]:
        assert set(candidate) == {"resource", "action", "reason", "evidence", "deadline"}
        assert candidate["evidence"]["peak_utilization"] < 0.01
        assert candidate["evidence"]["uid"]
    skipped = {s["resource"]: s["reason"] for s in plan["skipped"]}
    assert set(skipped) == set(GUARDS), skipped
    for resource, guard in GUARDS.items():
        assert guard in skipped[resource], (resource, skipped[resource])
    assert plan["reclaimable"] == {"gpus": 4}
    # The bursty GPU's burst has to be inside the window for that verdict to mean anything.
    assert fleet.first_plan_age < 30 - 1


def test_apply_marks_then_scales_to_zero_after_the_deadline_and_restore_undoes_it(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.full_world(kube)
    config = hygiene_config(tmp_path, fleet.url)
    notifier = RecordingNotifier()
    metrics = HygieneMetrics()
    runtime = make_runtime(config, kube, notifier=notifier, metrics=metrics)

    first = runtime.run("idle-gpus", apply=True)
    assert first.result == "succeeded", first.reason
    assert {n.resource for n in notifier.notices if n.kind == "marked"} == set(EXPECTED)
    assert MARK_DEADLINE in annotations(kube, "apps/v1", "Deployment", "trainer-dev")
    assert MARK_DEADLINE in annotations(kube, "batch/v1", "Job", "batch-eval")
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 1
    assert not writes(kube, r"/scale$")

    second = runtime.run("idle-gpus", apply=True)  # mark_hours=0: every deadline has passed
    assert second.result == "succeeded", second.reason
    assert replicas(kube, "Deployment", "trainer-dev") == 0
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 0
    assert annotations(kube, "apps/v1", "Deployment", "trainer-dev")[RESTORE_ANNOTATION] == "2"
    assert annotations(kube, "apps/v1", "StatefulSet", "jupyter-alice")[
        RESTORE_ANNOTATION] == "1"
    assert kube.get("v1", "Pod", DS, "jupyter-alice-7") is not None  # notify only
    assert len(writes(kube, r"/scale$")) == 2
    assert sorted(n.resource for n in notifier.notices if n.kind == "reminder") == [
        "data-science/Job/batch-eval", "data-science/jupyter-alice-7"]
    assert metrics.value("steward_hygiene_actions_total", hygiene_job="idle-gpus",
                         action="scale_to_zero", mode="apply") == 2
    events = kube.list("Event", namespace=DS)
    assert {(e["involvedObject"]["name"], e["reason"]) for e in events} >= {
        ("trainer-dev", "HygieneMarked"), ("trainer-dev", "HygieneScaledToZero"),
        ("jupyter-alice", "HygieneScaledToZero")}

    out, err = io.StringIO(), io.StringIO()
    code = restore_hygiene(config, "idle-gpus", "data-science/trainer-dev", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 0, err.getvalue()
    assert "restored data-science/Deployment/trainer-dev" in out.getvalue()
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    assert RESTORE_ANNOTATION not in annotations(kube, "apps/v1", "Deployment", "trainer-dev")
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 0  # only what was asked
    code = restore_hygiene(config, "idle-gpus", "data-science/trainer-dev", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 2 and "no applied idle-gpus action" in err.getvalue()


def test_bare_pods_are_deleted_only_when_the_policy_says_so_and_restore_recreates_them(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.pod(kube, DS, "jupyter-alice-7", labels={"team": "vision"})
    config = hygiene_config(tmp_path, fleet.url, pod_action="delete")
    notifier = RecordingNotifier()
    runtime = make_runtime(config, kube, notifier=notifier)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert notifier.notices[0].owner == "vision"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert kube.get("v1", "Pod", DS, "jupyter-alice-7") is None
    runtime.restore("idle-gpus", "data-science/jupyter-alice-7")
    recreated = kube.get("v1", "Pod", DS, "jupyter-alice-7")
    assert recreated is not None and "nodeName" not in recreated["spec"]
    assert recreated["metadata"]["labels"] == {"team": "vision"}


def test_prometheus_down_fails_safe(kube: KubeApiServer, tmp_path: Path) -> None:
    world.trainer_dev(kube)
    config = hygiene_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    out, err = io.StringIO(), io.StringIO()
    code = run_hygiene(config, "idle-gpus", apply=True, output="json", stdout=out, stderr=err,
                       api_client=kube.api_client())
    assert code == 1
    assert "scan failed, acted on nothing: Prometheus at http://127.0.0.1:" in err.getvalue()
    assert "is unreachable" in err.getvalue()
    assert out.getvalue() == ""
    assert writes(kube) == []


def test_conflicts_409_are_retried_and_a_lasting_conflict_acts_on_nothing(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.trainer_dev(kube)
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    # An HPA or a human changed the Deployment between our read and our write, once.
    kube.inject_fault(path_regex=r"/deployments/trainer-dev/scale$", method="PUT",
                      status=409, times=1)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert replicas(kube, "Deployment", "trainer-dev") == 0
    ok_scale_writes = [r for r in writes(kube, r"/scale$") if r.status == 200]
    assert len(ok_scale_writes) == 1

    kube.clear_faults()
    restore = runtime.restore("idle-gpus", "data-science/trainer-dev")
    assert restore.record["replicas"] == 2
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    kube.inject_fault(path_regex=r"/deployments/trainer-dev/scale$", method="PUT",
                      status=409, times=None)
    failed = runtime.run("idle-gpus", apply=True)
    assert failed.result == "failed" and "409" in str(failed.reason)
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    kube.clear_faults()
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert replicas(kube, "Deployment", "trainer-dev") == 0


def test_configmap_kill_switch_is_read_every_run(fleet: Fleet, kube: KubeApiServer,
                                                tmp_path: Path) -> None:
    world.trainer_dev(kube)
    kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "steward-hygiene", "namespace": "steward"},
                 "data": {"kill_switch": "true"}})
    metrics = HygieneMetrics()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube, metrics=metrics)
    kube.clear_request_log()
    outcome = runtime.run("idle-gpus", apply=True)
    assert outcome.result == "kill_switch"
    assert "ConfigMap steward/steward-hygiene" in str(outcome.reason)
    assert outcome.plan is None and writes(kube) == []
    assert metrics.value("steward_hygiene_runs_total", result="kill_switch") == 1
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "steward-hygiene", "namespace": "steward"},
                "data": {"kill_switch": "false"}})
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert MARK_DEADLINE in annotations(kube, "apps/v1", "Deployment", "trainer-dev")


def test_configured_exemptions_and_exempt_annotation(fleet: Fleet, kube: KubeApiServer,
                                                    tmp_path: Path) -> None:
    world.full_world(kube)
    config = hygiene_config(tmp_path, fleet.url, exempt_namespaces=["inference"],
                            exempt_names=["*/Job/*"])
    ns = kube.get("v1", "Namespace", None, DS)
    assert ns is not None
    ns["metadata"].setdefault("annotations", {})["steward.io/exempt"] = "false"
    kube.apply(ns)
    sts = kube.get("apps/v1", "StatefulSet", DS, "jupyter-alice")
    assert sts is not None
    sts["metadata"].setdefault("annotations", {})["steward.io/exempt"] = "true"
    kube.apply(sts)
    outcome = make_runtime(config, kube).run("idle-gpus", apply=False)
    assert outcome.plan is not None
    resources = {p.candidate.resource for p in outcome.plan.candidates}
    assert resources == {"data-science/Deployment/trainer-dev", "data-science/jupyter-alice-7"}
    skipped = {s.resource: s.reason for s in outcome.plan.skipped}
    assert skipped["data-science/Job/batch-eval"] == \
        "exempt: matches '*/Job/*' in hygiene.idle_gpus.exempt_names"
    assert skipped["data-science/jupyter-alice-1"] == \
        "exempt: steward.io/exempt=true on StatefulSet jupyter-alice"


def test_caps_trip_on_the_real_plan(fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.full_world(kube)
    metrics = HygieneMetrics()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, max_percent=20), kube,
                           metrics=metrics)
    kube.clear_request_log()
    outcome = runtime.run("idle-gpus", apply=True)
    assert outcome.result == "blast_radius_tripped"
    assert "4 actions planned on 12 resources looked at (33%)" in str(outcome.reason)
    assert writes(kube) == []
    assert metrics.value("steward_hygiene_runs_total", result="blast_radius_tripped") == 1
    assert metrics.value("steward_hygiene_candidates") == 4


@pytest.mark.parametrize(("idle_watts", "idle_left"), [(80.0, True), (50.0, False)])
def test_power_draw_confirms_idleness(fleet: Fleet, kube: KubeApiServer, tmp_path: Path,
                                      idle_watts: float, idle_left: bool) -> None:
    world.trainer_dev(kube)
    config = hygiene_config(tmp_path, fleet.url, power_idle_watts=idle_watts)
    outcome = make_runtime(config, kube).run("idle-gpus", apply=False)
    assert outcome.plan is not None
    found = outcome.plan.candidate("data-science/Deployment/trainer-dev")
    if idle_left:
        assert found is not None and found.candidate.evidence["peak_power_watts"] == 72.0
    else:
        assert found is None
        reasons = {s.resource: s.reason for s in outcome.plan.skipped}
        assert reasons["data-science/jupyter-alice-5"].endswith("above the idle 50 W")


def test_a_mark_is_lifted_when_the_workload_becomes_compliant(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    owner = world.trainer_dev(kube)
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, mark_hours=1), kube)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert MARK_DEADLINE in annotations(kube, "apps/v1", "Deployment", "trainer-dev")
    owner = kube.get("apps/v1", "Deployment", DS, "trainer-dev") or owner
    owner["metadata"]["labels"]["steward.io/exempt"] = "true"
    kube.apply(owner)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert MARK_DEADLINE not in annotations(kube, "apps/v1", "Deployment", "trainer-dev")
    assert [m["state"] for m in runtime.store().marks("idle-gpus")] == ["lifted"]
    assert replicas(kube, "Deployment", "trainer-dev") == 2


def test_cli_prints_the_plan_as_json_and_as_a_table(fleet: Fleet, kube: KubeApiServer,
                                                   tmp_path: Path) -> None:
    world.trainer_dev(kube)
    config = hygiene_config(tmp_path, fleet.url)
    out, err = io.StringIO(), io.StringIO()
    assert run_hygiene(config, "idle-gpus", apply=False, output="json", stdout=out,
                       stderr=err, api_client=kube.api_client()) == 0
    plan = json.loads(out.getvalue())
    assert plan["mode"] == "dry_run"
    assert [c["resource"] for c in plan["candidates"]] == ["data-science/Deployment/trainer-dev"]
    out = io.StringIO()
    assert run_hygiene(config, "idle-gpus", apply=False, output="table", stdout=out,
                       stderr=err, api_client=kube.api_client()) == 0
    table = out.getvalue()
    assert "RESOURCE" in table and "data-science/Deployment/trainer-dev  scale_to_zero" in table
    assert "result: succeeded" in table
    assert run_hygiene(config, "no-such-job", apply=False, stderr=err) == 2
    assert "unknown hygiene job 'no-such-job'" in err.getvalue()
    assert writes(kube) == []
