"""Owner notices: the team whose workload was on a failed GPU is told, in its own channel.

A GPU fault alert carries the workload that was on the GPU and its team (labels
``namespace``, ``pod``, ``workload_kind``, ``workload``, ``team``: ``agent.alerts.owners``).
When the on-call message of an alert group is delivered, each workload of a team listed in
``slack.team_channels`` gets an owner notice: a group of its own in the same outbox
(``derive_notices``, committed in the same transaction as the on-call step, so that it is
never lost and never sent before the on-call message exists), keyed by the workload, not by
the on-call group, so that a workload hit by GpuLost and GpuXidCritical at once gets one
notice per incident, updated in place as its alerts change and resolve. It is delivered by
the same worker, with the same write-ahead marker, retries, isolation and dead letters as
any alert group.

The notice links to the on-call message(s) and the on-call message links back to every
notice, both through Slack permalinks (``chat.getPermalink``), checked to be Slack's own
before they become links. Everything from the alert is escaped (``blocks.escape``): a notice
can hold no mention and no link to a host Steward was not configured with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

from agent.alerts.xid import XID_TABLE, XidAction, XidInfo
from agent.clients.slack import Message
from agent.clients.slack_text import escape, plain
from agent.notify.alert_links import LinkSettings, allowed_link, links_for, split_url
from agent.notify.blocks import (
    MAX_BLOCKS,
    MAX_HEADER,
    MAX_SECTION,
    MAX_TEXT,
    Block,
    fit,
    fit_escaped,
    mrkdwn_link,
)
from agent.notify.incident import AlertState, ordered
from agent.notify.webhook import OWNER_KEY_PREFIX, Notification

# On a derived alert: the on-call group it came from (its message is linked from the
# notice). Set by Steward, replacing whatever the webhook carried under that name.
ONCALL_GROUP_ANNOTATION: Final = "steward_oncall_group"
OWNER_ANCHOR: Final = "if-you-own-the-workload"
NODE_REMEDIATION: Final = "node_remediation"
_NOT_SET: Final = "0001-01-01T00:00:00Z"
_MAX_NAME: Final = 253  # a Kubernetes object name's limit
_SHOWN_IN_FULL: Final = 15
_XID_BY_CODE: Final[dict[str, XidInfo]] = {str(info.xid): info for info in XID_TABLE}
_MEMORY_XIDS: Final = frozenset({"48", "63", "64", "92", "94", "95", "140"})
# Slack's own hosts: a permalink elsewhere is not made a link (defence in depth: it comes
# from Slack's API, not from a webhook).
_SLACK_HOST_SUFFIXES: Final = (".slack.com", ".slack-gov.com")


@dataclass(frozen=True)
class Owner:
    """A workload and its team, as the alert's labels name them."""

    team: str
    namespace: str
    workload_kind: str
    workload: str

    @property
    def group_key(self) -> str:
        return (f"{OWNER_KEY_PREFIX}{self.team}/{self.namespace}/{self.workload_kind}/"
                f"{self.workload}")

    @property
    def group_id(self) -> str:
        return hashlib.sha256(self.group_key.encode("utf-8")).hexdigest()[:32]

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.workload}"


def owner_of(labels: Mapping[str, str]) -> Owner | None:
    """The alert's workload and team; None without them, or when a value is longer than a
    Kubernetes name or label value can be (not Steward's rules: no notice for it)."""
    team, namespace, workload = (labels.get(k, "") for k in ("team", "namespace", "workload"))
    kind = labels.get("workload_kind", "")
    if not (team and namespace and workload) or max(
            len(team), len(namespace), len(workload), len(kind)) > _MAX_NAME:
        return None
    return Owner(team, namespace, kind, workload)


def is_owner_group(group_key: str) -> bool:
    return group_key.startswith(OWNER_KEY_PREFIX)


def team_of_key(group_key: str) -> str | None:
    if not is_owner_group(group_key):
        return None
    return group_key[len(OWNER_KEY_PREFIX):].split("/", 1)[0]


class OwnerNotices:
    """Which workloads get a notice, and where: ``slack.team_channels``."""

    def __init__(self, team_channels: Mapping[str, str]) -> None:
        self._channels = dict(team_channels)

    @property
    def enabled(self) -> bool:
        return bool(self._channels)

    def channel_for_key(self, group_key: str) -> str | None:
        team = team_of_key(group_key)
        return None if team is None else self._channels.get(team)

    def owners(self, alerts: Iterable[AlertState]) -> dict[Owner, list[AlertState]]:
        """The alerts of every workload whose team has a channel."""
        found: dict[Owner, list[AlertState]] = {}
        for alert in alerts:
            owner = owner_of(alert.labels)
            if owner is not None and owner.team in self._channels:
                found.setdefault(owner, []).append(alert)
        return found

    def derive(self, oncall_group_id: str, previous: Mapping[str, AlertState],
               current: Mapping[str, AlertState]) -> list[Notification]:
        """One webhook-shaped notification per workload whose alerts in this on-call group
        changed between ``previous`` and ``current`` (what the group had, what it has now):
        every alert of that workload in the group, as it stands. Always ``firing`` as a
        group status: the notice's group gathers alerts from several on-call groups, and a
        group status of ``resolved`` would end the others' alerts too; each alert's own
        status says whether it resolved."""
        notices = []
        for owner, alerts in sorted(self.owners(current.values()).items(),
                                    key=lambda item: item[0].group_key):
            if all(previous.get(a.fingerprint) == a for a in alerts):
                continue
            notices.append(Notification.model_validate({
                "version": "4", "groupKey": owner.group_key, "status": "firing",
                "receiver": "steward-owner-notice",
                "groupLabels": {"team": owner.team, "namespace": owner.namespace,
                                "workload": owner.workload},
                "alerts": [_webhook_alert(a, oncall_group_id) for a in alerts],
            }))
        return notices


def _iso(when: datetime | None) -> str:
    return _NOT_SET if when is None else when.isoformat()


def _webhook_alert(alert: AlertState, oncall_group_id: str) -> dict[str, Any]:
    return {"status": alert.status, "labels": dict(alert.labels),
            "annotations": {**alert.annotations, ONCALL_GROUP_ANNOTATION: oncall_group_id},
            "startsAt": _iso(alert.starts_at), "endsAt": _iso(alert.ends_at),
            "generatorURL": alert.generator_url, "fingerprint": alert.fingerprint}


def oncall_groups(alerts: Iterable[AlertState]) -> list[str]:
    """The on-call groups a notice's alerts came from, in first-seen order."""
    return list(dict.fromkeys(a.annotations[ONCALL_GROUP_ANNOTATION] for a in alerts
                              if a.annotations.get(ONCALL_GROUP_ANNOTATION)))


# --- links --------------------------------------------------------------------------------


def slack_permalink(url: str | None, *, api_url: str) -> str | None:
    """``url`` (from chat.getPermalink) when it is Slack's own, percent-encoded; else None.

    Slack's hosts, or the host of the configured ``slack.api_url`` (a stand-in in tests)."""
    split = split_url(url)
    if url is None or split is None:
        return None
    origin, _ = split
    api = split_url(api_url)
    host = origin.split("://", 1)[1].split(":", 1)[0]
    if not (origin.startswith("https://") and host.endswith(_SLACK_HOST_SUFFIXES)) and (
            api is None or origin != api[0]):
        return None
    return quote(url, safe=":/?#[]@!$&'()*+,;=%-._~")


@dataclass(frozen=True)
class NoticeLink:
    """An owner notice as the on-call message lists it."""

    owner: Owner
    channel: str
    permalink: str | None  # None while the notice is not posted yet


@dataclass(frozen=True)
class OncallLink:
    """An on-call message as a notice links it."""

    title: str
    permalink: str | None


def notices_section(notices: Sequence[NoticeLink]) -> Block | None:
    """The on-call message's line of owner notices (the link back)."""
    if not notices:
        return None
    parts = []
    for notice in notices:
        label = f"{notice.owner.name} ({notice.owner.team}, {notice.channel})"
        parts.append(mrkdwn_link(notice.permalink, fit(label, 150)) if notice.permalink
                     else f"{escape(fit(label, 150))} (sending)")
    text = "*Owners told:* " + " · ".join(parts)
    if len(text) > MAX_SECTION:
        text = fit(f"*Owners told:* {len(notices)} workloads' teams", MAX_SECTION)
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


# --- the notice ---------------------------------------------------------------------------


def _gpu(labels: Mapping[str, str]) -> str:
    model = f" ({labels['modelName']})" if labels.get("modelName") else ""
    return f"GPU {labels.get('gpu', '?')}{model} of node {labels.get('hostname', '?')}"


def what_happened(alert: AlertState) -> tuple[str, str, str]:
    """(what happened, what it means for the job, what NVIDIA or the runbook recommends),
    in plain words, raw (escaped by the caller)."""
    labels = alert.labels
    name = alert.alertname
    if name == "GpuLost":
        return (f"{_gpu(labels)} fell off the bus (the GPU is lost).",
                "The job's processes on this GPU are lost; it will not recover on this GPU.",
                "NVIDIA recommends a node reboot (the platform team does that); restart your "
                "job from its last checkpoint on another GPU.")
    if name == "GpuXidCritical":
        xid = labels.get("xid", "?")
        info = _XID_BY_CODE.get(xid)
        meaning = info.meaning if info is not None else "an XID not in Steward's table"
        action = info.action if info is not None else None
        if xid in _MEMORY_XIDS:
            impact = "What the job computed since the error may be wrong."
            todo = "restart your job from a checkpoint taken before the error"
        elif action is XidAction.RESTART_APP:
            impact = "The job's process on this GPU failed."
            todo = "restart your job"
        else:
            impact = ("The job's processes on this GPU are lost or hung; the GPU is not usable "
                      "until it is reset or the node rebooted.")
            todo = "restart your job from its last checkpoint on another GPU"
        nvidia = (f"NVIDIA recommends to {action.text} (the platform team does that); "
                  if action is not None and action is not XidAction.NONE else "")
        return (f"{_gpu(labels)} hit XID {xid}: {meaning}.", impact,
                f"{nvidia}{todo[0].upper()}{todo[1:]}." if not nvidia else f"{nvidia}{todo}.")
    if name == "GpuEccUncorrectable":
        return (f"{_gpu(labels)} reported uncorrectable memory (ECC) errors.",
                "Values the job read from the bad memory may be wrong, with no error in its "
                "logs.",
                "Restart from a checkpoint taken before the error.")
    if name == "GpuRowRemapFailure":
        return (f"{_gpu(labels)} can no longer repair its memory (row remapping failed).",
                "The GPU is due for replacement (RMA); the job must move.",
                "Checkpoint and move the job; NVIDIA's policy is an RMA.")
    if name == "GpuThermalThrottling":
        return (f"{_gpu(labels)} is holding its clocks down because it is too hot "
                f"({labels.get('reason', 'thermal')}).",
                "The job is not failing, but it runs slower (and a multi-GPU job runs at the "
                "pace of this GPU).",
                "Move the job if the slowdown matters; the platform team fixes the cooling.")
    if name == "PodDeviceUnhealthy":
        return (f"Kubernetes reports the {labels.get('resource', 'device')} device of pod "
                f"{labels.get('namespace', '?')}/{labels.get('pod', '?')} on node "
                f"{labels.get('hostname', '?')} Unhealthy (pod status).",
                "The job runs on a failed device: expect it to fail or hang.",
                "Restart it from a checkpoint on a healthy device once the node is cordoned.")
    return (f"{name or 'An alert'}: {alert.annotations.get('summary', '')}".strip(),
            "", "See the runbook.")


def _owner_runbook(alert: AlertState, settings: LinkSettings) -> str | None:
    base = links_for(alert, settings).runbook
    return allowed_link(f"{base}#{OWNER_ANCHOR}", settings) if base else None


def _alert_section(alert: AlertState, settings: LinkSettings) -> Block:
    happened, impact, recommend = what_happened(alert)
    mark = "✅ Resolved: " if not alert.firing else ""
    lines = [f"{mark}*{fit_escaped(happened, 400)}*"]
    if impact and alert.firing:
        lines.append(f"What it means for your job: {fit_escaped(impact, 400)}")
    if alert.firing:
        lines.append(f"What to do: {fit_escaped(recommend, 500)}")
    node = alert.annotations.get(NODE_REMEDIATION)
    if node is not None:
        lines.append(f"Node {escape(fit(alert.labels.get('hostname', '?'), 120))}: "
                     f"{fit_escaped(node, 300)}")
    if alert.labels.get("pod"):
        pod = f"{alert.labels.get('namespace', '')}/{alert.labels['pod']}"
        lines.append(f"Pod {fit_escaped(pod, 300)}")
    runbook = _owner_runbook(alert, settings)
    if runbook:
        lines.append(mrkdwn_link(runbook, f"Runbook: {alert.alertname}, if you own the "
                                          "workload"))
    return {"type": "section",
            "text": {"type": "mrkdwn", "text": fit("\n".join(lines), MAX_SECTION),
                     "verbatim": True}}


def render_notice(owner: Owner, alerts: Sequence[AlertState], settings: LinkSettings, *,
                  oncall: Sequence[OncallLink]) -> Message:
    """The owner notice: plain language, every alert of the workload, the on-call links."""
    shown = ordered(alerts)
    firing = [a for a in shown if a.firing]
    kind = f"{owner.workload_kind} " if owner.workload_kind else ""
    if firing:
        emoji = "🔴" if any(a.severity == "critical" for a in firing) else "🟠"
        head = f"{emoji} Your {kind}{owner.name} was on a GPU that failed"
    else:
        head = f"✅ Resolved: your {kind}{owner.name} is no longer on a failing GPU"
    blocks: list[Block] = [{"type": "header", "text": {
        "type": "plain_text", "text": fit(plain(head), MAX_HEADER), "emoji": True}}]
    done = len(shown) - len(firing)
    intro = (f"Team *{escape(fit(owner.team, 100))}*: Steward sends this because namespace "
             f"{escape(fit(owner.namespace, 100))} is yours. Now: {_count(len(firing), 'problem')}"
             f", {done} resolved. This message is updated in place.")
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": intro,
                                               "verbatim": True}})
    for alert in shown[:_SHOWN_IN_FULL]:
        blocks.append(_alert_section(alert, settings))
    if len(shown) > _SHOWN_IN_FULL:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "verbatim": True,
            "text": f"…and {len(shown) - _SHOWN_IN_FULL} more alerts for this workload"}})
    buttons = []
    first = shown[0] if shown else None
    if first is not None:
        links = links_for(first, settings)
        runbook = _owner_runbook(first, settings)
        if runbook:
            buttons.append(_button("📖 If you own the workload", runbook, "owner-runbook"))
        if links.dashboard:
            buttons.append(_button("📈 Dashboard", links.dashboard, "owner-dashboard"))
    for index, link in enumerate(oncall[:3]):
        if link.permalink:
            buttons.append(_button(f"🚨 On-call: {link.title}", link.permalink,
                                   f"owner-oncall-{index}"))
    if buttons:
        blocks.append({"type": "actions", "block_id": "owner-links", "elements": buttons})
    told = ", ".join(escape(fit(link.title, 80)) for link in oncall) or "on-call"
    blocks.append({"type": "context", "elements": [{
        "type": "mrkdwn", "verbatim": True,
        "text": fit(f"Steward · the platform on-call has the same alerts ({told})", 2000)}]})
    text = fit_escaped(f"{head}: " + "; ".join(what_happened(a)[0] for a in firing[:5]),
                       MAX_TEXT)
    return Message(text=text, blocks=blocks[:MAX_BLOCKS])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _button(label: str, url: str, action_id: str) -> Block:
    return {"type": "button", "text": {"type": "plain_text", "text": fit(plain(label), 75),
                                       "emoji": True},
            "url": url, "action_id": action_id}


# --- links that need the store and Slack ------------------------------------------------


class PermalinkSource(Protocol):
    """Where a message's permalink comes from (``slack.SlackSink.permalink``)."""

    def permalink(self, channel_id: str, ts: str) -> str | None: ...


class PermalinkCache(Protocol):
    def permalink(self, channel_id: str, ts: str) -> str | None: ...
    def save_permalink(self, channel_id: str, ts: str, permalink: str) -> None: ...
    def group(self, group_id: str) -> Any: ...


class NoticeLinks:
    """The links between on-call messages and owner notices, both ways, from the store's
    group rows (channel, ts) and Slack's permalinks (cached in the store)."""

    def __init__(self, notices: OwnerNotices, store: PermalinkCache, slack: PermalinkSource,
                 *, api_url: str) -> None:
        self._notices = notices
        self._store = store
        self._slack = slack
        self._api_url = api_url

    def permalink(self, channel_id: str | None, ts: str | None) -> str | None:
        if not channel_id or not ts:
            return None
        cached = self._store.permalink(channel_id, ts)
        if cached is not None:
            return cached
        found = slack_permalink(self._slack.permalink(channel_id, ts), api_url=self._api_url)
        if found is not None:
            self._store.save_permalink(channel_id, ts, found)
        return found

    def notices_of(self, alerts: Iterable[AlertState]) -> list[NoticeLink]:
        """The owner notices an on-call message's alerts led to (posted or on their way)."""
        links = []
        for owner in sorted(self._notices.owners(alerts), key=lambda o: o.group_key):
            channel = self._notices.channel_for_key(owner.group_key) or ""
            state = self._store.group(owner.group_id)
            permalink = None if state is None else self.permalink(state.channel_id, state.ts)
            links.append(NoticeLink(owner, channel, permalink))
        return links

    def oncall_of(self, alerts: Sequence[AlertState]) -> list[OncallLink]:
        """The on-call messages a notice's alerts came from."""
        links = []
        for group_id in oncall_groups(alerts):
            names = dict.fromkeys(a.alertname for a in alerts
                                  if a.annotations.get(ONCALL_GROUP_ANNOTATION) == group_id)
            state = self._store.group(group_id)
            permalink = None if state is None else self.permalink(state.channel_id, state.ts)
            links.append(OncallLink(", ".join(names) or "alert", permalink))
        return links
