"""One delivery step for one alert group: at most one Slack write, safe to crash anywhere.

A step looks at the group's undelivered webhooks (in id order) and does the first thing
still missing: post the root message, update it in place, or reply in its thread with what
changed. Posts are idempotent through a write-ahead marker (see ``outbox.Inflight``): after
a crash or a lost response, the next step finds the post in Slack by its metadata and
records it instead of posting twice. Updates are idempotent by nature.

A group that keeps failing is moved out of the outbox into a dead letter
(:meth:`Delivery.dead_letter`), and a plain notice (escaped, no blocks) tells its channel
which alerts could not be shown and why; the notice is sent by the group's next step, with
the same write-ahead lookup as any post.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from agent.clients.slack import (
    RENDER_ERRORS,
    ROOT_GONE_ERRORS,
    Message,
    Posted,
    SlackRateLimited,
    SlackRejected,
    SlackSink,
    SlackUnavailable,
)
from agent.clients.slack_params import NoChannel, Router
from agent.notify.alert_links import LinkSettings
from agent.notify.blocks import (
    MAX_TEXT,
    AlertActions,
    GroupView,
    fit,
    fit_escaped,
    render_changes,
    render_group,
    render_plain,
)
from agent.notify.incident import Alerts, accumulate, all_resolved, ordered, without_stale
from agent.notify.outbox import (
    DeadLetter,
    GroupState,
    Inflight,
    Outbox,
    Outcome,
    Pending,
    lenient_fields,
)
from agent.notify.owners import (
    NoticeLinks,
    OwnerNotices,
    is_owner_group,
    notices_section,
    oncall_groups,
    owner_of,
    render_notice,
    slack_permalink,
)
from agent.notify.webhook import Notification
from agent.notify.webhook import group_id as group_id_of

log = logging.getLogger(__name__)

# How far before our own clock to search Slack for a post we may have made: Slack's ts
# comes from Slack's clock.
_CLOCK_SKEW_SECONDS: Final = 120.0
UNROUTABLE_LANE: Final = ""
KEEP_QUEUED: Final = -1  # StepResult.next_id: more to do, position unknown


@dataclass(frozen=True)
class StepResult:
    wrote: bool  # made a paced Slack write (post or update)
    lane: str | None  # the channel the group's messages go to, when known
    next_id: int | None  # the oldest webhook still undelivered, None when done
    retry_at: float | None = None  # not before then (clock time): another replica failed it


def _segment(pending: Sequence[Pending]) -> list[Pending]:
    """Webhooks up to and including the first one that resolves the whole group: what
    follows belongs to the next incident, which gets a message of its own."""
    for index, item in enumerate(pending):
        if item.notification.status == "resolved":
            return list(pending[: index + 1])
    return list(pending)


class Delivery:
    def __init__(self, outbox: Outbox, sink: SlackSink, router: Router, links: LinkSettings,
                 *, clock: Callable[[], float] = time.time,
                 on_write: Callable[[], None] | None = None,
                 stale_window: timedelta = timedelta(minutes=5),
                 owners: OwnerNotices | None = None,
                 actions_for: Callable[[str], AlertActions | None] | None = None) -> None:
        self._outbox = outbox
        self._sink = sink
        self._router = router
        self._links = links
        self._clock = clock
        self._on_write = on_write or (lambda: None)
        self._stale_window = stale_window
        self._actions_for = actions_for or (lambda _group_id: None)
        self._owners = owners or OwnerNotices({})
        self._notice_links = NoticeLinks(self._owners, outbox, sink, api_url=sink.api_url)

    # --- routing ----------------------------------------------------------------------

    def _channel(self, group_key: str, label_sets: Iterable[Mapping[str, str]]) -> str:
        """An owner notice goes to its team's channel; an alert group where slack.routes
        (or the default channel) sends it."""
        if is_owner_group(group_key):
            channel = self._owners.channel_for_key(group_key)
            if channel is None:
                raise NoChannel("no slack.team_channels entry for this owner notice's team")
            return channel
        return self._router.channel_for(label_sets)

    def lane_for(self, group_id: str) -> str:
        """The channel a group's next step will write to (pacing is per channel)."""
        state = self._outbox.group(group_id)
        if state is not None and state.lane and state.ts and not state.resolved:
            return state.lane
        try:
            first = self._outbox.first_pending(group_id)
        except ValueError:
            # It will not parse (its step fails and is isolated); route it as far as its
            # JSON can be read, so that it waits in its own channel's lane.
            raw = self._outbox.pending_raw(group_id)
            try:
                found = lenient_fields(raw[0][1]) if raw else None
                return self._channel(found.group_key, found.alert_labels) \
                    if found is not None else UNROUTABLE_LANE
            except NoChannel:
                return UNROUTABLE_LANE
        if first is None:
            return state.lane if state is not None and state.lane else UNROUTABLE_LANE
        try:
            return self._channel(first.notification.group_key,
                                 (a.labels for a in first.notification.alerts))
        except NoChannel:
            return UNROUTABLE_LANE

    def lane_hint(self, notification: Notification) -> str:
        """The channel a new webhook routes to, without reading the store: the lane of a
        group seen for the first time (a storm of new groups must not cost a read each)."""
        try:
            return self._channel(notification.group_key, (a.labels for a in notification.alerts))
        except NoChannel:
            return UNROUTABLE_LANE

    def step(self, group_id: str) -> StepResult:
        state = self._outbox.group(group_id)
        if state is not None and state.retry_at is not None and state.retry_at > self._clock():
            return StepResult(wrote=False, lane=state.lane, next_id=KEEP_QUEUED,
                              retry_at=state.retry_at)
        if state is not None and state.inflight is not None:
            self._settle(state, state.inflight)
            state = self._outbox.group(group_id)
        notice = self._outbox.pending_fallback(group_id)
        if notice is not None:
            self._send_notice(notice)
            return StepResult(wrote=True, lane=state.lane if state is not None else None,
                              next_id=KEEP_QUEUED)
        if state is not None and state.refresh_at is not None:
            return self._refresh(state)
        pending = self._outbox.pending(group_id)
        lane = state.lane if state is not None else None
        if not pending:
            return StepResult(wrote=False, lane=lane, next_id=None)
        fresh = self._fresh(state, pending)
        if not fresh:
            assert state is not None  # only what the group has seen can be stale
            self._outbox.commit(group_id, state.group_key, Outcome(
                tuple(p.id for p in pending), state.alerts, state.resolved,
                state.rendered_upto))
            log.info("ignored stale webhooks (an Alertmanager peer behind)", extra={
                "group_id": group_id, "webhooks": len(pending)})
            return StepResult(wrote=False, lane=lane, next_id=None)
        segment = _segment(fresh)
        last = segment[-1]
        # Stale webhooks before the segment's end are delivered with it.
        ids = tuple(p.id for p in pending if p.id <= last.id)
        after = next((p.id for p in pending if p.id > last.id), None)
        notification = last.notification
        group_key = notification.group_key
        any_firing = any(a.status == "firing" for p in segment for a in p.notification.alerts)
        new_root = state is None or state.ts is None or (state.resolved and any_firing)
        base = {} if state is None or (state.resolved and new_root) else state.alerts
        alerts, changes = accumulate(base, [p.notification for p in segment])
        view = GroupView(alerts=ordered(alerts.values()), group_labels=notification.group_labels,
                         truncated_alerts=notification.truncated_alerts)
        resolved = all_resolved(alerts)
        owner_notice = is_owner_group(group_key)

        if new_root:
            try:
                channel = self._channel(group_key, (a.labels for a in alerts.values()))
            except NoChannel as exc:
                raise SlackRejected("routing", str(exc)) from exc
            outcome = Outcome(ids, alerts, resolved, rendered_upto=last.id, lane=channel)
            op = Inflight(op_id=f"steward-{group_id[:16]}-{last.id}-root", kind="root",
                          since=self._clock(), channel=channel, thread_ts=None, outcome=outcome)
            posted = self._post(group_id, group_key, op, self._render(group_key, view))
            self._outbox.commit(group_id, group_key,
                                replace(outcome, channel_id=posted.channel_id, ts=posted.ts),
                                derived=self._derive(group_id, group_key, base, alerts))
            if owner_notice:
                # The on-call messages it came from now link to it.
                self._outbox.request_refresh(oncall_groups(alerts.values()))
            log.info("posted alert group", extra={
                "group_id": group_id, "channel": channel, "ts": posted.ts,
                "alerts": len(alerts), "webhooks": len(ids)})
            return StepResult(wrote=True, lane=channel, next_id=after)

        assert state is not None and state.ts is not None and state.channel_id is not None
        if owner_notice:
            # A notice is updated in place, never replied to: one message per incident.
            try:
                self._write(lambda m: self._sink.update(state.channel_id or "", state.ts or "",
                                                        m), self._render(group_key, view))
            except SlackRejected as exc:
                return self._root_gone(group_id, state, exc, pending[0].id)
            self._outbox.commit(group_id, group_key, Outcome(ids, alerts, resolved, last.id))
            # An on-call message new to this notice may have been posted before it could link
            # here ("sending"): render it again.
            known = set(oncall_groups(state.alerts.values()))
            self._outbox.request_refresh(
                [g for g in oncall_groups(alerts.values()) if g not in known])
            return StepResult(wrote=True, lane=state.lane, next_id=after)
        if state.rendered_upto < last.id:
            try:
                self._write(lambda m: self._sink.update(state.channel_id or "", state.ts or "",
                                                        m), self._render(group_key, view))
            except SlackRejected as exc:
                return self._root_gone(group_id, state, exc, pending[0].id)
            self._outbox.set_rendered(group_id, last.id)
            return StepResult(wrote=True, lane=state.lane, next_id=pending[0].id)

        outcome = Outcome(ids, alerts, resolved, rendered_upto=state.rendered_upto)
        derived = self._derive(group_id, group_key, state.alerts, alerts)
        if not changes:
            self._outbox.commit(group_id, group_key, outcome, derived=derived)
            return StepResult(wrote=False, lane=state.lane, next_id=after)
        op = Inflight(op_id=f"steward-{group_id[:16]}-{last.id}-reply", kind="reply",
                      since=self._clock(), channel=state.channel_id, thread_ts=state.ts,
                      outcome=outcome)
        message = render_changes(changes, self._links, self._root_link(state)
                                 if any(c.kind == "resolved" for c in changes) else None)
        try:
            self._post(group_id, group_key, op, message)
        except SlackRejected as exc:
            return self._root_gone(group_id, state, exc, pending[0].id)
        self._outbox.commit(group_id, group_key, outcome, derived=derived)
        log.info("replied in alert group thread", extra={
            "group_id": group_id, "changes": len(changes), "resolved": resolved})
        return StepResult(wrote=True, lane=state.lane, next_id=after)

    def _root_link(self, state: GroupState) -> str | None:
        """The root's permalink for a resolve reply; None (no link) when Slack will not say."""
        try:
            return slack_permalink(self._sink.permalink(state.channel_id or "", state.ts or ""),
                                   api_url=self._sink.api_url)
        except (SlackRejected, SlackUnavailable, SlackRateLimited) as exc:
            log.info("no permalink for the root message", extra={
                "group_id": state.group_id, "error": str(exc)})
            return None

    # --- owner notices ----------------------------------------------------------------------

    def render_root(self, group_key: str, view: GroupView) -> Message:
        """The root as a step renders it now (the Acknowledge buttons re-render with it)."""
        return self._render(group_key, view)

    def _render(self, group_key: str, view: GroupView) -> Message:
        """The root of an alert group (with the owner notices it led to), or of an owner
        notice (with the on-call messages it came from)."""
        if is_owner_group(group_key):
            owner = owner_of(view.alerts[0].labels) if view.alerts else None
            assert owner is not None  # derive_notices only makes notices of owned alerts
            return render_notice(owner, view.alerts, self._links,
                                 oncall=self._notice_links.oncall_of(view.alerts))
        notices = notices_section(self._notice_links.notices_of(view.alerts)) \
            if self._owners.enabled else None
        actions = self._actions_for(group_id_of(group_key))
        if notices is None:
            return render_group(view, self._links, actions)
        return render_group(view, self._links, actions, extra=[notices])

    def _derive(self, group_id: str, group_key: str, previous: Alerts,
                current: Alerts) -> list[Notification]:
        """The owner notices an alert group's step leads to (committed with the step)."""
        if not self._owners.enabled or is_owner_group(group_key):
            return []
        return self._owners.derive(group_id, previous, current)

    def _refresh(self, state: GroupState) -> StepResult:
        """Render the root again with what it already showed: an owner notice it links to
        was posted after it."""
        assert state.refresh_at is not None
        if state.ts is not None and state.channel_id is not None and state.alerts:
            last = self._outbox.last_notification(state.group_id)
            view = GroupView(alerts=ordered(state.alerts.values()),
                             group_labels=last.group_labels if last is not None else {},
                             truncated_alerts=last.truncated_alerts if last is not None else 0)
            try:
                self._write(lambda m: self._sink.update(state.channel_id or "", state.ts or "",
                                                        m), self._render(state.group_key, view))
            except SlackRejected as exc:
                if exc.error not in ROOT_GONE_ERRORS:
                    raise
        self._outbox.clear_refresh(state.group_id, state.refresh_at)
        return StepResult(wrote=True, lane=state.lane, next_id=KEEP_QUEUED)

    def _fresh(self, state: GroupState | None, pending: Sequence[Pending]) -> list[Pending]:
        """``pending`` without what the group has already seen superseded."""
        if state is None:
            return list(pending)
        known = dict(state.alerts)
        fresh = []
        for item in pending:
            received = datetime.fromtimestamp(item.received_at, UTC)
            notification = without_stale(item.notification, known, received_at=received,
                                         window=self._stale_window)
            if notification is None:
                continue
            fresh.append(item if notification is item.notification
                         else Pending(item.id, item.received_at, notification))
            known, _ = accumulate(known, [notification], received_at=received)
        return fresh

    # --- failures and dead letters --------------------------------------------------------

    def record_failure(self, group_id: str, reason: str, *,
                       delay_for: Callable[[int], float]) -> tuple[int, float]:
        """One more failed attempt of the group's step: (attempts, seconds to the next)."""
        state = self._outbox.group(group_id)
        key = state.group_key if state is not None else ""
        if not key:
            raw = self._outbox.pending_raw(group_id)
            key = lenient_fields(raw[0][1]).group_key if raw else ""
        return self._outbox.record_failure(group_id, key, reason, delay_for=delay_for)

    def dead_letter(self, group_id: str, *, reason: str, attempts: int,
                    channel_refused: bool = False) -> DeadLetter | None:
        """Give up on the group's undelivered webhooks: keep them as a dead letter (``steward
        notifier dead-letters --retry ID`` sends them again) and queue the notice.

        Reads the payloads leniently: one that no longer parses may be why it failed.
        """
        raw = self._outbox.pending_raw(group_id)
        state = self._outbox.group(group_id)
        group_key = state.group_key if state is not None else ""
        names: list[str] = []
        label_sets: list[Mapping[str, str]] = []
        for _, payload in raw:
            found = lenient_fields(payload)
            group_key = group_key or found.group_key
            label_sets.extend(found.alert_labels)
            names.extend(n for n in found.alertnames if n not in names)
        lane = state.lane if state is not None and state.lane else None
        if lane is None:
            try:
                lane = self._channel(group_key, label_sets)
            except NoChannel:
                lane = None
        fallback = self._router.default_channel if channel_refused or lane is None else lane
        dead = self._outbox.dead_letter(group_id, group_key, reason=reason, attempts=attempts,
                                        alertnames=names, lane=lane, fallback_channel=fallback)
        if dead is not None:
            log.error("alert group dead-lettered", extra={
                "group_id": group_id, "dead_letter": dead.id, "reason": reason,
                "attempts": attempts, "alertnames": names[:10], "webhooks": dead.webhooks,
                "notice": dead.fallback_state})
        return dead

    def _send_notice(self, dead: DeadLetter) -> None:
        """The plain notice of a dead letter, once: looked up first when an earlier attempt
        may have posted it; to the default channel when its own channel refuses it."""
        channel = dead.fallback_channel or self._router.default_channel
        if channel is None:
            self._outbox.fallback_done(dead.id, "failed", error="no channel to send it to")
            return
        op_id = f"steward-dead-letter-{dead.id}"
        if dead.fallback_attempted_at is not None:
            channel_id = self._outbox.channel_id(channel) or self._sink.resolve_channel(channel)
            found = None if channel_id is None else self._sink.find_posted(
                channel_id, op_id, oldest=dead.fallback_attempted_at - _CLOCK_SKEW_SECONDS)
            if found is not None:
                self._outbox.fallback_done(dead.id, "sent", channel=channel, ts=found)
                return
        message = dead_letter_notice(dead)
        tried: list[str] = []
        for target in dict.fromkeys((channel, self._router.default_channel)):
            if target is None:
                continue
            tried.append(target)
            self._outbox.fallback_attempted(dead.id, target)
            try:
                posted = self._sink.post(target, message, op_id=op_id)
            except SlackRejected as exc:
                if exc.sink_wide:
                    raise
                log.warning("dead-letter notice refused", extra={
                    "dead_letter": dead.id, "channel": target, "error": exc.error})
                continue
            self._on_write()
            self._outbox.fallback_done(dead.id, "sent", channel=target, ts=posted.ts)
            return
        self._outbox.fallback_done(dead.id, "failed",
                                   error=f"every channel refused it: {', '.join(tried)}")

    def _root_gone(self, group_id: str, state: GroupState, exc: SlackRejected,
                   next_id: int) -> StepResult:
        """The root was deleted (or is too old to edit): the next step posts a new one."""
        if exc.error not in ROOT_GONE_ERRORS:
            raise exc
        log.warning("root message is gone; posting a new one", extra={
            "group_id": group_id, "error": exc.error})
        self._outbox.forget_root(group_id)
        return StepResult(wrote=False, lane=state.lane, next_id=next_id)

    def _write(self, call: Callable[[Message], None], message: Message) -> None:
        """``call(message)``, and once more as plain text when Slack refuses our blocks."""
        try:
            call(message)
        except SlackRejected as exc:
            if exc.error not in RENDER_ERRORS or not message.blocks:
                raise
            log.warning("Slack refused the blocks; sending plain text", extra={
                "error": exc.error, "method": exc.method})
            call(render_plain(message))
        self._on_write()

    def _post(self, group_id: str, group_key: str, op: Inflight, message: Message) -> Posted:
        self._outbox.mark_inflight(group_id, group_key, op)
        posted: list[Posted] = []
        try:
            self._write(lambda m: posted.append(self._sink.post(
                op.channel, m, thread_ts=op.thread_ts, op_id=op.op_id)), message)
        except (SlackRejected, SlackRateLimited):
            self._outbox.clear_inflight(group_id)
            raise
        except SlackUnavailable as exc:
            # Keep the marker when Slack may have posted: the next step looks before posting.
            if not exc.maybe_delivered:
                self._outbox.clear_inflight(group_id)
            raise
        return posted[-1]

    def _settle(self, state: GroupState, op: Inflight) -> None:
        """Find out whether the post behind ``op`` happened, and record it either way."""
        try:
            self._look_up(state, op)
        except SlackRejected as exc:
            # Slack will not let us look (no channels:history scope, channel gone): posting
            # again may duplicate one message, which beats never delivering the group.
            log.warning("cannot check whether an earlier post happened; posting again", extra={
                "group_id": state.group_id, "op": op.op_id, "error": exc.error})
            self._outbox.clear_inflight(state.group_id)

    def _look_up(self, state: GroupState, op: Inflight) -> None:
        oldest = op.since - _CLOCK_SKEW_SECONDS
        found: str | None = None
        channel_id: str | None = op.channel
        if op.kind == "root":
            channel_id = self._outbox.channel_id(op.channel) or self._sink.resolve_channel(
                op.channel)
            if channel_id is None:
                log.warning("cannot resolve the channel to look for an earlier post; "
                            "posting again", extra={"group_id": state.group_id,
                                                    "channel": op.channel})
            else:
                found = self._sink.find_posted(channel_id, op.op_id, oldest=oldest)
        else:
            found = self._sink.find_posted(op.channel, op.op_id, oldest=oldest,
                                           thread_ts=op.thread_ts)
        if found is None:
            self._outbox.clear_inflight(state.group_id)
            log.info("earlier post did not happen; posting again", extra={
                "group_id": state.group_id, "op": op.op_id})
            return
        outcome = op.outcome
        if op.kind == "root":
            outcome = replace(outcome, channel_id=channel_id, ts=found)
        # What the step would have committed with it: the owner notices it leads to.
        self._outbox.commit(state.group_id, state.group_key, outcome, derived=self._derive(
            state.group_id, state.group_key, state.alerts, outcome.alerts))
        if op.kind == "root" and is_owner_group(state.group_key):
            self._outbox.request_refresh(oncall_groups(outcome.alerts.values()))
        log.info("earlier post found in Slack; not posting again", extra={
            "group_id": state.group_id, "op": op.op_id, "ts": found})


def dead_letter_notice(dead: DeadLetter) -> Message:
    """Plain text, every interpolated string escaped: safe whatever the payload held."""
    names = ", ".join(dead.alertnames[:10]) or "(no alertname could be read)"
    if len(dead.alertnames) > 10:
        names += f" and {len(dead.alertnames) - 10} more"
    text = (
        f":warning: Steward could not show an alert group here: {fit_escaped(names, 600)}. "
        f"Reason after {dead.attempts} attempts: {fit_escaped(dead.reason, 400)}. "
        f"Check Alertmanager for its alerts. It is kept as dead letter {dead.id}: "
        f"`steward notifier dead-letters --retry {dead.id}` sends it again.")
    return Message(text=fit(text, MAX_TEXT), blocks=[])
