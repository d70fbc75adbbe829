"""The controller's ``steward_hygiene_*`` families, labelled ``hygiene_job`` (``job`` is
Prometheus' own target label: a metric label of that name would be renamed on scrape)."""

from __future__ import annotations

import threading
from typing import Final

from prometheus_client.metrics_core import Metric

from agent.controller.hygiene.model import Unit

RESULTS: Final = ("succeeded", "failed", "blast_radius_tripped", "kill_switch")
MODES: Final = ("dry_run", "apply")


class HygieneMetrics:
    """Counters and gauges of every hygiene job in this process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], float] = {}
        self._last_success: dict[str, float] = {}
        self._candidates: dict[str, float] = {}
        self._actions: dict[tuple[str, str, str], float] = {}
        self._reclaimable: dict[tuple[str, str], float] = {}

    def declare(self, job: str) -> None:
        """Export every result at 0 before the first run, so ``increase()`` sees the first
        failure as a change rather than a new series."""
        with self._lock:
            for result in RESULTS:
                self._runs.setdefault((job, result), 0.0)

    def run_finished(self, job: str, result: str, *, at: float) -> None:
        with self._lock:
            for other in RESULTS:
                self._runs.setdefault((job, other), 0.0)
            self._runs[(job, result)] = self._runs.get((job, result), 0.0) + 1
            if result == "succeeded":
                self._last_success[job] = at

    def plan_observed(self, job: str, *, candidates: int, unit: Unit,
                      reclaimable: float) -> None:
        with self._lock:
            self._candidates[job] = float(candidates)
            self._reclaimable[(job, unit)] = float(reclaimable)

    def action(self, job: str, action: str, mode: str, count: int = 1) -> None:
        with self._lock:
            key = (job, action, mode)
            self._actions[key] = self._actions.get(key, 0.0) + count

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value (tests and the CLI summary)."""
        for family in self.families():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return None

    def families(self) -> list[Metric]:
        runs = Metric("steward_hygiene_runs", "Hygiene runs by job and result.", "counter")
        last = Metric("steward_hygiene_last_success_timestamp_seconds",
                      "When the hygiene job last finished a run successfully.", "gauge")
        candidates = Metric("steward_hygiene_candidates",
                            "Resources matching the job's policy at its last run.", "gauge")
        actions = Metric("steward_hygiene_actions",
                         "Hygiene actions by job, action and mode (dry_run: what an applied "
                         "run would have done).", "counter")
        reclaimable = Metric("steward_hygiene_reclaimable",
                             "What acting on the last run's candidates would free.", "gauge")
        with self._lock:
            for (job, result), value in sorted(self._runs.items()):
                runs.add_sample("steward_hygiene_runs_total",
                                {"hygiene_job": job, "result": result}, value)
            for job, at in sorted(self._last_success.items()):
                last.add_sample("steward_hygiene_last_success_timestamp_seconds",
                                {"hygiene_job": job}, at)
            for job, count in sorted(self._candidates.items()):
                candidates.add_sample("steward_hygiene_candidates", {"hygiene_job": job}, count)
            for (job, action, mode), value in sorted(self._actions.items()):
                actions.add_sample("steward_hygiene_actions_total",
                                   {"hygiene_job": job, "action": action, "mode": mode}, value)
            for (job, unit), value in sorted(self._reclaimable.items()):
                reclaimable.add_sample("steward_hygiene_reclaimable",
                                       {"hygiene_job": job, "unit": unit}, value)
        return [m for m in (runs, last, candidates, actions, reclaimable) if m.samples]
