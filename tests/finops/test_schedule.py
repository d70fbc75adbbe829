"""The weekly schedule the controller registers (APScheduler 3, cron from finops.schedule)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import StewardConfig
from agent.cron import cron_day_of_week
from agent.finops.period import ReportWeek
from agent.finops.report import JOB_ID, schedule_finops_report, scheduled_report
from agent.finops.series import FinopsInputError
from tests.finops.conftest import FleetPrometheus, fleet_config

WEDNESDAY = datetime(2026, 11, 18, 15, tzinfo=UTC)


def test_default_is_monday_0800() -> None:
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.start(paused=True)
    try:
        job = schedule_finops_report(scheduler, StewardConfig(), timezone=UTC)
        assert job.id == JOB_ID
        assert job.trigger.get_next_fire_time(None, WEDNESDAY) == datetime(2026, 11, 23, 8,
                                                                           tzinfo=UTC)
        assert job.next_run_time.weekday() == 0 and job.next_run_time.hour == 8
        # Registering again (a new leader term) replaces the job instead of adding one.
        schedule_finops_report(scheduler, StewardConfig(), timezone=UTC)
        assert [j.id for j in scheduler.get_jobs()] == [JOB_ID]
    finally:
        scheduler.shutdown(wait=False)


def test_schedule_from_config_in_the_controllers_zone() -> None:
    config = StewardConfig.model_validate({"finops": {"schedule": "30 6 * * 2"}})
    job = schedule_finops_report(BackgroundScheduler(), config, timezone="Europe/Paris")
    fire = job.trigger.get_next_fire_time(None, WEDNESDAY)
    assert fire.isoformat() == "2026-11-24T06:30:00+01:00"


@pytest.mark.parametrize(("field", "names"), [
    ("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"),
    ("mon-fri", "mon,tue,wed,thu,fri"), ("0,6", "sat,sun"), ("*/2", "tue,thu,sat,sun"),
    ("1/3", "mon,thu"), ("*", "*"), ("5-7", "fri,sat,sun")])
def test_cron_weekdays_keep_cron_numbering(field: str, names: str) -> None:
    """APScheduler 3 reads day-of-week numbers from Monday = 0; crontab from Sunday = 0."""
    assert cron_day_of_week(field) == names


def test_bad_cron_names_the_key() -> None:
    for bad in ("every monday", "0 8 * * 9", "0 25 * * 1", "0 8 * * 5-2"):
        config = StewardConfig.model_validate({"finops": {"schedule": bad}})
        with pytest.raises(FinopsInputError, match="^" + re.escape(f"finops.schedule: '{bad}'")):
            schedule_finops_report(BackgroundScheduler(), config, timezone=UTC)


@pytest.mark.integration
def test_scheduled_run_writes_last_weeks_folder(fleet_prometheus: FleetPrometheus,
                                                tmp_path: Path) -> None:
    config = fleet_config(fleet_prometheus.url, finops={"out_dir": str(tmp_path)})
    assert scheduled_report(config) == 0
    week = ReportWeek.last_complete(datetime.now(UTC))
    summary = json.loads((tmp_path / week.name / "summary.json").read_text())
    assert summary["week"] == week.name
    assert summary["start"] == week.start.isoformat().replace("+00:00", "Z")
