"""The notifier's durable state: received webhooks waiting for Slack, and each group's message.

A webhook is acknowledged only once its row is committed (SQLite: WAL, synchronous=FULL).
Concurrent webhooks share one commit (group commit), so acknowledging a storm costs one
fsync per batch rather than one per request. Each group row maps the Alertmanager
``groupKey`` to its Slack message (channel, ts) and to the incident's alerts, and carries
the write-ahead marker that makes a crash between "Slack accepted" and "row updated" safe.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from agent.notify.incident import Alerts, dump_alerts, load_alerts
from agent.notify.webhook import Notification
from agent.state import metadata

log = logging.getLogger(__name__)

notifications = Table(
    "notifier_notifications", metadata,
    Column("id", Integer, primary_key=True),
    Column("group_id", String(32), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("alert_count", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Index("ix_notifier_notifications_pending", "delivered_at", "group_id", "id"),
    # AUTOINCREMENT: ids are never reused after pruning, so delivery order stays id order.
    sqlite_autoincrement=True,
)

groups = Table(
    "notifier_groups", metadata,
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
)

channels = Table(
    "notifier_channels", metadata,
    Column("name", String(255), primary_key=True),
    Column("channel_id", String(64), nullable=False),
)

# Delivered webhooks are kept this long for inspection, then pruned.
DELIVERED_RETENTION_SECONDS: Final = 24 * 3600
# Groups whose incident resolved this long ago are forgotten: a new incident gets a new message.
RESOLVED_GROUP_RETENTION_SECONDS: Final = 7 * 24 * 3600
_ENQUEUE_TIMEOUT_SECONDS: Final = 30.0
_BATCH_MAX: Final = 512


class OutboxUnavailable(RuntimeError):
    """The store could not persist a webhook (the HTTP layer answers 503: Alertmanager retries)."""


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


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_received_at: float | None


@dataclass
class _Request:
    notification: Notification
    payload: str
    future: Future[int]


class Outbox:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time,
                 on_enqueued: Callable[[Sequence[tuple[Notification, int]]], None] | None = None
                 ) -> None:
        self._engine = engine
        self._clock = clock
        self._on_enqueued = on_enqueued
        # One writer at a time inside this process: SQLite's own busy handler would sleep
        # in milliseconds between retries, which shows up directly in webhook latency.
        self._write_lock = threading.Lock()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_conn: Connection | None = None
        self._stats_lock = threading.Lock()
        self._stats = self._read_stats()

    # --- webhook side ---------------------------------------------------------------------

    def set_listener(self, on_enqueued: Callable[[Sequence[tuple[Notification, int]]], None]
                     ) -> None:
        self._on_enqueued = on_enqueued

    def start(self) -> None:
        self._writer_conn = self._engine.connect()
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
        request = _Request(notification, payload, Future())
        if not self.running:
            raise OutboxUnavailable("outbox writer is not running")
        self._requests.put(request)
        try:
            return request.future.result(timeout=_ENQUEUE_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise OutboxUnavailable("timed out persisting the webhook") from exc

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
            self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch: list[_Request]) -> None:
        now = self._clock()
        rows = [{"group_id": r.notification.group_id, "received_at": now,
                 "status": r.notification.status, "alert_count": len(r.notification.alerts),
                 "payload": r.payload} for r in batch]
        try:
            # One multi-row INSERT ... RETURNING for the batch: each extra statement is one
            # more trip through the GIL, which under a storm is what webhooks wait for.
            conn = self._writer_conn
            assert conn is not None
            with self._write_lock, conn.begin():
                result = conn.execute(
                    insert(notifications).returning(notifications.c.id,
                                                    sort_by_parameter_order=True), rows)
                ids = [int(row[0]) for row in result]
        except Exception as exc:
            log.exception("could not persist webhooks", extra={"count": len(batch)})
            for request in batch:
                request.future.set_exception(OutboxUnavailable(str(exc)))
            return
        with self._stats_lock:
            oldest = self._stats.oldest_received_at
            self._stats = OutboxStats(self._stats.depth + len(batch),
                                      now if oldest is None else oldest)
        for request, new_id in zip(batch, ids, strict=True):
            request.future.set_result(new_id)
        if self._on_enqueued is not None:
            self._on_enqueued([(r.notification, i) for r, i in zip(batch, ids, strict=True)])

    # --- delivery side --------------------------------------------------------------------

    def pending_groups(self) -> dict[str, int]:
        """Every group with undelivered webhooks -> its oldest undelivered id."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(notifications.c.group_id, func.min(notifications.c.id))
                .where(notifications.c.delivered_at.is_(None))
                .group_by(notifications.c.group_id))
            return {row[0]: int(row[1]) for row in rows}

    def pending(self, group_id: str) -> list[Pending]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(notifications.c.id, notifications.c.received_at,
                       notifications.c.payload)
                .where(notifications.c.delivered_at.is_(None),
                       notifications.c.group_id == group_id)
                .order_by(notifications.c.id))
            return [Pending(int(r.id), float(r.received_at),
                            Notification.model_validate_json(r.payload)) for r in rows]

    def first_pending(self, group_id: str) -> Pending | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(notifications.c.id, notifications.c.received_at,
                       notifications.c.payload)
                .where(notifications.c.delivered_at.is_(None),
                       notifications.c.group_id == group_id)
                .order_by(notifications.c.id).limit(1)).first()
        if row is None:
            return None
        return Pending(int(row.id), float(row.received_at),
                       Notification.model_validate_json(row.payload))

    def group(self, group_id: str) -> GroupState | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(groups).where(groups.c.group_id == group_id)).first()
        if row is None:
            return None
        return GroupState(
            group_id=row.group_id, group_key=row.group_key, lane=row.lane,
            channel_id=row.channel_id, ts=row.ts, alerts=load_alerts(row.alerts),
            resolved=bool(row.resolved), rendered_upto=int(row.rendered_upto),
            inflight=Inflight.from_json(row.inflight) if row.inflight else None)

    def _upsert_group(self, conn: Any, group_id: str, group_key: str,
                      values: dict[str, Any]) -> None:
        values = {**values, "updated_at": self._clock()}
        result = conn.execute(update(groups).where(groups.c.group_id == group_id)
                              .values(**values))
        if result.rowcount == 0:
            conn.execute(insert(groups).values(
                group_id=group_id, group_key=group_key,
                **{"alerts": "[]", "resolved": False, "rendered_upto": 0, **values}))

    def mark_inflight(self, group_id: str, group_key: str, inflight: Inflight) -> None:
        with self._write_lock, self._engine.begin() as conn:
            self._upsert_group(conn, group_id, group_key, {"inflight": inflight.to_json()})

    def clear_inflight(self, group_id: str) -> None:
        with self._write_lock, self._engine.begin() as conn:
            conn.execute(update(groups).where(groups.c.group_id == group_id)
                         .values(inflight=None, updated_at=self._clock()))

    def set_rendered(self, group_id: str, rendered_upto: int) -> None:
        with self._write_lock, self._engine.begin() as conn:
            conn.execute(update(groups).where(groups.c.group_id == group_id)
                         .values(rendered_upto=rendered_upto, updated_at=self._clock()))

    def forget_root(self, group_id: str) -> None:
        """The root message is gone from Slack (deleted by a user): post a new one."""
        with self._write_lock, self._engine.begin() as conn:
            conn.execute(update(groups).where(groups.c.group_id == group_id)
                         .values(ts=None, rendered_upto=0, updated_at=self._clock()))

    def commit(self, group_id: str, group_key: str, outcome: Outcome) -> None:
        """Record a finished step: the group's new state and its webhooks as delivered."""
        now = self._clock()
        values: dict[str, Any] = {
            "alerts": dump_alerts(outcome.alerts), "resolved": outcome.resolved,
            "rendered_upto": outcome.rendered_upto, "inflight": None,
        }
        if outcome.ts is not None:
            values.update(ts=outcome.ts, channel_id=outcome.channel_id, lane=outcome.lane)
        with self._write_lock, self._engine.begin() as conn:
            self._upsert_group(conn, group_id, group_key, values)
            delivered = 0
            for start in range(0, len(outcome.delivered_ids), 500):
                chunk = outcome.delivered_ids[start:start + 500]
                result = conn.execute(
                    update(notifications)
                    .where(notifications.c.id.in_(chunk), notifications.c.delivered_at.is_(None))
                    .values(delivered_at=now))
                delivered += int(result.rowcount)
            if outcome.channel_id is not None and outcome.lane is not None:
                known = conn.execute(select(channels.c.channel_id)
                                     .where(channels.c.name == outcome.lane)).first()
                if known is None:
                    conn.execute(insert(channels).values(name=outcome.lane,
                                                         channel_id=outcome.channel_id))
        with self._stats_lock:
            self._stats = OutboxStats(max(0, self._stats.depth - delivered),
                                      self._stats.oldest_received_at)

    def channel_id(self, name: str) -> str | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(channels.c.channel_id)
                               .where(channels.c.name == name)).first()
        return None if row is None else str(row[0])

    # --- upkeep and metrics ---------------------------------------------------------------

    def _read_stats(self) -> OutboxStats:
        with self._engine.connect() as conn:
            row = conn.execute(select(func.count(), func.min(notifications.c.received_at))
                               .where(notifications.c.delivered_at.is_(None))).one()
        return OutboxStats(int(row[0]), None if row[1] is None else float(row[1]))

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
        """Forget delivered webhooks and long-resolved groups past their retention."""
        now = self._clock()
        with self._write_lock, self._engine.begin() as conn:
            result = conn.execute(delete(notifications).where(
                notifications.c.delivered_at.is_not(None),
                notifications.c.delivered_at < now - DELIVERED_RETENTION_SECONDS))
            conn.execute(delete(groups).where(
                groups.c.resolved.is_(True), groups.c.inflight.is_(None),
                groups.c.updated_at < now - RESOLVED_GROUP_RETENTION_SECONDS,
                ~select(notifications.c.id).where(
                    notifications.c.group_id == groups.c.group_id,
                    notifications.c.delivered_at.is_(None)).exists()))
            return int(result.rowcount)
