"""The idle-GPU job against a real Prometheus serving backfilled GPU history and the
Kubernetes API stand-in: the plan, every way the evidence can be incomplete, two-phase
apply, restore, and every guard."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path
from typing import Any

import pytest

from agent.controller.hygiene.commands import restore_hygiene, run_hygiene
from agent.controller.hygiene.idle_gpus.job import RESTORED_FROM
from agent.controller.hygiene.idle_gpus.workloads import KubeWorkloads
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
    "evidence/Deployment/fully-idle": "scale_to_zero",
    # Shared GPUs: idle tenants of busy GPUs, judged by their own use, are only notified (a
    # notebook and a Deployment that would otherwise be scaled); a Deployment whose GPU is
    # idle as a whole is scaled.
    "data-science/StatefulSet/nb-quiet": "notify",
    "data-science/Deployment/kai-nb": "notify",
    "inference/Deployment/sleepy": "scale_to_zero",
}
C = "GPU GPU-c00{}-7e57-4000-8000-00000000a100 on gpu-node-c"
D = "GPU GPU-d00{}-7e57-4000-8000-00000000a100 on gpu-node-d"
LIMIT = "(at most 1m15s allowed at the 30s scrape interval)"
GUARDS = {
    # The bursty GPU: busy for 5 minutes an hour ago (the flaky live-scrape case, now fixed
    # in the history).
    "inference/chat-api-0": "in use: peak utilization 60.0% of GPU GPU-a000",
    "ml-research/train-llama-2": "in use: peak utilization 85.0%",  # training
    "data-science/jupyter-alice-4": "exempt: steward.io/exempt=true on Deployment shared-dev",
    "data-science/jupyter-alice-8": "younger than the window",
    "data-science/jupyter-alice-9": "Deployment mixed also runs data-science/jupyter-bob-3",
    "data-science/jupyter-bob-3": "MIG instance 5 of GPU",
    "inference/embedder-3": "MIG instance 1 of GPU",
    "inference/reranker-3": "MIG instance 13 of GPU",
    # Issue 13, defect 2: a 40-minute hole inside the window.
    "evidence/gap-mid-window-0": f"evidence incomplete: utilization of {C.format(0)}: a gap "
                                 f"of 40m30s ending 39m30s ago (171 of 250 samples) {LIMIT}",
    # Issue 13, defect 1: utilization stopped 25 minutes ago, the allocation did not.
    "evidence/stopped-reporting-0": f"evidence incomplete: utilization of {C.format(1)}: no "
                                    f"sample since 25m ago {LIMIT}",
    "evidence/gpu-lost-0": f"evidence incomplete: {C.format(2)} was reported lost "
                           "(steward_gpu_lost=1) within the last 2h5m",
    "evidence/allocation-gap-0": f"evidence incomplete: allocation of {C.format(3)} to "
                                 "evidence/allocation-gap-0: a gap of 20m30s ending 49m30s "
                                 f"ago (211 of 250 samples) {LIMIT}",
    "evidence/young-0": f"evidence incomplete: allocation of {C.format(4)} to evidence/young-0:"
                        f" samples begin only 29m30s ago, 1h35m30s into the 2h5m window {LIMIT}",
    # Shared GPUs: a tenant of a busy GPU is judged by its own use, of its share.
    "inference/llm-serve-0": f"in use: inference/llm-serve-0's own peak use of {D.format(0)} "
                             "was 80.0% of its 25% share, at or above the floor 1.0%",
    "shared/busy-batch-0": "own peak use of GPU GPU-d000",
    "ml-research/tune-lora-0": f"in use: ml-research/tune-lora-0's own peak use of "
                               f"{D.format(1)} was 60.0% of its 50% share",
    "shared/busy-2-0": "own peak use of GPU GPU-d002",
    # Unknown is never idle: a hole in its own use, use nobody can be given.
    "shared/trickle-0": f"evidence incomplete: shared/trickle-0's own use of {D.format(0)}: a "
                        f"gap of 30m30s ending 39m30s ago (191 of 250 samples) {LIMIT}",
    "shared/maybe-idle-0": f"evidence incomplete: 5.0% of the use of {D.format(2)} could not "
                           "be attributed to any pod within the window, and might be "
                           "shared/maybe-idle-0's",
    # KAI's reservation pod holds the GPU for the fractions: never judged (nor deleted).
    "kai-resource-reservation/gpu-reservation-d1": "KAI Scheduler's reservation pod",
}


def writes(kube: KubeApiServer, path_regex: str = ".*") -> list[Any]:
    return [r for r in kube.request_log(path_regex=path_regex)
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and "/events" not in r.path]


def workload_writes(kube: KubeApiServer) -> list[Any]:
    """Every write to a workload or pod but the scale subresource and a pod's deletion: the
    idle-GPU job makes none (its marks are store rows announced by Events)."""
    return [r for r in writes(kube) if r.method != "DELETE" and not r.path.endswith("/scale")]


def replicas(kube: KubeApiServer, kind: str, name: str, namespace: str = DS) -> int:
    obj = kube.get("apps/v1", kind, namespace, name)
    assert obj is not None
    return int(obj["spec"]["replicas"])


def annotations(kube: KubeApiServer, api_version: str, kind: str, name: str) -> dict[str, str]:
    obj = kube.get(api_version, kind, DS, name)
    assert obj is not None
    return dict(obj["metadata"].get("annotations") or {})


def events(kube: KubeApiServer, namespace: str = DS) -> set[tuple[str, str]]:
    return {(e["involvedObject"]["name"], e["reason"])
            for e in kube.list("Event", namespace=namespace)}


def plan_of(fleet: Fleet, kube: KubeApiServer, tmp_path: Path, **settings: Any) -> Any:
    world.full_world(kube)
    outcome = make_runtime(hygiene_config(tmp_path, fleet.url, **settings), kube,
                           clock=fleet.clock).run("idle-gpus", apply=False)
    assert outcome.result == "succeeded", outcome.reason
    assert outcome.plan is not None
    return outcome.plan.to_json()


def test_the_plan_marks_exactly_the_idle_allocated_gpus(fleet: Fleet, kube: KubeApiServer,
                                                        tmp_path: Path) -> None:
    plan = plan_of(fleet, kube, tmp_path)
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
    # 5 whole GPUs, two quarter shares of busy GPUs, two halves of the idle one
    assert plan["reclaimable"] == {"gpus": 6.5}


def test_pods_judged_before_the_raw_samples_get_the_verdict_judged_with_them(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    """The pods none of whose GPUs the raw samples are about are judged while those samples
    are read; once they are in, ``judge`` gives every such pod the same verdict, and no pod
    whose GPU looked idle was judged early."""
    world.full_world(kube)
    job: Any = make_runtime(hygiene_config(tmp_path, fleet.url), kube,
                            clock=fleet.clock).engine("idle-gpus").job
    seen: list[tuple[Any, Any, set[str]]] = []
    prejudge = job._prejudge

    def spy(judged: Any, evidence: Any, raw_for: set[str]) -> None:
        assert not evidence.utilization and not evidence.allocated  # the raw samples: coming
        assert not gc.isenabled()  # the scan's decoded answers are not walked over and over
        prejudge(judged, evidence, raw_for)
        seen.append((judged, evidence, set(raw_for)))

    job._prejudge = spy
    scan = job.scan()
    [(judged, evidence, raw_for)] = seen
    assert gc.isenabled()
    assert evidence.utilization and evidence.allocated  # now in, in the same evidence
    early = {f"{ns}/{pod}" for ns, pod in judged.verdicts}
    # A tenant of a GPU whose other tenants look idle waits for that GPU's samples.
    assert {"inference/chat-api-0", "ml-research/train-llama-2",
            "inference/embedder-3"} <= early
    assert "inference/llm-serve-0" not in early
    assert not early & ({"evidence/gap-mid-window-0", "shared/trickle-0",
                         "shared/maybe-idle-0"} | {c.resource for c in scan.candidates})
    for key, verdict in judged.verdicts.items():
        assert not any(a.uuid in raw_for for a in judged.by_pod[key])
        assert verdict == job._evidence.judge(judged.by_pod[key], evidence)
    skipped = {s.resource: s.reason for s in scan.skipped}
    assert all(skipped[f"{ns}/{pod}"] == why for (ns, pod), (why, *_) in judged.verdicts.items()
               if not ns.startswith("kai-"))


def test_the_cycle_collector_is_back_after_every_scan_and_stays_off_if_it_was() -> None:
    from agent.controller.hygiene.idle_gpus.job import _cycle_collector_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), _cycle_collector_paused():
        with _cycle_collector_paused():  # a scan in another thread at the same time
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first scan is not over yet
        raise RuntimeError("the scan failed")
    assert gc.isenabled()
    gc.disable()  # someone else's choice
    try:
        with _cycle_collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_candidate_shows_its_coverage(fleet: Fleet, kube: KubeApiServer,
                                            tmp_path: Path) -> None:
    plan = plan_of(fleet, kube, tmp_path)
    idle = next(c for c in plan["candidates"]
                if c["resource"] == "evidence/Deployment/fully-idle")
    evidence = idle["evidence"]
    assert evidence["scrape_interval"] == "30s" and evidence["max_gap_seconds"] == 75
    (gpu,) = evidence["gpus"]
    # 2 h 5 min at 30 s: 250 expected; the range takes both ends, so 251 are there.
    complete = {"samples": 251, "expected": 250, "largest_gap_seconds": 30,
                "last_sample_age_seconds": 0}
    assert gpu["coverage"] == {"utilization": complete, "allocation": complete}
    for candidate in plan["candidates"]:
        for one in candidate["evidence"]["gpus"]:
            coverage = one["coverage"]
            # A tenant judged by its own use shows that, and what nobody could be given.
            shown = ("own_use", "unattributed") if coverage.get("judged_by") == "own use" \
                else ("utilization", "allocation")
            for key in shown:
                assert coverage[key]["largest_gap_seconds"] <= 75, (candidate, key)
                assert coverage[key]["samples"] >= 250


def test_the_window_is_judged_at_the_evaluation_time(fleet: Fleet, kube: KubeApiServer,
                                                     tmp_path: Path) -> None:
    """The same history judged 30 minutes later with a 1-hour window: the stop of 25
    minutes before is 55 minutes old; the burst and the hole are older than the window."""
    world.full_world(kube)
    later = fleet.at + 30 * 60
    outcome = make_runtime(hygiene_config(tmp_path, fleet.url, window="1h", grace="0s"),
                           kube, clock=lambda: later).run("idle-gpus", apply=False)
    assert outcome.plan is not None
    skipped = {s.resource: s.reason for s in outcome.plan.skipped}
    assert "no sample since 55m ago" in skipped["evidence/stopped-reporting-0"]
    candidates = {p.candidate.resource for p in outcome.plan.candidates}
    assert {"inference/Deployment/chat-api", "evidence/Deployment/gap-mid-window"} <= candidates


def test_apply_marks_then_scales_to_zero_after_the_deadline_and_restore_undoes_it(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.full_world(kube)
    config = hygiene_config(tmp_path, fleet.url)
    notifier = RecordingNotifier()
    metrics = HygieneMetrics()
    runtime = make_runtime(config, kube, notifier=notifier, metrics=metrics, clock=fleet.clock)

    first = runtime.run("idle-gpus", apply=True)
    assert first.result == "succeeded", first.reason
    assert {n.resource for n in notifier.notices if n.kind == "marked"} == set(EXPECTED)
    # Marks live in the store, announced by Events; nothing is written to the objects.
    assert {m.resource for m in runtime.store().active_marks("idle-gpus")} == set(EXPECTED)
    assert {("trainer-dev", "HygieneMarked"), ("batch-eval", "HygieneMarked")} <= events(kube)
    assert workload_writes(kube) == []
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 1

    second = runtime.run("idle-gpus", apply=True)  # mark_hours=0: every deadline has passed
    assert second.result == "succeeded", second.reason
    assert replicas(kube, "Deployment", "trainer-dev") == 0
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 0
    assert replicas(kube, "Deployment", "fully-idle", "evidence") == 0
    assert annotations(kube, "apps/v1", "Deployment", "trainer-dev") == {}
    assert kube.get("v1", "Pod", DS, "jupyter-alice-7") is not None  # notify only
    # Idle tenants of busy shared GPUs are only reminded; the GPU idle as a whole is freed.
    assert replicas(kube, "StatefulSet", "nb-quiet") == 1
    assert replicas(kube, "Deployment", "kai-nb") == 1
    assert replicas(kube, "Deployment", "sleepy", "inference") == 0
    assert len(writes(kube, r"/scale$")) == 4
    assert workload_writes(kube) == []
    assert sorted(n.resource for n in notifier.notices if n.kind == "reminder") == [
        "data-science/Deployment/kai-nb", "data-science/Job/batch-eval",
        "data-science/StatefulSet/nb-quiet", "data-science/jupyter-alice-7"]
    assert metrics.value("steward_hygiene_actions_total", hygiene_job="idle-gpus",
                         action="scale_to_zero", mode="apply") == 4
    assert {("trainer-dev", "HygieneScaledToZero"),
            ("jupyter-alice", "HygieneScaledToZero")} <= events(kube)
    records = {r.resource: r.record for r in runtime.store().restore_candidates("idle-gpus")}
    assert records["data-science/Deployment/trainer-dev"]["replicas"] == 2

    out, err = io.StringIO(), io.StringIO()
    code = restore_hygiene(config, "idle-gpus", "data-science/trainer-dev", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 0, err.getvalue()
    assert out.getvalue() == ("restored data-science/Deployment/trainer-dev: Deployment "
                              "data-science/trainer-dev scaled back to 2 replicas\n")
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    assert replicas(kube, "StatefulSet", "jupyter-alice") == 0  # only what was asked
    assert ("trainer-dev", "HygieneRestored") in events(kube)
    code = restore_hygiene(config, "idle-gpus", "data-science/trainer-dev", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 2 and "no applied idle-gpus action" in err.getvalue()


def test_restoring_a_deleted_pod_waits_until_it_has_terminated(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    """Issue 13, defect 5: the deleted bare pod is still Terminating (graceful deletion, as
    on a real API server): the restore refuses with exit 1 and keeps the record, and
    recreates the pod once the old one is gone."""
    world.pod(kube, DS, "jupyter-alice-7", labels={"team": "vision"})
    config = hygiene_config(tmp_path, fleet.url, pod_action="delete")
    notifier = RecordingNotifier()
    runtime = make_runtime(config, kube, notifier=notifier, clock=fleet.clock)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert notifier.notices[0].owner == "vision"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    old = kube.get("v1", "Pod", DS, "jupyter-alice-7")
    assert old is not None and old["metadata"]["deletionTimestamp"]  # Terminating
    assert [n.kind for n in notifier.notices] == ["marked", "acted"]

    out, err = io.StringIO(), io.StringIO()
    code = restore_hygiene(config, "idle-gpus", "data-science/jupyter-alice-7", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 1, out.getvalue()
    message = err.getvalue()
    assert message.startswith("steward: hygiene restore idle-gpus data-science/jupyter-alice-7 "
                              "not done: pod data-science/jupyter-alice-7 (uid ")
    assert "is still terminating; retry in " in message and "the restore record is kept" in \
        message
    assert out.getvalue() == ""
    assert [r.resource for r in runtime.store().restore_candidates("idle-gpus")] == [
        "data-science/jupyter-alice-7"]
    assert kube.get("v1", "Pod", DS, "jupyter-alice-7")["metadata"]["uid"] == \
        old["metadata"]["uid"]

    kube.delete("v1", "Pod", DS, "jupyter-alice-7")  # the kubelet has finished with it
    code = restore_hygiene(config, "idle-gpus", "data-science/jupyter-alice-7", stdout=out,
                           stderr=err, api_client=kube.api_client())
    assert code == 0, err.getvalue()
    recreated = kube.get("v1", "Pod", DS, "jupyter-alice-7")
    assert recreated is not None and "nodeName" not in recreated["spec"]
    assert recreated["metadata"]["uid"] != old["metadata"]["uid"]
    assert recreated["metadata"]["labels"] == {"team": "vision"}
    assert recreated["metadata"]["annotations"][RESTORED_FROM]
    assert f"recreated (uid {recreated['metadata']['uid']})" in out.getvalue()


def test_a_refused_restore_says_so_in_one_line_and_keeps_the_record(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    """Restoring a deleted pod with credentials that may not create pods (the controller's
    own: the chart grants no pods create): exit 1, one line naming the refusal and the
    server's reason, the record kept. The error used to carry the client's whole response
    dump (headers and raw body) across lines. Found on the real API server."""
    world.pod(kube, DS, "jupyter-alice-7")
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, pod_action="delete"), kube,
                           clock=fleet.clock)
    runtime.run("idle-gpus", apply=True)
    runtime.run("idle-gpus", apply=True)
    kube.delete("v1", "Pod", DS, "jupyter-alice-7")  # the kubelet has finished with it
    kube.inject_fault(path_regex=r"/namespaces/data-science/pods$", method="POST", status=403)
    out, err = io.StringIO(), io.StringIO()
    code = restore_hygiene(runtime.config, "idle-gpus", "data-science/jupyter-alice-7",
                           stdout=out, stderr=err, api_client=kube.api_client())
    assert code == 1 and out.getvalue() == ""
    assert err.getvalue().count("\n") == 1, err.getvalue()
    assert err.getvalue().startswith(
        "steward: hygiene restore idle-gpus data-science/jupyter-alice-7 not done: restoring "
        "data-science/jupyter-alice-7 failed: create Pod data-science/jupyter-alice-7: HTTP "
        "403 Forbidden: "), err.getvalue()
    assert "injected by the test" in err.getvalue()
    assert err.getvalue().endswith("(the restore record is kept)\n")
    assert len(runtime.store().restore_candidates("idle-gpus")) == 1


def test_a_restore_that_died_after_recreating_the_pod_knows_it_for_its_own(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.pod(kube, DS, "jupyter-alice-7")
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, pod_action="delete"), kube,
                           clock=fleet.clock)
    runtime.run("idle-gpus", apply=True)
    runtime.run("idle-gpus", apply=True)
    kube.delete("v1", "Pod", DS, "jupyter-alice-7")
    (record,) = runtime.store().restore_candidates("idle-gpus")
    job = runtime.engine("idle-gpus", for_restore=True).job
    job.restore(record.record, restore_id=record.mark_id)  # a try that died before recording
    outcome = runtime.restore("idle-gpus", "data-science/jupyter-alice-7")
    assert outcome.restored and "recreated" in outcome.message
    assert len(kube.request_log(method="POST", path_regex="/pods$")) == 2  # the 2nd: 409


def test_a_pod_someone_else_created_under_that_name_is_not_taken_for_the_restored_one(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.pod(kube, DS, "jupyter-alice-7")
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, pod_action="delete"), kube,
                           clock=fleet.clock)
    runtime.run("idle-gpus", apply=True)
    runtime.run("idle-gpus", apply=True)
    kube.delete("v1", "Pod", DS, "jupyter-alice-7")
    world.pod(kube, DS, "jupyter-alice-7", labels={"app": "someone-else"})
    out, err = io.StringIO(), io.StringIO()
    code = restore_hygiene(runtime.config, "idle-gpus", "data-science/jupyter-alice-7",
                           stdout=out, stderr=err, api_client=kube.api_client())
    assert code == 1 and "not the one deleted; not replaced" in err.getvalue()
    assert len(runtime.store().restore_candidates("idle-gpus")) == 1


def test_a_pod_replaced_between_the_read_and_the_delete_is_neither_deleted_nor_recorded(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone deletes the idle pod and creates another under its name after the sweep read
    it and before its delete: the uid precondition refuses the delete (409). That is a
    definite "not done": the claim is released and the mark lifted, the run succeeds. It
    used to fail the run and leave the claim pending; the next run then saw the old uid
    gone and recorded a delete nobody made (audit, Event, owner told to restore) whose
    restore refused: another pod exists. Found on the real API server
    (tests/realk8s/test_hygiene_apply.py)."""
    world.pod(kube, DS, "jupyter-alice-7")
    notifier = RecordingNotifier()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, pod_action="delete"), kube,
                           notifier=notifier, clock=fleet.clock)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"  # marked
    delete_pod = KubeWorkloads.delete_pod

    def replaced_first(self: KubeWorkloads, namespace: str, name: str, *,
                       uid: str | None) -> bool:
        kube.delete("v1", "Pod", namespace, name)
        world.pod(kube, namespace, name, labels={"app": "someone-else"})
        return delete_pod(self, namespace, name, uid=uid)

    monkeypatch.setattr(KubeWorkloads, "delete_pod", replaced_first)
    swept = runtime.run("idle-gpus", apply=True)
    monkeypatch.undo()

    assert swept.result == "succeeded", swept.reason
    assert [r.status for r in kube.request_log(
        method="DELETE", path_regex="/pods/jupyter-alice-7$")] == [409]
    resource = "data-science/jupyter-alice-7"
    (act,) = [e for e in runtime.store().audit_entries("idle-gpus")
              if e["resource"] == resource and e["key"].endswith("|act")]
    assert act["status"] == "released" and "uid" in str(act["detail"])
    assert [m["state"] for m in runtime.store().marks("idle-gpus")] == ["lifted"]
    # The next run judges the new pod afresh: a new mark, nothing recorded as deleted.
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    pod = kube.get("v1", "Pod", DS, "jupyter-alice-7")
    assert pod is not None and pod["metadata"]["labels"] == {"app": "someone-else"}
    assert not pod["metadata"].get("deletionTimestamp")
    assert not [e for e in runtime.store().audit_entries("idle-gpus")
                if e["action"] == "delete" and e["status"] == "done"]
    assert "acted" not in [n.kind for n in notifier.notices]
    assert runtime.store().restore_candidates("idle-gpus") == []


def test_prometheus_down_fails_safe(kube: KubeApiServer, tmp_path: Path) -> None:
    world.trainer_dev(kube)
    config = hygiene_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    out, err = io.StringIO(), io.StringIO()
    code = run_hygiene(config, "idle-gpus", apply=True, output="json", stdout=out, stderr=err,
                       api_client=kube.api_client())
    assert code == 1
    assert "scan failed, acted on nothing: cannot reach Prometheus at http://127.0.0.1:" \
        in err.getvalue()
    assert "connection refused" in err.getvalue()
    assert out.getvalue() == ""
    assert writes(kube) == []


@pytest.mark.parametrize("listing", [r"/namespaces/data-science/pods$",
                                     r"/namespaces/data-science/replicasets$"])
def test_a_failed_list_while_the_evidence_is_read_decides_nothing(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path, listing: str) -> None:
    """The lists start beside the raw-sample queries: one that fails there (the pods, or
    the owners a wave later) fails the scan when the decision needs it; no plan is made of
    what the other namespaces showed."""
    world.full_world(kube)
    kube.inject_fault(path_regex=listing, method="GET", status=500, times=None)
    try:
        outcome = make_runtime(hygiene_config(tmp_path, fleet.url), kube,
                               clock=fleet.clock).run("idle-gpus", apply=True)
    finally:
        kube.clear_faults()
    assert outcome.result == "failed"
    assert outcome.reason is not None and outcome.reason.startswith(
        "scan failed, acted on nothing: Kubernetes API"), outcome.reason
    assert outcome.plan is None
    assert workload_writes(kube) == [] and writes(kube, r"/scale$") == []


def test_conflicts_409_are_retried_and_a_lasting_conflict_acts_on_nothing(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.trainer_dev(kube)
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube, clock=fleet.clock)
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
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube, metrics=metrics,
                           clock=fleet.clock)
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
    assert [m.resource for m in runtime.store().active_marks("idle-gpus")] == [
        "data-science/Deployment/trainer-dev"]


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
    outcome = make_runtime(config, kube, clock=fleet.clock).run("idle-gpus", apply=False)
    assert outcome.plan is not None
    resources = {p.candidate.resource for p in outcome.plan.candidates}
    assert resources == {"data-science/Deployment/trainer-dev", "data-science/jupyter-alice-7",
                         "evidence/Deployment/fully-idle", "data-science/Deployment/kai-nb",
                         "data-science/StatefulSet/nb-quiet"}
    skipped = {s.resource: s.reason for s in outcome.plan.skipped}
    assert skipped["data-science/Job/batch-eval"] == \
        "exempt: matches '*/Job/*' in hygiene.idle_gpus.exempt_names"
    assert skipped["data-science/jupyter-alice-1"] == \
        "exempt: steward.io/exempt=true on StatefulSet jupyter-alice"


def test_caps_trip_on_the_real_plan(fleet: Fleet, kube: KubeApiServer, tmp_path: Path) -> None:
    world.full_world(kube)
    metrics = HygieneMetrics()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, max_percent=20), kube,
                           metrics=metrics, clock=fleet.clock)
    kube.clear_request_log()
    outcome = runtime.run("idle-gpus", apply=True)
    assert outcome.result == "blast_radius_tripped"
    assert "8 actions planned on 28 resources looked at (29%)" in str(outcome.reason)
    assert writes(kube) == []
    assert metrics.value("steward_hygiene_runs_total", result="blast_radius_tripped") == 1
    assert metrics.value("steward_hygiene_candidates") == 8


@pytest.mark.parametrize(("idle_watts", "idle_left"), [(80.0, True), (50.0, False)])
def test_power_draw_confirms_idleness(fleet: Fleet, kube: KubeApiServer, tmp_path: Path,
                                      idle_watts: float, idle_left: bool) -> None:
    world.trainer_dev(kube)
    config = hygiene_config(tmp_path, fleet.url, power_idle_watts=idle_watts)
    outcome = make_runtime(config, kube, clock=fleet.clock).run("idle-gpus", apply=False)
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
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, mark_hours=1), kube,
                           clock=fleet.clock)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert [m["state"] for m in runtime.store().marks("idle-gpus")] == ["active"]
    owner = kube.get("apps/v1", "Deployment", DS, "trainer-dev") or owner
    owner["metadata"]["labels"]["steward.io/exempt"] = "true"
    kube.apply(owner)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert [m["state"] for m in runtime.store().marks("idle-gpus")] == ["lifted"]
    assert ("trainer-dev", "HygieneUnmarked") in events(kube)
    assert replicas(kube, "Deployment", "trainer-dev") == 2
    assert workload_writes(kube) == []


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
