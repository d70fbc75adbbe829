"""Kill-at-any-point, idle-gpus: an apply run (or a restore) in a child process is killed at
each named crash point of the engine, and between each external write taking effect and its
reply being read (a proxy in front of the API server holds the reply); then the job runs
again. Every case checks: acted at most once (the API server's own request log), the action
in the audit log as done, its Event and owner notice, and a restore that brings it back."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from agent.controller.hygiene import crashpoints as cp
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.store import HygieneStore
from agent.sim.kube_api import KubeApiServer
from tests.hygiene import world
from tests.hygiene.conftest import (
    GRACE,
    SCRAPE_INTERVAL,
    WINDOW,
    Fleet,
    RecordingNotifier,
    hygiene_config,
    make_runtime,
)
from tests.hygiene.crashing import (
    ROOT,
    child_env,
    killed_at,
    killed_while_held,
    kubeconfig,
    steward,
    write_config,
)
from tests.support.holding_proxy import HoldingProxy, holding_proxy

pytestmark = pytest.mark.integration

TARGET = "data-science/Deployment/trainer-dev"
SCALE_PATH = r"/deployments/trainer-dev/scale$"
# (phase the crash happens in, crash point)
CASES = [
    *[("mark", point) for point in (cp.RUN_STARTED, cp.PLAN_RECORDED, cp.MARK_RECORDED,
                                    cp.MARK_ANNOTATED, cp.OWNER_NOTIFIED, cp.RUN_FINISHED)],
    *[("sweep", point) for point in (cp.PLAN_RECORDED, cp.ACTION_CLAIMED, cp.ACTED,
                                     cp.ACTION_RECORDED, cp.ANNOUNCED, cp.RUN_FINISHED)],
    ("unmark", cp.UNMARK_APPLIED),
    *[("restore", point) for point in (cp.RESTORE_CLAIMED, cp.RESTORED)],
]


def test_every_crash_point_is_exercised() -> None:
    assert {point for _, point in CASES} == set(cp.POINTS)


@pytest.fixture
def proxy(kube: KubeApiServer) -> Iterator[HoldingProxy]:
    with holding_proxy(kube.url) as server:
        yield server


def _config_file(tmp_path: Path, kube: KubeApiServer, prometheus_url: str, *,
                 server: str | None = None, **idle_gpus: object) -> Path:
    return write_config(tmp_path / "steward.yaml", {
        "prometheus": {"url": prometheus_url, "timeout_seconds": 5},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "kubernetes": {"kubeconfig": str(kubeconfig(kube, tmp_path / "kubeconfig",
                                                    server=server))},
        "controller": {"lease_namespace": "steward", "identity": "crash-test"},
        "hygiene": {"idle_gpus": {"window": WINDOW, "grace": GRACE,
                                  "scrape_interval": SCRAPE_INTERVAL, "mark_hours": 0,
                                  "max_percent": 100, "max_actions": 10, **idle_gpus}},
    })


def _scale_writes(kube: KubeApiServer) -> list[int]:
    """Replica counts written through the scale subresource and accepted."""
    return [r.body["spec"]["replicas"] for r in kube.request_log(method="PUT",
                                                                 path_regex=SCALE_PATH)
            if r.status == 200]


def _replicas(kube: KubeApiServer) -> int:
    deployment = kube.get("apps/v1", "Deployment", "data-science", "trainer-dev")
    assert deployment is not None
    assert not deployment["metadata"].get("annotations"), "an annotation was written"
    return int(deployment["spec"]["replicas"])


def _assert_audit_sound(store: HygieneStore) -> None:
    marks = {m["mark_id"]: m for m in store.marks("idle-gpus")}
    entries = store.audit_entries("idle-gpus")
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys))
    for entry in entries:
        if entry["action"] not in ("scale_to_zero", "delete"):
            continue
        mark = marks.get(entry["mark_id"])
        assert mark is not None, f"action without a mark: {entry}"
        assert mark["marked_at"] <= entry["started_at"]
        assert mark["run_id"] != entry["run_id"], "acted in the run that marked it"
        assert mark["notified_at"] is not None, "acted without telling the owner"
        assert mark["state"] != "lifted", "a mark lifted over an action that happened"


def _assert_recorded_once(kube: KubeApiServer, store: HygieneStore,
                          notifier: RecordingNotifier | None = None) -> None:
    """Acted at most once; in the audit log as done, announced, and restorable."""
    assert _scale_writes(kube) == [0], "scaled more than once"
    assert _replicas(kube) == 0
    done = [e for e in store.audit_entries("idle-gpus")
            if e["action"] == "scale_to_zero" and e["status"] == "done"]
    assert len(done) == 1
    assert [m["state"] for m in store.marks("idle-gpus")] == ["swept"]
    announced = [e for e in store.audit_entries("idle-gpus") if e["action"] == "announce"]
    assert [e["status"] for e in announced] == ["done"]
    events = {(e["involvedObject"]["name"], e["reason"])
              for e in kube.list("Event", namespace="data-science")}
    assert ("trainer-dev", "HygieneScaledToZero") in events
    if notifier is not None:
        assert [n.kind for n in notifier.notices if n.resource == TARGET][-1] == "acted"
    (record,) = store.restore_candidates("idle-gpus")
    assert record.resource == TARGET and record.record["replicas"] == 2


def _restore(config: Path, log: Path, kube: KubeApiServer) -> None:
    result = steward("hygiene", "restore", "idle-gpus", "data-science/trainer-dev",
                     "--config", str(config), log=log)
    assert result.returncode == 0, log.read_text()[-2000:]
    assert result.stdout.startswith(f"restored {TARGET}: ")
    assert _replicas(kube) == 2
    assert _scale_writes(kube) == [0, 2]


@pytest.mark.parametrize(("phase", "point"), CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_killed_at_any_point_never_acts_twice_or_unmarked(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path, phase: str, point: str) -> None:
    world.trainer_dev(kube, replicas=2)
    config_path = _config_file(tmp_path, kube, fleet.url)
    notifier = RecordingNotifier()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube, notifier=notifier)
    log = tmp_path / "crash.log"

    if phase in ("sweep", "unmark", "restore"):
        assert runtime.run("idle-gpus", apply=True).result == "succeeded"  # marks
    if phase == "unmark":
        deployment = kube.get("apps/v1", "Deployment", "data-science", "trainer-dev")
        assert deployment is not None
        deployment["metadata"]["labels"]["steward.io/exempt"] = "true"
        kube.apply(deployment)
    if phase == "restore":
        assert runtime.run("idle-gpus", apply=True).result == "succeeded"  # sweeps
        code = killed_at(point, config_path, "restore", "idle-gpus", TARGET, log=log)
        assert code == -signal.SIGKILL, log.read_text()[-2000:]
        busy = steward("hygiene", "restore", "idle-gpus", TARGET, "--config",
                       str(config_path), log=log)
        assert busy.returncode == 2, "a second restore while the first holds its claim"
        with runtime.store().engine.begin() as conn:  # the dead restore's claim lapses
            conn.execute(text("UPDATE hygiene_restore_claims SET claimed_at = claimed_at - 601"))
        restored = steward("hygiene", "restore", "idle-gpus", TARGET, "--config",
                           str(config_path), log=log)
        assert restored.returncode == 0, log.read_text()[-2000:]
        assert _replicas(kube) == 2 and _scale_writes(kube) == [0, 2]
        assert len([e for e in runtime.store().audit_entries("idle-gpus")
                    if e["action"] == "restore"]) == 1
        return

    code = killed_at(point, config_path, "run", "idle-gpus", log=log)
    assert code == -signal.SIGKILL, log.read_text()[-2000:]
    recovery = runtime.run("idle-gpus", apply=True)
    assert recovery.result == "succeeded", recovery.reason
    if phase == "mark":
        # The next run sweeps (the recovery itself does, when the crash came after the
        # mark was complete); either way the sweep happens once.
        assert runtime.run("idle-gpus", apply=True).result == "succeeded"

    store = runtime.store()
    _assert_audit_sound(store)
    if phase == "unmark":
        assert _scale_writes(kube) == []
        assert _replicas(kube) == 2
        assert [m["state"] for m in store.marks("idle-gpus")] == ["lifted"]
        return
    # Killed before the owner was told (or before that was recorded): the rerun tells them.
    told_by_rerun = phase == "sweep" and point != cp.RUN_FINISHED
    _assert_recorded_once(kube, store, notifier if told_by_rerun else None)
    _restore(config_path, log, kube)


def test_killed_after_the_scale_took_effect_before_its_reply(
        fleet: Fleet, kube: KubeApiServer, proxy: HoldingProxy, tmp_path: Path) -> None:
    """Issue 13, defect 3: the API server scaled the Deployment to zero, the steward process
    died before reading the reply. The rerun must record it (audit, metric, Event, owner
    notice), never say "mark lifted", and the restore must find it."""
    world.trainer_dev(kube, replicas=2)
    config_path = _config_file(tmp_path, kube, fleet.url, server=proxy.url)
    notifier, metrics = RecordingNotifier(), HygieneMetrics()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube, notifier=notifier,
                           metrics=metrics)
    log = tmp_path / "crash.log"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"  # marks

    hold = proxy.hold("PUT", SCALE_PATH)
    killed_while_held(hold, "hygiene", "run", "idle-gpus", "--apply", "--config",
                      str(config_path), log=log)
    assert hold.status == 200 and _replicas(kube) == 0

    recovery = runtime.run("idle-gpus", apply=True)
    assert recovery.result == "succeeded", recovery.reason
    assert [(a.resource, a.action) for a in recovery.actions] == [(TARGET, "scale_to_zero")]
    assert not any(a.action == "unmark" for a in recovery.actions)
    assert metrics.value("steward_hygiene_actions_total", action="scale_to_zero",
                         mode="apply") == 1
    _assert_audit_sound(runtime.store())
    _assert_recorded_once(kube, runtime.store(), notifier)
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert _scale_writes(kube) == [0]
    _restore(config_path, log, kube)


def test_killed_after_the_pod_delete_took_effect_before_its_reply(
        fleet: Fleet, kube: KubeApiServer, proxy: HoldingProxy, tmp_path: Path) -> None:
    world.pod(kube, "data-science", "jupyter-alice-7")
    config_path = _config_file(tmp_path, kube, fleet.url, server=proxy.url, pod_action="delete")
    notifier = RecordingNotifier()
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url, pod_action="delete"), kube,
                           notifier=notifier)
    log = tmp_path / "crash.log"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"

    hold = proxy.hold("DELETE", r"/pods/jupyter-alice-7$")
    killed_while_held(hold, "hygiene", "run", "idle-gpus", "--apply", "--config",
                      str(config_path), log=log)
    pod = kube.get("v1", "Pod", "data-science", "jupyter-alice-7")
    assert pod is not None and pod["metadata"]["deletionTimestamp"]  # Terminating

    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    store = runtime.store()
    _assert_audit_sound(store)
    assert [e["status"] for e in store.audit_entries("idle-gpus")
            if e["action"] == "delete"] == ["done"]
    assert [n.kind for n in notifier.notices] == ["marked", "acted"]
    assert len(kube.request_log(method="DELETE", path_regex="/pods/jupyter-alice-7$")) == 1

    resource = "data-science/jupyter-alice-7"
    early = steward("hygiene", "restore", "idle-gpus", resource, "--config", str(config_path),
                    log=log)
    assert early.returncode == 1 and "still terminating" in log.read_text()
    kube.delete("v1", "Pod", "data-science", "jupyter-alice-7")  # the kubelet is done
    restored = steward("hygiene", "restore", "idle-gpus", resource, "--config",
                       str(config_path), log=log)
    assert restored.returncode == 0, log.read_text()[-2000:]
    assert kube.get("v1", "Pod", "data-science", "jupyter-alice-7") is not None


def test_two_concurrent_restores_one_restores_the_other_exits_2(
        fleet: Fleet, kube: KubeApiServer, proxy: HoldingProxy, tmp_path: Path) -> None:
    """Issue 13, defect 6: while the first restore waits for the API server's reply to its
    scale-up, a second restore of the same action exits 2 and writes nothing; the first
    then says "restored", once."""
    world.trainer_dev(kube, replicas=2)
    config_path = _config_file(tmp_path, kube, fleet.url, server=proxy.url)
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube)
    log = tmp_path / "restore.log"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert runtime.run("idle-gpus", apply=True).result == "succeeded"
    assert _replicas(kube) == 0

    hold = proxy.hold("PUT", SCALE_PATH, deliver=True)
    with log.open("a", encoding="utf-8") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "hygiene", "restore", "idle-gpus", TARGET,
             "--config", str(config_path)], cwd=ROOT, env=child_env(),
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        hold.wait_held(90)
        second = steward("hygiene", "restore", "idle-gpus", TARGET, "--config",
                         str(config_path), log=log)
    finally:
        hold.released.set()
    out, _ = first.communicate(timeout=120)
    assert second.returncode == 2 and second.stdout == ""
    assert f"another restore of {TARGET} is in progress" in log.read_text()
    assert first.returncode == 0, log.read_text()[-2000:]
    assert out == f"restored {TARGET}: Deployment data-science/trainer-dev scaled back to 2 " \
                  "replicas\n"
    assert _replicas(kube) == 2
    assert _scale_writes(kube) == [0, 2], "the second restore wrote"
    restores = [e for e in runtime.store().audit_entries("idle-gpus")
                if e["action"] == "restore"]
    assert len(restores) == 1
