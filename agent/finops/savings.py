"""What the hygiene jobs saved in the report week, from their audit log.

The audit log is read through :class:`SavingsSource`. Until one is connected the report
says ``"available": false`` instead of claiming zero savings.

- GPUs freed at ``at`` count from then to the end of the week (GPU-hours the week did not
  spend), priced at their model's price, else the week's mean price per allocated GPU-hour.
- Bytes removed (images, buckets) are priced at ``finops.storage_usd_per_gb_month`` as a
  monthly run rate (GB = 2^30 bytes, as cloud storage bills).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

GIB = 1 << 30


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


class SavingsSource(Protocol):
    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        """Applied actions with ``start <= at < end``."""
        ...


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
        }


NOT_CONNECTED = "the hygiene audit log is not connected to the report yet"


def compute_savings(source: SavingsSource | None, start: datetime, end: datetime, *,
                    prices: Mapping[str, float], default_gpu_price: float,
                    storage_usd_per_gb_month: float) -> HygieneSavings:
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
    return HygieneSavings(available=True, jobs=jobs)


# What frees resources (marks, notices and restores free nothing).
FREEING_ACTIONS = ("scale_to_zero", "delete", "expire_objects")


class AuditLogSavings:
    """The hygiene engine's audit log as a :class:`SavingsSource`: applied actions that
    completed, with what their mark said they reclaim, and when they were restored."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        import json

        from sqlalchemy import and_, select

        from agent.controller.hygiene.store import audit, marks, restore_records

        query = (
            select(audit.c.job, audit.c.action, audit.c.resource, audit.c.finished_at,
                   marks.c.reclaim, marks.c.evidence, restore_records.c.restored_at)
            .join(marks, marks.c.mark_id == audit.c.mark_id)
            .outerjoin(restore_records, restore_records.c.mark_id == audit.c.mark_id)
            .where(and_(audit.c.mode == "apply", audit.c.status == "done",
                        audit.c.action.in_(FREEING_ACTIONS),
                        audit.c.finished_at >= start.timestamp(),
                        audit.c.finished_at < end.timestamp())))
        found: list[SavingAction] = []
        with self._engine.connect() as connection:
            for row in connection.execute(query):
                reclaim = json.loads(row.reclaim or "{}")
                evidence = json.loads(row.evidence or "{}")
                models = {g.get("modelName") for g in evidence.get("gpus", [])
                          if isinstance(g, dict)}
                found.append(SavingAction(
                    job=row.job, action=row.action, resource=row.resource,
                    at=datetime.fromtimestamp(row.finished_at, start.tzinfo),
                    gpus=float(reclaim.get("gpus", 0.0)), bytes=int(reclaim.get("bytes", 0)),
                    gpu_model=models.pop() if len(models) == 1 else None,
                    until=(datetime.fromtimestamp(row.restored_at, start.tzinfo)
                           if row.restored_at is not None else None)))
        return found
