"""Block Kit rendering of an alert group (the root message) and of its changes (thread replies).

Every rendering stays inside Slack's limits: at most 50 blocks, 150 characters in a header,
3000 in a section, 75 in a button label, 3000 in a URL. A group too large to show every
alert in full is summarised (the rest as compact lines, then a count), never rejected.

Nothing from a webhook is ever active markup: every interpolated string goes through
:func:`escape` (``&``, ``<``, ``>``; ``@channel``/``@here``/``@everyone`` and ``://`` broken
with an invisible space), every mrkdwn object is ``verbatim`` (Slack then neither links bare
URLs nor parses mentions), and links are made only to configured hosts (``alert_links``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from agent.clients.slack import Message
from agent.clients.slack_text import escape, plain
from agent.notify.alert_links import (
    AlertLinks,
    LinkSettings,
    allowed_link,
    links_for,
    unlinked_runbook,
)
from agent.notify.incident import SEVERITY_RANK, AlertState, Change, ordered

MAX_BLOCKS: Final = 50
MAX_HEADER: Final = 150
MAX_SECTION: Final = 3000
MAX_FIELD: Final = 2000
MAX_CONTEXT: Final = 2000
MAX_BUTTON_TEXT: Final = 75
MAX_FIELDS: Final = 10
# Slack truncates a message's ``text`` past 40,000 characters; notifications show far less.
MAX_TEXT: Final = 3000
MAX_DESCRIPTION: Final = 600
# Two blocks per alert shown in full (section + buttons), after header and summary, before
# the footer: 23 alerts fill 49 blocks; a larger group keeps room for its summary lines.
_FIXED_BLOCKS: Final = 3
_FULL_IF_ALL_FIT: Final = (MAX_BLOCKS - _FIXED_BLOCKS) // 2
_FULL_WHEN_SUMMARISED: Final = 21

_EMOJI: Final = {"critical": "🔴", "error": "🔴", "warning": "🟠", "info": "🔵"}
_RESOLVED: Final = "✅"

Block = dict[str, Any]


class AlertActions(Protocol):
    """What the notifier's interactivity adds to each alert of a root message (see
    ``agent.notify.actions``): a line of state ("acknowledged by ...") and buttons."""

    def note(self, alert: AlertState) -> str | None: ...

    def buttons(self, alert: AlertState) -> list[Block]: ...


@dataclass(frozen=True)
class GroupView:
    """An alert group as the root message shows it: every alert of the incident so far."""

    alerts: Sequence[AlertState]
    group_labels: Mapping[str, str]
    truncated_alerts: int = 0

    @property
    def firing(self) -> list[AlertState]:
        return [a for a in self.alerts if a.firing]

    @property
    def resolved(self) -> bool:
        return bool(self.alerts) and not self.firing


# --- text helpers -------------------------------------------------------------------------










def mrkdwn_link(url: str, label: str) -> str:
    """``<url|label>`` for a URL that ``alert_links.allowed_link`` returned (percent-encoded,
    so it holds no ``<``, ``>`` or ``|``); ``label`` is escaped here."""
    return f"<{url.replace('&', '&amp;')}|{escape(label)}>"


def fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def fit_escaped(raw: str, limit: int) -> str:
    """``escape(raw)`` within ``limit`` characters, never cutting an ``&amp;`` in half."""
    escaped = escape(raw)
    if len(escaped) <= limit:
        return escaped
    low, high = 0, len(raw)
    while low < high:  # the longest prefix whose escaped form leaves room for the ellipsis
        mid = (low + high + 1) // 2
        if len(escape(raw[:mid])) <= limit - 1:
            low = mid
        else:
            high = mid - 1
    return escape(raw[:low]) + "…"


def _date(when: datetime) -> str:
    fallback = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    epoch = int(when.timestamp())
    if epoch <= 0:
        return fallback
    # Shown in each reader's own time zone.
    return f"<!date^{epoch}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def _emoji(alert: AlertState) -> str:
    return _EMOJI.get(alert.severity, "⚪") if alert.firing else _RESOLVED


def _worst_severity(alerts: Sequence[AlertState]) -> str:
    severities = [a.severity for a in alerts if a.severity]
    return min(severities, key=lambda s: SEVERITY_RANK.get(s, 9)) if severities else "none"


def where(labels: Mapping[str, str]) -> list[str]:
    """Where the problem is, in the words on-call searches for: node, GPU, pod, pipeline."""
    parts: list[str] = []
    if labels.get("hostname"):
        parts.append(f"node {labels['hostname']}")
    if labels.get("gpu") or labels.get("UUID"):
        details = [v for v in (labels.get("UUID"), labels.get("modelName"),
                               labels.get("pci_bus_id") and f"PCI {labels['pci_bus_id']}") if v]
        gpu = f"GPU {labels.get('gpu', '?')}" + (f" ({', '.join(details)})" if details else "")
        if labels.get("GPU_I_ID"):
            gpu += f", MIG {labels.get('GPU_I_PROFILE', '')} #{labels['GPU_I_ID']}"
        parts.append(gpu)
    if labels.get("xid"):
        parts.append(f"XID {labels['xid']}")
    namespace = labels.get("namespace")
    if labels.get("pod"):
        pod = f"pod {namespace}/{labels['pod']}" if namespace else f"pod {labels['pod']}"
        if labels.get("container"):
            pod += f" (container {labels['container']})"
        parts.append(pod)
    if labels.get("pipeline"):
        pipeline = f"{namespace}/{labels['pipeline']}" if namespace else labels["pipeline"]
        kind = f" ({labels['kind']})" if labels.get("kind") else ""
        parts.append(f"pipeline {pipeline}{kind}")
    elif namespace and not labels.get("pod"):
        parts.append(f"namespace {namespace}")
    if labels.get("hygiene_job"):
        parts.append(f"hygiene job {labels['hygiene_job']}")
    if not parts and labels.get("instance"):
        job = f" ({labels['job']})" if labels.get("job") else ""
        parts.append(f"instance {labels['instance']}{job}")
    return parts


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(all alerts)"


# --- blocks -------------------------------------------------------------------------------


def _mrkdwn(text: str) -> Block:
    # verbatim: Slack takes the text as written: no auto-linked URLs or channel names, no
    # mention parsing. Our own links and dates are explicit <...> markup.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text[:MAX_SECTION] or " ")}


def _button(label: str, url: str, action_id: str) -> Block:
    return {"type": "button", "text": {"type": "plain_text", "text": fit(label, MAX_BUTTON_TEXT),
                                       "emoji": True},
            "url": url, "action_id": action_id}


def _alert_section(alert: AlertState, settings: LinkSettings) -> Block:
    status = "firing" if alert.firing else "resolved"
    head = f"{_emoji(alert)} *{escape(fit(alert.alertname or '(no alertname)', 200))}*" \
           f"  ·  {escape(fit(alert.severity or 'no severity', 40))}  ·  {status}"
    lines = [head]
    summary = alert.annotations.get("summary")
    if summary:
        lines.append(fit_escaped(summary, 400))
    place = where(alert.labels)
    if place:
        lines.append(fit_escaped(" · ".join(place), 600))
    started = f"Started {_date(alert.starts_at)}"
    if alert.ends_at is not None:
        started += f"  ·  resolved {_date(alert.ends_at)}"
    lines.append(started)
    unlinked = unlinked_runbook(alert, settings)
    if unlinked:
        lines.append(f"Runbook (not a configured host, not linked): {fit_escaped(unlinked, 300)}")
    text = "\n".join(lines)
    description = alert.annotations.get("description")
    room = MAX_SECTION - len(text) - 3
    if description and room > 20:
        text += "\n> " + fit_escaped(" ".join(description.split()), min(MAX_DESCRIPTION, room))
    return _section(text)


def _link_buttons(links: AlertLinks, index: int, extra: Sequence[Block] = ()
                  ) -> Block | None:
    buttons = list(extra)
    if links.runbook:
        buttons.append(_button("📖 Runbook", links.runbook, f"runbook-{index}"))
    if links.dashboard:
        buttons.append(_button("📈 Dashboard", links.dashboard, f"dashboard-{index}"))
    if links.silence:
        buttons.append(_button("🔕 Silence", links.silence, f"silence-{index}"))
    if not buttons:
        return None
    return {"type": "actions", "block_id": f"links-{index}", "elements": buttons}


def _compact_line(alert: AlertState) -> str:
    place = " · ".join(where(alert.labels))
    line = f"{_emoji(alert)} *{escape(fit(alert.alertname or '(no alertname)', 120))}*"
    if place:
        line += " " + fit_escaped(place, 300)
    return line


def _pack(lines: Sequence[str], *, max_blocks: int, total: int, more: str) -> list[Block]:
    """``lines`` as sections in at most ``max_blocks`` blocks; what does not fit becomes
    "…and N more" (``total`` counts every line, shown or not)."""
    if max_blocks <= 0:
        return []
    limit = MAX_SECTION - 100  # room in every section for the "…and N more" line
    sections: list[list[str]] = [[]]
    size = 0
    shown = 0
    for raw in lines:
        line = fit(raw, limit)
        if size + len(line) + 1 > limit:
            if len(sections) == max_blocks:
                break
            sections.append([])
            size = 0
        sections[-1].append(line)
        size += len(line) + 1
        shown += 1
    if total > shown:
        sections[-1].append(f"…and {total - shown} more {more}")
    return [_section("\n".join(s)) for s in sections if s]


def _title(view: GroupView) -> tuple[str, str]:
    firing = view.firing
    shown = firing or list(view.alerts)
    names = list(dict.fromkeys(a.alertname or "(no alertname)" for a in ordered(shown)))
    names_text = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    if view.resolved:
        return f"{_RESOLVED} RESOLVED", names_text
    return f"{_EMOJI.get(_worst_severity(firing), '⚪')} FIRING:{len(firing)}", names_text


def render_group(view: GroupView, settings: LinkSettings,
                 actions: AlertActions | None = None, *,
                 extra: Sequence[Block] = ()) -> Message:
    """The root message: summary, every alert with its buttons, summarised past the limits.
    ``actions``: the interactive buttons and state of each alert, when they are on;
    ``extra`` (the owner notices it led to) goes before the footer."""
    alerts = ordered(view.alerts)
    status, names = _title(view)
    place = " · ".join(where(view.group_labels))
    header = f"{status} {names}" + (f" — {place}" if place else "")
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": fit(plain(header), MAX_HEADER),
                                    "emoji": True}},
    ]
    firing = view.firing
    counts = f"{len(firing)} firing, {len(alerts) - len(firing)} resolved"
    first_start = min((a.starts_at for a in alerts), default=None)
    fields = [
        f"*Severity*\n{escape(fit(_worst_severity(firing or alerts), 40))}",
        f"*Alerts*\n{counts}",
        f"*Group*\n{fit_escaped(_labels_text(view.group_labels), MAX_FIELD - 20)}",
    ]
    if first_start is not None:
        fields.append(f"*Started*\n{_date(first_start)}")
    blocks.append({"type": "section", "fields": [_mrkdwn(f) for f in fields[:MAX_FIELDS]]})

    full = len(alerts) if len(alerts) <= _FULL_IF_ALL_FIT else _FULL_WHEN_SUMMARISED
    for index, alert in enumerate(alerts[:full]):
        section = _alert_section(alert, settings)
        note = actions.note(alert) if actions is not None else None
        if note:
            section = _section(fit(f"{section['text']['text']}\n{note}", MAX_SECTION))
        blocks.append(section)
        interactive = actions.buttons(alert) if actions is not None else []
        buttons = _link_buttons(links_for(alert, settings), index, interactive)
        if buttons is not None:
            blocks.append(buttons)
    rest = alerts[full:]
    if rest:
        room = MAX_BLOCKS - len(blocks) - 2  # footer, and one for the runbooks line
        blocks.extend(_pack([_compact_line(a) for a in rest], max_blocks=room, total=len(rest),
                            more="alerts (open the group in Alertmanager)"))
        shown_names = {a.alertname for a in alerts[:full]}
        runbooks: dict[str, str] = {}
        for alert in rest:
            url = links_for(alert, settings).runbook
            if url and alert.alertname not in shown_names:
                runbooks.setdefault(alert.alertname, url)
        if runbooks:
            line = "Runbooks: " + " · ".join(
                mrkdwn_link(url, fit(name, 80)) for name, url in runbooks.items())
            if len(line) > MAX_SECTION:
                line = "Runbooks: " + ", ".join(escape(fit(n, 80)) for n in runbooks)
            blocks.append(_section(fit(line, MAX_SECTION)))
    blocks = blocks[:MAX_BLOCKS - 1 - len(extra)]
    blocks.extend(extra)
    blocks.append(_footer(view, settings))
    text = f"{status} {names}" + (f" — {place}" if place else "") + f" ({counts})"
    return Message(text=fit_escaped(text, MAX_TEXT), blocks=blocks[:MAX_BLOCKS])


def _footer(view: GroupView, settings: LinkSettings) -> Block:
    parts = ["Steward"]
    # The configured Alertmanager, never the payload's externalURL (the sender's word).
    url = allowed_link(f"{(settings.alertmanager_url or '').rstrip('/')}/#/alerts", settings) \
        if settings.alertmanager_url else None
    if url is not None:
        parts.append(mrkdwn_link(url, "Alertmanager"))
    if view.truncated_alerts:
        parts.append(f"Alertmanager left out {view.truncated_alerts} more alerts (max_alerts)")
    text = "  ·  ".join(parts)
    return {"type": "context", "elements": [_mrkdwn(fit(text, MAX_CONTEXT))]}


def _change_line(change: Change, settings: LinkSettings) -> str:
    alert = change.alert
    verb = "Firing" if change.kind == "firing" else "Resolved"
    line = f"{_emoji(alert)} *{verb}*: " + _compact_line(alert).split(" ", 1)[1]
    summary = alert.annotations.get("summary")
    if summary:
        line += "\n" + fit_escaped(summary, 300)
    links = links_for(alert, settings)
    named = [(label, url) for label, url in (("runbook", links.runbook),
                                             ("dashboard", links.dashboard),
                                             ("silence", links.silence)) if url]
    link_text = " · ".join(mrkdwn_link(url, label) for label, url in named)
    if link_text and len(line) + len(link_text) + 1 <= MAX_SECTION:
        line += "\n" + link_text
    return fit(line, MAX_SECTION)


_PERMALINK: Final = re.compile(
    r"^https?://[A-Za-z0-9.:-]+/archives/[A-Z0-9]+/p[0-9]+(?:\?[A-Za-z0-9_=&.%-]*)?$")


def permalink_shaped(url: str) -> bool:
    """A message link in chat.getPermalink's shape, nothing Slack could read as markup (the
    host is checked by ``owners.slack_permalink`` before it gets here)."""
    return bool(_PERMALINK.match(url))


def render_changes(changes: Sequence[Change], settings: LinkSettings,
                   root_link: str | None = None) -> Message:
    """A thread reply: what fired and what resolved since the last reply, in order.
    ``root_link``: the root message's permalink (from Slack), linked from a resolve."""
    fired = [c for c in changes if c.kind == "firing"]
    resolved = [c for c in changes if c.kind == "resolved"]
    counts = []
    if fired:
        counts.append(f"🔥 {len(fired)} firing")
    if resolved:
        counts.append(f"{_RESOLVED} {len(resolved)} resolved")
    summary = " · ".join(counts) or "no change"
    head = f"*{summary}*"
    if resolved and root_link and permalink_shaped(root_link):
        head += "  ·  " + mrkdwn_link(root_link, "alert group")
    blocks: list[Block] = [_section(head)]
    room = MAX_BLOCKS - len(blocks)
    shown = changes if len(changes) <= room else changes[: room - 1]
    blocks.extend(_section(_change_line(c, settings)) for c in shown)
    if len(shown) < len(changes):
        blocks.extend(_pack([_compact_line(c.alert) for c in changes[len(shown):]],
                            max_blocks=1, total=len(changes) - len(shown), more="changes"))
    names = "; ".join(f"{c.alert.alertname} {c.kind}" for c in changes[:20])
    text = f"{summary}: {names}" + (" …" if len(changes) > 20 else "")
    return Message(text=fit_escaped(text, MAX_TEXT), blocks=blocks[:MAX_BLOCKS])


def render_plain(message: Message) -> Message:
    """The same message without blocks: the fallback when Slack refuses our blocks."""
    lines = [message.text]
    for block in message.blocks:
        text = block.get("text", {}).get("text") if block.get("type") == "section" else None
        if text:
            lines.append(text)
    return Message(text=fit("\n".join(lines), MAX_TEXT), blocks=[])
