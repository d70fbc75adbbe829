"""The leader's scheduler: cron from config, one run at a time, apply only when both the
controller and the job say so, started and stopped with leadership."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import StewardConfig
from agent.controller.app import build_controller
from agent.controller.hygiene.engine import RunOutcome
from agent.controller.hygiene.runner import HygieneRuntime
from agent.controller.hygiene.store import HygieneStore
from agent.controller.scheduler import LeaderScheduler
from agent.cron import cron_trigger
from tests.support.kube import KubeStandIns
from tests.support.net import wait_until

START = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(("expression", "weekday", "hour"), [
    ("0 3 * * 0", 6, 3),  # cron's 0 is Sunday (Python's weekday 6)
    ("0 3 * * 7", 6, 3),
    ("15 4 * * 1-5", 3, 4),  # next weekday after Wednesday noon: Thursday
    ("0 8 * * mon", 0, 8),
    ("*/30 * * * *", 2, 12),
])
def test_cron_expressions_follow_cron_weekdays(expression: str, weekday: int, hour: int) -> None:
    fire = cron_trigger(expression, timezone=UTC).get_next_fire_time(None, START)
    assert (fire.weekday(), fire.hour) == (weekday, hour)


@pytest.mark.parametrize("expression", ["0 3 * *", "61 * * * *", "0 3 * * 8"])
def test_bad_cron_expressions(expression: str) -> None:
    with pytest.raises(ValueError):
        cron_trigger(expression, timezone=UTC)


class BlockingRuntime(HygieneRuntime):
    """Runs block until released, and record (job, apply) and peak concurrency."""

    def __init__(self, config: StewardConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, bool]] = []
        self.running = 0
        self.peak = 0
        self.release = threading.Event()
        self.started = threading.Event()
        self._count_lock = threading.Lock()

    def run(self, name: str, *, apply: bool) -> RunOutcome:
        with self._count_lock:
            self.calls.append((name, apply))
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.set()
        self.release.wait(10)
        with self._count_lock:
            self.running -= 1
        return RunOutcome(run_id="x", job=name, mode="apply" if apply else "dry_run",
                          result="succeeded", reason=None, plan=None)


def _config(tmp_path: Path, *, controller_apply: bool, job_apply: bool) -> StewardConfig:
    return StewardConfig.model_validate({
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "controller": {"apply": controller_apply},
        "hygiene": {"idle_gpus": {"apply": job_apply, "schedule": "0 3 * * *"},
                    "stale_images": {"enabled": False},
                    "orphaned_buckets": {"enabled": False}}})


def test_one_run_at_a_time_and_missed_runs_coalesce(tmp_path: Path) -> None:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES

    runtime = BlockingRuntime(_config(tmp_path, controller_apply=False, job_apply=True))
    scheduler = LeaderScheduler(runtime, timezone=UTC)
    scheduler.start()
    try:
        job = scheduler.scheduler.get_job("hygiene:idle-gpus")
        assert job.max_instances == 1 and job.coalesce is True
        assert [j.id for j in scheduler.scheduler.get_jobs()] == ["hygiene:idle-gpus"]
        refused = threading.Event()
        scheduler.scheduler.add_listener(lambda _event: refused.set(), EVENT_JOB_MAX_INSTANCES)
        job.modify(next_run_time=datetime.now(UTC))
        assert runtime.started.wait(10)
        job.modify(next_run_time=datetime.now(UTC))
        wait_until(refused.is_set, timeout=10, what="the second run refused")
        runtime.release.set()
        wait_until(lambda: runtime.running == 0, timeout=10, what="the run to end")
        assert runtime.peak == 1
        # Scheduled runs are dry runs unless controller.apply and the job's apply are set.
        assert runtime.calls == [("idle-gpus", False)]
    finally:
        runtime.release.set()
        scheduler.stop()
    assert scheduler.scheduler is None


def test_scheduled_run_applies_only_when_both_settings_say_so(tmp_path: Path) -> None:
    runtime = BlockingRuntime(_config(tmp_path, controller_apply=True, job_apply=True))
    runtime.release.set()
    LeaderScheduler(runtime).run_job("idle-gpus")
    assert runtime.calls == [("idle-gpus", True)]


def test_a_job_that_cannot_be_built_counts_as_failed(tmp_path: Path) -> None:
    runtime = HygieneRuntime(_config(tmp_path, controller_apply=False, job_apply=False))
    LeaderScheduler(runtime).run_job("idle-gpus")  # no Kubernetes API configured
    assert runtime.metrics.value("steward_hygiene_runs_total", hygiene_job="idle-gpus",
                                 result="failed") == 1


def test_controller_schedules_and_exports_hygiene_only_while_leading(
        tmp_path: Path, make_kube: KubeStandIns) -> None:
    config = _config(tmp_path, controller_apply=False, job_apply=False)
    config = config.model_copy(update={"controller": config.controller.model_copy(
        update={"listen": "127.0.0.1:0", "lease_namespace": "steward"})})
    kube = make_kube(namespaces=("default", "steward"))
    api: Any = kube.api_client()
    controller = build_controller(config, api_client=api)

    def hygiene_names() -> set[str]:
        return {s.name for f in controller.families() for s in f.samples
                if s.name.startswith("steward_hygiene_")}

    assert hygiene_names() == set()
    controller.started_leading()
    try:
        assert controller.scheduler is not None
        scheduled = controller.scheduler.scheduler.get_job("hygiene:idle-gpus")
        assert scheduled is not None
        assert hygiene_names() == {"steward_hygiene_runs_total"}
    finally:
        controller.stopped_leading()
    assert controller.scheduler.scheduler is None
    assert hygiene_names() == set()
    api.close()
    # The store is opened at start (a store that lost its state stops the start), but
    # nothing ran.
    assert controller.store is not None
    assert HygieneStore(controller.store).runs("idle-gpus") == []
    controller.store.dispose()
