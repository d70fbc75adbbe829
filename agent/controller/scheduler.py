"""The controller's job scheduler: APScheduler 3 in the background, started when this replica
becomes leader and shut down when it stops leading.

Every job runs on its cron schedule (``hygiene.<job>.schedule``, 5 fields, the controller's
time zone), never twice at once (``max_instances=1``), and runs missed while the controller
was down or busy collapse into one run (``coalesce``). Other components add their jobs
through ``extra`` (the weekly FinOps report).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from agent.controller.hygiene.context import JobUnavailable
from agent.controller.hygiene.jobs import JOBS, settings_of
from agent.controller.hygiene.runner import HygieneRuntime
from agent.cron import cron_trigger

log = logging.getLogger(__name__)

# A run that could not start on time (controller down, previous run still going) still
# starts within this many seconds; later, it waits for its next slot.
MISFIRE_GRACE_SECONDS: Final = 3600


class LeaderScheduler:
    """Owns one BackgroundScheduler per leadership term (a shut-down one cannot restart)."""

    def __init__(self, runtime: HygieneRuntime, *, timezone: tzinfo | str | None = None,
                 extra: Sequence[Callable[[Any], Any]] = (),
                 on_finished: Callable[[], None] = lambda: None) -> None:
        self._runtime = runtime
        self._on_finished = on_finished
        self._timezone = timezone
        self._extra = list(extra)
        self._scheduler: Any = None
        self._lock = threading.Lock()

    @property
    def scheduler(self) -> Any:
        return self._scheduler

    def metrics_families(self) -> list[Metric]:
        return self._runtime.metrics.families()

    def scheduled_jobs(self) -> list[str]:
        """The hygiene jobs this controller schedules: the enabled ones."""
        return [name for name in JOBS if settings_of(self._runtime.config, name).enabled]

    def run_job(self, name: str) -> None:
        """One scheduled run: dry-run unless ``controller.apply`` and the job's ``apply``."""
        config = self._runtime.config
        apply = config.controller.apply and settings_of(config, name).apply
        try:
            self._runtime.run(name, apply=apply)
        except JobUnavailable as exc:
            log.error("hygiene job cannot run", extra={"hygiene_job": name, "detail": str(exc)})
            self._runtime.metrics.run_finished(name, "failed", at=0.0)
        except Exception:  # never let a job kill the scheduler thread silently
            log.exception("hygiene job crashed", extra={"hygiene_job": name})
            self._runtime.metrics.run_finished(name, "failed", at=0.0)
        finally:
            self._on_finished()

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        with self._lock:
            if self._scheduler is not None:
                return
            scheduler = BackgroundScheduler(timezone=self._timezone) if self._timezone \
                else BackgroundScheduler()
            for name in self.scheduled_jobs():
                schedule = settings_of(self._runtime.config, name).schedule
                try:
                    trigger = cron_trigger(schedule, timezone=self._timezone)
                except ValueError as exc:
                    log.error("hygiene job not scheduled: bad schedule", extra={
                        "hygiene_job": name, "schedule": schedule, "detail": str(exc)})
                    continue
                self._runtime.metrics.declare(name)
                # run_at_start: a new leader plans at once instead of waiting for the next
                # slot (up to a day for the daily jobs); still one run at a time.
                first = {"next_run_time": datetime.now(UTC)} if settings_of(
                    self._runtime.config, name).run_at_start else {}
                scheduler.add_job(self.run_job, trigger, args=[name], id=f"hygiene:{name}",
                                  name=f"hygiene {name}", max_instances=1, coalesce=True,
                                  misfire_grace_time=MISFIRE_GRACE_SECONDS,
                                  replace_existing=True, **first)
            for register in self._extra:
                register(scheduler)
            scheduler.start()
            self._scheduler = scheduler
            log.info("scheduler started", extra={
                "jobs": [job.id for job in scheduler.get_jobs()]})

    def stop(self) -> None:
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            # A run in progress notices the lost leadership before its next action.
            scheduler.shutdown(wait=False)
            log.info("scheduler stopped")
