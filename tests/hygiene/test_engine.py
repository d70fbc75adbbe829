"""The engine's safety model with an in-memory job: dry-run, two-phase mark and sweep, caps,
kill switch, exemptions by config, restore records, notifications, idempotency."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.controller.hygiene.engine import NothingToRestore
from agent.controller.hygiene.model import ResourceReplaced
from agent.controller.hygiene.plan import iso_time
from tests.hygiene.fakes import Rig, Thing, make_rig

HOUR = 3600.0


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, {"team-a/Deployment/idle": Thing(),
                               "team-a/Deployment/busy": Thing(idle=False, uid="uid-2")})


def acted(rig: Rig) -> list[str]:
    return [resource for name, resource in rig.job.calls if name == "act"]


def test_dry_run_records_the_plan_and_acts_on_nothing(rig: Rig) -> None:
    outcome = rig.engine().run(apply=False)
    assert outcome.result == "succeeded" and outcome.mode == "dry_run"
    assert outcome.plan is not None
    plan = outcome.plan.to_json()
    assert [c["resource"] for c in plan["candidates"]] == ["team-a/Deployment/idle"]
    assert plan["skipped"] == [{"resource": "team-a/Deployment/busy", "reason": "in use"}]
    assert plan["reclaimable"] == {"gpus": 1}
    assert {name for name, _ in rig.job.calls} == {"scan"}
    assert rig.store.active_marks("idle-gpus") == []
    assert rig.store.run(outcome.run_id)["plan"] == plan  # type: ignore[index]
    assert rig.metrics.value("steward_hygiene_actions_total", hygiene_job="idle-gpus",
                             action="scale_to_zero", mode="dry_run") == 1
    assert rig.metrics.value("steward_hygiene_candidates", hygiene_job="idle-gpus") == 1
    assert rig.metrics.value("steward_hygiene_runs_total", hygiene_job="idle-gpus",
                             result="succeeded") == 1


def test_mark_then_sweep_at_the_deadline_then_restore(rig: Rig) -> None:
    engine = rig.engine()
    first = engine.run(apply=True)
    assert first.result == "succeeded"
    assert rig.job.marked == {"team-a/Deployment/idle": iso_time(rig.clock.now + HOUR)}
    assert [n.kind for n in rig.notifier.notices] == ["marked"]
    assert acted(rig) == []
    # Before the deadline: still marked, not acted on, and not marked twice.
    rig.clock.now += 0.5 * HOUR
    assert engine.run(apply=True).result == "succeeded"
    assert acted(rig) == [] and rig.job.count("mark") == 1
    rig.clock.now += 0.6 * HOUR
    swept = engine.run(apply=True)
    assert swept.result == "succeeded"
    assert acted(rig) == ["team-a/Deployment/idle"]
    assert rig.job.things["team-a/Deployment/idle"].value == 0
    assert [n.kind for n in rig.notifier.notices] == ["marked", "acted"]
    assert rig.store.active_marks("idle-gpus") == []
    statuses = {(e["action"], e["status"]) for e in rig.store.audit_entries()}
    assert {("mark", "done"), ("notify", "done"), ("scale_to_zero", "done")} <= statuses
    assert rig.metrics.value("steward_hygiene_actions_total", action="scale_to_zero",
                             mode="apply") == 1
    restored = engine.restore("team-a/idle")  # ns/name finds ns/Kind/name
    assert restored.resource == "team-a/Deployment/idle"
    assert rig.job.things["team-a/Deployment/idle"].value == 3
    with pytest.raises(NothingToRestore):
        engine.restore("team-a/idle")


def test_a_mark_made_in_this_run_is_never_swept_by_it(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    assert acted(rig) == []
    engine.run(apply=True)
    assert acted(rig) == ["team-a/Deployment/idle"]


def test_compliant_at_the_deadline_lifts_the_mark(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.things["team-a/Deployment/idle"].idle = False
    assert engine.run(apply=True).result == "succeeded"
    assert acted(rig) == [] and rig.job.marked == {}
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted"]


def test_a_candidate_that_stops_being_one_is_unmarked_before_its_deadline(rig: Rig) -> None:
    engine = rig.engine()
    engine.run(apply=True)
    rig.job.things["team-a/Deployment/idle"].idle = False
    engine.run(apply=True)
    assert rig.job.count("unmark") == 1 and rig.job.marked == {}
    assert ("recheck", "team-a/Deployment/idle") not in rig.job.calls


def test_a_replaced_object_is_not_swept(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.things["team-a/Deployment/idle"].uid = "uid-of-a-new-object"
    engine.run(apply=True)
    assert acted(rig) == []
    assert rig.store.marks("idle-gpus")[0]["state"] == "lifted"


def test_caps_over_max_actions_act_on_nothing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {f"team-a/Deployment/d{i}": Thing(uid=f"u{i}") for i in range(3)},
                   max_actions=2)
    outcome = rig.engine().run(apply=True)
    assert outcome.result == "blast_radius_tripped"
    assert "3 actions planned, more than hygiene.idle_gpus.max_actions=2" in str(outcome.reason)
    assert rig.job.count("mark") == 0 and rig.store.active_marks("idle-gpus") == []
    assert rig.store.run(outcome.run_id)["result"] == "blast_radius_tripped"  # type: ignore[index]
    assert rig.metrics.value("steward_hygiene_runs_total", result="blast_radius_tripped") == 1


def test_caps_over_max_percent_act_on_nothing(tmp_path: Path) -> None:
    things = {f"team-a/Deployment/d{i}": Thing(uid=f"u{i}", idle=i < 4) for i in range(10)}
    rig = make_rig(tmp_path, things, max_percent=30)
    outcome = rig.engine().run(apply=True)
    assert outcome.result == "blast_radius_tripped"
    assert "4 actions planned on 10 resources looked at (40%)" in str(outcome.reason)
    assert rig.job.count("mark") == 0
    # Under the cap (3 of 10), the same run goes ahead.
    rig.job.things["team-a/Deployment/d3"].idle = False
    assert rig.engine().run(apply=True).result == "succeeded"
    assert rig.job.count("mark") == 3


def test_caps_count_due_sweeps_too(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Deployment/a": Thing(uid="a")}, max_actions=1,
                   mark_hours=0)
    rig.engine().run(apply=True)  # marks a
    rig.job.things["team-a/Deployment/b"] = Thing(uid="b")
    outcome = rig.engine().run(apply=True)  # sweep a + mark b = 2 > 1
    assert outcome.result == "blast_radius_tripped"
    assert acted(rig) == [] and rig.job.count("mark") == 1


def test_kill_switch_stops_an_apply_run_before_it_scans(rig: Rig) -> None:
    rig.kill_switch = True
    outcome = rig.engine().run(apply=True)
    assert outcome.result == "kill_switch" and "hygiene.kill_switch" in str(outcome.reason)
    assert rig.job.calls == []
    assert rig.metrics.value("steward_hygiene_runs_total", result="kill_switch") == 1
    # A dry run still shows what would happen.
    assert rig.engine().run(apply=False).result == "succeeded"


def test_scan_failure_acts_on_nothing_and_says_why(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.scan_error = "Prometheus at http://p:9090 is unreachable"
    outcome = engine.run(apply=True)
    assert outcome.result == "failed"
    assert outcome.reason == ("scan failed, acted on nothing: Prometheus at http://p:9090 "
                              "is unreachable")
    assert acted(rig) == [] and rig.job.count("unmark") == 0
    assert rig.metrics.value("steward_hygiene_runs_total", result="failed") == 1


def test_exemptions_by_namespace_and_name(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Deployment/a": Thing(uid="a"),
                              "team-b/Deployment/b": Thing(uid="b", namespace="team-b"),
                              "team-c/Deployment/keep-me": Thing(uid="c", namespace="team-c")},
                   exempt_namespaces=["team-b"], exempt_names=["*/keep-*"])
    outcome = rig.engine().run(apply=True)
    assert outcome.plan is not None
    assert [p.candidate.resource for p in outcome.plan.candidates] == ["team-a/Deployment/a"]
    assert {s.resource: s.reason for s in outcome.plan.skipped} == {
        "team-b/Deployment/b": "exempt: namespace team-b is in hygiene.idle_gpus."
                               "exempt_namespaces",
        "team-c/Deployment/keep-me": "exempt: matches '*/keep-*' in hygiene.idle_gpus."
                                     "exempt_names",
    }
    assert list(rig.job.marked) == ["team-a/Deployment/a"]


def test_no_restore_record_no_action(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.restore_record_error = "API down"
    outcome = engine.run(apply=True)
    assert outcome.result == "failed" and "no restore record" in str(outcome.reason)
    assert acted(rig) == []
    assert [a.status for a in outcome.actions] == ["refused"]


def test_restore_record_that_cannot_be_stored_means_no_action(rig: Rig,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rig.store, "claim_action", disk_full)
    assert engine.run(apply=True).result == "failed"
    assert acted(rig) == []


def test_an_action_that_failed_after_taking_effect_is_found_done(rig: Rig) -> None:
    """A timeout after the write: the next run sees the effect and records it, acting no
    second time, with the first restore record (never the already-reduced value)."""
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.act_error = "timeout after the write"

    def write_then_fail(resource: str) -> None:
        rig.job.things[resource].value = 0

    rig.job.on_act = write_then_fail
    assert engine.run(apply=True).result == "failed"
    rig.job.act_error = None
    assert engine.run(apply=True).result == "succeeded"
    assert rig.job.count("restore_record") == 1 and len(acted(rig)) == 1
    engine.restore("team-a/Deployment/idle")
    assert rig.job.things["team-a/Deployment/idle"].value == 3


def test_an_owner_never_told_is_never_swept(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    rig.notifier.fail = True
    outcome = engine.run(apply=True)
    assert outcome.result == "failed" and "owner not told" in str(outcome.reason)
    rig.clock.now += 10 * HOUR
    engine.run(apply=True)
    assert acted(rig) == []  # the deadline has not started
    rig.notifier.fail = False
    engine.run(apply=True)  # tells the owner now; the deadline runs from here
    assert acted(rig) == []
    rig.clock.now += 1
    engine.run(apply=True)
    assert acted(rig) == ["team-a/Deployment/idle"]


def test_failed_action_is_retried_by_the_next_run_once(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.job.act_error = "409 Conflict"
    failed = engine.run(apply=True)
    assert failed.result == "failed" and "409 Conflict" in str(failed.reason)
    assert [e["status"] for e in rig.store.audit_entries() if e["action"] == "scale_to_zero"] \
        == ["failed"]
    rig.job.act_error = None
    assert engine.run(apply=True).result == "succeeded"
    assert [e["status"] for e in rig.store.audit_entries() if e["action"] == "scale_to_zero"] \
        == ["done"]
    engine.run(apply=True)
    assert len(acted(rig)) == 2  # the failed attempt and the one that worked, never a third


def test_an_action_refused_because_the_object_was_replaced_is_released_not_retried(
        rig: Rig) -> None:
    """``act`` found another object under the name (a uid precondition refused it): a
    definite "not done". The claim is released and the mark lifted in that run, which
    succeeds; nothing is restorable, and no later run acts on the old mark or takes the
    old object's absence for the action having happened."""
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)

    def replaced(resource: str) -> None:
        raise ResourceReplaced(f"{resource} is another object now (uid precondition)")

    rig.job.on_act = replaced
    swept = engine.run(apply=True)
    assert swept.result == "succeeded", swept.reason
    (act,) = [e for e in rig.store.audit_entries() if e["key"].endswith("|act")]
    assert act["status"] == "released" and "uid precondition" in str(act["detail"])
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted"]
    assert [(a.action, a.status) for a in swept.actions] == [("release", "done"),
                                                             ("unmark", "done")]
    assert rig.store.restore_candidates("idle-gpus") == []
    rig.job.on_act = None
    rig.job.things["team-a/Deployment/idle"].uid = "uid-of-the-new-object"
    engine.run(apply=True)  # judged afresh: a new mark on the new object
    assert rig.job.count("observe") == 0
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted", "active"]
    assert rig.job.things["team-a/Deployment/idle"].value == 3


def test_a_replaced_object_found_while_making_the_record_is_not_claimed(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)

    def replaced(candidate: object) -> dict[str, object]:
        raise ResourceReplaced("team-a/Deployment/idle is a new object since it was judged")

    rig.job.restore_record = replaced  # type: ignore[method-assign]
    swept = engine.run(apply=True)
    assert swept.result == "succeeded", swept.reason
    assert acted(rig) == []
    assert not [e for e in rig.store.audit_entries() if e["key"].endswith("|act")]
    assert [m["state"] for m in rig.store.marks("idle-gpus")] == ["lifted"]
    assert "replaced since it was marked" in str(rig.store.marks("idle-gpus")[0]["closed_why"])


def test_notify_only_candidates_get_a_reminder_at_the_deadline(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Job/eval": Thing(action="notify")}, mark_hours=0)
    rig.engine().run(apply=True)
    rig.engine().run(apply=True)
    assert [n.kind for n in rig.notifier.notices] == ["marked", "reminder"]
    assert acted(rig) == [] and rig.job.count("restore_record") == 0
    with pytest.raises(NothingToRestore):
        rig.engine().restore("team-a/Job/eval")


def test_two_runs_racing_mark_once(rig: Rig) -> None:
    first, second = rig.engine(), rig.engine()
    first.run(apply=True)
    # The second engine read the marks before the first committed: simulate by marking
    # through the store directly, as a concurrent run would see it.
    mark = rig.store.active_marks("idle-gpus")[0]
    assert not rig.store.create_mark(mark, mode="apply")
    second.run(apply=True)
    assert len(rig.store.marks("idle-gpus")) == 1


def test_lost_leadership_stops_before_acting(rig: Rig) -> None:
    engine = rig.engine(mark_hours=0)
    engine.run(apply=True)
    rig.leader = False
    outcome = engine.run(apply=True)
    assert outcome.result == "failed" and "lost leadership" in str(outcome.reason)
    assert acted(rig) == []


def test_state_store_down_acts_on_nothing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Deployment/idle": Thing()})
    rig.store.engine.dispose()
    (tmp_path / "state.db").unlink()
    (tmp_path / "state.db").mkdir()  # not a database any more
    outcome = rig.engine().run(apply=True)
    assert outcome.result == "failed" and "state store unavailable" in str(outcome.reason)
    assert rig.job.calls == []
