"""The notifier's durable state: received webhooks waiting for Slack, each group's message,
and the dead letters (groups that could not be delivered).

A webhook is acknowledged only once its row is committed (SQLite: WAL, synchronous=FULL;
PostgreSQL: a committed transaction). Every write of this process goes through one writer
thread that commits whatever is queued in one transaction (group commit): a storm of
webhooks and the delivery steps' records share fsyncs, and a webhook never waits on a lock
that a delivery commit holds. Each group row maps the Alertmanager ``groupKey`` to its Slack
message (channel, ts) and to the incident's alerts, carries the write-ahead marker that makes
a crash between "Slack accepted" and "row updated" safe, and counts failed attempts.

Several notifiers may share one PostgreSQL store: rows are written only by whoever holds the
group (``group_lock``), and ids come from the database, so the outbox is the same for all.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import (
    BindParameter,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from agent.notify.incident import Alerts, dump_alerts, load_alerts
from agent.notify.webhook import Notification

log = logging.getLogger(__name__)

# The notifier's tables, handed to open_store by the notifier (agent.notify.app).
TABLES = MetaData()

notifications = Table(
    "notifier_notifications", TABLES,
    Column("id", Integer, primary_key=True),
    Column("group_id", String(32), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("alert_count", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("delivered_at", Float, nullable=True),
    # Set with delivered_at when the webhook was dead-lettered instead of delivered.
    Column("dead_letter_id", Integer, nullable=True),
    Index("ix_notifier_notifications_pending", "delivered_at", "group_id", "id"),
    # AUTOINCREMENT: ids are never reused after pruning, so delivery order stays id order.
    sqlite_autoincrement=True,
)

groups = Table(
    "notifier_groups", TABLES,
    Column("group_id", String(32), primary_key=True),
    Column("group_key", Text, nullable=False),
    Column("lane", String(255), nullable=True),  # the channel as configured (name or id)
    Column("channel_id", String(64), nullable=True),  # the id Slack answered with
    Column("ts", String(32), nullable=True),  # the root message
    Column("alerts", Text, nullable=False, default="[]"),  # the incident, as delivered
    Column("resolved", Boolean, nullable=False, default=False),
    Column("rendered_upto", Integer, nullable=False, default=0),
    Column("inflight", Text, nullable=True),  # write-ahead marker of a post in progress
    Column("updated_at", Float, nullable=False),
    # Failed delivery attempts since the last success, and when the next may start: shared
    # by every replica, so a failing group is backed off (and dead-lettered) once, not once
    # per replica.
    Column("attempts", Integer, nullable=False, default=0),
    Column("retry_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    # Set when the root must be rendered again with nothing new from Alertmanager (an owner
    # notice it links to was posted); cleared by the step that re-rendered it.
    Column("refresh_at", Float, nullable=True),
)

channels = Table(
    "notifier_channels", TABLES,
    Column("name", String(255), primary_key=True),
    Column("channel_id", String(64), nullable=False),
)

# Slack permalinks of posted messages (chat.getPermalink), keyed by the message: a message's
# permalink never changes, so a link on every render costs one Slack call per message.
permalinks = Table(
    "notifier_permalinks", TABLES,
    Column("channel_id", String(64), primary_key=True),
    Column("ts", String(32), primary_key=True),
    Column("permalink", Text, nullable=False),
)

FallbackState = Literal["pending", "sent", "suppressed", "failed"]

dead_letters = Table(
    "notifier_dead_letters", TABLES,
    Column("id", Integer, primary_key=True),
    Column("group_id", String(32), nullable=False),
    Column("group_key", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("alertnames", Text, nullable=False),  # JSON list, as far as the payload told
    Column("webhooks", Integer, nullable=False),
    Column("last_id", Integer, nullable=False),
    Column("lane", String(255), nullable=True),
    # The plain message that tells the channel an alert could not be shown.
    Column("fallback_state", String(16), nullable=False),
    Column("fallback_channel", String(255), nullable=True),
    Column("fallback_ts", String(32), nullable=True),
    Column("fallback_attempted_at", Float, nullable=True),
    Column("fallback_error", Text, nullable=True),
    Column("replayed_at", Float, nullable=True),
    Index("ix_notifier_dead_letters_group", "group_id", "fallback_state"),
    sqlite_autoincrement=True,
)

# The statements of every delivery step, built once: building one (and its cache key) costs
# more Python than running it, and under a storm that is GIL time the webhooks wait for.
_GROUP_ID: BindParameter[str] = bindparam("group_id")
_SELECT_GROUP = select(groups).where(groups.c.group_id == _GROUP_ID)
_SELECT_PENDING = (select(notifications.c.id, notifications.c.received_at,
                          notifications.c.payload)
                   .where(notifications.c.delivered_at.is_(None),
                          notifications.c.group_id == _GROUP_ID)
                   .order_by(notifications.c.id))
_SELECT_FIRST_PENDING = _SELECT_PENDING.limit(1)
_SELECT_CHANNEL = select(channels.c.channel_id).where(channels.c.name == bindparam("name"))
_SELECT_FALLBACK = (select(dead_letters)
                    .where(dead_letters.c.group_id == _GROUP_ID,
                           dead_letters.c.fallback_state == "pending")
                    .order_by(dead_letters.c.id).limit(1))
# (An UPDATE's bind parameters may not be named like its columns.)
_MARK_DELIVERED = (update(notifications)
                   .where(notifications.c.id.in_(bindparam("b_ids", expanding=True)),
                          notifications.c.delivered_at.is_(None))
                   .values(delivered_at=bindparam("b_now"),
                           dead_letter_id=bindparam("b_dead_letter_id")))


def _update_group(*columns: str) -> Any:
    return (update(groups).where(groups.c.group_id == bindparam("b_group_id"))
            .values({name: bindparam(f"v_{name}") for name in (*columns, "updated_at")}))


_PENDING_STATS = (select(func.count(), func.min(notifications.c.id))
                  .where(notifications.c.delivered_at.is_(None)))
_RECEIVED_AT = select(notifications.c.received_at).where(notifications.c.id == bindparam("id"))
_DEAD_LETTER_COUNT = (select(func.count()).select_from(dead_letters)
                      .where(dead_letters.c.replayed_at.is_(None)))
_GROUP_UPDATES: dict[frozenset[str], Any] = {}
_INSERT_GROUP = insert(groups)
# Every column, so that one compiled INSERT serves every new group.
_NEW_GROUP: Final[dict[str, Any]] = {
    "lane": None, "channel_id": None, "ts": None, "alerts": "[]", "resolved": False,
    "rendered_upto": 0, "inflight": None, "attempts": 0, "retry_at": None, "last_error": None,
    "refresh_at": None}


# Columns added after the first release, added to an older store at start-up.
_ADDED_COLUMNS: Final = {
    "notifier_notifications": ("dead_letter_id INTEGER",),
    "notifier_groups": ("attempts INTEGER NOT NULL DEFAULT 0", "retry_at FLOAT",
                        "last_error TEXT", "refresh_at FLOAT"),
}

# Delivered webhooks are kept this long for inspection, then pruned.
DELIVERED_RETENTION_SECONDS: Final = 24 * 3600
# Groups whose incident resolved this long ago are forgotten: a new incident gets a new message.
RESOLVED_GROUP_RETENTION_SECONDS: Final = 7 * 24 * 3600
# Dead letters are kept for a month: long enough to replay after a holiday.
DEAD_LETTER_RETENTION_SECONDS: Final = 30 * 24 * 3600
# One fallback message per group per hour: a group that keeps failing (every group_interval)
# must not flood the channel with notices.
FALLBACK_QUIET_SECONDS: Final = 3600.0
_WRITE_TIMEOUT_SECONDS: Final = 30.0
_BATCH_MAX: Final = 512
_ERROR_MAX: Final = 500


class OutboxUnavailable(RuntimeError):
    """The store could not persist a write (the HTTP layer answers 503: Alertmanager retries)."""


@dataclass(frozen=True)
class Pending:
    id: int
    received_at: float
    notification: Notification


@dataclass(frozen=True)
class Outcome:
    """The group row after a delivery step: committed with the delivered webhooks' ids."""

    delivered_ids: tuple[int, ...]
    alerts: Alerts
    resolved: bool
    rendered_upto: int
    lane: str | None = None
    channel_id: str | None = None
    ts: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ids": list(self.delivered_ids), "alerts": dump_alerts(self.alerts),
                "resolved": self.resolved, "rendered_upto": self.rendered_upto,
                "lane": self.lane, "channel_id": self.channel_id, "ts": self.ts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(delivered_ids=tuple(data["ids"]), alerts=load_alerts(data["alerts"]),
                   resolved=data["resolved"], rendered_upto=data["rendered_upto"],
                   lane=data["lane"], channel_id=data["channel_id"], ts=data["ts"])


@dataclass(frozen=True)
class Inflight:
    """Written before a chat.postMessage whose success we might not learn (crash, timeout).

    ``op_id`` goes into the message's metadata; the next attempt first looks for it in
    Slack, and commits ``outcome`` instead of posting again when it is there.
    """

    op_id: str
    kind: Literal["root", "reply"]
    since: float
    channel: str  # root: the lane (name or id); reply: the channel id
    thread_ts: str | None
    outcome: Outcome

    def to_json(self) -> str:
        return json.dumps({"op_id": self.op_id, "kind": self.kind, "since": self.since,
                           "channel": self.channel, "thread_ts": self.thread_ts,
                           "outcome": self.outcome.to_json()}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Inflight:
        data = json.loads(text)
        return cls(op_id=data["op_id"], kind=data["kind"], since=data["since"],
                   channel=data["channel"], thread_ts=data["thread_ts"],
                   outcome=Outcome.from_json(data["outcome"]))


@dataclass(frozen=True)
class GroupState:
    group_id: str
    group_key: str
    lane: str | None
    channel_id: str | None
    ts: str | None
    alerts: Alerts
    resolved: bool
    rendered_upto: int
    inflight: Inflight | None
    attempts: int = 0
    retry_at: float | None = None
    refresh_at: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    group_id: str
    group_key: str
    created_at: float
    reason: str
    attempts: int
    alertnames: tuple[str, ...]
    webhooks: int
    last_id: int
    lane: str | None
    fallback_state: FallbackState
    fallback_channel: str | None
    fallback_ts: str | None
    fallback_attempted_at: float | None
    fallback_error: str | None
    replayed_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "group_id": self.group_id, "group_key": self.group_key,
                "created_at": self.created_at, "reason": self.reason,
                "attempts": self.attempts, "alertnames": list(self.alertnames),
                "webhooks": self.webhooks, "lane": self.lane,
                "fallback": {"state": self.fallback_state, "channel": self.fallback_channel,
                             "ts": self.fallback_ts, "error": self.fallback_error},
                "replayed_at": self.replayed_at}


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_received_at: float | None
    dead_letters: int = 0  # not replayed


class UnknownDeadLetter(LookupError):
    pass


class AlreadyReplayed(ValueError):
    def __init__(self, dead_letter: DeadLetter) -> None:
        super().__init__(f"dead letter {dead_letter.id} was already replayed")
        self.dead_letter = dead_letter


class _Result:
    """A result one thread waits for and the writer sets: a lock released once, which is
    all C (a ``concurrent.futures.Future`` notifies through a Python Condition, and the
    writer sets hundreds of these a second under a storm)."""

    __slots__ = ("_error", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def set_result(self, value: Any) -> None:
        self._value = value
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def result(self, timeout: float) -> Any:
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class _Insert:
    notification: Notification
    payload: str
    future: _Result = field(default_factory=_Result)


@dataclass
class _Job:
    run: Callable[[Connection], Any]
    future: _Result = field(default_factory=_Result)


@dataclass(frozen=True)
class LenientFields:
    """What a stored payload says, as far as it can be read as JSON at all: what routes and
    names a dead letter whose payload would not parse."""

    group_key: str = ""
    alertnames: tuple[str, ...] = ()
    group_labels: Mapping[str, str] = field(default_factory=dict)
    alert_labels: tuple[Mapping[str, str], ...] = ()


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def lenient_fields(payload: str) -> LenientFields:
    try:
        data = json.loads(payload)
    except ValueError:
        return LenientFields()
    if not isinstance(data, dict):
        return LenientFields()
    key = data.get("groupKey")
    names: list[str] = []
    label_sets: list[dict[str, str]] = []
    alerts = data.get("alerts")
    for item in alerts if isinstance(alerts, list) else []:
        labels = _str_map(item.get("labels") if isinstance(item, dict) else None)
        label_sets.append(labels)
        name = labels.get("alertname")
        if name is not None and name[:200] not in names:
            names.append(name[:200])
    return LenientFields(group_key=key if isinstance(key, str) else "",
                         alertnames=tuple(names), group_labels=_str_map(data.get("groupLabels")),
                         alert_labels=tuple(label_sets))


def _dead_letter(row: Any) -> DeadLetter:
    try:
        names = tuple(str(n) for n in json.loads(row.alertnames))
    except ValueError:
        names = ()
    return DeadLetter(
        id=int(row.id), group_id=row.group_id, group_key=row.group_key,
        created_at=float(row.created_at), reason=row.reason, attempts=int(row.attempts),
        alertnames=names, webhooks=int(row.webhooks), last_id=int(row.last_id), lane=row.lane,
        fallback_state=row.fallback_state, fallback_channel=row.fallback_channel,
        fallback_ts=row.fallback_ts, fallback_attempted_at=row.fallback_attempted_at,
        fallback_error=row.fallback_error, replayed_at=row.replayed_at)


def add_missing_columns(engine: Engine) -> None:
    """Columns this version added, on a store an older notifier created."""
    inspector = inspect(engine)
    for table, columns in _ADDED_COLUMNS.items():
        if not inspector.has_table(table):
            continue
        present = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            name = column.split(" ", 1)[0]
            if name not in present:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column}"))
                log.info("added a column to the notifier's store",
                         extra={"table": table, "column": name})


class Outbox:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time,
                 on_enqueued: Callable[[Sequence[tuple[Notification, int]]], None] | None = None
                 ) -> None:
        self._engine = engine
        self._clock = clock
        self._on_enqueued = on_enqueued
        self._requests: queue.Queue[_Insert | _Job | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_conn: Connection | None = None
        self._inline_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats = self._read_stats()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    # --- the writer -----------------------------------------------------------------------

    def set_listener(self, on_enqueued: Callable[[Sequence[tuple[Notification, int]]], None]
                     ) -> None:
        self._on_enqueued = on_enqueued

    def start(self) -> None:
        self._writer_conn = self._engine.connect()
        if self.dialect == "sqlite":
            # A checkpoint run by a commit copies the WAL into the database and fsyncs it
            # inside that commit: tens of milliseconds that every webhook in the batch
            # waits. The worker's upkeep checkpoints from another connection instead.
            self._writer_conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            self._writer_conn.commit()
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer",
                                        daemon=True)
        self._writer.start()

    def stop(self) -> None:
        if self._writer is not None:
            self._requests.put(None)
            self._writer.join(10)
            self._writer = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    @property
    def running(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def enqueue(self, notification: Notification, *, body: bytes | None = None) -> int:
        """Persist ``notification``; returns its id once committed. Blocks until then.

        ``body`` is the request body it was parsed from: stored as is, it saves
        re-serialising on the acknowledgement path (the worker parses it the same way).
        """
        payload = notification.to_json() if body is None else body.decode("utf-8")
        request = _Insert(notification, payload)
        if not self.running:
            raise OutboxUnavailable("outbox writer is not running")
        self._requests.put(request)
        try:
            return int(request.future.result(timeout=_WRITE_TIMEOUT_SECONDS))
        except TimeoutError as exc:
            raise OutboxUnavailable("timed out persisting the webhook") from exc

    def transact(self, run: Callable[[Connection], Any]) -> Any:
        """``run(conn)`` in a committed transaction through the writer (the notifier's other
        tables: Slack clicks, silences, graphs); its result once committed."""
        return self._write(run)

    def _write(self, run: Callable[[Connection], Any]) -> Any:
        """``run(conn)`` inside a committed transaction; its result once committed.

        Queued to the writer when it runs (sharing its commit with whatever else is queued);
        in a transaction of its own otherwise (the CLI, tests of the store alone).
        """
        if not self.running:
            with self._inline_lock, self._engine.begin() as conn:
                return run(conn)
        job = _Job(run)
        self._requests.put(job)
        try:
            return job.future.result(timeout=_WRITE_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise OutboxUnavailable("timed out writing to the store") from exc

    def _write_loop(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _BATCH_MAX:
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            inserts = [r for r in batch if isinstance(r, _Insert)]
            jobs = [r for r in batch if isinstance(r, _Job)]
            self._write_batch(inserts, jobs)
            if stop:
                return

    def _write_batch(self, inserts: list[_Insert], jobs: list[_Job]) -> None:
        now = self._clock()
        rows = [(r.notification.group_id, now, r.notification.status,
                 len(r.notification.alerts), r.payload) for r in inserts]
        conn = self._writer_conn
        assert conn is not None
        results: list[Any] = []
        try:
            with conn.begin():
                ids = self._insert_webhooks(conn, rows) if rows else []
                results = [job.run(conn) for job in jobs]
        except Exception as exc:
            if jobs and len(inserts) + len(jobs) > 1:
                # One failing write must not fail the others: each on its own.
                self._write_alone(inserts, jobs)
                return
            log.exception("could not write to the store", extra={"webhooks": len(inserts)})
            failure = OutboxUnavailable(str(exc).splitlines()[0] if str(exc) else repr(exc))
            for request in inserts:
                request.future.set_exception(failure)
            for job in jobs:
                job.future.set_exception(exc)
            return
        self._acknowledged(inserts, ids, now)
        for job, value in zip(jobs, results, strict=True):
            job.future.set_result(value)

    def _insert_webhooks(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """One multi-row INSERT ... RETURNING for a batch of webhooks: each extra statement
        is one more trip through the GIL, which under a storm is what webhooks wait for."""
        columns = ("group_id", "received_at", "status", "alert_count", "payload")
        marker = {"sqlite": "?", "postgresql": "%s"}.get(self.dialect)
        if marker is None:
            result = conn.execute(insert(notifications).returning(
                notifications.c.id, sort_by_parameter_order=True),
                [dict(zip(columns, row, strict=True)) for row in rows])
            return [int(row[0]) for row in result]
        # Straight to the driver, inside the transaction: SQLAlchemy's execution bookkeeping
        # costs more than the insert.
        values = "(" + ", ".join([marker] * len(columns)) + ")"
        sql = (f"INSERT INTO {notifications.name} ({', '.join(columns)}) VALUES "
               + ", ".join([values] * len(rows)))
        params = list(itertools.chain.from_iterable(rows))
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.dialect == "sqlite":
                # This thread is the file's only writer (group_lock), and one statement's
                # AUTOINCREMENT ids are consecutive: the last id says them all. No RETURNING:
                # each returned row is one more release and re-acquisition of the GIL, and
                # under a storm every re-acquisition waits behind the request threads.
                cursor.execute(sql, params)
                last = int(cursor.lastrowid)
                return list(range(last - len(rows) + 1, last + 1))
            # PostgreSQL's sequence is called row by row in VALUES order, even with other
            # replicas inserting meanwhile: the sorted ids are the rows' ids in order.
            cursor.execute(sql + " RETURNING id", params)
            return sorted(int(row[0]) for row in cursor.fetchall())
        finally:
            cursor.close()

    def _write_alone(self, inserts: list[_Insert], jobs: list[_Job]) -> None:
        if inserts:
            self._write_batch(inserts, [])
        for job in jobs:
            self._write_batch([], [job])

    def _acknowledged(self, inserts: list[_Insert], ids: list[int], now: float) -> None:
        if not inserts:
            return
        with self._stats_lock:
            stats = self._stats
            oldest = stats.oldest_received_at
            self._stats = OutboxStats(stats.depth + len(inserts),
                                      now if oldest is None else oldest, stats.dead_letters)
        for request, new_id in zip(inserts, ids, strict=True):
            request.future.set_result(new_id)
        if self._on_enqueued is not None:
            self._on_enqueued([(r.notification, i) for r, i in zip(inserts, ids, strict=True)])

    # --- reading --------------------------------------------------------------------------

    def pending_groups(self) -> dict[str, int]:
        """Every group with work: undelivered webhooks (-> the oldest id), a dead letter
        whose fallback message is still to be sent (-> its last webhook's id), or a root to
        render again (-> the last webhook it showed)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(notifications.c.group_id, func.min(notifications.c.id))
                .where(notifications.c.delivered_at.is_(None))
                .group_by(notifications.c.group_id))
            found = {row[0]: int(row[1]) for row in rows}
            for row in conn.execute(
                    select(dead_letters.c.group_id, func.min(dead_letters.c.last_id))
                    .where(dead_letters.c.fallback_state == "pending")
                    .group_by(dead_letters.c.group_id)):
                found[row[0]] = min(int(row[1]), found.get(row[0], int(row[1])))
            for row in conn.execute(select(groups.c.group_id, groups.c.rendered_upto)
                                    .where(groups.c.refresh_at.is_not(None))):
                found.setdefault(row[0], int(row[1]))
            return found

    def pending(self, group_id: str) -> list[Pending]:
        with self._engine.connect() as conn:
            rows = conn.execute(_SELECT_PENDING, {"group_id": group_id})
            return [Pending(int(r.id), float(r.received_at),
                            Notification.model_validate_json(r.payload)) for r in rows]

    def last_notification(self, group_id: str) -> Notification | None:
        """The group's newest webhook still kept (delivered ones are kept a day): what its
        root showed last (group labels), to render the root again without news."""
        with self._engine.connect() as conn:
            row = conn.execute(select(notifications.c.payload)
                               .where(notifications.c.group_id == group_id)
                               .order_by(notifications.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        try:
            return Notification.model_validate_json(row.payload)
        except ValueError:
            return None

    def pending_raw(self, group_id: str) -> list[tuple[int, str]]:
        """(id, payload) of the undelivered webhooks, unparsed (for a dead letter)."""
        with self._engine.connect() as conn:
            rows = conn.execute(_SELECT_PENDING, {"group_id": group_id})
            return [(int(r.id), str(r.payload)) for r in rows]

    def first_pending(self, group_id: str) -> Pending | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_FIRST_PENDING, {"group_id": group_id}).first()
        if row is None:
            return None
        return Pending(int(row.id), float(row.received_at),
                       Notification.model_validate_json(row.payload))

    def group(self, group_id: str) -> GroupState | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_GROUP, {"group_id": group_id}).first()
        if row is None:
            return None
        return GroupState(
            group_id=row.group_id, group_key=row.group_key, lane=row.lane,
            channel_id=row.channel_id, ts=row.ts, alerts=load_alerts(row.alerts),
            resolved=bool(row.resolved), rendered_upto=int(row.rendered_upto),
            inflight=Inflight.from_json(row.inflight) if row.inflight else None,
            attempts=int(row.attempts or 0), retry_at=row.retry_at, refresh_at=row.refresh_at)

    def channel_id(self, name: str) -> str | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_CHANNEL, {"name": name}).first()
        return None if row is None else str(row[0])

    # --- the group row --------------------------------------------------------------------

    def _update_group(self, conn: Connection, group_id: str, values: dict[str, Any]) -> int:
        values = {**values, "updated_at": self._clock()}
        key = frozenset(values)
        statement = _GROUP_UPDATES.get(key)
        if statement is None:
            statement = _GROUP_UPDATES.setdefault(
                key, _update_group(*sorted(key - {"updated_at"})))
        result = conn.execute(statement, {"b_group_id": group_id,
                                          **{f"v_{k}": v for k, v in values.items()}})
        return int(result.rowcount)

    def _upsert_group(self, conn: Connection, group_id: str, group_key: str,
                      values: dict[str, Any]) -> None:
        if self._update_group(conn, group_id, values) == 0:
            conn.execute(_INSERT_GROUP, {
                **_NEW_GROUP, "group_id": group_id, "group_key": group_key, **values,
                "updated_at": self._clock()})

    def mark_inflight(self, group_id: str, group_key: str, inflight: Inflight) -> None:
        marker = inflight.to_json()  # here, not on the writer's thread
        self._write(lambda conn: self._upsert_group(conn, group_id, group_key,
                                                    {"inflight": marker}))

    def _set(self, group_id: str, **values: Any) -> None:
        self._write(lambda conn: self._update_group(conn, group_id, values))

    def clear_inflight(self, group_id: str) -> None:
        self._set(group_id, inflight=None)

    def set_rendered(self, group_id: str, rendered_upto: int) -> None:
        self._set(group_id, rendered_upto=rendered_upto, attempts=0, retry_at=None,
                  last_error=None)

    def forget_root(self, group_id: str) -> None:
        """The root message is gone from Slack (deleted by a user): post a new one."""
        self._set(group_id, ts=None, rendered_upto=0)

    def commit(self, group_id: str, group_key: str, outcome: Outcome, *,
               derived: Sequence[Notification] = ()) -> None:
        """Record a finished step: the group's new state and its webhooks as delivered.

        ``derived``: notifications the step produced for other groups (owner notices), added
        to the outbox in the same transaction: they exist exactly when the step happened."""
        now = self._clock()
        values: dict[str, Any] = {
            "alerts": dump_alerts(outcome.alerts), "resolved": outcome.resolved,
            "rendered_upto": outcome.rendered_upto, "inflight": None,
            "attempts": 0, "retry_at": None, "last_error": None,
        }
        if outcome.ts is not None:
            values.update(ts=outcome.ts, channel_id=outcome.channel_id, lane=outcome.lane)

        rows = [(n.group_id, now, n.status, len(n.alerts), n.to_json()) for n in derived]

        def run(conn: Connection) -> tuple[int, list[int]]:
            self._upsert_group(conn, group_id, group_key, values)
            delivered = self._mark_delivered(conn, outcome.delivered_ids, now)
            if outcome.channel_id is not None and outcome.lane is not None:
                known = conn.execute(_SELECT_CHANNEL, {"name": outcome.lane}).first()
                if known is None:
                    self._insert_ignoring_conflict(
                        conn, channels, {"name": outcome.lane, "channel_id": outcome.channel_id})
            return delivered, self._insert_webhooks(conn, rows) if rows else []

        delivered, ids = self._write(run)
        with self._stats_lock:
            stats = self._stats
            self._stats = OutboxStats(max(0, stats.depth - delivered + len(ids)),
                                      stats.oldest_received_at, stats.dead_letters)
        if ids and self._on_enqueued is not None:
            self._on_enqueued(list(zip(derived, ids, strict=True)))

    def request_refresh(self, group_ids: Sequence[str]) -> None:
        """Render these groups' roots again at their next step (their owner notices
        changed); only groups whose root exists."""
        if not group_ids:
            return
        now = self._clock()

        def run(conn: Connection) -> None:
            conn.execute(update(groups).where(groups.c.group_id.in_(list(group_ids)),
                                              groups.c.ts.is_not(None))
                         .values(refresh_at=now))
        self._write(run)

    def clear_refresh(self, group_id: str, requested_at: float) -> None:
        """Done, unless another refresh was asked for meanwhile (then it stays)."""
        def run(conn: Connection) -> None:
            conn.execute(update(groups).where(groups.c.group_id == group_id,
                                              groups.c.refresh_at == requested_at)
                         .values(refresh_at=None))
        self._write(run)

    def permalink(self, channel_id: str, ts: str) -> str | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(permalinks.c.permalink).where(
                permalinks.c.channel_id == channel_id, permalinks.c.ts == ts)).first()
        return None if row is None else str(row[0])

    def save_permalink(self, channel_id: str, ts: str, permalink: str) -> None:
        self._write(lambda conn: self._insert_ignoring_conflict(
            conn, permalinks, {"channel_id": channel_id, "ts": ts, "permalink": permalink}))

    def _mark_delivered(self, conn: Connection, ids: Sequence[int], now: float,
                        dead_letter_id: int | None = None) -> int:
        done = 0
        for start in range(0, len(ids), 500):
            result = conn.execute(_MARK_DELIVERED, {
                "b_ids": list(ids[start:start + 500]), "b_now": now,
                "b_dead_letter_id": dead_letter_id})
            done += int(result.rowcount)
        return done

    def _insert_ignoring_conflict(self, conn: Connection, table: Table,
                                  values: dict[str, Any]) -> None:
        # Two replicas may learn a channel's id at the same moment.
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
        else:
            conn.execute(insert(table).values(**values))

    def record_failure(self, group_id: str, group_key: str, error: str, *,
                       delay_for: Callable[[int], float]) -> tuple[int, float]:
        """One more failed attempt: returns (attempts so far, seconds until the next)."""

        def run(conn: Connection) -> tuple[int, float]:
            row = conn.execute(select(groups.c.attempts)
                               .where(groups.c.group_id == group_id)).first()
            attempts = (int(row[0] or 0) if row is not None else 0) + 1
            delay = delay_for(attempts)
            self._upsert_group(conn, group_id, group_key, {
                "attempts": attempts, "retry_at": self._clock() + delay,
                "last_error": error[:_ERROR_MAX]})
            return attempts, delay

        result: tuple[int, float] = self._write(run)
        return result

    # --- dead letters ---------------------------------------------------------------------

    def dead_letter(self, group_id: str, group_key: str, *, reason: str, attempts: int,
                    alertnames: Sequence[str], lane: str | None,
                    fallback_channel: str | None) -> DeadLetter | None:
        """Move the group's undelivered webhooks out of the outbox into a dead letter, in
        one transaction; None when nothing was left undelivered."""
        now = self._clock()

        def run(conn: Connection) -> tuple[int, int] | None:
            ids = [int(r[0]) for r in conn.execute(
                select(notifications.c.id)
                .where(notifications.c.delivered_at.is_(None),
                       notifications.c.group_id == group_id)
                .order_by(notifications.c.id))]
            if not ids:
                return None
            recent = conn.execute(
                select(func.count()).select_from(dead_letters)
                .where(dead_letters.c.group_id == group_id,
                       dead_letters.c.fallback_state.in_(("pending", "sent")),
                       dead_letters.c.created_at > now - FALLBACK_QUIET_SECONDS)).scalar_one()
            state: FallbackState = "suppressed" if recent else "pending"
            dead_id = int(conn.execute(insert(dead_letters).values(
                group_id=group_id, group_key=group_key, created_at=now,
                reason=reason[:_ERROR_MAX], attempts=attempts,
                alertnames=json.dumps(list(alertnames)[:50], ensure_ascii=False),
                webhooks=len(ids), last_id=ids[-1], lane=lane, fallback_state=state,
                fallback_channel=fallback_channel,
            ).returning(dead_letters.c.id)).scalar_one())
            delivered = self._mark_delivered(conn, ids, now, dead_letter_id=dead_id)
            self._upsert_group(conn, group_id, group_key, {
                "attempts": 0, "retry_at": None, "last_error": reason[:_ERROR_MAX]})
            return dead_id, delivered

        result = self._write(run)
        if result is None:
            return None
        dead_id, delivered = result
        with self._stats_lock:
            stats = self._stats
            self._stats = OutboxStats(max(0, stats.depth - delivered),
                                      stats.oldest_received_at, stats.dead_letters + 1)
        found = self.get_dead_letter(dead_id)
        assert found is not None
        return found

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(dead_letters)
                               .where(dead_letters.c.id == dead_letter_id)).first()
        return None if row is None else _dead_letter(row)

    def pending_fallback(self, group_id: str) -> DeadLetter | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_FALLBACK, {"group_id": group_id}).first()
        return None if row is None else _dead_letter(row)

    def fallback_attempted(self, dead_letter_id: int, channel: str) -> None:
        """Written before the fallback post (its write-ahead marker)."""
        def run(conn: Connection) -> None:
            conn.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id)
                         .values(fallback_attempted_at=self._clock(), fallback_channel=channel))
        self._write(run)

    def fallback_done(self, dead_letter_id: int, state: FallbackState, *,
                      channel: str | None = None, ts: str | None = None,
                      error: str | None = None) -> None:
        def run(conn: Connection) -> None:
            values: dict[str, Any] = {"fallback_state": state, "fallback_ts": ts,
                                      "fallback_error": error and error[:_ERROR_MAX]}
            if channel is not None:
                values["fallback_channel"] = channel
            conn.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id)
                         .values(**values))
        self._write(run)

    def list_dead_letters(self, *, include_replayed: bool = False,
                          limit: int = 1000) -> list[DeadLetter]:
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        with self._engine.connect() as conn:
            return [_dead_letter(row) for row in conn.execute(query)]

    def replay(self, dead_letter_id: int) -> DeadLetter:
        """Put a dead letter's webhooks back in the outbox; a running notifier delivers
        them within its poll interval."""
        now = self._clock()

        def run(conn: Connection) -> DeadLetter:
            row = conn.execute(select(dead_letters)
                               .where(dead_letters.c.id == dead_letter_id)).first()
            if row is None:
                raise UnknownDeadLetter(dead_letter_id)
            found = _dead_letter(row)
            if found.replayed_at is not None:
                raise AlreadyReplayed(found)
            conn.execute(update(notifications)
                         .where(notifications.c.dead_letter_id == dead_letter_id)
                         .values(delivered_at=None, dead_letter_id=None))
            conn.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id)
                         .values(replayed_at=now))
            # Render the root again from everything: what the replayed webhooks add must
            # show even when newer webhooks were delivered meanwhile.
            conn.execute(update(groups).where(groups.c.group_id == found.group_id)
                         .values(attempts=0, retry_at=None, rendered_upto=0, updated_at=now))
            return found

        result: DeadLetter = self._write(run)
        return result

    # --- upkeep and metrics ---------------------------------------------------------------

    def _read_stats(self) -> OutboxStats:
        with self._engine.connect() as conn:
            depth, first = conn.execute(_PENDING_STATS).one()
            # The oldest undelivered webhook is the one with the smallest id: one row read,
            # where MIN(received_at) would read every pending payload's row.
            oldest = None if first is None else conn.execute(
                _RECEIVED_AT, {"id": first}).scalar()
            dead = conn.execute(_DEAD_LETTER_COUNT).scalar_one()
        return OutboxStats(int(depth), None if oldest is None else float(oldest), int(dead))

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database (PASSIVE: never waits for the writer)."""
        if self.dialect != "sqlite":
            return
        with self._engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def refresh_stats(self) -> OutboxStats:
        stats = self._read_stats()
        with self._stats_lock:
            self._stats = stats
        return stats

    def stats(self) -> OutboxStats:
        """Cached; never touches the store, so a scrape cannot hang on it."""
        with self._stats_lock:
            return self._stats

    def prune(self) -> int:
        """Forget delivered webhooks, long-resolved groups and old dead letters past their
        retention. Dead-lettered webhooks stay as long as their dead letter (replayable)."""
        now = self._clock()

        def run(conn: Connection) -> int:
            old_dead = select(dead_letters.c.id).where(
                dead_letters.c.created_at < now - DEAD_LETTER_RETENTION_SECONDS)
            conn.execute(delete(notifications).where(
                notifications.c.dead_letter_id.in_(old_dead)))
            conn.execute(delete(dead_letters).where(
                dead_letters.c.created_at < now - DEAD_LETTER_RETENTION_SECONDS))
            result = conn.execute(delete(notifications).where(
                notifications.c.delivered_at.is_not(None),
                notifications.c.dead_letter_id.is_(None),
                notifications.c.delivered_at < now - DELIVERED_RETENTION_SECONDS))
            conn.execute(delete(groups).where(
                groups.c.resolved.is_(True), groups.c.inflight.is_(None),
                groups.c.updated_at < now - RESOLVED_GROUP_RETENTION_SECONDS,
                ~select(notifications.c.id).where(
                    notifications.c.group_id == groups.c.group_id,
                    notifications.c.delivered_at.is_(None)).exists()))
            return int(result.rowcount)

        pruned: int = self._write(run)
        return pruned
