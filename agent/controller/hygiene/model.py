"""The contract between the hygiene engine and each hygiene job.

A job knows its resources (idle GPU pods, stale images, orphaned buckets): it scans them,
explains every decision, and performs reversible actions. The engine owns everything
generic and safety-critical: plans, caps, exemptions by config, the kill switch, two-phase
mark and sweep with deadlines, restore records written before any action, idempotency keys,
audit and metrics. Data flows one way: scan -> plan -> mark -> (deadline) -> recheck ->
sweep -> audit. A job never decides *whether* to act; the engine never decides *what* a
resource's evidence means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Unit = Literal["gpus", "bytes"]


@dataclass(frozen=True)
class Candidate:
    """A resource that breaks the job's policy, with the evidence and the action proposed.

    ``resource`` names it plainly: ``ns/pod`` or ``ns/Kind/name`` for Kubernetes objects,
    ``registry/repository@sha256:...`` for images, ``s3://bucket`` for buckets.
    """

    resource: str
    action: str  # notify | scale_to_zero | delete | expire_objects ...
    reason: str  # one line a human reads in the plan and in Slack
    evidence: Mapping[str, Any]
    reclaim: Mapping[Unit, float] = field(default_factory=dict)
    owner: str | None = None  # who is told when it is marked (team, namespace, owner tag)
    # A Kubernetes object the engine records an Event on: (api_version, kind, ns, name).
    kube_object: tuple[str, str, str, str] | None = None


@dataclass(frozen=True)
class Skipped:
    """A resource the job looked at and left alone, and the guard that protected it."""

    resource: str
    reason: str


@dataclass(frozen=True)
class Scan:
    candidates: list[Candidate]
    skipped: list[Skipped]


class ScanFailed(Exception):
    """The job cannot decide safely (evidence source down): the run acts on nothing."""


# What ``observe`` saw of an action that was claimed and never recorded as done:
# done: it took effect; partial: it took effect in part and ``act`` (idempotent) finishes it;
# not_done: the world is as before; vanished: the resource is gone, so whether it took
# effect cannot be told and nothing can be restored; unknown: the job cannot tell now.
ObservedState = Literal["done", "partial", "not_done", "vanished", "unknown"]


@dataclass(frozen=True)
class Observed:
    state: ObservedState
    detail: str  # what was seen, for the audit log and the run's reason


class ResourceReplaced(Exception):
    """``act`` did nothing because the resource is no longer the object that was judged: it
    was deleted and created again under its name (a uid precondition failed). A definite
    "not done": the engine releases the claim and lifts the mark; acting again would hit
    the other object."""


class RestoreNotReady(Exception):
    """The world is not ready for the restore yet (a pod still terminating): nothing was
    changed, the restore record is kept, and the same restore can be tried again later."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HygieneJob(Protocol):
    """One hygiene job. Every method but ``scan`` and ``recheck`` changes the world, and the
    engine calls them only in apply mode, after its own guards."""

    name: str  # idle-gpus | stale-images | orphaned-buckets
    unit: Unit

    def scan(self) -> Scan:
        """Find candidates and skips. Read-only. Raises ScanFailed to act on nothing."""
        ...

    def recheck(self, resource: str) -> Candidate | None:
        """At the deadline: the candidate if ``resource`` still breaks the policy, else None.
        Read-only; raises ScanFailed when it cannot tell (then nothing is swept)."""
        ...

    def mark(self, candidate: Candidate, *, deadline: str, run_id: str) -> None:
        """Record the mark where the resource lives, if it can hold one (a bucket tag);
        Kubernetes objects are not written: the engine announces the mark with an Event."""
        ...

    def unmark(self, resource: str) -> None:
        """Lift a mark: the resource became compliant again or an operator restored it."""
        ...

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        """Everything needed to undo ``act`` (replica count, tags, policies). Read-only;
        the engine persists it before calling ``act`` and refuses to act without it."""
        ...

    def act(self, candidate: Candidate) -> None:
        """Perform ``candidate.action``. Must be idempotent: a crash after the action and
        before the audit entry means it may be called again for the same candidate."""
        ...

    def observe(self, candidate: Candidate, record: dict[str, Any]) -> Observed:
        """Whether ``act`` took effect, looking at the world only (read-only): the engine
        asks after a run died between claiming an action and recording it."""
        ...

    def restore(self, record: dict[str, Any], *, restore_id: str) -> str:
        """Undo ``act`` from its restore record and return what is back, in one line, only
        once it is back (read back, not assumed). ``restore_id`` is the same for every try
        of one restore, so a try that died after changing the world is recognised by the
        next. Raises RestoreNotReady when the world is not ready yet, any other exception
        when the restore failed."""
        ...
