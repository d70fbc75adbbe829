"""A hygiene job over an in-memory inventory, for the engine's own tests (no servers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import HygieneJobConfig
from agent.controller.hygiene.audit import AuditTrail
from agent.controller.hygiene.engine import HygieneEngine
from agent.controller.hygiene.guards import KillSwitch
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.model import (
    Candidate,
    Observed,
    RestoreNotReady,
    Scan,
    ScanFailed,
    Skipped,
)
from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
from agent.controller.hygiene.store import HygieneStore
from agent.state import open_store
from tests.hygiene.conftest import RecordingNotifier


@dataclass
class Thing:
    """One resource: idle things break the policy; ``value`` is what acting takes away."""

    idle: bool = True
    value: int = 3
    uid: str = "uid-1"
    namespace: str = "team-a"
    action: str = "scale_to_zero"


@dataclass
class FakeJob:
    things: dict[str, Thing]
    name: str = "idle-gpus"
    unit: str = "gpus"
    scan_error: str | None = None
    act_error: str | None = None
    restore_record_error: str | None = None
    observe_error: str | None = None
    not_ready: float | None = None  # restore raises RestoreNotReady(retry_after=this)
    calls: list[tuple[str, str]] = field(default_factory=list)
    marked: dict[str, str] = field(default_factory=dict)
    on_act: Callable[[str], None] | None = None
    on_restore: Callable[[str], None] | None = None

    def _candidate(self, resource: str, thing: Thing) -> Candidate:
        return Candidate(resource=resource, action=thing.action, reason=f"{resource} is idle",
                         evidence={"uid": thing.uid, "value": thing.value},
                         reclaim={"gpus": 1.0}, owner=thing.namespace,
                         kube_object=("apps/v1", "Deployment", thing.namespace,
                                      resource.rsplit("/", maxsplit=1)[-1]))

    def scan(self) -> Scan:
        self.calls.append(("scan", ""))
        if self.scan_error:
            raise ScanFailed(self.scan_error)
        candidates = [self._candidate(r, t) for r, t in sorted(self.things.items()) if t.idle]
        skipped = [Skipped(r, "in use") for r, t in sorted(self.things.items()) if not t.idle]
        return Scan(candidates=candidates, skipped=skipped)

    def recheck(self, resource: str) -> Candidate | None:
        self.calls.append(("recheck", resource))
        if self.scan_error:
            raise ScanFailed(self.scan_error)
        thing = self.things.get(resource)
        return self._candidate(resource, thing) if thing and thing.idle else None

    def mark(self, candidate: Candidate, *, deadline: str, run_id: str) -> None:
        self.calls.append(("mark", candidate.resource))
        self.marked[candidate.resource] = deadline

    def unmark(self, resource: str) -> None:
        self.calls.append(("unmark", resource))
        self.marked.pop(resource, None)

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        self.calls.append(("restore_record", candidate.resource))
        if self.restore_record_error:
            raise RuntimeError(self.restore_record_error)
        return {"resource": candidate.resource, "value": self.things[candidate.resource].value}

    def act(self, candidate: Candidate) -> None:
        self.calls.append(("act", candidate.resource))
        if self.on_act is not None:  # e.g. the write happens, then the reply times out
            self.on_act(candidate.resource)
        if self.act_error:
            raise RuntimeError(self.act_error)
        self.things[candidate.resource].value = 0

    def observe(self, candidate: Candidate, record: dict[str, Any]) -> Observed:
        self.calls.append(("observe", candidate.resource))
        if self.observe_error:
            raise RuntimeError(self.observe_error)
        thing = self.things.get(candidate.resource)
        if thing is None or thing.uid != candidate.evidence.get("uid"):
            return Observed("vanished", "gone")
        if thing.value == 0:
            return Observed("done", "value is 0")
        return Observed("not_done", f"value is {thing.value}")

    def restore(self, record: dict[str, Any], *, restore_id: str) -> str:
        resource = str(record["resource"])
        self.calls.append(("restore", resource))
        if self.not_ready is not None:
            raise RestoreNotReady(f"{resource} is still terminating",
                                  retry_after=self.not_ready)
        if self.on_restore is not None:
            self.on_restore(resource)
        self.things[resource].value = int(record["value"])
        return f"{resource} back at {record['value']}"

    def count(self, call: str) -> int:
        return sum(1 for name, _ in self.calls if name == call)


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    job: FakeJob
    store: HygieneStore
    metrics: HygieneMetrics
    notifier: RecordingNotifier
    clock: Clock
    settings: HygieneJobConfig
    kill_switch: bool = False
    leader: bool = True

    def engine(self, *, die_at: str | None = None, **settings: Any) -> HygieneEngine:
        """``die_at``: the engine stops dead at that crash point (see :class:`Killed`)."""
        if settings:
            self.settings = self.settings.model_copy(update=settings)

        def checkpoint(name: str) -> None:
            if name == die_at:
                raise Killed(name)

        return HygieneEngine(
            self.job, self.settings, store=self.store, metrics=self.metrics,
            audit=AuditTrail(self.metrics, events=None), notifier=self.notifier,
            kill_switch=KillSwitch(configured=self.kill_switch, configmap=None,
                                   namespace="steward", api_client=None),
            config_key="hygiene.idle_gpus", clock=self.clock,
            still_leader=lambda: self.leader, checkpoint=checkpoint)


class Killed(BaseException):
    """Raised at a crash point: no ``except Exception`` in the engine catches it, so nothing
    after the point runs, as when the process is killed there (the subprocess tests in
    ``test_crash`` kill for real)."""


def make_rig(tmp_path: Path, things: dict[str, Thing], **settings: Any) -> Rig:
    base = {"mark_hours": 1.0, "max_actions": 10, "max_percent": 100.0, **settings}
    return Rig(job=FakeJob(dict(things)),
               store=HygieneStore(open_store(f"sqlite:///{tmp_path / 'state.db'}",
                                                tables=[HYGIENE_TABLES])),
               metrics=HygieneMetrics(), notifier=RecordingNotifier(), clock=Clock(),
               settings=HygieneJobConfig(**base))
