"""An owner's Keep / Snooze / Exempt (the Slack buttons, through the store's public
apply_owner_choice) changes the mark, is audited with who chose, and the engine's next runs
honour it: kept or exempted resources are not acted on, a snoozed deadline has moved, a
snooze has a cap, and the same click twice is applied once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.controller.hygiene.store import apply_owner_choice
from tests.hygiene.fakes import Rig, Thing, make_rig

HOUR = 3600.0
IDLE = "team-a/Deployment/idle"
ALICE = "alice (Slack U0ALICE)"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, {IDLE: Thing()})


def acted(rig: Rig) -> list[str]:
    return [resource for name, resource in rig.job.calls if name == "act"]


def marked(rig: Rig) -> str:
    [mark] = rig.store.active_marks("idle-gpus")
    return mark.mark_id


def choose(rig: Rig, mark_id: str, choice: str, click: str = "1") -> str:
    outcome = apply_owner_choice(rig.store.engine, mark_id, choice,  # type: ignore[arg-type]
                                 by=ALICE, at=rig.clock.now, click_id=click,
                                 snooze_cap_seconds=72 * HOUR)
    return outcome.status


def test_keep_is_not_acted_on_for_seven_days(rig: Rig) -> None:
    engine = rig.engine()
    engine.run(apply=True)
    assert choose(rig, marked(rig), "keep") == "applied"
    assert rig.store.active_marks("idle-gpus") == []
    rig.clock.now += 2 * HOUR
    outcome = engine.run(apply=True)
    assert acted(rig) == [] and rig.store.active_marks("idle-gpus") == []
    assert outcome.plan is not None
    [skipped] = outcome.plan.to_json()["skipped"]
    assert skipped["reason"].startswith(f"kept by {ALICE} until ")
    rig.clock.now += 7 * 24 * HOUR  # the keep is over: marked again, not acted on yet
    engine.run(apply=True)
    assert len(rig.store.active_marks("idle-gpus")) == 1 and acted(rig) == []
    [entry] = [e for e in rig.store.audit_entries() if e["action"] == "owner_keep"]
    assert ALICE in entry["detail"] and entry["mode"] == "apply"


def test_exempt_is_never_acted_on(rig: Rig) -> None:
    engine = rig.engine()
    engine.run(apply=True)
    assert choose(rig, marked(rig), "exempt") == "applied"
    for _ in range(3):
        rig.clock.now += 30 * 24 * HOUR
        engine.run(apply=True)
    assert acted(rig) == [] and rig.store.active_marks("idle-gpus") == []
    assert any(e["action"] == "owner_exempt" and ALICE in e["detail"]
               for e in rig.store.audit_entries())


def test_snooze_moves_the_deadline_up_to_its_cap(rig: Rig) -> None:
    engine = rig.engine()
    engine.run(apply=True)
    mark_id = marked(rig)
    deadline = rig.store.active_marks("idle-gpus")[0].deadline
    assert choose(rig, mark_id, "snooze", click="1") == "applied"
    assert rig.store.active_marks("idle-gpus")[0].deadline == deadline + 24 * HOUR
    rig.clock.now = deadline + HOUR  # past the old deadline: not acted on
    engine.run(apply=True)
    assert acted(rig) == []
    # More snoozes: never past 72 h from the click.
    assert choose(rig, mark_id, "snooze", click="2") == "applied"
    assert choose(rig, mark_id, "snooze", click="3") == "applied"
    assert rig.store.active_marks("idle-gpus")[0].deadline == deadline + 72 * HOUR
    assert choose(rig, mark_id, "snooze", click="4") == "applied"  # cut to the cap
    assert rig.store.active_marks("idle-gpus")[0].deadline == rig.clock.now + 72 * HOUR
    assert choose(rig, mark_id, "snooze", click="5") == "refused"
    rig.clock.now += 72 * HOUR + 1
    engine.run(apply=True)
    assert acted(rig) == [IDLE]


def test_the_same_click_twice_is_applied_once(rig: Rig) -> None:
    rig.engine().run(apply=True)
    mark_id = marked(rig)
    deadline = rig.store.active_marks("idle-gpus")[0].deadline
    assert choose(rig, mark_id, "snooze", click="7") == "applied"
    assert choose(rig, mark_id, "snooze", click="7") == "already"
    assert rig.store.active_marks("idle-gpus")[0].deadline == deadline + 24 * HOUR
    assert len([e for e in rig.store.audit_entries() if e["action"] == "owner_snooze"]) == 1


def test_no_choice_on_a_mark_being_acted_on_or_gone(rig: Rig) -> None:
    engine = rig.engine()
    engine.run(apply=True)
    mark_id = marked(rig)
    rig.clock.now += 2 * HOUR
    engine.run(apply=True)  # swept
    assert acted(rig) == [IDLE]
    assert choose(rig, mark_id, "keep") == "refused"
    assert choose(rig, "no-such-mark", "keep") == "refused"
