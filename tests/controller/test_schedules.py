"""The leader's scheduler carries the hygiene jobs and the weekly FinOps report; followers
schedule nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubernetes import client

from agent.config import load_config
from agent.controller.app import build_controller
from agent.finops.report import JOB_ID, schedule_finops_report
from agent.localnet import wait_until


def test_leader_schedules_hygiene_and_the_weekly_report(api_client: client.ApiClient,
                                                         tmp_path: Path) -> None:
    config = load_config(None, environ={"STEWARD_CONTROLLER__LISTEN": "127.0.0.1:0",
                                        "STEWARD_STATE__URL": f"sqlite:///{tmp_path / 's.db'}",
                                        "STEWARD_FINOPS__SCHEDULE": "0 8 * * 1"})
    controller = build_controller(config, api_client=api_client, scheduled=[
        lambda aps: schedule_finops_report(aps, config)])  # as the CLI composes it
    assert controller.scheduler is not None
    assert controller.scheduler.scheduler is None  # a follower schedules nothing
    controller.started_leading()
    try:
        aps = controller.scheduler.scheduler
        assert aps is not None
        ids = {job.id for job in aps.get_jobs()}
        assert JOB_ID in ids
        assert {"hygiene:idle-gpus", "hygiene:stale-images", "hygiene:orphaned-buckets"} <= ids
        report = aps.get_job(JOB_ID)
        assert report.next_run_time.strftime("%a %H:%M") == "Mon 08:00"  # cron's Monday
    finally:
        controller.stopped_leading()
        controller.server.server_close()
    assert controller.scheduler.scheduler is None


def test_run_at_start_plans_at_once(api_client: client.ApiClient, tmp_path: Path) -> None:
    config = load_config(None, environ={
        "STEWARD_CONTROLLER__LISTEN": "127.0.0.1:0",
        "STEWARD_STATE__URL": f"sqlite:///{tmp_path / 'state.db'}",
        "STEWARD_HYGIENE__STALE_IMAGES__RUN_AT_START": "true"})
    controller = build_controller(config, api_client=api_client)
    assert controller.scheduler is not None
    scheduler = controller.scheduler

    def runs(job: str) -> float:
        return sum(s.value for m in scheduler.metrics_families()
                   if m.name == "steward_hygiene_runs" for s in m.samples
                   if s.labels.get("hygiene_job") == job and s.name.endswith("_total"))

    controller.started_leading()
    try:
        wait_until(lambda: runs("stale-images") == 1, timeout=15,
                   what="stale-images to run on becoming leader")
        assert runs("orphaned-buckets") == 0  # waits for its cron slot
        aps = scheduler.scheduler
        assert aps is not None
        later = aps.get_job("hygiene:orphaned-buckets").next_run_time
        assert later > datetime.now(UTC) + timedelta(minutes=1)
    finally:
        controller.stopped_leading()
        controller.server.server_close()
