"""A run's plan: what the scan found, the deadline of each candidate, what it would reclaim.

``Plan.to_json`` is the object ``steward hygiene run JOB --output json`` prints (SPEC.md,
"Hygiene plans"), and the copy of the plan each run records in the state store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from agent.controller.hygiene.model import Candidate, Skipped, Unit

Mode = Literal["dry_run", "apply"]


def iso_time(at: float) -> str:
    """Unix seconds as RFC 3339 UTC, the form the plan, annotations and messages use."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


@dataclass(frozen=True)
class PlannedCandidate:
    candidate: Candidate
    deadline: float  # when it is swept if still non-compliant
    marked: bool  # an earlier run already marked it (the deadline is that mark's)


@dataclass(frozen=True)
class Plan:
    job: str
    mode: Mode
    started_at: float
    unit: Unit
    candidates: tuple[PlannedCandidate, ...]
    skipped: tuple[Skipped, ...]

    @property
    def looked_at(self) -> int:
        return len(self.candidates) + len(self.skipped)

    @property
    def reclaimable(self) -> float:
        return float(sum(p.candidate.reclaim.get(self.unit, 0.0) for p in self.candidates))

    def candidate(self, resource: str) -> PlannedCandidate | None:
        return next((p for p in self.candidates if p.candidate.resource == resource), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "mode": self.mode,
            "started_at": iso_time(self.started_at),
            "candidates": [
                {"resource": p.candidate.resource, "action": p.candidate.action,
                 "reason": p.candidate.reason, "evidence": dict(p.candidate.evidence),
                 "deadline": iso_time(p.deadline)}
                for p in self.candidates
            ],
            "skipped": [{"resource": s.resource, "reason": s.reason} for s in self.skipped],
            "reclaimable": {self.unit: _number(self.reclaimable)},
        }
