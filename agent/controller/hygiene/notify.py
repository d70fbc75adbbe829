"""Telling a resource's owner what hygiene is about to do, did, or undid.

:class:`OwnerNotifier` is the seam: a log-only default, and Slack through the one Slack sink
(``agent.clients.slack``) with the channel chosen by ``slack.routes`` on the labels
``hygiene_job``, ``namespace`` and ``owner``. A failed notification raises
:class:`NotifyFailed`; the engine then keeps the mark's deadline from running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.clients.slack import Message, SlackCallFailed, SlackSink
from agent.clients.slack_params import NoChannel, Router, SlackSettings
from agent.clients.slack_text import escape
from agent.config import StewardConfig
from agent.controller.hygiene.plan import iso_time

log = logging.getLogger(__name__)

NoticeKind = Literal["marked", "acted", "reminder"]


class NotifyFailed(Exception):
    """The owner could not be told (Slack down, no channel configured)."""


@dataclass(frozen=True)
class OwnerNotice:
    kind: NoticeKind
    job: str
    resource: str
    action: str
    reason: str
    deadline: float
    owner: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    # Routing labels: hygiene_job, namespace (Kubernetes objects), owner.
    labels: Mapping[str, str] = field(default_factory=dict)
    mark_id: str | None = None  # the buttons of a "marked" notice name it

    def headline(self) -> str:
        if self.kind == "marked":
            return (f"Steward hygiene ({self.job}) marked {self.resource}: {self.action} "
                    f"after {iso_time(self.deadline)} unless it is in use again by then.")
        if self.kind == "reminder":
            return (f"Steward hygiene ({self.job}): {self.resource} is still non-compliant "
                    f"after its deadline.")
        return (f"Steward hygiene ({self.job}) did {self.action} on {self.resource}. Undo it "
                f"with: steward hygiene restore {self.job} {self.resource}")


class OwnerNotifier(Protocol):
    def notify(self, notice: OwnerNotice) -> None:
        """Tell the owner; raise NotifyFailed when that did not happen."""
        ...


class LogNotifier:
    """The default: one JSON log line per notice (no Slack configured)."""

    def notify(self, notice: OwnerNotice) -> None:
        log.info("hygiene owner notice", extra={
            "hygiene_job": notice.job, "notice": notice.kind, "resource": notice.resource,
            "action": notice.action, "owner": notice.owner, "deadline": iso_time(notice.deadline),
            "reason": notice.reason})


def _message_text(notice: OwnerNotice) -> str:
    lines = [notice.headline(), f"Why: {notice.reason}"]
    if notice.owner:
        lines.append(f"Owner: {notice.owner}")
    if notice.kind == "marked":
        lines.append("To keep it, use it again before the deadline, label it "
                     "steward.io/exempt=true, or use the buttons below when shown.")
    evidence = json.dumps(dict(notice.evidence), sort_keys=True, default=str)
    lines.append(f"Evidence: {evidence[:1500]}")
    return "\n".join(lines)


def owner_buttons(mark_id: str) -> dict[str, Any]:
    """Keep / Snooze / Exempt: the notifier's ``/slack/actions`` carries them out."""
    def button(label: str, choice: str) -> dict[str, Any]:
        return {"type": "button", "text": {"type": "plain_text", "text": label},
                "action_id": f"hygiene-{choice}",
                "value": json.dumps({"a": "hygiene", "c": choice, "m": mark_id},
                                    separators=(",", ":"))}
    return {"type": "actions", "block_id": f"hygiene-{mark_id[:32]}",
            "elements": [button("Keep 7 days", "keep"), button("Snooze 24 h", "snooze"),
                         button("Exempt (admins)", "exempt")]}


def _cut(escaped: str, limit: int) -> str:
    """``escaped`` within ``limit`` characters, never ending inside an entity (``&amp;``)."""
    if len(escaped) <= limit:
        return escaped
    cut = escaped[:limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


class SlackNotifier:
    """Posts one message per notice through the Slack sink."""

    def __init__(self, sink: SlackSink, router: Router, *, buttons: bool = False) -> None:
        self._sink = sink
        self._router = router
        self._buttons = buttons

    def notify(self, notice: OwnerNotice) -> None:
        try:
            channel = self._router.channel_for([dict(notice.labels)])
        except NoChannel as exc:
            raise NotifyFailed(str(exc)) from exc
        # Resource names, reasons and evidence come from outside (image tags, bucket names,
        # annotations): escaped, and verbatim so Slack neither links nor mentions anything.
        text = escape(_message_text(notice))
        blocks: list[dict[str, Any]] = [
            {"type": "section",
             "text": {"type": "mrkdwn", "text": _cut(text, 3000), "verbatim": True}}]
        if self._buttons and notice.kind == "marked" and notice.mark_id:
            blocks.append(owner_buttons(notice.mark_id))
        try:
            self._sink.post(channel, Message(text=escape(notice.headline()), blocks=blocks))
        except SlackCallFailed as exc:
            raise NotifyFailed(f"slack {exc}") from exc


def notifier_from_config(config: StewardConfig) -> OwnerNotifier:
    """Slack when a token and a channel are configured, else the log-only notifier."""
    slack = SlackSettings.from_config(config.slack)
    if slack.token is None or not (slack.default_channel or slack.routes):
        return LogNotifier()
    return SlackNotifier(SlackSink.create(slack), slack.router(),
                         buttons=config.notifier.actions.hygiene_buttons)
