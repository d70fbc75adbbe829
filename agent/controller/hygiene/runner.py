"""One process's hygiene runtime: the state store, metrics, owner notifier and clients that
every run shares, and an engine built fresh for each run. Used by the CLI and the scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import StewardConfig
from agent.controller.hygiene.audit import AuditTrail, EventRecorder
from agent.controller.hygiene.context import JobContext
from agent.controller.hygiene.crashpoints import Checkpoint, no_checkpoint
from agent.controller.hygiene.engine import HygieneEngine, RestoreOutcome, RunOutcome
from agent.controller.hygiene.guards import KillSwitch
from agent.controller.hygiene.jobs import (
    build_job,
    config_key,
    settings_of,
)
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.notify import OwnerNotifier, notifier_from_config
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.controller.hygiene.store import TABLES, HygieneStore


class HygieneRuntime:
    def __init__(self, config: StewardConfig, *, api_client: Any | None = None,
                 metrics: HygieneMetrics | None = None, notifier: OwnerNotifier | None = None,
                 store: HygieneStore | None = None, clock: Callable[[], float] = time.time,
                 still_leader: Callable[[], bool] = lambda: True,
                 progress: Progress | None = None,
                 checkpoint: Checkpoint = no_checkpoint) -> None:
        self._config = config
        self._api_client = api_client
        self.metrics = metrics or HygieneMetrics()
        self._notifier = notifier
        self._store = store
        self._store_lock = threading.Lock()
        self._clock = clock
        self._still_leader = still_leader
        self._progress = progress or NoProgress()
        self._checkpoint = checkpoint

    @property
    def config(self) -> StewardConfig:
        return self._config

    def store(self) -> HygieneStore:
        """The state store, opened on first use (a controller that never runs a job never
        creates the database file)."""
        with self._store_lock:
            if self._store is None:
                from agent.state import open_store

                self._store = HygieneStore(open_store(self._config.state.url, tables=[TABLES]))
            return self._store

    def notifier(self) -> OwnerNotifier:
        if self._notifier is None:
            self._notifier = notifier_from_config(self._config)
        return self._notifier

    def engine(self, name: str, *, for_restore: bool = False) -> HygieneEngine:
        """A new engine and job for ``name`` (JobUnavailable / UnknownJob if it cannot be).
        ``for_restore``: the job needs only what it restores to (no evidence sources)."""
        context = JobContext(config=self._config, api_client=self._api_client,
                             clock=self._clock, progress=self._progress,
                             for_restore=for_restore)
        job = build_job(name, context)
        hygiene = self._config.hygiene
        events = None
        if self._api_client is not None:
            events = EventRecorder(self._api_client, instance=self._config.controller.identity)
        kill_switch = KillSwitch(configured=hygiene.kill_switch,
                                 configmap=hygiene.kill_switch_configmap,
                                 namespace=self._config.controller.lease_namespace,
                                 api_client=self._api_client)
        return HygieneEngine(job, settings_of(self._config, name), store=self.store(),
                             metrics=self.metrics, audit=AuditTrail(self.metrics, events=events),
                             notifier=self.notifier(), kill_switch=kill_switch,
                             config_key=config_key(name), clock=self._clock,
                             still_leader=self._still_leader, checkpoint=self._checkpoint)

    def run(self, name: str, *, apply: bool) -> RunOutcome:
        return self.engine(name).run(apply=apply)

    def restore(self, name: str, resource: str) -> RestoreOutcome:
        return self.engine(name, for_restore=True).restore(resource)
