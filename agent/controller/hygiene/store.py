"""The hygiene tables in the state store: runs and their plans, marks, restore records, and
the audit log whose unique idempotency keys make every step happen at most once.

The tables are declared on :data:`TABLES`, which whoever opens the store for hygiene hands
to ``open_store``. Other components read hygiene's history only through the views at the
end (:func:`freed_actions`, :func:`latest_plans`), never through the tables.

A key names a step of one mark (``job|resource|mark_id|step``), never a run, so a run that
was killed and started again finds the steps its predecessor already took. Each step that
changes the world is committed together with the state it leads to: an action's claim
(restore record + intent) before it is taken, its completion (audit entry done, mark swept,
announcement due) after; a restore's claim before it, its record after.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import (
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from agent.controller.hygiene.model import Candidate, Unit

# The hygiene tables, handed to open_store by the controller and the hygiene commands.
TABLES = MetaData()
_RESOURCE = 1024  # an image reference with registry, repository and digest fits

runs = Table(
    "hygiene_runs", TABLES,
    Column("run_id", String(32), primary_key=True),
    Column("job", String(64), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("result", String(32), nullable=True),  # null while running (or killed)
    Column("reason", Text, nullable=True),
    Column("plan", Text, nullable=True),  # Plan.to_json(), recorded before anything acts
    Index("ix_hygiene_runs_job", "job", "started_at"),
)

marks = Table(
    "hygiene_marks", TABLES,
    Column("mark_id", String(32), primary_key=True),
    Column("job", String(64), nullable=False),
    Column("resource", String(_RESOURCE), nullable=False),
    Column("state", String(16), nullable=False),  # active, lifted, swept, failed
    Column("action", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("reclaim", Text, nullable=False),
    Column("owner", Text, nullable=True),
    Column("kube_object", Text, nullable=True),
    Column("run_id", String(32), nullable=False),  # the run that marked it
    Column("marked_at", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("annotated_at", Float, nullable=True),  # job.mark() done
    Column("notified_at", Float, nullable=True),  # the owner was told: the deadline runs
    Column("closed_at", Float, nullable=True),
    Column("closed_why", Text, nullable=True),
    # One open mark per resource: two runs racing to mark it cannot both win.
    Index("ux_hygiene_marks_active", "job", "resource", unique=True,
          sqlite_where=text("state = 'active'"), postgresql_where=text("state = 'active'")),
)

restore_records = Table(
    "hygiene_restore_records", TABLES,
    Column("mark_id", String(32), ForeignKey("hygiene_marks.mark_id"), primary_key=True),
    Column("job", String(64), nullable=False),
    Column("resource", String(_RESOURCE), nullable=False),
    Column("record", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("restored_at", Float, nullable=True),
    Index("ix_hygiene_restore_resource", "job", "resource"),
)

# One restore of an action at a time: a row here while a ``steward hygiene restore`` works on
# it. A row older than the restore's time limit belongs to a restore that died; it is taken
# over.
restore_claims = Table(
    "hygiene_restore_claims", TABLES,
    Column("mark_id", String(32), ForeignKey("hygiene_restore_records.mark_id"),
           primary_key=True),
    Column("claim_id", String(32), nullable=False),
    Column("claimed_at", Float, nullable=False),
)

audit = Table(
    "hygiene_audit", TABLES,
    Column("id", Integer, primary_key=True),
    Column("key", String(_RESOURCE + 128), nullable=False, unique=True),
    Column("job", String(64), nullable=False),
    Column("run_id", String(32), nullable=True),
    Column("mark_id", String(32), nullable=True),
    Column("resource", String(_RESOURCE), nullable=False),
    Column("action", String(32), nullable=False),  # mark, notify, unmark, scale_to_zero, ...
    Column("mode", String(16), nullable=False),
    # started, done, failed; for a claimed action also released (it did not take effect
    # and never will) and vanished (the resource went: whether it did cannot be told)
    Column("status", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_hygiene_audit_job", "job", "resource"),
    sqlite_autoincrement=True,
)

# An owner's answer to a mark, from the buttons of the owner notice in Slack (the notifier
# writes it through apply_owner_choice): "keep" until a time, or "exempt" for good. A scan
# skips the resource while it holds (engine: exempt_by_owner).
owner_choices = Table(
    "hygiene_owner_choices", TABLES,
    Column("job", String(64), primary_key=True),
    Column("resource", String(_RESOURCE), primary_key=True),
    Column("choice", String(16), nullable=False),  # keep, exempt
    Column("until", Float, nullable=True),  # None: for good
    Column("by", String(255), nullable=False),
    Column("at", Float, nullable=False),
)

ACTIVE: Final = "active"
ACT: Final = "act"  # the step key of a mark's action
ANNOUNCE: Final = "announce"  # ... and of announcing it (Event, metric, owner notice)
PENDING: Final = ("started", "failed")  # a claimed action not known to be done or not
# claimed: this call took the claim; pending: an earlier claim is unresolved; done: it
# happened; closed: it was released or vanished (nothing to do).
Claim = Literal["claimed", "pending", "done", "closed"]


def step_key(job: str, resource: str, mark_id: str, step: str) -> str:
    """The idempotency key of one step of one mark; independent of the run."""
    return f"{job}|{resource}|{mark_id}|{step}"


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Mark:
    mark_id: str
    job: str
    resource: str
    action: str
    reason: str
    evidence: Mapping[str, Any]
    reclaim: Mapping[Unit, float]
    owner: str | None
    kube_object: tuple[str, str, str, str] | None
    run_id: str
    marked_at: float
    deadline: float
    annotated_at: float | None = None
    notified_at: float | None = None

    def candidate(self) -> Candidate:
        return Candidate(resource=self.resource, action=self.action, reason=self.reason,
                         evidence=dict(self.evidence), reclaim=dict(self.reclaim),
                         owner=self.owner, kube_object=self.kube_object)

    @classmethod
    def _from_row(cls, row: Any) -> Mark:
        kube = json.loads(row.kube_object) if row.kube_object else None
        return cls(mark_id=row.mark_id, job=row.job, resource=row.resource, action=row.action,
                   reason=row.reason, evidence=json.loads(row.evidence),
                   reclaim=json.loads(row.reclaim), owner=row.owner,
                   kube_object=tuple(kube) if kube else None,
                   run_id=row.run_id, marked_at=row.marked_at, deadline=row.deadline,
                   annotated_at=row.annotated_at, notified_at=row.notified_at)


@dataclass(frozen=True)
class RestoreRecord:
    mark_id: str
    job: str
    resource: str
    record: dict[str, Any]
    created_at: float
    restored_at: float | None
    claim_status: str | None = None  # of the action it undoes: done, started, failed, ...


class HygieneStore:
    """Typed access to the hygiene tables. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- runs --------------------------------------------------------------------------

    def start_run(self, run_id: str, job: str, mode: str, started_at: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(runs).values(run_id=run_id, job=job, mode=mode,
                                             started_at=started_at))

    def record_plan(self, run_id: str, plan: Mapping[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(plan=_dump(plan)))

    def finish_run(self, run_id: str, *, result: str, reason: str | None,
                   finished_at: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                result=result, reason=reason, finished_at=finished_at))

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        out["plan"] = json.loads(out["plan"]) if out["plan"] else None
        return out

    def runs(self, job: str) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(runs.c.run_id, runs.c.mode, runs.c.result, runs.c.reason,
                                       runs.c.started_at)
                                .where(runs.c.job == job).order_by(runs.c.started_at)).all()
        return [dict(r._mapping) for r in rows]

    # -- marks -------------------------------------------------------------------------

    def active_marks(self, job: str) -> list[Mark]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(marks).where(and_(marks.c.job == job,
                                                         marks.c.state == ACTIVE))
                                .order_by(marks.c.marked_at, marks.c.resource)).all()
        return [Mark._from_row(r) for r in rows]

    def marks(self, job: str) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(marks).where(marks.c.job == job)
                                .order_by(marks.c.marked_at)).all()
        return [dict(r._mapping) for r in rows]

    def mark(self, mark_id: str) -> Mark | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(marks).where(marks.c.mark_id == mark_id)).first()
        return None if row is None else Mark._from_row(row)

    def create_mark(self, mark: Mark, *, mode: str) -> bool:
        """Insert the mark and its audit entry together; False when the resource already has
        an open mark (another run got there first)."""
        candidate = mark.candidate()
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(marks).values(
                    mark_id=mark.mark_id, job=mark.job, resource=mark.resource, state=ACTIVE,
                    action=candidate.action, reason=candidate.reason,
                    evidence=_dump(dict(candidate.evidence)), reclaim=_dump(dict(mark.reclaim)),
                    owner=mark.owner,
                    kube_object=_dump(list(mark.kube_object)) if mark.kube_object else None,
                    run_id=mark.run_id, marked_at=mark.marked_at, deadline=mark.deadline))
                conn.execute(insert(audit).values(
                    key=step_key(mark.job, mark.resource, mark.mark_id, "mark"), job=mark.job,
                    run_id=mark.run_id, mark_id=mark.mark_id, resource=mark.resource,
                    action="mark", mode=mode, status="done",
                    detail=_dump({"deadline": mark.deadline, "action": mark.action}),
                    started_at=mark.marked_at, finished_at=mark.marked_at))
        except IntegrityError:
            return False
        return True

    def set_annotated(self, mark_id: str, at: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(marks).where(marks.c.mark_id == mark_id)
                         .values(annotated_at=at))

    def set_notified(self, mark_id: str, at: float, *, deadline: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(marks).where(marks.c.mark_id == mark_id)
                         .values(notified_at=at, deadline=deadline))

    def close_mark(self, mark: Mark, *, state: str, why: str, action: str, run_id: str,
                   mode: str, at: float) -> bool:
        """Close an open mark with the audit entry of the step that closed it. False when it
        was already closed (the step is done)."""
        key = step_key(mark.job, mark.resource, mark.mark_id, action)
        try:
            with self._engine.begin() as conn:
                closed = conn.execute(
                    update(marks).where(and_(marks.c.mark_id == mark.mark_id,
                                             marks.c.state == ACTIVE))
                    .values(state=state, closed_at=at, closed_why=why)).rowcount
                if not closed:
                    return False
                conn.execute(insert(audit).values(
                    key=key, job=mark.job, run_id=run_id, mark_id=mark.mark_id,
                    resource=mark.resource, action=action, mode=mode, status="done",
                    detail=_dump({"why": why}), started_at=at, finished_at=at))
        except IntegrityError:
            return False
        return True

    # -- restore records ---------------------------------------------------------------

    def restore_record(self, mark_id: str) -> RestoreRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(restore_records)
                               .where(restore_records.c.mark_id == mark_id)).first()
        return None if row is None else self._restore_from_row(row)

    def restore_candidates(self, job: str) -> list[RestoreRecord]:
        """Records of actions that happened or may have (claimed, never resolved), not
        restored yet, newest first: whatever became of their marks."""
        act = audit.alias("act")
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(restore_records, act.c.status.label("claim_status"))
                .join(act, and_(act.c.mark_id == restore_records.c.mark_id,
                                act.c.key.like(f"%|{ACT}")))
                .where(and_(restore_records.c.job == job, restore_records.c.restored_at.is_(None),
                            act.c.status.in_(("done", *PENDING))))
                .order_by(restore_records.c.created_at.desc())).all()
        return [self._restore_from_row(r) for r in rows]

    def claim_restore(self, record: RestoreRecord, *, claim_id: str, at: float,
                      ttl: float) -> float | None:
        """Take the restore of ``record`` for this process. None when taken; else when the
        restore holding it began (it is still within ``ttl``)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(restore_claims).values(mark_id=record.mark_id,
                                                           claim_id=claim_id, claimed_at=at))
            return None
        except IntegrityError:
            pass
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(restore_claims)
                .where(and_(restore_claims.c.mark_id == record.mark_id,
                            restore_claims.c.claimed_at < at - ttl))
                .values(claim_id=claim_id, claimed_at=at)).rowcount
            if taken:
                return None
            since = conn.execute(select(restore_claims.c.claimed_at).where(
                restore_claims.c.mark_id == record.mark_id)).scalar_one_or_none()
        return float(since) if since is not None else at

    def release_restore(self, mark_id: str, *, claim_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(restore_claims).where(and_(
                restore_claims.c.mark_id == mark_id, restore_claims.c.claim_id == claim_id)))

    def set_restored(self, record: RestoreRecord, *, claim_id: str, run_id: str | None,
                     at: float, detail: Mapping[str, Any]) -> bool:
        """The resource is back: the record restored, its audit entry, the claim released,
        in one transaction. False when another restore recorded it first."""
        key = step_key(record.job, record.resource, record.mark_id, "restore")
        try:
            with self._engine.begin() as conn:
                done = conn.execute(update(restore_records).where(and_(
                    restore_records.c.mark_id == record.mark_id,
                    restore_records.c.restored_at.is_(None))).values(restored_at=at)).rowcount
                if not done:
                    return False
                conn.execute(insert(audit).values(
                    key=key, job=record.job, run_id=run_id, mark_id=record.mark_id,
                    resource=record.resource, action="restore", mode="apply", status="done",
                    detail=_dump({"record": record.record, **dict(detail)}), started_at=at,
                    finished_at=at))
                conn.execute(delete(restore_claims).where(and_(
                    restore_claims.c.mark_id == record.mark_id,
                    restore_claims.c.claim_id == claim_id)))
        except IntegrityError:
            return False
        return True

    @staticmethod
    def _restore_from_row(row: Any) -> RestoreRecord:
        mapping = row._mapping
        return RestoreRecord(mark_id=row.mark_id, job=row.job, resource=row.resource,
                             record=json.loads(row.record), created_at=row.created_at,
                             restored_at=row.restored_at,
                             claim_status=mapping.get("claim_status"))

    # -- actions -----------------------------------------------------------------------

    def claim_action(self, mark: Mark, *, record: Mapping[str, Any] | None, action: str,
                     run_id: str, mode: str, at: float) -> Claim:
        """Claim the mark's action before acting: its restore record (when it has one) and
        the intent (an audit entry ``started``), in one transaction.

        A mark already claimed keeps its first restore record: a rerun must never replace
        the replica count with the zero its predecessor left.
        """
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        try:
            with self._engine.begin() as conn:
                if record is not None and conn.execute(
                        select(restore_records.c.mark_id)
                        .where(restore_records.c.mark_id == mark.mark_id)).first() is None:
                    conn.execute(insert(restore_records).values(
                        mark_id=mark.mark_id, job=mark.job, resource=mark.resource,
                        record=_dump(dict(record)), created_at=at))
                conn.execute(insert(audit).values(
                    key=key, job=mark.job, run_id=run_id, mark_id=mark.mark_id,
                    resource=mark.resource, action=action, mode=mode, status="started",
                    started_at=at))
            return "claimed"
        except IntegrityError:
            pass
        status = self.claim_status(mark)
        if status == "done":
            return "done"
        return "pending" if status in PENDING else "closed"

    def claim_status(self, mark: Mark) -> str | None:
        """The status of the mark's claimed action; None when it was never claimed."""
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        with self._engine.connect() as conn:
            value = conn.execute(select(audit.c.status).where(audit.c.key == key)).scalar()
        return None if value is None else str(value)

    def pending_claims(self, job: str) -> dict[str, str]:
        """mark_id -> status of every claimed action of ``job`` neither done nor closed."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(audit.c.mark_id, audit.c.status).where(and_(
                audit.c.job == job, audit.c.key.like(f"%|{ACT}"),
                audit.c.status.in_(PENDING)))).all()
        return {str(r.mark_id): str(r.status) for r in rows}

    def resume_claim(self, mark: Mark, *, run_id: str) -> bool:
        """Take over a pending claim to act again; False when another run resolved it."""
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        with self._engine.begin() as conn:
            return bool(conn.execute(
                update(audit).where(and_(audit.c.key == key, audit.c.status.in_(PENDING)))
                .values(status="started", run_id=run_id, detail=None)).rowcount)

    def complete_action(self, mark: Mark, *, detail: Mapping[str, Any], run_id: str,
                        mode: str, at: float) -> None:
        """The action happened: its audit entry, the swept mark, and the announcement still
        to make, in one transaction."""
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        with self._engine.begin() as conn:
            conn.execute(update(audit).where(audit.c.key == key).values(
                status="done", detail=_dump(dict(detail)), finished_at=at))
            conn.execute(update(marks).where(marks.c.mark_id == mark.mark_id).values(
                state="swept", closed_at=at, closed_why=f"{mark.action} done"))
            conn.execute(insert(audit).values(
                key=step_key(mark.job, mark.resource, mark.mark_id, ANNOUNCE), job=mark.job,
                run_id=run_id, mark_id=mark.mark_id, resource=mark.resource,
                action=ANNOUNCE, mode=mode, status="started", started_at=at))

    def unannounced(self, job: str) -> list[Mark]:
        """Marks whose action is recorded as done but whose announcement never finished."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(marks).join(audit, audit.c.mark_id == marks.c.mark_id)
                .where(and_(audit.c.job == job, audit.c.key.like(f"%|{ANNOUNCE}"),
                            audit.c.status == "started"))
                .order_by(marks.c.closed_at)).all()
        return [Mark._from_row(r) for r in rows]

    def set_announced(self, mark: Mark, *, at: float) -> None:
        key = step_key(mark.job, mark.resource, mark.mark_id, ANNOUNCE)
        with self._engine.begin() as conn:
            conn.execute(update(audit).where(audit.c.key == key).values(
                status="done", finished_at=at))

    def fail_action(self, mark: Mark, *, detail: str, at: float) -> None:
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        with self._engine.begin() as conn:
            conn.execute(update(audit).where(audit.c.key == key).values(
                status="failed", detail=_dump({"error": detail}), finished_at=at))

    def resolve_claim(self, mark: Mark, *, status: Literal["released", "vanished"], why: str,
                      at: float, close_as: str | None = None) -> bool:
        """Resolve a pending claim that did not (released) or cannot be known to (vanished)
        have taken effect; ``close_as`` also closes the mark, in the same transaction. False
        when the claim was no longer pending."""
        key = step_key(mark.job, mark.resource, mark.mark_id, ACT)
        with self._engine.begin() as conn:
            resolved = conn.execute(
                update(audit).where(and_(audit.c.key == key, audit.c.status.in_(PENDING)))
                .values(status=status, detail=_dump({"why": why}), finished_at=at)).rowcount
            if resolved and close_as is not None:
                conn.execute(update(marks).where(and_(marks.c.mark_id == mark.mark_id,
                                                      marks.c.state == ACTIVE))
                             .values(state=close_as, closed_at=at, closed_why=why))
        return bool(resolved)

    def record_step(self, mark: Mark, *, step: str, action: str, run_id: str, mode: str,
                    at: float, detail: Mapping[str, Any] | None = None) -> bool:
        """Audit a step that needs no claim (a notification); False if already recorded."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(audit).values(
                    key=step_key(mark.job, mark.resource, mark.mark_id, step), job=mark.job,
                    run_id=run_id, mark_id=mark.mark_id, resource=mark.resource, action=action,
                    mode=mode, status="done", detail=_dump(dict(detail or {})), started_at=at,
                    finished_at=at))
        except IntegrityError:
            return False
        return True

    def audit_entries(self, job: str | None = None) -> list[dict[str, Any]]:
        query = select(audit).order_by(audit.c.id)
        if job is not None:
            query = query.where(audit.c.job == job)
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]


# -- owners' choices (the notifier's hygiene buttons) ---------------------------------

OwnerChoiceKind = Literal["keep", "snooze", "exempt"]


@dataclass(frozen=True)
class OwnerChoice:
    """How a choice ended: ``applied`` (or ``already`` applied by this same click before),
    or refused with why (``refused``)."""

    status: Literal["applied", "already", "refused"]
    message: str
    job: str = ""
    resource: str = ""
    deadline: float | None = None  # a snooze's new deadline
    until: float | None = None  # a keep's end


@dataclass(frozen=True)
class OwnerHold:
    choice: str
    until: float | None
    by: str


def owner_holds(engine: Engine, job: str, now: float) -> dict[str, OwnerHold]:
    """The resources of ``job`` an owner kept (until a time after ``now``) or exempted."""
    if not inspect(engine).has_table(owner_choices.name):
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(owner_choices).where(owner_choices.c.job == job)).all()
    return {r.resource: OwnerHold(r.choice, r.until, r.by) for r in rows
            if r.until is None or r.until > now}


def apply_owner_choice(engine: Engine, mark_id: str, choice: OwnerChoiceKind, *, by: str,
                       at: float, click_id: str, keep_seconds: float = 7 * 86400.0,
                       snooze_seconds: float = 86400.0,
                       snooze_cap_seconds: float = 72 * 3600.0) -> OwnerChoice:
    """An owner's answer to an open mark, in one transaction with its audit entry (keyed by
    ``click_id``: the same click twice is applied once).

    keep: the mark is lifted and the resource not marked again until ``at + keep_seconds``;
    exempt: lifted, and never marked again (like ``steward.io/exempt=true``); snooze: the
    deadline moves by ``snooze_seconds``, never past ``at + snooze_cap_seconds``.
    """
    try:
        with engine.begin() as conn:
            row = conn.execute(select(marks).where(marks.c.mark_id == mark_id)).first()
            if row is None:
                return OwnerChoice("refused", "no such mark")
            mark = Mark._from_row(row)
            key = step_key(mark.job, mark.resource, mark.mark_id, f"owner-{click_id}")
            done = conn.execute(select(audit.c.detail).where(audit.c.key == key)).first()
            if done is not None:
                detail = json.loads(done[0] or "{}")
                return OwnerChoice("already", "already applied", mark.job, mark.resource,
                                   detail.get("deadline"), detail.get("until"))
            if row.state != ACTIVE:
                return OwnerChoice("refused", f"the mark is {row.state} already", mark.job,
                                   mark.resource)
            acting = conn.execute(select(audit.c.status).where(
                audit.c.key == step_key(mark.job, mark.resource, mark.mark_id, ACT))).first()
            if acting is not None:
                return OwnerChoice("refused", "its deadline passed and the action is under "
                                              "way: undo it with steward hygiene restore",
                                   mark.job, mark.resource)
            outcome: OwnerChoice
            if choice == "snooze":
                limit = at + snooze_cap_seconds
                deadline = min(mark.deadline + snooze_seconds, limit)
                if deadline <= mark.deadline:
                    return OwnerChoice(
                        "refused", f"snoozed to the limit already (at most "
                                   f"{snooze_cap_seconds / 3600:g} h from now)",
                        mark.job, mark.resource, mark.deadline)
                conn.execute(update(marks).where(marks.c.mark_id == mark_id)
                             .values(deadline=deadline))
                outcome = OwnerChoice("applied", "snoozed", mark.job, mark.resource, deadline)
                detail = {"by": by, "deadline": deadline, "was": mark.deadline}
            else:
                until = None if choice == "exempt" else at + keep_seconds
                why = f"{'exempted' if until is None else 'kept'} by {by}"
                conn.execute(update(marks).where(marks.c.mark_id == mark_id)
                             .values(state="lifted", closed_at=at, closed_why=why))
                conn.execute(delete(owner_choices).where(
                    and_(owner_choices.c.job == mark.job,
                         owner_choices.c.resource == mark.resource)))
                conn.execute(insert(owner_choices).values(
                    job=mark.job, resource=mark.resource, choice=choice, until=until, by=by,
                    at=at))
                outcome = OwnerChoice("applied", why, mark.job, mark.resource, until=until)
                detail = {"by": by, "until": until}
            conn.execute(insert(audit).values(
                key=key, job=mark.job, run_id=None, mark_id=mark.mark_id,
                resource=mark.resource, action=f"owner_{choice}", mode="apply", status="done",
                detail=_dump(detail), started_at=at, finished_at=at))
            return outcome
    except IntegrityError:
        return OwnerChoice("already", "already applied")


# -- views for other components (the FinOps report's savings) --------------------------

# What frees resources (marks, notices and restores free nothing).
FREEING_ACTIONS: Final = ("scale_to_zero", "delete", "expire_objects")


@dataclass(frozen=True)
class FreedAction:
    """An applied action that freed something, with what its mark said it reclaims."""

    job: str
    action: str
    resource: str
    finished_at: float
    reclaim: Mapping[str, Any]
    evidence: Mapping[str, Any]
    restored_at: float | None  # undone by ``steward hygiene restore`` at this time


@dataclass(frozen=True)
class LatestPlan:
    """A job's most recent successful run with a plan."""

    job: str
    mode: str
    finished_at: float
    plan: Mapping[str, Any]


def has_hygiene_log(engine: Engine) -> bool:
    """Whether any hygiene job ever wrote to this store."""
    return bool(inspect(engine).has_table(audit.name))


def freed_actions(engine: Engine, start: float, end: float) -> list[FreedAction]:
    """Applied freeing actions that completed with ``start <= finished_at < end``."""
    query = (
        select(audit.c.job, audit.c.action, audit.c.resource, audit.c.finished_at,
               marks.c.reclaim, marks.c.evidence, restore_records.c.restored_at)
        .join(marks, marks.c.mark_id == audit.c.mark_id)
        .outerjoin(restore_records, restore_records.c.mark_id == audit.c.mark_id)
        .where(and_(audit.c.mode == "apply", audit.c.status == "done",
                    audit.c.action.in_(FREEING_ACTIONS),
                    audit.c.finished_at >= start, audit.c.finished_at < end)))
    with engine.connect() as connection:
        return [FreedAction(job=row.job, action=row.action, resource=row.resource,
                            finished_at=float(row.finished_at),
                            reclaim=json.loads(row.reclaim or "{}"),
                            evidence=json.loads(row.evidence or "{}"),
                            restored_at=row.restored_at)
                for row in connection.execute(query)]


def latest_plans(engine: Engine, until: float) -> list[LatestPlan]:
    """Each job's most recent successful run with a plan that finished before ``until``."""
    latest = (select(runs.c.job, func.max(runs.c.finished_at).label("at"))
              .where(runs.c.result == "succeeded", runs.c.plan.is_not(None),
                     runs.c.finished_at < until)
              .group_by(runs.c.job).subquery())
    query = select(runs.c.job, runs.c.mode, runs.c.finished_at, runs.c.plan).join(
        latest, (latest.c.job == runs.c.job) & (latest.c.at == runs.c.finished_at))
    found: dict[str, LatestPlan] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            found[row.job] = LatestPlan(job=row.job, mode=row.mode,
                                        finished_at=float(row.finished_at),
                                        plan=json.loads(row.plan))
    return list(found.values())
