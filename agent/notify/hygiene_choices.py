"""The buttons of a hygiene owner notice: Keep 7 days, Snooze 24 h, Exempt (admins only).

Each click is carried out by the action worker (see ``actions``) through the hygiene store's
public :func:`apply_owner_choice`, which changes the mark and writes the audit entry (with
the Slack user) in one transaction keyed by the click, so a click retried after a crash is
applied once. The notice's thread says who chose what; the controller's next run honours it
(a kept or exempted resource is skipped, a snoozed deadline has moved). The notifier and
the controller must share the state store (``notifier.actions.hygiene_buttons``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Engine

from agent.clients.slack import SlackSink
from agent.clients.slack_text import escape
from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
from agent.controller.hygiene.store import OwnerChoiceKind, apply_owner_choice
from agent.notify.actions import ActionStore, Done, StoredAction, reply_once
from agent.notify.blocks import fit_escaped
from agent.notify.silences import mention, slack_date

log = logging.getLogger(__name__)

HYGIENE: Final = "hygiene"
_CHOICES: Final[dict[str, OwnerChoiceKind]] = {
    "keep": "keep", "snooze": "snooze", "exempt": "exempt"}
KEEP_SECONDS: Final = 7 * 86400.0
SNOOZE_SECONDS: Final = 86400.0
# A user group's members are asked again after this long.
_GROUP_CACHE_SECONDS: Final = 300.0


class Admins:
    """Who may exempt: configured user ids and the members of a Slack user group."""

    def __init__(self, sink: SlackSink, *, users: frozenset[str], group: str | None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._users = users
        self._group = group
        self._monotonic = monotonic
        self._members: frozenset[str] = frozenset()
        self._fetched: float | None = None
        self._lock = threading.Lock()

    def allows(self, user_id: str) -> bool:
        if user_id in self._users:
            return True
        if self._group is None:
            return False
        with self._lock:
            now = self._monotonic()
            if self._fetched is None or now - self._fetched > _GROUP_CACHE_SECONDS:
                # A Slack failure propagates: the click is retried, never guessed.
                self._members = self._sink.usergroup_members(self._group)
                self._fetched = now
            return user_id in self._members


class HygieneChoices:
    """The ``hygiene`` click handler."""

    def __init__(self, *, engine: Engine, sink: SlackSink, admins: Admins,
                 snooze_cap_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._sink = sink
        self._admins = admins
        self._cap = snooze_cap_seconds
        self._clock = clock
        # Tables the controller creates on the shared store; here too, so a click before
        # the controller's first run finds them (creating what exists is a no-op).
        HYGIENE_TABLES.create_all(engine, checkfirst=True)

    def __call__(self, action: StoredAction, store: ActionStore) -> Done:
        click = action.click
        choice, mark_id = _CHOICES.get(click.args.get("c", "")), click.args.get("m", "")
        if choice is None or not mark_id:
            return Done("refused", "not a hygiene choice")
        if choice == "exempt" and not self._admins.allows(click.user_id):
            return Done("refused", "exempt needs a hygiene admin",
                        tell_user="Only hygiene admins may exempt a resource "
                                  "(notifier.actions.admin_users / admin_group). Keep or "
                                  "Snooze it instead, or ask an admin.")
        by = f"{click.user_name} (Slack {click.user_id})"
        outcome = apply_owner_choice(
            self._engine, mark_id, choice, by=by, at=self._clock(), click_id=str(action.id),
            keep_seconds=KEEP_SECONDS, snooze_seconds=SNOOZE_SECONDS,
            snooze_cap_seconds=self._cap)
        if outcome.status == "refused":
            return Done("refused", outcome.message,
                        tell_user=f"Steward could not do that: {outcome.message}.")
        resource = fit_escaped(outcome.resource, 300)
        who = mention(click.user_id)
        if choice == "snooze":
            assert outcome.deadline is not None
            text = (f"⏰ {who} snoozed `{resource}`: the deadline is now "
                    f"{slack_date(outcome.deadline)}")
        elif choice == "keep":
            assert outcome.until is not None
            text = f"📌 {who} kept `{resource}` until {slack_date(outcome.until)}"
        else:
            text = f"🛡️ {who} exempted `{resource}` from {escape(outcome.job)}"
        reply_once(self._sink, store, action, channel_id=click.channel_id,
                   thread_ts=click.thread_ts or click.message_ts, text=text)
        log.info("hygiene owner choice", extra={"choice": choice, "mark": mark_id,
                                                "user": click.user_id, "status": outcome.status})
        when = outcome.deadline or outcome.until
        return Done("done", f"{choice} {outcome.resource}" + (
            f" until {datetime.fromtimestamp(when, UTC).isoformat()}" if when else ""))
