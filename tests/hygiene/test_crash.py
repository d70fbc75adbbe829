"""Kill-at-any-point: an apply run in a subprocess SIGKILLs itself at each named crash point
(``STEWARD_HYGIENE_CRASH_AT``), the job runs again, and the audit log and the API server's
own request log must show no action done twice and no action on anything not marked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.controller.hygiene import crashpoints as cp
from agent.controller.hygiene.idle_gpus import MARK_DEADLINE, RESTORE_ANNOTATION
from agent.controller.hygiene.store import HygieneStore
from agent.sim.kube_api import KubeApiServer
from agent.state import open_store
from tests.hygiene import world
from tests.hygiene.conftest import GRACE, WINDOW, Fleet, hygiene_config, make_runtime

pytestmark = pytest.mark.integration

TARGET = "data-science/Deployment/trainer-dev"
SCALE_PATH = r"/deployments/trainer-dev/scale$"
# (phase the crash happens in, crash point)
CASES = [
    *[("mark", point) for point in (cp.RUN_STARTED, cp.PLAN_RECORDED, cp.MARK_RECORDED,
                                    cp.MARK_ANNOTATED, cp.OWNER_NOTIFIED, cp.RUN_FINISHED)],
    *[("sweep", point) for point in (cp.PLAN_RECORDED, cp.RESTORE_RECORDED,
                                     cp.ACTION_CLAIMED, cp.ACT_ANNOTATED, cp.ACTED,
                                     cp.ACTION_RECORDED, cp.RUN_FINISHED)],
    ("unmark", cp.UNMARK_APPLIED),
]


def test_every_crash_point_is_exercised() -> None:
    assert {point for _, point in CASES} == set(cp.POINTS)


def _config_file(tmp_path: Path, kube: KubeApiServer, prometheus_url: str) -> Path:
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    path = tmp_path / "steward.yaml"
    path.write_text(yaml.safe_dump({
        "prometheus": {"url": prometheus_url, "timeout_seconds": 5},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
        "controller": {"lease_namespace": "steward", "identity": "crash-test"},
        "hygiene": {"idle_gpus": {"window": WINDOW, "grace": GRACE, "mark_hours": 0,
                                  "max_percent": 100, "max_actions": 10}},
    }), encoding="utf-8")
    return path


def _crashing_run(config: Path, point: str, log: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    env[cp.CRASH_ENV] = point
    with log.open("ab") as stderr:
        process = subprocess.run(
            [sys.executable, "-m", "agent.cli", "hygiene", "run", "idle-gpus", "--apply",
             "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr, timeout=60, check=False)
    return process.returncode


def _scale_writes(kube: KubeApiServer) -> list[int]:
    """Replica counts written through the scale subresource and accepted."""
    return [r.body["spec"]["replicas"] for r in kube.request_log(method="PUT",
                                                                 path_regex=SCALE_PATH)
            if r.status == 200]


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


@pytest.mark.parametrize(("phase", "point"), CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_killed_at_any_point_never_acts_twice_or_unmarked(
        fleet: Fleet, kube: KubeApiServer, tmp_path: Path, phase: str, point: str) -> None:
    world.trainer_dev(kube, replicas=2)
    config_path = _config_file(tmp_path, kube, fleet.url)
    runtime = make_runtime(hygiene_config(tmp_path, fleet.url), kube)
    log = tmp_path / "crash.log"

    if phase in ("sweep", "unmark"):
        assert runtime.run("idle-gpus", apply=True).result == "succeeded"  # marks
    if phase == "unmark":
        deployment = kube.get("apps/v1", "Deployment", "data-science", "trainer-dev")
        assert deployment is not None
        deployment["metadata"]["labels"]["steward.io/exempt"] = "true"
        kube.apply(deployment)

    code = _crashing_run(config_path, point, log)
    assert code == -signal.SIGKILL, log.read_text()
    recovery = runtime.run("idle-gpus", apply=True)
    assert recovery.result == "succeeded", recovery.reason
    if phase == "mark":
        # The next run sweeps (the recovery itself does, when the crash came after the
        # mark was complete); either way the sweep happens once.
        assert runtime.run("idle-gpus", apply=True).result == "succeeded"

    store = runtime.store()
    _assert_audit_sound(store)
    deployment = kube.get("apps/v1", "Deployment", "data-science", "trainer-dev")
    assert deployment is not None
    annotations = deployment["metadata"].get("annotations") or {}
    if phase == "unmark":
        assert _scale_writes(kube) == []
        assert deployment["spec"]["replicas"] == 2
        assert MARK_DEADLINE not in annotations
        assert [m["state"] for m in store.marks("idle-gpus")] == ["lifted"]
        return
    assert _scale_writes(kube) == [0], "scaled more than once"
    assert deployment["spec"]["replicas"] == 0
    assert annotations[RESTORE_ANNOTATION] == "2"
    done = [e for e in store.audit_entries("idle-gpus")
            if e["action"] == "scale_to_zero" and e["status"] == "done"]
    assert len(done) == 1
    record = store.restore_record(done[0]["mark_id"])
    assert record is not None and record.record["replicas"] == 2
    restore_patches = [r for r in kube.request_log(method="PATCH", path_regex="trainer-dev$")
                       if RESTORE_ANNOTATION in str(r.body)]
    assert len(restore_patches) == 1


def test_store_on_disk_is_the_one_the_subprocess_used(fleet: Fleet, kube: KubeApiServer,
                                                      tmp_path: Path) -> None:
    """Guards the crash test itself: the subprocess and the test share one state store."""
    world.trainer_dev(kube)
    config_path = _config_file(tmp_path, kube, fleet.url)
    assert _crashing_run(config_path, "never-reached", tmp_path / "run.log") == 0
    store = HygieneStore(open_store(f"sqlite:///{tmp_path / 'state.db'}"))
    assert [m["resource"] for m in store.marks("idle-gpus")] == [TARGET]
