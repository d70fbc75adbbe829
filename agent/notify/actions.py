"""Slack interactivity: ``POST /slack/actions`` and the worker that carries out each click.

A click is answered 200 only once it is committed to the store, together with its signature
(the replay guard: the same signed request twice is refused with 401), and nothing else is
done on the request's thread: Slack wants an answer within 3 seconds. The action worker
takes committed clicks in order and carries each out through its handler (Acknowledge in
``silences``, hygiene choices in ``hygiene_choices``); every step with an outside effect
is written ahead in the click's ``stage``, so a notifier killed anywhere finishes the click
after its restart without doing anything twice.

Buttons carry ``{"a": kind, ...}`` as their value; clicks on other buttons (the link
buttons: Slack reports those too) are answered 200 and ignored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import parse_qs

from sqlalchemy import (
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
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from agent.clients.alertmanager import AlertmanagerError
from agent.clients.prometheus import PrometheusError
from agent.clients.slack import Message, SlackCallFailed, SlackSink
from agent.clients.slack_text import escape
from agent.notify.blocks import fit
from agent.notify.outbox import TABLES, Outbox, OutboxUnavailable
from agent.notify.signing import SigningSecret, Unverified

log = logging.getLogger(__name__)

ACTIONS_PATH: Final = "/slack/actions"
MAX_VALUE: Final = 2000  # Slack's limit on a button's value
# A click that keeps failing for reasons not its own (Alertmanager or Slack down) is
# retried this long, then given up with a message to whoever clicked.
GIVE_UP_SECONDS: Final = 3600.0
_RETRY_MAX_SECONDS: Final = 60.0
# How long a replica holds a click it is carrying out (Alertmanager and Slack calls are
# bounded well below this).
CLAIM_LEASE_SECONDS: Final = 120.0
# Clicks are kept this long (who did what), then pruned; the signatures in them are the
# replay guard and only need the 5 minutes Slack's timestamps are accepted for.
RETENTION_SECONDS: Final = 30 * 24 * 3600.0

slack_actions = Table(
    "notifier_slack_actions", TABLES,
    Column("id", Integer, primary_key=True),
    Column("signature", String(80), nullable=False, unique=True),  # the replay guard
    Column("signed_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("click", Text, nullable=False),  # Click.to_json()
    Column("state", String(16), nullable=False),  # pending, done, refused, failed
    Column("stage", Text, nullable=False, default="{}"),  # write-ahead progress
    Column("attempts", Integer, nullable=False, default=0),
    Column("retry_at", Float, nullable=True),
    Column("done_at", Float, nullable=True),
    Column("result", Text, nullable=True),
    Index("ix_notifier_slack_actions_state", "state", "id"),
    sqlite_autoincrement=True,
)


class MalformedClick(ValueError):
    pass


@dataclass(frozen=True)
class Click:
    """What the worker needs of Slack's ``block_actions`` payload (the rest is dropped)."""

    kind: str
    args: Mapping[str, str]
    user_id: str
    user_name: str
    channel_id: str
    message_ts: str
    thread_ts: str | None = None

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "args": dict(self.args), "user_id": self.user_id,
                           "user_name": self.user_name, "channel_id": self.channel_id,
                           "message_ts": self.message_ts, "thread_ts": self.thread_ts})

    @classmethod
    def from_json(cls, text: str) -> Click:
        data = json.loads(text)
        return cls(kind=data["kind"], args=data["args"], user_id=data["user_id"],
                   user_name=data["user_name"], channel_id=data["channel_id"],
                   message_ts=data["message_ts"], thread_ts=data.get("thread_ts"))


def _text(value: object, limit: int = 255) -> str:
    return value[:limit] if isinstance(value, str) else ""


def parse_click(body: bytes, kinds: Sequence[str]) -> Click | None:
    """The click in a form-encoded ``payload``; None for clicks that are not ours."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=False, max_num_fields=20)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, KeyError, IndexError, ValueError) as exc:
        raise MalformedClick("no JSON payload field") from exc
    if not isinstance(payload, dict):
        raise MalformedClick("the payload is not an object")
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        return None
    raw = actions[0].get("value")
    if not isinstance(raw, str) or len(raw) > MAX_VALUE:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("a") not in kinds:
        return None
    user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
    channel = payload.get("channel") if isinstance(payload.get("channel"), dict) else {}
    container = payload.get("container") if isinstance(payload.get("container"), dict) else {}
    assert isinstance(user, dict) and isinstance(channel, dict) and isinstance(container, dict)
    user_id = _text(user.get("id"), 64)
    channel_id = _text(channel.get("id") or container.get("channel_id"), 64)
    message_ts = _text(container.get("message_ts"), 32)
    if not user_id or not channel_id or not message_ts:
        raise MalformedClick("the click names no user, channel or message")
    args = {str(k)[:32]: str(v)[:512] for k, v in value.items() if k != "a"
            and isinstance(v, str | int | float)}
    return Click(kind=str(value["a"]), args=args, user_id=user_id,
                 user_name=_text(user.get("username") or user.get("name"), 128) or user_id,
                 channel_id=channel_id, message_ts=message_ts,
                 thread_ts=_text(container.get("thread_ts"), 32) or None)


@dataclass
class StoredAction:
    id: int
    click: Click
    stage: dict[str, Any]
    attempts: int
    received_at: float


class ActionStore:
    """The clicks in the notifier's store, written through the outbox's writer."""

    def __init__(self, outbox: Outbox, engine: Engine, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._engine = engine
        self._clock = clock

    def accept(self, signature: str, signed_at: float, click: Click) -> int | None:
        """Commit the click; None when this signature was seen before (a replay)."""
        now = self._clock()

        def run(conn: Connection) -> int | None:
            seen = conn.execute(select(slack_actions.c.id)
                                .where(slack_actions.c.signature == signature)).first()
            if seen is not None:
                return None
            return int(conn.execute(insert(slack_actions).values(
                signature=signature, signed_at=signed_at, received_at=now, kind=click.kind,
                user_id=click.user_id, click=click.to_json(), state="pending", stage="{}",
                attempts=0).returning(slack_actions.c.id)).scalar_one())

        try:
            result: int | None = self._outbox.transact(run)
        except IntegrityError:
            return None  # another replica took the same request a moment ago
        return result

    def due(self, limit: int = 20) -> list[StoredAction]:
        now = self._clock()
        query = (select(slack_actions).where(slack_actions.c.state == "pending")
                 .order_by(slack_actions.c.id).limit(limit))
        with self._engine.connect() as conn:
            rows = list(conn.execute(query))
        return [StoredAction(id=int(r.id), click=Click.from_json(r.click),
                             stage=json.loads(r.stage or "{}"), attempts=int(r.attempts),
                             received_at=float(r.received_at))
                for r in rows if r.retry_at is None or r.retry_at <= now]

    def claim(self, action: StoredAction, *, lease: float = CLAIM_LEASE_SECONDS) -> bool:
        """Take the click for this replica for ``lease`` seconds (several notifiers may share
        a PostgreSQL store); False when another took it first. A replica that dies holding
        it leaves it to the others when the lease runs out."""
        now = self._clock()

        def run(conn: Connection) -> int:
            return int(conn.execute(
                update(slack_actions)
                .where(slack_actions.c.id == action.id, slack_actions.c.state == "pending",
                       (slack_actions.c.retry_at.is_(None))
                       | (slack_actions.c.retry_at <= now))
                .values(retry_at=now + lease)).rowcount)

        return bool(self._outbox.transact(run))

    def release_claims(self) -> None:
        """At start on SQLite (one notifier per store): claims left by a notifier that was
        killed are this notifier's own; take the clicks up at once, not after the lease."""
        if self._outbox.dialect != "sqlite":
            return
        self._outbox.transact(lambda conn: conn.execute(
            update(slack_actions).where(slack_actions.c.state == "pending")
            .values(retry_at=None)))

    def set_stage(self, action: StoredAction, **values: Any) -> None:
        action.stage.update(values)
        stage = json.dumps(action.stage)
        self._outbox.transact(lambda conn: conn.execute(
            update(slack_actions).where(slack_actions.c.id == action.id).values(stage=stage)))

    def finish(self, action: StoredAction, state: str, result: str) -> None:
        now = self._clock()
        self._outbox.transact(lambda conn: conn.execute(
            update(slack_actions).where(slack_actions.c.id == action.id)
            .values(state=state, result=result[:500], done_at=now, retry_at=None)))

    def retry_later(self, action: StoredAction, error: str, delay: float) -> None:
        now = self._clock()
        self._outbox.transact(lambda conn: conn.execute(
            update(slack_actions).where(slack_actions.c.id == action.id)
            .values(attempts=action.attempts + 1, retry_at=now + delay,
                    result=error[:500])))

    def get(self, action_id: int) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(slack_actions)
                               .where(slack_actions.c.id == action_id)).first()
        return None if row is None else dict(row._mapping)

    def all(self) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(slack_actions).order_by(slack_actions.c.id))]

    def prune(self) -> None:
        cutoff = self._clock() - RETENTION_SECONDS
        self._outbox.transact(lambda conn: conn.execute(
            delete(slack_actions).where(slack_actions.c.state != "pending",
                                        slack_actions.c.received_at < cutoff)))


@dataclass(frozen=True)
class Done:
    """How a click ended: ``done`` or ``refused`` (said to the user, ephemeral)."""

    state: str
    result: str
    tell_user: str | None = None


def reply_once(sink: SlackSink, store: ActionStore, action: StoredAction, *, channel_id: str,
               thread_ts: str, text: str) -> None:
    """The thread's line about a click, posted once: written ahead in the click's stage and,
    after a crash, found by its metadata before it is posted again."""
    if action.stage.get("replied"):
        return
    op_id = f"steward-action-{action.id}"
    found = None
    if action.stage.get("replying"):
        found = sink.find_posted(channel_id, op_id, oldest=action.received_at - 120.0,
                                 thread_ts=thread_ts)
    else:
        store.set_stage(action, replying=True)
    if found is None:
        sink.post(channel_id, Message(text=fit(text, 3000), blocks=[
            {"type": "section", "text": {"type": "mrkdwn", "text": fit(text, 3000),
                                         "verbatim": True}}]),
            thread_ts=thread_ts, op_id=op_id)
    store.set_stage(action, replied=True)


class Retry(Exception):
    """Not the click's fault (a server down, a group busy): try again soon."""


class Handler(Protocol):
    def __call__(self, action: StoredAction, store: ActionStore) -> Done: ...


@dataclass
class Authorisation:
    """Who may click: ``allowed_users`` (empty: whoever Slack sends a click for, which is
    only someone who sees the message: the channel's members)."""

    allowed_users: frozenset[str] = frozenset()

    def may_click(self, user_id: str) -> bool:
        return not self.allowed_users or user_id in self.allowed_users


class SlackActionsEndpoint:
    """``POST /slack/actions`` for the HTTP server: (status, body)."""

    def __init__(self, secret: SigningSecret, store: ActionStore, kinds: Sequence[str], *,
                 on_accepted: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._store = store
        self._kinds = tuple(kinds)
        self._on_accepted = on_accepted
        self._clock = clock

    def __call__(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        try:
            verified = self._secret.verify(headers, body, now=self._clock())
        except Unverified as exc:
            log.warning("Slack action refused", extra={"reason": str(exc)})
            return 401, "unauthorized"
        try:
            click = parse_click(body, self._kinds)
        except MalformedClick as exc:
            return 400, str(exc)
        if click is None:
            return 200, ""
        try:
            action_id = self._store.accept(verified.signature, verified.timestamp, click)
        except OutboxUnavailable:
            return 503, "cannot persist the click"
        if action_id is None:
            log.warning("Slack action refused", extra={"reason": "replayed request"})
            return 401, "unauthorized"
        log.info("Slack action accepted", extra={"action": action_id, "kind": click.kind,
                                                 "user": click.user_id})
        self._on_accepted()
        return 200, ""


@dataclass
class Periodic:
    """Work the action worker also does, every ``every`` seconds (graphs, the digest)."""

    name: str
    every: float
    run: Callable[[], None]
    next_at: float = 0.0


@dataclass
class ActionWorker:
    store: ActionStore
    sink: SlackSink
    handlers: Mapping[str, Handler]
    authorisation: Authorisation = field(default_factory=Authorisation)
    periodic: list[Periodic] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    poll_seconds: float = 1.0
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.store.release_claims()
        self._thread = threading.Thread(target=self._loop, name="slack-actions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(15)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:
                log.exception("the Slack action worker failed; going on")
            self._wake.wait(self.poll_seconds)

    def run_once(self) -> None:
        """Every due click, then whatever periodic work is due."""
        for action in self.store.due():
            if self._stop.is_set():
                return
            if self.store.claim(action):
                self.carry_out(action)
        now = self.monotonic()
        for task in self.periodic:
            if now >= task.next_at:
                task.next_at = now + task.every
                try:
                    task.run()
                except Exception:
                    log.exception("periodic notifier work failed", extra={"task": task.name})

    def carry_out(self, action: StoredAction) -> None:
        click = action.click
        if not self.authorisation.may_click(click.user_id):
            done = Done("refused", "not allowed to click",
                        tell_user="Steward: you are not on the list of people who may use "
                                  "these buttons (notifier.actions.allowed_users).")
        else:
            handler = self.handlers.get(click.kind)
            if handler is None:
                done = Done("refused", f"no handler for {click.kind}")
            else:
                try:
                    done = handler(action, self.store)
                except (Retry, SlackCallFailed, OutboxUnavailable) as exc:
                    self._later(action, exc)
                    return
                except Exception as exc:
                    if _transient(exc):
                        self._later(action, exc)
                        return
                    log.exception("a Slack action failed", extra={"action": action.id})
                    done = Done("failed", f"{type(exc).__name__}: {exc}",
                                tell_user="Steward could not do that; the notifier's log "
                                          f"says why (action {action.id}).")
        self.store.finish(action, done.state, done.result)
        log.info("Slack action carried out", extra={
            "action": action.id, "kind": click.kind, "user": click.user_id,
            "state": done.state, "result": done.result})
        if done.tell_user:
            self.tell(click, done.tell_user)

    def tell(self, click: Click, text: str) -> None:
        try:
            self.sink.post_ephemeral(click.channel_id, click.user_id,
                                     Message(text=fit(escape(text), 3000)))
        except SlackCallFailed as exc:
            log.warning("could not tell the user", extra={"user": click.user_id,
                                                          "error": str(exc)})

    def _later(self, action: StoredAction, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.clock() - action.received_at > GIVE_UP_SECONDS:
            self.store.finish(action, "failed", error)
            self.tell(action.click, "Steward gave up on your click after an hour of "
                                    f"failures: {error}")
            return
        delay = min(_RETRY_MAX_SECONDS, 0.5 * 2 ** min(action.attempts, 10))
        log.warning("Slack action will be retried", extra={
            "action": action.id, "error": error, "delay": delay})
        self.store.retry_later(action, error, delay)


def _transient(exc: Exception) -> bool:
    """A server or the store, not the click: retried."""
    return isinstance(exc, AlertmanagerError | PrometheusError | OperationalError
                      | InterfaceError)
