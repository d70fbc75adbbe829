"""Acknowledge from Slack: an Alertmanager silence for exactly one alert, owned by who clicked.

Acknowledge (1 h, 4 h or until Monday) creates a silence (API v2) with one equality matcher
per label of the alert, ``createdBy`` the Slack user and a comment linking the message;
the thread says "acknowledged by @x until ...", and the root shows it on the alert with an
Unacknowledge button, which expires the silence. Every silence made here is kept in
``notifier_silences``: that is what the root shows, what Unacknowledge expires and what
the weekly forgotten-silences digest looks at.

Each step is idempotent across a crash: the silence's creation is written ahead in the
click's stage and, after a restart, looked for in Alertmanager by the click's tag in its
comment before anything is created; the thread reply is found by its metadata before it is
posted again; the root is re-rendered from the store (an update is idempotent).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

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
    insert,
    select,
    update,
)

from agent.clients.alertmanager import AlertmanagerClient
from agent.clients.slack import RENDER_ERRORS, Message, SlackCallFailed, SlackRejected, SlackSink
from agent.clients.slack_text import escape, plain
from agent.cron import cron_trigger
from agent.notify.actions import ActionStore, Done, Retry, StoredAction, reply_once
from agent.notify.alert_links import LinkSettings
from agent.notify.blocks import (
    Block,
    GroupView,
    fit,
    fit_escaped,
    render_group,
    render_plain,
    where,
)
from agent.notify.group_lock import GroupLocks
from agent.notify.incident import Alerts, AlertState, accumulate, ordered
from agent.notify.outbox import TABLES, Outbox

log = logging.getLogger(__name__)

ACK: Final = "ack"
UNACK: Final = "unack"
DURATIONS: Final = {"1h": "1 h", "4h": "4 h", "monday": "until Monday"}
_USER_ID: Final = re.compile(r"^[UW][A-Z0-9]{2,20}$")

silences = Table(
    "notifier_silences", TABLES,
    Column("silence_id", String(64), primary_key=True),
    Column("group_id", String(32), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("alertname", String(255), nullable=False),
    Column("labels", Text, nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    Column("expired_at", Float, nullable=True),
    Column("expired_by", String(64), nullable=True),
    Column("action_id", Integer, nullable=False),
    Index("ix_notifier_silences_alert", "group_id", "fingerprint"),
)

schedule = Table(
    "notifier_schedule", TABLES,
    Column("name", String(64), primary_key=True),
    Column("last_at", Float, nullable=False),
)


@dataclass(frozen=True)
class SilenceRecord:
    silence_id: str
    group_id: str
    fingerprint: str
    alertname: str
    labels: dict[str, str]
    user_id: str
    created_by: str
    created_at: float
    ends_at: float
    expired_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> SilenceRecord:
        return cls(silence_id=row.silence_id, group_id=row.group_id,
                   fingerprint=row.fingerprint, alertname=row.alertname,
                   labels=json.loads(row.labels), user_id=row.user_id,
                   created_by=row.created_by, created_at=float(row.created_at),
                   ends_at=float(row.ends_at),
                   expired_at=None if row.expired_at is None else float(row.expired_at))


def ack_until(choice: str, now: datetime, *, monday_hour: int = 9) -> datetime:
    """When an acknowledgement chosen at ``now`` ends."""
    if choice == "1h":
        return now + timedelta(hours=1)
    if choice == "4h":
        return now + timedelta(hours=4)
    if choice == "monday":
        day = now.astimezone(UTC).replace(hour=monday_hour, minute=0, second=0, microsecond=0)
        day += timedelta(days=(7 - day.weekday()) % 7)
        while day <= now:
            day += timedelta(days=7)
        return day
    raise ValueError(f"unknown duration {choice!r}")


def mention(user_id: str) -> str:
    """``<@U…>`` for a real user id; anything else escaped (never markup from outside)."""
    return f"<@{user_id}>" if _USER_ID.match(user_id) else escape(user_id)


def slack_date(epoch: float) -> str:
    when = datetime.fromtimestamp(epoch, UTC)
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(epoch)}^{{date_short_pretty}} {{time}}|{fallback}>"


def _button(label: str, action_id: str, value: Mapping[str, str], *,
            style: str | None = None) -> Block:
    button: Block = {"type": "button", "text": {"type": "plain_text", "text": label,
                                                "emoji": True},
                     "action_id": action_id, "value": json.dumps(value, separators=(",", ":"))}
    if style:
        button["style"] = style
    return button


class SilenceBook:
    """``notifier_silences``: the silences Steward made."""

    def __init__(self, outbox: Outbox, engine: Engine, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._engine = engine
        self._clock = clock

    def record(self, record: SilenceRecord, action_id: int) -> None:
        def run(conn: Connection) -> None:
            if conn.execute(select(silences.c.silence_id).where(
                    silences.c.silence_id == record.silence_id)).first() is None:
                conn.execute(insert(silences).values(
                    silence_id=record.silence_id, group_id=record.group_id,
                    fingerprint=record.fingerprint, alertname=record.alertname[:255],
                    labels=json.dumps(record.labels), user_id=record.user_id,
                    created_by=record.created_by[:255], created_at=record.created_at,
                    ends_at=record.ends_at, action_id=action_id))
        self._outbox.transact(run)

    def expired(self, silence_id: str, *, by: str | None) -> None:
        now = self._clock()
        self._outbox.transact(lambda conn: conn.execute(
            update(silences).where(silences.c.silence_id == silence_id,
                                   silences.c.expired_at.is_(None))
            .values(expired_at=now, expired_by=by)))

    def active(self, group_id: str | None = None) -> list[SilenceRecord]:
        query = select(silences).where(silences.c.expired_at.is_(None),
                                       silences.c.ends_at > self._clock())
        if group_id is not None:
            query = query.where(silences.c.group_id == group_id)
        with self._engine.connect() as conn:
            return [SilenceRecord.from_row(r) for r in conn.execute(
                query.order_by(silences.c.created_at))]

    def all(self) -> list[SilenceRecord]:
        with self._engine.connect() as conn:
            return [SilenceRecord.from_row(r) for r in conn.execute(
                select(silences).order_by(silences.c.created_at))]


class AckState:
    """An alert group's acknowledgements, for its root message (blocks.AlertActions)."""

    def __init__(self, group_id: str, active: list[SilenceRecord]) -> None:
        self._group_id = group_id
        self._by_alert = {r.fingerprint: r for r in active}

    def note(self, alert: AlertState) -> str | None:
        record = self._by_alert.get(alert.fingerprint)
        if record is None or not alert.firing:
            return None
        return f"🔕 acknowledged by {mention(record.user_id)} until {slack_date(record.ends_at)}"

    def buttons(self, alert: AlertState) -> list[Block]:
        if not alert.firing:
            return []
        key = {"g": self._group_id, "f": alert.fingerprint}
        short = alert.fingerprint[:16]
        if alert.fingerprint in self._by_alert:
            return [_button("↩️ Unacknowledge", f"unack-{short}", {"a": UNACK, **key})]
        return [_button("✋ Ack 1h", f"ack-1h-{short}", {"a": ACK, "d": "1h", **key},
                        style="primary"),
                _button("Ack 4h", f"ack-4h-{short}", {"a": ACK, "d": "4h", **key}),
                _button("Ack until Mon", f"ack-mon-{short}", {"a": ACK, "d": "monday", **key})]


@dataclass(frozen=True)
class CurrentGroup:
    group_key: str
    channel_id: str
    ts: str
    alerts: Alerts
    view: GroupView


class Acknowledger:
    """The ``ack`` and ``unack`` click handlers."""

    def __init__(self, *, outbox: Outbox, engine: Engine, book: SilenceBook, sink: SlackSink,
                 alertmanager: AlertmanagerClient, locks: GroupLocks, links: LinkSettings,
                 clock: Callable[[], float] = time.time, monday_hour: int = 9) -> None:
        self._outbox = outbox
        self._engine = engine
        self._book = book
        self._sink = sink
        self._am = alertmanager
        self._locks = locks
        self._links = links
        self._clock = clock
        self._monday_hour = monday_hour
        self._render: Callable[[str, GroupView], Message] | None = None

    def render_with(self, render: Callable[[str, GroupView], Message]) -> None:
        """Render roots as delivery does (``Delivery.render_root``: with the owner notices
        they link to), so that an acknowledgement never drops what a step showed."""
        self._render = render

    def actions_for(self, group_id: str) -> AckState:
        return AckState(group_id, self._book.active(group_id))

    # --- the group as its root shows it ---------------------------------------------------

    def current(self, group_id: str) -> CurrentGroup | None:
        """The group as its root shows it: the committed incident plus what was rendered
        into the root but not yet replied to (those webhooks are still pending)."""
        state = self._outbox.group(group_id)
        if state is None or state.ts is None or state.channel_id is None:
            return None
        rendered = [p.notification for p in self._outbox.pending(group_id)
                    if p.id <= state.rendered_upto]
        alerts, _ = accumulate(state.alerts, rendered)
        # Delivered webhooks are kept a day: older groups show without their group labels.
        latest = rendered[-1] if rendered else self._outbox.last_notification(group_id)
        view = GroupView(alerts=ordered(alerts.values()),
                         group_labels=latest.group_labels if latest is not None else {},
                         truncated_alerts=latest.truncated_alerts if latest else 0)
        return CurrentGroup(group_key=state.group_key, channel_id=state.channel_id, ts=state.ts,
                            alerts=alerts, view=view)

    def rerender(self, group_id: str) -> None:
        """Update the root with the acknowledgements as they are now (under the group's lock,
        so that a delivery step does not write an older rendering after ours)."""
        if not self._locks.try_lock(group_id):
            raise Retry("the alert group is being delivered")
        try:
            group = self.current(group_id)
            if group is None:
                return
            message = self._render(group.group_key, group.view) if self._render is not None \
                else render_group(group.view, self._links, self.actions_for(group_id))
            try:
                self._sink.update(group.channel_id, group.ts, message)
            except SlackRejected as exc:
                if exc.error not in RENDER_ERRORS:
                    raise
                self._sink.update(group.channel_id, group.ts, render_plain(message))
        finally:
            self._locks.unlock(group_id)

    def _reply(self, action: StoredAction, store: ActionStore, group: CurrentGroup,
               text: str) -> None:
        reply_once(self._sink, store, action, channel_id=group.channel_id,
                   thread_ts=group.ts, text=text)

    def _target(self, action: StoredAction) -> tuple[CurrentGroup, AlertState] | Done:
        click = action.click
        group_id, fingerprint = click.args.get("g", ""), click.args.get("f", "")
        group = self.current(group_id)
        if group is None or group.channel_id != click.channel_id:
            return Done("refused", "no such alert group in this channel",
                        tell_user="Steward does not know that alert group any more.")
        alert = group.alerts.get(fingerprint)
        if alert is None:
            return Done("refused", "no such alert in the group",
                        tell_user="Steward does not know that alert any more.")
        return group, alert

    # --- the handlers ---------------------------------------------------------------------

    def ack(self, action: StoredAction, store: ActionStore) -> Done:
        click = action.click
        choice = click.args.get("d", "")
        if choice not in DURATIONS:
            return Done("refused", f"unknown duration {choice[:20]!r}")
        target = self._target(action)
        if isinstance(target, Done):
            return target
        group, alert = target
        group_id = click.args["g"]
        if not alert.firing and "silence_id" not in action.stage:
            return Done("refused", "the alert is resolved",
                        tell_user=f"{alert.alertname} has resolved already: nothing to "
                                  "acknowledge.")
        silence_id = action.stage.get("silence_id")
        if silence_id is None:
            silence_id = self._create(action, store, alert, group)
        record_ends = float(action.stage["ends_at"])
        for older in self._book.active(group_id):
            if older.fingerprint == alert.fingerprint and older.silence_id != silence_id:
                self._am.expire_silence(older.silence_id)  # a new ack replaces the old one
                self._book.expired(older.silence_id, by=click.user_id)
        self._reply(action, store, group,
                    f"🔕 *{fit_escaped(alert.alertname, 200)}* acknowledged by "
                    f"{mention(click.user_id)} until {slack_date(record_ends)} "
                    f"(Alertmanager silence `{escape(silence_id)}`)")
        self.rerender(group_id)
        return Done("done", f"silence {silence_id} until "
                            f"{datetime.fromtimestamp(record_ends, UTC).isoformat()}")

    def _create(self, action: StoredAction, store: ActionStore, alert: AlertState,
                group: CurrentGroup) -> str:
        click = action.click
        tag = f"steward-action-{action.id}"
        silence_id = None
        if action.stage.get("creating"):
            # Killed after asking Alertmanager: look before creating another.
            silence_id = next((s.id for s in self._am.silences()
                               if tag in s.comment and s.state != "expired"), None)
        else:
            now = datetime.fromtimestamp(self._clock(), UTC)
            ends = ack_until(click.args["d"], now, monday_hour=self._monday_hour)
            store.set_stage(action, creating=True, starts_at=now.timestamp(),
                            ends_at=ends.timestamp())
        created_by = f"{click.user_name} (Slack {click.user_id})"
        if silence_id is None:
            try:
                link = self._sink.permalink(group.channel_id, group.ts)
            except SlackCallFailed:
                link = None
            link = link or f"Slack message {group.channel_id}/{group.ts}"
            silence_id = self._am.create_silence(
                dict(alert.labels),
                starts_at=datetime.fromtimestamp(float(action.stage["starts_at"]), UTC),
                ends_at=datetime.fromtimestamp(float(action.stage["ends_at"]), UTC),
                created_by=created_by,
                comment=f"Acknowledged in Slack by {click.user_name}: {link} [{tag}]")
        self._book.record(SilenceRecord(
            silence_id=silence_id, group_id=click.args["g"], fingerprint=alert.fingerprint,
            alertname=alert.alertname, labels=dict(alert.labels), user_id=click.user_id,
            created_by=created_by, created_at=float(action.stage["starts_at"]),
            ends_at=float(action.stage["ends_at"]), expired_at=None), action.id)
        store.set_stage(action, silence_id=silence_id)
        log.info("alert acknowledged: silence created", extra={
            "silence": silence_id, "alertname": alert.alertname, "user": click.user_id})
        return silence_id

    def unack(self, action: StoredAction, store: ActionStore) -> Done:
        click = action.click
        target = self._target(action)
        if isinstance(target, Done):
            return target
        group, alert = target
        group_id = click.args["g"]
        mine = [r for r in self._book.active(group_id) if r.fingerprint == alert.fingerprint]
        expired = list(action.stage.get("expired", []))
        if not mine and not expired:
            return Done("refused", "not acknowledged",
                        tell_user=f"{alert.alertname} is not acknowledged.")
        for record in mine:
            self._am.expire_silence(record.silence_id)
            self._book.expired(record.silence_id, by=click.user_id)
            expired.append(record.silence_id)
            store.set_stage(action, expired=expired)
        self._reply(action, store, group,
                    f"🔔 *{fit_escaped(alert.alertname, 200)}* unacknowledged by "
                    f"{mention(click.user_id)}: it notifies again")
        self.rerender(group_id)
        return Done("done", f"expired {', '.join(expired)}")


class ForgottenSilences:
    """The weekly digest: silences Steward made that are still active in Alertmanager
    although the alert they were made for is gone (resolved)."""

    NAME: Final = "forgotten_silences"

    def __init__(self, *, outbox: Outbox, engine: Engine, book: SilenceBook,
                 alertmanager: AlertmanagerClient, sink: SlackSink, channel: str,
                 cron: str, clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._engine = engine
        self._book = book
        self._am = alertmanager
        self._sink = sink
        self._channel = channel
        self._trigger = cron_trigger(cron, timezone=UTC)
        self._clock = clock

    def forgotten(self) -> list[SilenceRecord]:
        """Ours, active in Alertmanager, their alert no longer there. Silences someone
        expired in Alertmanager itself are marked expired here on the way."""
        ours = self._book.active()
        if not ours:
            return []
        live = {s.id: s for s in self._am.silences()}
        alerts = {str(a.get("fingerprint")) for a in self._am.alerts()}
        found = []
        for record in ours:
            silence = live.get(record.silence_id)
            if silence is None or silence.state == "expired":
                self._book.expired(record.silence_id, by=None)
                continue
            if record.fingerprint not in alerts:
                found.append(record)
        return found

    def _last(self) -> float | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(schedule.c.last_at)
                               .where(schedule.c.name == self.NAME)).first()
        return None if row is None else float(row[0])

    def _set_last(self, at: float, *, new: bool, was: float | None = None) -> bool:
        """Record a run; with ``was``, only if no other replica recorded one since (the
        claim that makes one digest per schedule across replicas)."""
        def run(conn: Connection) -> int:
            if new:
                conn.execute(insert(schedule).values(name=self.NAME, last_at=at))
                return 1
            query = update(schedule).where(schedule.c.name == self.NAME)
            if was is not None:
                query = query.where(schedule.c.last_at == was)
            return int(conn.execute(query.values(last_at=at)).rowcount)
        return bool(self._outbox.transact(run))

    def due(self) -> float | None:
        """The last run's time when the next digest is due, else None."""
        now = self._clock()
        last = self._last()
        if last is None:
            self._set_last(now, new=True)  # the first digest is the next scheduled one
            return None
        upcoming = self._trigger.get_next_fire_time(None, datetime.fromtimestamp(last, UTC))
        return last if upcoming is not None and upcoming.timestamp() <= now else None

    def run(self) -> None:
        last = self.due()
        if last is None:
            return
        found = self.forgotten()
        # Claimed before the post, so that replicas sharing the store send it once; a
        # notifier killed in between skips that week's digest (the silences stay listed
        # in Alertmanager, and next week's digest names them).
        if not self._set_last(self._clock(), new=False, was=last):
            return
        if found:
            self._sink.post(self._channel, render_digest(found, self._am.url))
        log.info("forgotten-silences digest", extra={"silences": len(found)})


def render_digest(found: list[SilenceRecord], alertmanager_url: str) -> Message:
    lines = [f"🔕 *Forgotten silences*: {len(found)} silence(s) Steward created for an "
             "acknowledged alert are still active, but the alert has resolved. Expire them "
             "in Alertmanager unless they are still wanted."]
    for record in found[:40]:
        place = " · ".join(where(record.labels))
        lines.append(f"• *{fit_escaped(record.alertname, 120)}*"
                     + (f" ({fit_escaped(place, 200)})" if place else "")
                     + f": by {mention(record.user_id)} until {slack_date(record.ends_at)}, "
                       f"silence `{escape(record.silence_id)}`")
    if len(found) > 40:
        lines.append(f"… and {len(found) - 40} more")
    text = "\n".join(lines)
    return Message(text=fit(plain(f"Forgotten silences: {len(found)}"), 3000),
                   blocks=[{"type": "section", "text": {"type": "mrkdwn",
                                                        "text": fit(text, 3000),
                                                        "verbatim": True}}])
