"""The hygiene engine: scan -> plan -> record -> (apply) mark -> deadline -> recheck -> sweep.

One engine drives one job (``model.HygieneJob``). Its order of work in an apply run:

1. kill switch (config or ConfigMap) -> result ``kill_switch``, nothing else happens;
2. scan (``ScanFailed`` -> result ``failed``, nothing acted on), exemptions by config;
3. the plan is recorded in the state store before anything acts;
4. actions an earlier run claimed and never recorded are reconciled by looking at the world
   (``job.observe``): what took effect is recorded exactly as if that run had finished
   (audit entry, metric, Event, owner notice); what did not is retried if the resource is
   still non-compliant, else released; what cannot be told stays claimed and fails the run;
5. marks past their deadline are rechecked; the caps count this run's new actions (new
   marks, due sweeps and retries): over a cap -> ``blast_radius_tripped``, nothing acted on;
6. due marks still non-compliant are swept: claim (restore record + intent, one
   transaction; refused without a record) -> act -> complete (audit entry + swept mark) ->
   announce (Event, metric, owner notice); compliant ones are lifted; new candidates are
   marked and their owners told; open marks no longer candidates are lifted.

Crash safety: every step is keyed per mark in the store (see ``store``), a mark's sweep
needs that mark's committed row, and no path lifts a mark whose action is claimed and
unresolved. A restore works from the restore record alone, is exclusive (a durable claim)
and says "restored" only once the job has read the resource back.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent.config import HygieneJobConfig
from agent.controller.hygiene.audit import AuditTrail
from agent.controller.hygiene.crashpoints import (
    ACTED,
    ACTION_CLAIMED,
    ACTION_RECORDED,
    ANNOUNCED,
    MARK_ANNOTATED,
    MARK_RECORDED,
    OWNER_NOTIFIED,
    PLAN_RECORDED,
    RESTORE_CLAIMED,
    RESTORED,
    RUN_FINISHED,
    RUN_STARTED,
    UNMARK_APPLIED,
    Checkpoint,
    no_checkpoint,
)
from agent.controller.hygiene.guards import (
    KillSwitch,
    KillSwitchUnknown,
    check_caps,
    exempt_by_config,
    exempt_by_owner,
    namespace_of,
)
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.model import (
    Candidate,
    HygieneJob,
    Observed,
    ResourceReplaced,
    RestoreNotReady,
    Scan,
    ScanFailed,
)
from agent.controller.hygiene.notify import NoticeKind, NotifyFailed, OwnerNotice, OwnerNotifier
from agent.controller.hygiene.plan import Mode, Plan, PlannedCandidate, iso_time
from agent.controller.hygiene.store import (
    ACT,
    PENDING,
    HygieneStore,
    Mark,
    RestoreRecord,
    owner_holds,
    step_key,
)

log = logging.getLogger(__name__)

RunResult = Literal["succeeded", "failed", "blast_radius_tripped", "kill_switch"]
NOTIFY = "notify"
# A restore claim older than this belongs to a restore that died; another may take it over.
RESTORE_CLAIM_SECONDS = 600.0
_CHANGED = ("the resource changed since it was marked (another object, or another action): "
            "the next run marks it afresh")
_REPLACED = ("the resource was replaced since it was marked (another object under its name): "
             "the next run judges it afresh")


@dataclass(frozen=True)
class ActionRecord:
    resource: str
    action: str
    status: Literal["done", "failed", "refused"]
    detail: str = ""


@dataclass
class RunOutcome:
    run_id: str
    job: str
    mode: Mode
    result: RunResult
    reason: str | None
    plan: Plan | None
    actions: list[ActionRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == "succeeded"


class NothingToRestore(Exception):
    """No applied, unrestored action matches the resource (a user error: exit code 2)."""


class RestoreBusy(Exception):
    """Another restore of the same action holds its claim: this one changed nothing (exit
    code 2)."""


class RestoreFailed(Exception):
    """The job could not undo the action (API error, the world not ready): exit code 1.
    The restore record is kept."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RestoreOutcome:
    resource: str
    record: dict[str, object]
    restored: bool  # False: the action never took effect; its claim was cancelled instead
    message: str  # what is back, as the job read it


@dataclass
class _Run:
    run_id: str
    mode: Mode
    started_at: float
    plan: Plan | None = None
    actions: list[ActionRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def apply(self) -> bool:
        return self.mode == "apply"


class LostLeadership(Exception):
    pass


class HygieneEngine:
    def __init__(self, job: HygieneJob, settings: HygieneJobConfig, *, store: HygieneStore,
                 metrics: HygieneMetrics, audit: AuditTrail, notifier: OwnerNotifier,
                 kill_switch: KillSwitch, config_key: str,
                 clock: Callable[[], float] = time.time,
                 still_leader: Callable[[], bool] = lambda: True,
                 checkpoint: Checkpoint = no_checkpoint) -> None:
        self._job = job
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._audit = audit
        self._notifier = notifier
        self._kill_switch = kill_switch
        self._key = config_key  # hygiene.idle_gpus: named in every reason a setting causes
        self._clock = clock
        self._still_leader = still_leader
        self._checkpoint = checkpoint

    @property
    def job(self) -> HygieneJob:
        return self._job

    # -- a run ---------------------------------------------------------------------------

    def run(self, *, apply: bool) -> RunOutcome:
        run = _Run(run_id=uuid.uuid4().hex, mode="apply" if apply else "dry_run",
                   started_at=self._clock())
        try:
            self._store.start_run(run.run_id, self._job.name, run.mode, run.started_at)
        except Exception as exc:
            return self._finish(run, "failed", f"state store unavailable, acted on nothing: "
                                               f"{type(exc).__name__}: {exc}", recorded=False)
        self._checkpoint(RUN_STARTED)
        try:
            return self._run(run)
        except LostLeadership:
            return self._finish(run, "failed", "lost leadership during the run; stopped")
        except Exception as exc:  # a job bug or the store failing mid-run
            log.exception("hygiene run crashed", extra={"hygiene_job": self._job.name,
                                                        "run_id": run.run_id})
            return self._finish(run, "failed", f"{type(exc).__name__}: {exc}")

    def _run(self, run: _Run) -> RunOutcome:
        if run.apply:
            try:
                engaged = self._kill_switch.engaged()
            except KillSwitchUnknown as exc:
                return self._finish(run, "failed", f"{exc}; acted on nothing")
            if engaged:
                return self._finish(run, "kill_switch", f"{engaged}; acted on nothing")
        try:
            scan = self._job.scan()
        except ScanFailed as exc:
            return self._finish(run, "failed", f"scan failed, acted on nothing: {exc}")
        scan = exempt_by_config(scan, self._settings, key=self._key)
        scan = exempt_by_owner(scan, owner_holds(self._store.engine, self._job.name,
                                                 run.started_at))
        marks = {m.resource: m for m in self._store.active_marks(self._job.name)}
        plan = self._plan(run, scan, marks)
        run.plan = plan
        self._store.record_plan(run.run_id, plan.to_json())
        self._metrics.plan_observed(self._job.name, candidates=len(plan.candidates),
                                    unit=self._job.unit, reclaimable=plan.reclaimable)
        log.info("hygiene plan", extra={
            "hygiene_job": self._job.name, "run_id": run.run_id, "mode": run.mode,
            "candidates": len(plan.candidates), "skipped": len(plan.skipped),
            "reclaimable": plan.reclaimable, "unit": self._job.unit})
        self._checkpoint(PLAN_RECORDED)
        if not run.apply:
            for planned in plan.candidates:
                self._metrics.action(self._job.name, planned.candidate.action, "dry_run")
            return self._finish(run, "succeeded", None)
        return self._apply(run, plan, marks)

    def _plan(self, run: _Run, scan: Scan, marks: dict[str, Mark]) -> Plan:
        new_deadline = run.started_at + self._settings.mark_hours * 3600.0
        planned = tuple(
            PlannedCandidate(c, marks[c.resource].deadline if c.resource in marks
                             else new_deadline, marked=c.resource in marks)
            for c in sorted(scan.candidates, key=lambda c: c.resource))
        return Plan(job=self._job.name, mode=run.mode, started_at=run.started_at,
                    unit=self._job.unit, candidates=planned,
                    skipped=tuple(sorted(scan.skipped, key=lambda s: s.resource)))

    def _apply(self, run: _Run, plan: Plan, marks: dict[str, Mark]) -> RunOutcome:
        now = self._clock()
        self._announce_pending(run)
        pending = self._store.pending_claims(self._job.name)
        claimed = [m for m in marks.values() if m.mark_id in pending]
        observed = {m.mark_id: self._observe(m) for m in claimed}
        # Marks of this run wait for the next one; a mark whose owner was never told waits
        # for the notification (its deadline starts then).
        due = [m for m in marks.values()
               if m.deadline <= now and m.run_id != run.run_id and m.notified_at is not None
               and m.mark_id not in pending]
        recheck = due + [m for m in claimed if observed[m.mark_id].state == "not_done"]
        fresh: dict[str, Candidate | None] = {}
        for mark in recheck:
            try:
                fresh[mark.mark_id] = self._job.recheck(mark.resource)
            except ScanFailed as exc:
                return self._finish(run, "failed", f"recheck of {mark.resource} failed, "
                                                   f"acted on nothing: {exc}")
        sweeps = [m for m in due if self._still_same(m, fresh[m.mark_id])]
        retries = [m for m in claimed if observed[m.mark_id].state == "not_done"
                   and self._still_same(m, fresh[m.mark_id])]
        new = [p.candidate for p in plan.candidates if not p.marked]
        # What already happened is recorded whatever the caps say: recording is not acting.
        for mark in claimed:
            self._reconcile(run, mark, observed[mark.mark_id], retry=mark in retries)
        verdict = check_caps(len(new) + len(sweeps) + len(retries), plan.looked_at,
                             settings=self._settings, key=self._key)
        if verdict.tripped:
            return self._finish(run, "blast_radius_tripped", verdict.reason)

        for mark in retries:
            current = fresh[mark.mark_id]
            assert current is not None
            self._act_claimed(run, mark, current, resumed=True)
        for mark in due:
            current = fresh[mark.mark_id]
            if mark in sweeps and current is not None:
                self._sweep(run, mark, current)
            elif current is None:
                self._unmark(run, mark, "compliant again at the deadline")
            else:
                self._unmark(run, mark, _CHANGED)
        for candidate in new:
            self._mark(run, candidate)
        handled = {m.mark_id for m in due} | {m.mark_id for m in claimed}
        for mark in marks.values():
            if mark.mark_id in handled:
                continue
            if plan.candidate(mark.resource) is None:
                self._unmark(run, mark, "no longer a candidate")
            else:
                self._complete_mark(run, mark)
        if run.failures:
            return self._finish(run, "failed", "; ".join(run.failures[:5]) + (
                f" (and {len(run.failures) - 5} more)" if len(run.failures) > 5 else ""))
        return self._finish(run, "succeeded", None)

    # -- reconciling what a dead run left claimed ------------------------------------------

    def _observe(self, mark: Mark) -> Observed:
        """Did the claimed action of ``mark`` take effect? A notice cannot be observed: it
        is sent again (at least once is what a notice can promise)."""
        if mark.action == NOTIFY:
            return Observed("not_done", "a notice leaves nothing to look at; sent again")
        record = self._store.restore_record(mark.mark_id)
        if record is None:  # claim and record are one transaction: not reached
            return Observed("unknown", "the claim has no restore record")
        try:
            return self._job.observe(mark.candidate(), record.record)
        except Exception as exc:  # the source is down: cannot tell now
            return Observed("unknown", f"{type(exc).__name__}: {exc}")

    def _reconcile(self, run: _Run, mark: Mark, seen: Observed, *, retry: bool) -> None:
        """Resolve one claimed action from what ``observe`` saw (retries are done later,
        after the caps)."""
        self._guard_leader()
        resource = mark.resource
        log.info("reconciling a claimed action", extra={
            "hygiene_job": mark.job, "resource": resource, "action": mark.action,
            "observed": seen.state, "detail": seen.detail})
        if seen.state == "partial":
            try:
                self._job.act(mark.candidate())  # idempotent: finishes what was begun
            except Exception as exc:
                self._fail(run, resource, mark.action, f"{mark.action} took effect in part "
                                                       f"({seen.detail}); finishing it failed: "
                                                       f"{exc}; left claimed")
                return
            self._checkpoint(ACTED)
        if seen.state in ("done", "partial"):
            self._complete(run, mark, reason=mark.reason,
                           reconciled=f"found done after a run died: {seen.detail}")
        elif seen.state == "unknown":
            self._fail(run, resource, mark.action, f"cannot tell whether {mark.action} took "
                                                   f"effect ({seen.detail}); left claimed, "
                                                   "nothing acted on")
        elif seen.state == "vanished":
            why = f"{resource} is gone: whether {mark.action} took effect cannot be told, " \
                  f"and there is nothing to restore ({seen.detail})"
            if self._store.resolve_claim(mark, status="vanished", why=why, at=self._clock(),
                                         close_as="vanished"):
                self._record(run, mark, "vanished", key=step_key(
                    mark.job, resource, mark.mark_id, "vanished"), message=why)
        elif not retry:
            self._release(run, mark, f"{mark.action} did not take effect ({seen.detail}) and "
                                     "the resource no longer needs it",
                          unmark_why="compliant again, its action never took effect")

    def _release(self, run: _Run, mark: Mark, why: str, *, unmark_why: str) -> None:
        """The claimed action did not take effect and will not: resolve the claim as
        released (nothing to restore), then lift the mark."""
        if self._store.resolve_claim(mark, status="released", why=why, at=self._clock()):
            self._record(run, mark, "release", key=step_key(
                mark.job, mark.resource, mark.mark_id, "release"), message=why)
            self._unmark(run, mark, unmark_why)

    def _announce_pending(self, run: _Run) -> None:
        """Announce the actions a dead run recorded as done but did not announce."""
        for mark in self._store.unannounced(self._job.name):
            self._announce(run, mark, reason=mark.reason)

    @staticmethod
    def _still_same(mark: Mark, current: Candidate | None) -> bool:
        """The recheck found the resource non-compliant, with the action its owner was told
        about, on the same object (``evidence["uid"]``: not deleted and recreated)."""
        if current is None or current.action != mark.action:
            return False
        marked_uid = mark.evidence.get("uid")
        return marked_uid is None or marked_uid == current.evidence.get("uid")

    def _guard_leader(self) -> None:
        if not self._still_leader():
            raise LostLeadership

    # -- steps ---------------------------------------------------------------------------

    def _mark(self, run: _Run, candidate: Candidate) -> None:
        self._guard_leader()
        now = self._clock()
        mark = Mark(mark_id=uuid.uuid4().hex, job=self._job.name, resource=candidate.resource,
                    action=candidate.action, reason=candidate.reason,
                    evidence=dict(candidate.evidence), reclaim=dict(candidate.reclaim),
                    owner=candidate.owner, kube_object=candidate.kube_object,
                    run_id=run.run_id, marked_at=now,
                    deadline=now + self._settings.mark_hours * 3600.0)
        if not self._store.create_mark(mark, mode=run.mode):
            log.info("already marked by another run", extra={
                "hygiene_job": self._job.name, "resource": candidate.resource})
            return
        self._checkpoint(MARK_RECORDED)
        self._record(run, mark, "mark", key=step_key(mark.job, mark.resource, mark.mark_id,
                                                       "mark"),
                     message=f"marked: {candidate.action} after {iso_time(mark.deadline)} "
                             f"unless compliant by then. {candidate.reason}")
        self._complete_mark(run, mark)

    def _complete_mark(self, run: _Run, mark: Mark) -> None:
        """The mark's steps after its row: on the resource, then the owner told. Each is
        retried by later runs until done."""
        if mark.annotated_at is None:
            self._guard_leader()
            try:
                self._job.mark(mark.candidate(), deadline=iso_time(mark.deadline),
                               run_id=run.run_id)
            except Exception as exc:
                self._fail(run, mark.resource, "mark", f"cannot mark it: {exc}")
                return
            self._store.set_annotated(mark.mark_id, self._clock())
            self._checkpoint(MARK_ANNOTATED)
        if mark.notified_at is None:
            # Told late (Slack was down): the owner gets the full notice period from now.
            deadline = mark.deadline if mark.run_id == run.run_id else max(
                mark.deadline, self._clock() + self._settings.mark_hours * 3600.0)
            try:
                self._tell(replace(mark, deadline=deadline), "marked")
            except NotifyFailed as exc:
                self._fail(run, mark.resource, NOTIFY,
                           f"owner not told, deadline not started: {exc}")
                return
            self._checkpoint(OWNER_NOTIFIED)
            at = self._clock()
            self._store.set_notified(mark.mark_id, at, deadline=deadline)
            key = step_key(mark.job, mark.resource, mark.mark_id, "notify-mark")
            if self._store.record_step(mark, step="notify-mark", action=NOTIFY,
                                       run_id=run.run_id, mode=run.mode, at=at):
                self._record(run, mark, NOTIFY, key=key,
                             message=f"owner told: {mark.action} after {iso_time(deadline)}")

    def _sweep(self, run: _Run, mark: Mark, current: Candidate) -> None:
        self._guard_leader()
        record: dict[str, Any] | None = None
        if mark.action != NOTIFY:
            try:
                record = dict(self._job.restore_record(current))
            except ResourceReplaced as exc:
                self._unmark(run, mark, f"{_REPLACED}: {exc}")
                return
            except Exception as exc:
                self._refuse(run, mark, f"no restore record could be made ({exc}); "
                                        "not acted on")
                return
        try:
            claim = self._store.claim_action(mark, record=record, action=mark.action,
                                             run_id=run.run_id, mode=run.mode,
                                             at=self._clock())
        except Exception as exc:
            self._refuse(run, mark, f"the restore record and intent could not be written "
                                    f"({type(exc).__name__}: {exc}); not acted on")
            return
        if claim != "claimed":
            # Another run took or resolved it since this one read the claims.
            log.info("action already claimed", extra={
                "hygiene_job": mark.job, "resource": mark.resource, "claim": claim})
            return
        self._checkpoint(ACTION_CLAIMED)
        self._act_claimed(run, mark, current, resumed=False)

    def _act_claimed(self, run: _Run, mark: Mark, current: Candidate, *,
                     resumed: bool) -> None:
        """Act on a claimed mark, then complete it."""
        self._guard_leader()
        if resumed and not self._store.resume_claim(mark, run_id=run.run_id):
            return  # resolved by another run meanwhile
        try:
            if mark.action == NOTIFY:
                self._tell(mark, "reminder")
            else:
                self._job.act(current)
        except ResourceReplaced as exc:
            # A definite "not done" (a uid precondition refused it): not a failure to retry,
            # and nothing a later look at the world could take for done.
            self._release(run, mark, f"{mark.action} not done: {exc}", unmark_why=_REPLACED)
            return
        except Exception as exc:
            self._store.fail_action(mark, detail=str(exc), at=self._clock())
            self._fail(run, mark.resource, mark.action, f"{mark.action} failed: {exc}")
            return
        self._checkpoint(ACTED)
        self._complete(run, mark, reason=current.reason)

    def _complete(self, run: _Run, mark: Mark, *, reason: str,
                  reconciled: str | None = None) -> None:
        """The action took effect: record it (audit entry, swept mark), then announce it."""
        record = self._store.restore_record(mark.mark_id)
        detail: dict[str, Any] = {"restore": record.record} if record is not None else {}
        if reconciled:
            detail["reconciled"] = reconciled
        self._store.complete_action(mark, detail=detail, run_id=run.run_id, mode=run.mode,
                                    at=self._clock())
        self._checkpoint(ACTION_RECORDED)
        self._announce(run, mark, reason=reason)

    def _announce(self, run: _Run, mark: Mark, *, reason: str) -> None:
        """Log line, metric, Event, owner notice; then recorded as announced. A crash before
        that record announces again (the Event's name is the step's: not posted twice)."""
        self._record(run, mark, mark.action, key=step_key(mark.job, mark.resource,
                                                          mark.mark_id, ACT),
                     message=f"{mark.action} after the deadline {iso_time(mark.deadline)}: "
                             f"{reason}")
        if mark.action != NOTIFY:
            try:
                self._tell(mark, "acted")
            except NotifyFailed as exc:  # done and audited; the owner sees the Event
                log.warning("owner not told of the action", extra={
                    "hygiene_job": mark.job, "resource": mark.resource, "detail": str(exc)})
        self._checkpoint(ANNOUNCED)
        self._store.set_announced(mark, at=self._clock())

    def _unmark(self, run: _Run, mark: Mark, why: str) -> None:
        self._guard_leader()
        if self._store.claim_status(mark) in PENDING:
            # A claimed action may have taken effect: only reconciling may resolve it.
            self._fail(run, mark.resource, "unmark", "not lifted: its action is claimed and "
                                                     "unresolved")
            return
        try:
            self._job.unmark(mark.resource)
        except Exception as exc:
            self._fail(run, mark.resource, "unmark", f"cannot lift the mark: {exc}")
            return
        self._checkpoint(UNMARK_APPLIED)
        if self._store.close_mark(mark, state="lifted", why=why, action="unmark",
                                  run_id=run.run_id, mode=run.mode, at=self._clock()):
            self._record(run, mark, "unmark",
                         key=step_key(mark.job, mark.resource, mark.mark_id, "unmark"),
                         message=f"mark lifted: {why}")

    # -- reporting -----------------------------------------------------------------------

    def _tell(self, mark: Mark, kind: NoticeKind) -> None:
        labels = {"hygiene_job": mark.job}
        candidate = mark.candidate()
        namespace = namespace_of(candidate)
        if namespace:
            labels["namespace"] = namespace
        if mark.owner:
            labels["owner"] = mark.owner
        self._notifier.notify(OwnerNotice(
            kind=kind, job=mark.job, resource=mark.resource, action=mark.action,
            reason=mark.reason, deadline=mark.deadline, owner=mark.owner,
            evidence=mark.evidence, labels=labels, mark_id=mark.mark_id))

    def _record(self, run: _Run, mark: Mark, action: str, *, key: str, message: str) -> None:
        run.actions.append(ActionRecord(mark.resource, action, "done"))
        self._audit.action(job=mark.job, action=action, mode=run.mode, resource=mark.resource,
                           run_id=run.run_id, key=key, message=message,
                           kube_object=mark.kube_object)

    def _fail(self, run: _Run, resource: str, action: str, detail: str) -> None:
        run.failures.append(f"{resource}: {detail}")
        run.actions.append(ActionRecord(resource, action, "failed", detail))
        self._audit.action(job=self._job.name, action=action, mode=run.mode, resource=resource,
                           run_id=run.run_id, key=None, message=detail, status="failed")

    def _refuse(self, run: _Run, mark: Mark, detail: str) -> None:
        run.failures.append(f"{mark.resource}: {detail}")
        run.actions.append(ActionRecord(mark.resource, mark.action, "refused", detail))
        self._audit.action(job=mark.job, action=mark.action, mode=run.mode,
                           resource=mark.resource, run_id=run.run_id, key=None,
                           message=detail, status="refused")

    def _finish(self, run: _Run, result: RunResult, reason: str | None, *,
                recorded: bool = True) -> RunOutcome:
        finished = self._clock()
        if recorded:
            try:
                self._store.finish_run(run.run_id, result=result, reason=reason,
                                       finished_at=finished)
            except Exception as exc:
                log.error("cannot record the end of the run", extra={
                    "hygiene_job": self._job.name, "run_id": run.run_id, "detail": str(exc)})
        self._metrics.run_finished(self._job.name, result, at=finished)
        level = logging.INFO if result == "succeeded" else logging.WARNING
        log.log(level, "hygiene run finished", extra={
            "hygiene_job": self._job.name, "run_id": run.run_id, "mode": run.mode,
            "result": result, "reason": reason,
            "actions": sum(1 for a in run.actions if a.status == "done"),
            "seconds": round(finished - run.started_at, 3)})
        self._checkpoint(RUN_FINISHED)
        return RunOutcome(run_id=run.run_id, job=self._job.name, mode=run.mode, result=result,
                          reason=reason, plan=run.plan, actions=list(run.actions))

    # -- restore -------------------------------------------------------------------------

    def restore(self, resource: str) -> RestoreOutcome:
        """Undo the newest applied action on ``resource`` (its full name, or ``ns/name``
        for a Kubernetes object) from its restore record, whatever became of its mark."""
        record = self._restorable(resource)
        claim_id = uuid.uuid4().hex
        since = self._store.claim_restore(record, claim_id=claim_id, at=self._clock(),
                                          ttl=RESTORE_CLAIM_SECONDS)
        if since is not None:
            raise RestoreBusy(
                f"another restore of {record.resource} is in progress (since "
                f"{iso_time(since)}); nothing changed. If that restore died, its claim "
                f"lapses at {iso_time(since + RESTORE_CLAIM_SECONDS)}")
        self._checkpoint(RESTORE_CLAIMED)
        try:
            return self._restore_claimed(record, claim_id)
        finally:  # after set_restored the claim is gone already: then this changes nothing
            self._store.release_restore(record.mark_id, claim_id=claim_id)

    def _restore_claimed(self, record: RestoreRecord, claim_id: str) -> RestoreOutcome:
        if record.claim_status in PENDING:
            cancelled = self._resolve_before_restore(record)
            if cancelled is not None:
                return cancelled
        try:
            message = self._job.restore(record.record, restore_id=record.mark_id)
        except RestoreNotReady as exc:
            raise RestoreFailed(f"{exc}; retry in {math.ceil(exc.retry_after)}s (the restore "
                                "record is kept)", retry_after=exc.retry_after) from exc
        except Exception as exc:
            raise RestoreFailed(f"restoring {record.resource} failed: {exc} (the restore "
                                "record is kept)") from exc
        self._checkpoint(RESTORED)
        at = self._clock()
        if self._store.set_restored(record, claim_id=claim_id, run_id=None, at=at,
                                    detail={"back": message}):
            self._audit.action(job=self._job.name, action="restore", mode="apply",
                               resource=record.resource, run_id=None,
                               key=step_key(record.job, record.resource, record.mark_id,
                                            "restore"),
                               message=f"restored from the record of "
                                       f"{iso_time(record.created_at)}: {message}",
                               kube_object=_kube_object(record.record))
        return RestoreOutcome(record.resource, dict(record.record), True, message)

    def _restorable(self, resource: str) -> RestoreRecord:
        records = self._store.restore_candidates(self._job.name)
        matching = [r for r in records if r.resource == resource]
        if not matching:
            matching = [r for r in records if _short_name(r.resource) == resource]
        if not matching:
            known = sorted({r.resource for r in records})
            hint = f"; restorable: {', '.join(known[:10])}" if known else ""
            raise NothingToRestore(f"no applied {self._job.name} action on {resource} to "
                                   f"restore{hint}")
        if len({r.resource for r in matching}) > 1:
            names = ", ".join(sorted({r.resource for r in matching}))
            raise NothingToRestore(f"{resource} is ambiguous: {names}; name one in full")
        return matching[0]

    def _resolve_before_restore(self, record: RestoreRecord) -> RestoreOutcome | None:
        """The action was claimed and never resolved (its run died): look at the world.
        Done: recorded as done first, then restored. Not done: cancelled (its mark lifted,
        so no run acts on it), nothing to restore. Otherwise: refused."""
        mark = self._store.mark(record.mark_id)
        if mark is None:
            raise RestoreFailed(f"the mark of {record.resource} is missing from the state "
                                "store")
        seen = self._observe(mark)
        run = _Run(run_id=uuid.uuid4().hex, mode="apply", started_at=self._clock())
        if seen.state in ("done", "partial"):
            self._complete(run, mark, reason=mark.reason,
                           reconciled=f"found done by a restore: {seen.detail}")
            return None
        if seen.state == "not_done":
            why = (f"{mark.action} never took effect ({seen.detail}); cancelled by "
                   "steward hygiene restore")
            if self._store.resolve_claim(mark, status="released", why=why, at=self._clock(),
                                         close_as="lifted"):
                self._record(run, mark, "unmark", key=step_key(
                    mark.job, mark.resource, mark.mark_id, "unmark"), message=why)
            return RestoreOutcome(record.resource, dict(record.record), False,
                                  f"nothing to undo: {why}")
        raise RestoreFailed(f"cannot tell whether {mark.action} on {record.resource} took "
                            f"effect ({seen.detail}); not restored, the record is kept")


def _short_name(resource: str) -> str:
    """``ns/Kind/name`` -> ``ns/name``: what a user types for a Kubernetes object."""
    parts = resource.split("/")
    return f"{parts[0]}/{parts[2]}" if len(parts) == 3 else resource


def _kube_object(record: dict[str, object]) -> tuple[str, str, str, str] | None:
    keys = ("api_version", "kind", "namespace", "name")
    if all(isinstance(record.get(k), str) for k in keys):
        return (str(record["api_version"]), str(record["kind"]), str(record["namespace"]),
                str(record["name"]))
    return None

