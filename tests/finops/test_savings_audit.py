"""Hygiene savings in the FinOps report come from the engine's real audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.finops.savings import AuditLogSavings, compute_savings
from tests.hygiene.fakes import Thing, make_rig

HOUR = 3600.0


def test_applied_actions_count_until_the_week_ends_or_they_are_restored(
        tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"team-a/Deployment/kept-off": Thing(uid="a"),
                              "team-a/Deployment/restored": Thing(uid="b")}, mark_hours=1.0)
    week_start = datetime.fromtimestamp(rig.clock.now, UTC)
    engine = rig.engine()
    engine.run(apply=True)  # marks both
    rig.clock.now += 2 * HOUR
    assert engine.run(apply=True).result == "succeeded"  # sweeps both: 1 GPU each
    swept_at = rig.clock.now
    engine.run(apply=False)  # a dry run frees nothing and must not count
    rig.clock.now += 10 * HOUR
    assert engine.restore("team-a/Deployment/restored").resource == "team-a/Deployment/restored"
    week_end = week_start + timedelta(days=7)

    actions = AuditLogSavings(rig.store.engine).actions(week_start, week_end)
    assert sorted((a.resource, a.gpus) for a in actions) == [
        ("team-a/Deployment/kept-off", 1.0), ("team-a/Deployment/restored", 1.0)]
    restored = next(a for a in actions if a.resource.endswith("restored"))
    assert restored.until is not None

    savings = compute_savings(AuditLogSavings(rig.store.engine), week_start, week_end,
                              prices={}, default_gpu_price=2.0, storage_usd_per_gb_month=0.02)
    kept_hours = (week_end.timestamp() - swept_at) / HOUR
    assert savings.available
    assert savings.gpu_hours_freed == kept_hours + 10.0  # the restored one saved 10 h
    assert savings.gpu_cost == (kept_hours + 10.0) * 2.0
    # outside the week: nothing
    later = week_end + timedelta(days=7)
    assert AuditLogSavings(rig.store.engine).actions(week_end, later) == []
    # What is still reclaimable is the latest successful plan: the dry run after the sweep.
    plans = AuditLogSavings(rig.store.engine).latest_plans(week_end)
    assert [(p.job, p.mode) for p in plans] == [(rig.job.name, "dry_run")]
    assert plans[0].at.timestamp() == swept_at
    assert AuditLogSavings(rig.store.engine).latest_plans(week_start) == []
