"""The engine's claim -> act -> complete protocol, and the reconciling of a claimed action
after the process died between any two of those steps (in-process: the crash point raises
``Killed``, which nothing in the engine catches; ``test_crash`` kills real processes)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.controller.hygiene import crashpoints as cp
from agent.controller.hygiene.engine import (
    RESTORE_CLAIM_SECONDS,
    NothingToRestore,
    RestoreBusy,
    RestoreFailed,
)
from tests.hygiene.fakes import Killed, Rig, Thing, make_rig

IDLE = "team-a/Deployment/idle"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = make_rig(tmp_path, {IDLE: Thing()}, mark_hours=0)
    assert rig.engine().run(apply=True).result == "succeeded"  # marked, owner told
    return rig


def acted(rig: Rig) -> int:
    return rig.job.count("act")


def act_entry(rig: Rig) -> dict[str, object]:
    (entry,) = [e for e in rig.store.audit_entries() if e["key"].endswith("|act")]
    return entry


def die(rig: Rig, point: str) -> None:
    with pytest.raises(Killed):
        rig.engine(die_at=point).run(apply=True)


def test_killed_after_the_act_the_rerun_records_it_and_never_lifts_the_mark(rig: Rig) -> None:
    """Defect 3 and 4 of issue 13, in the engine: the act took effect, the run died before
    recording it, and the resource is no longer a candidate (a Deployment at 0 replicas has
    no idle pods; a deleted bucket is not listed). The rerun must record the action, tell
    the owner, and keep it restorable; it must not say "mark lifted"."""
    die(rig, cp.ACTED)
    assert rig.job.things[IDLE].value == 0 and acted(rig) == 1
    assert act_entry(rig)["status"] == "started"
    rig.job.things[IDLE].idle = False  # what the scan sees after the act

    rerun = rig.engine().run(apply=True)

    assert rerun.result == "succeeded", rerun.reason
    assert acted(rig) == 1, "acted twice"
    assert act_entry(rig)["status"] == "done"
    assert "found done after a run died" in str(act_entry(rig)["detail"])
    assert rig.job.count("unmark") == 0
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["swept"]
    assert [(a.action, a.status) for a in rerun.actions] == [("scale_to_zero", "done")]
    assert [n.kind for n in rig.notifier.notices] == ["marked", "acted"]
    assert rig.metrics.value("steward_hygiene_actions_total", action="scale_to_zero",
                             mode="apply") == 1
    restored = rig.engine().restore("team-a/idle")
    assert restored.restored and rig.job.things[IDLE].value == 3


def test_killed_after_the_claim_the_rerun_acts_once_if_still_non_compliant(rig: Rig) -> None:
    die(rig, cp.ACTION_CLAIMED)
    assert acted(rig) == 0 and act_entry(rig)["status"] == "started"
    assert rig.store.restore_record(str(act_entry(rig)["mark_id"])) is not None
    assert rig.engine().run(apply=True).result == "succeeded"
    assert acted(rig) == 1 and act_entry(rig)["status"] == "done"
    assert rig.engine().run(apply=True).result == "succeeded"
    assert acted(rig) == 1


def test_killed_after_the_claim_a_compliant_resource_is_released_not_acted_on(
        rig: Rig) -> None:
    die(rig, cp.ACTION_CLAIMED)
    rig.job.things[IDLE].idle = False  # in use again
    assert rig.engine().run(apply=True).result == "succeeded"
    assert acted(rig) == 0
    assert act_entry(rig)["status"] == "released"
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted"]
    with pytest.raises(NothingToRestore):
        rig.engine().restore(IDLE)


def test_a_claim_whose_outcome_cannot_be_told_stays_claimed_and_fails_the_run(
        rig: Rig) -> None:
    die(rig, cp.ACTED)
    rig.job.things[IDLE].idle = False
    rig.job.observe_error = "API server unreachable"
    failed = rig.engine().run(apply=True)
    assert failed.result == "failed"
    assert "cannot tell whether scale_to_zero took effect" in str(failed.reason)
    assert act_entry(rig)["status"] == "started"
    assert rig.store.active_marks("idle-gpus") and rig.job.count("unmark") == 0
    rig.job.observe_error = None
    assert rig.engine().run(apply=True).result == "succeeded"
    assert act_entry(rig)["status"] == "done" and acted(rig) == 1


def test_a_claimed_resource_that_vanished_is_closed_with_nothing_to_restore(rig: Rig) -> None:
    die(rig, cp.ACTION_CLAIMED)
    del rig.job.things[IDLE]
    assert rig.engine().run(apply=True).result == "succeeded"
    assert act_entry(rig)["status"] == "vanished"
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["vanished"]
    with pytest.raises(NothingToRestore):
        rig.engine().restore(IDLE)


def test_killed_after_recording_the_rerun_still_announces_it(rig: Rig) -> None:
    die(rig, cp.ACTION_RECORDED)
    rig.job.things[IDLE].idle = False
    assert [n.kind for n in rig.notifier.notices] == ["marked"]
    assert rig.engine().run(apply=True).result == "succeeded"
    assert [n.kind for n in rig.notifier.notices] == ["marked", "acted"]
    assert rig.engine().run(apply=True).result == "succeeded"
    assert [n.kind for n in rig.notifier.notices] == ["marked", "acted"]
    assert acted(rig) == 1


def test_retries_count_against_the_caps(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {IDLE: Thing(), "team-a/Deployment/other": Thing(uid="u2")},
                   mark_hours=0, max_actions=2)
    rig.engine().run(apply=True)
    die(rig, cp.ACTION_CLAIMED)
    rig.job.things["team-a/Deployment/new"] = Thing(uid="u3")
    rig.job.things["team-a/Deployment/newer"] = Thing(uid="u4")
    # 1 retry + 1 sweep + 2 new marks > 2: nothing acted on, the claim kept.
    outcome = rig.engine().run(apply=True)
    assert outcome.result == "blast_radius_tripped"
    assert acted(rig) == 0
    assert len(rig.store.pending_claims("idle-gpus")) == 1


def test_restore_works_from_the_record_of_an_unreconciled_claim(rig: Rig) -> None:
    """Whatever became of the mark: no run has reconciled yet, the restore does."""
    die(rig, cp.ACTED)
    restored = rig.engine().restore(IDLE)
    assert restored.restored and rig.job.things[IDLE].value == 3
    assert act_entry(rig)["status"] == "done"
    assert [n.kind for n in rig.notifier.notices] == ["marked", "acted"]
    with pytest.raises(NothingToRestore):
        rig.engine().restore(IDLE)


def test_restore_of_a_claim_that_never_took_effect_cancels_it(rig: Rig) -> None:
    die(rig, cp.ACTION_CLAIMED)
    outcome = rig.engine().restore(IDLE)
    assert not outcome.restored and "nothing to undo" in outcome.message
    assert act_entry(rig)["status"] == "released"
    assert rig.job.count("restore") == 0
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted"]
    # No run acts on a cancelled claim: the next marks afresh, with a new notice period.
    rig.engine().run(apply=True)
    assert acted(rig) == 0 and len(rig.store.active_marks("idle-gpus")) == 1


def test_restore_refuses_honestly_when_the_world_is_not_ready(rig: Rig) -> None:
    rig.engine().run(apply=True)  # swept
    rig.job.not_ready = 27.2
    with pytest.raises(RestoreFailed, match="still terminating; retry in 28s") as caught:
        rig.engine().restore(IDLE)
    assert caught.value.retry_after == 27.2
    assert rig.job.things[IDLE].value == 0
    rig.job.not_ready = None
    assert rig.engine().restore(IDLE).restored  # the record was kept, the claim released
    assert rig.job.things[IDLE].value == 3


def test_two_concurrent_restores_one_restores_the_other_changes_nothing(rig: Rig) -> None:
    rig.engine().run(apply=True)  # swept
    inside, release = threading.Event(), threading.Event()

    def hold(resource: str) -> None:
        inside.set()
        assert release.wait(10)

    rig.job.on_restore = hold
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(rig.engine().restore(IDLE)))
    first.start()
    assert inside.wait(10)
    with pytest.raises(RestoreBusy, match="another restore of team-a/Deployment/idle is in "
                                          "progress"):
        rig.engine().restore(IDLE)
    release.set()
    first.join(10)
    assert [getattr(r, "restored", None) for r in results] == [True]
    assert rig.job.count("restore") == 1
    restores = [e for e in rig.store.audit_entries() if e["action"] == "restore"]
    assert len(restores) == 1


def test_a_restore_that_died_holds_its_claim_until_it_lapses(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.engine().run(apply=True)  # swept
    with monkeypatch.context() as killed:  # SIGKILL runs no ``finally``: the claim stays
        killed.setattr(rig.store, "release_restore", lambda *a, **k: None)
        with pytest.raises(Killed):
            rig.engine(die_at=cp.RESTORED).restore(IDLE)
    assert rig.job.things[IDLE].value == 3  # back, not recorded
    with pytest.raises(RestoreBusy):
        rig.engine().restore(IDLE)
    rig.clock.now += RESTORE_CLAIM_SECONDS + 1
    outcome = rig.engine().restore(IDLE)
    assert outcome.restored
    assert len([e for e in rig.store.audit_entries() if e["action"] == "restore"]) == 1
