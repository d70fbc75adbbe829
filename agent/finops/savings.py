"""What the hygiene jobs saved in the report week, from their audit log.

The audit log is read through :class:`SavingsSource`. Until one is connected the report
says ``"available": false`` instead of claiming zero savings.

- GPUs freed at ``at`` count from then to the end of the week (GPU-hours the week did not
  spend), priced at their model's price, else the week's mean price per allocated GPU-hour.
- Bytes removed (images, buckets) are priced at ``finops.storage_usd_per_gb_month`` as a
  monthly run rate (GB = 2^30 bytes, as cloud storage bills).
- Beside what was saved: what each job's latest plan found reclaimable and nobody has acted
  on yet (a dry-run plan, or marks whose deadline has not come), priced the same way (GPUs
  per week at the week's mean price), so $0 saved never hides what could be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from agent.controller.hygiene.store import freed_actions, latest_plans
from agent.finops.series import iso

GIB = 1 << 30
HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class SavingAction:
    job: str  # idle-gpus, stale-images, orphaned-buckets
    action: str  # scale_to_zero, delete, ...
    resource: str  # ns/pod, registry/repo@sha256:..., s3://bucket
    at: datetime
    gpus: float = 0.0
    bytes: int = 0
    gpu_model: str | None = None
    # When the action was undone (steward hygiene restore): GPUs were freed only until then.
    until: datetime | None = None


@dataclass(frozen=True)
class PlanFound:
    """What a job's most recent successful run planned (its ``reclaimable``)."""

    job: str
    mode: str  # dry_run, apply
    at: datetime
    candidates: int
    gpus: float = 0.0
    bytes: int = 0


class SavingsSource(Protocol):
    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        """Applied actions with ``start <= at < end``."""
        ...

    def latest_plans(self, until: datetime) -> list[PlanFound]:
        """Each job's most recent successful run before ``until``."""
        ...


@dataclass(frozen=True)
class Reclaimable:
    job: str
    mode: str
    at: datetime
    candidates: int
    gpus: float
    bytes: int
    gpu_cost_per_week: float
    storage_cost_per_month: float


@dataclass(frozen=True)
class JobSavings:
    job: str
    actions: int
    gpu_hours_freed: float
    gpu_cost: float
    bytes_removed: int
    storage_cost_per_month: float


@dataclass(frozen=True)
class HygieneSavings:
    available: bool
    reason: str = ""
    jobs: list[JobSavings] = field(default_factory=list)
    reclaimable: list[Reclaimable] = field(default_factory=list)

    @property
    def gpu_hours_freed(self) -> float:
        return sum(j.gpu_hours_freed for j in self.jobs)

    @property
    def gpu_cost(self) -> float:
        return sum(j.gpu_cost for j in self.jobs)

    @property
    def bytes_removed(self) -> int:
        return sum(j.bytes_removed for j in self.jobs)

    @property
    def storage_cost_per_month(self) -> float:
        return sum(j.storage_cost_per_month for j in self.jobs)

    @property
    def actions(self) -> int:
        return sum(j.actions for j in self.jobs)

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {
            "available": True, "actions": self.actions,
            "gpu_hours_freed": round(self.gpu_hours_freed, 6),
            "gpu_cost": round(self.gpu_cost, 6),
            "bytes_removed": self.bytes_removed,
            "storage_cost_per_month": round(self.storage_cost_per_month, 6),
            "jobs": [{"job": j.job, "actions": j.actions,
                      "gpu_hours_freed": round(j.gpu_hours_freed, 6),
                      "gpu_cost": round(j.gpu_cost, 6), "bytes_removed": j.bytes_removed,
                      "storage_cost_per_month": round(j.storage_cost_per_month, 6)}
                     for j in self.jobs],
            "reclaimable": [{"job": r.job, "mode": r.mode, "run_at": iso(r.at),
                             "candidates": r.candidates, "gpus": round(r.gpus, 6),
                             "bytes": r.bytes,
                             "gpu_cost_per_week": round(r.gpu_cost_per_week, 6),
                             "storage_cost_per_month": round(r.storage_cost_per_month, 6)}
                            for r in self.reclaimable],
        }


NOT_CONNECTED = ("no hygiene audit log in the state store (state.url): no hygiene job has "
                 "run against it")


def compute_savings(source: SavingsSource | None, start: datetime, end: datetime, *,
                    prices: Mapping[str, float], default_gpu_price: float,
                    storage_usd_per_gb_month: float,
                    until: datetime | None = None) -> HygieneSavings:
    """Savings of ``[start, end)``; reclaimable as the latest plans before ``until`` (the
    report's generation time; default ``end``) found it."""
    if source is None:
        return HygieneSavings(available=False, reason=NOT_CONNECTED)
    per_job: dict[str, list[SavingAction]] = {}
    for action in source.actions(start, end):
        if start <= action.at < end:
            per_job.setdefault(action.job, []).append(action)
    jobs: list[JobSavings] = []
    for job, actions in sorted(per_job.items()):
        hours = cost = 0.0
        removed = 0
        for action in actions:
            stop = min(end, action.until) if action.until is not None else end
            freed = action.gpus * max(0.0, (stop - action.at).total_seconds()) / 3600
            price = prices.get(action.gpu_model or "", default_gpu_price)
            hours += freed
            cost += freed * price
            removed += action.bytes
        jobs.append(JobSavings(
            job=job, actions=len(actions), gpu_hours_freed=hours, gpu_cost=cost,
            bytes_removed=removed,
            storage_cost_per_month=removed / GIB * storage_usd_per_gb_month))
    pending = [Reclaimable(
        job=plan.job, mode=plan.mode, at=plan.at, candidates=plan.candidates, gpus=plan.gpus,
        bytes=plan.bytes, gpu_cost_per_week=plan.gpus * default_gpu_price * HOURS_PER_WEEK,
        storage_cost_per_month=plan.bytes / GIB * storage_usd_per_gb_month)
        for plan in sorted(source.latest_plans(until or end), key=lambda p: p.job)]
    return HygieneSavings(available=True, jobs=jobs, reclaimable=pending)


class AuditLogSavings:
    """The hygiene engine's audit log as a :class:`SavingsSource`: applied actions that
    completed, with what their mark said they reclaim, and when they were restored. Read
    through the hygiene store's views, never its tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        found: list[SavingAction] = []
        for freed in freed_actions(self._engine, start.timestamp(), end.timestamp()):
            models = {g.get("modelName") for g in freed.evidence.get("gpus", [])
                      if isinstance(g, dict)}
            found.append(SavingAction(
                job=freed.job, action=freed.action, resource=freed.resource,
                at=datetime.fromtimestamp(freed.finished_at, start.tzinfo),
                gpus=float(freed.reclaim.get("gpus", 0.0)),
                bytes=int(freed.reclaim.get("bytes", 0)),
                gpu_model=models.pop() if len(models) == 1 else None,
                until=(datetime.fromtimestamp(freed.restored_at, start.tzinfo)
                       if freed.restored_at is not None else None)))
        return found

    def latest_plans(self, until: datetime) -> list[PlanFound]:
        found = []
        for latest in latest_plans(self._engine, until.timestamp()):
            reclaim = latest.plan.get("reclaimable") or {}
            found.append(PlanFound(
                job=latest.job, mode=latest.mode,
                at=datetime.fromtimestamp(round(latest.finished_at), until.tzinfo),
                candidates=len(latest.plan.get("candidates") or []),
                gpus=float(reclaim.get("gpus", 0.0)), bytes=int(reclaim.get("bytes", 0))))
        return found
