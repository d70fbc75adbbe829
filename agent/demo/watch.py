"""What the demo shows while it runs: alerts as Prometheus fires and resolves them, and Slack
messages as the notifier posts, edits and threads them (each message once, then its edits
and thread replies as what they are)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.clients.prometheus import PrometheusClient, PrometheusError
from agent.demo.slack_view import header_text, render_message, render_reply, render_update

# Labels every alert line shows first, in this order; any other label is shown after them
# (that is what tells two alerts of one name apart: reason, xid, container, GPU_I_ID, ...).
_FIRST = ("hostname", "gpu", "GPU_I_ID", "GPU_I_PROFILE", "namespace", "pod", "container",
          "pipeline", "kind", "xid", "action", "reason", "hygiene_job")
# The same for every alert of a GPU, or shown in the Slack message: not on the line.
_HIDDEN = frozenset({"alertname", "severity", "UUID", "pci_bus_id", "modelName", "device",
                     "routing"})


def alert_labels_text(labels: Mapping[str, str]) -> str:
    """``hostname=gpu-node-1 gpu=6 reason=sw_thermal``: every label that can differ."""
    keys = [k for k in _FIRST if labels.get(k)]
    keys += sorted(k for k in labels if k not in _HIDDEN and k not in keys and labels[k])
    return " ".join(f"{k}={labels[k]}" for k in keys)


def alert_line(labels: Mapping[str, str], *, verb: str = "ALERT") -> str:
    return (f"{verb} {labels.get('alertname', '?'):<28} {labels.get('severity', ''):<8} "
            f"{alert_labels_text(labels)}")


def firing_alerts(url: str) -> list[dict[str, str]] | None:
    """Labels of every firing alert; None when Prometheus did not answer."""
    try:
        alerts = PrometheusClient(url, timeout=2).alerts()
    except PrometheusError:
        return None
    return [dict(a["labels"]) for a in alerts if a.get("state") == "firing"]


@dataclass
class AlertWatch:
    """Prints each alert when it fires and when it resolves; remembers every one that fired."""

    url: str
    say: Callable[[str], None]
    fired: list[dict[str, str]] = field(default_factory=list)
    fired_at: list[float] = field(default_factory=list)
    _active: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    _seen: set[tuple[tuple[str, str], ...]] = field(default_factory=set)

    def poll(self, elapsed: float) -> None:
        alerts = firing_alerts(self.url)
        if alerts is None:
            return
        now = {tuple(sorted(labels.items())): labels for labels in alerts}
        for key, labels in now.items():
            if key not in self._active:
                verb = "ALERT" if key not in self._seen else "ALERT again"
                self.say(alert_line(labels, verb=verb))
                if key not in self._seen:
                    self.fired.append(labels)
                    self.fired_at.append(elapsed)
                self._seen.add(key)
        for key in self._active - set(now):
            self.say(alert_line(dict(key), verb="resolved"))
        self._active = set(now)

    def names(self) -> set[str]:
        return {labels.get("alertname", "") for labels in self.fired}


@dataclass
class SlackWatch:
    """Prints the stub's messages: new ones in full, then edits and thread replies."""

    stub: Any
    say: Callable[[str], None]
    _versions: dict[str, int] = field(default_factory=dict)
    _replies: dict[str, int] = field(default_factory=dict)

    def channel(self, message: Any) -> str:
        name: str = self.stub.channel_name(message.channel)
        return name

    def poll(self) -> None:
        for message in self.stub.roots():
            channel = self.channel(message)
            if message.ts not in self._versions:
                self.say(render_message(message, channel=channel))
            elif self._versions[message.ts] != len(message.updates):
                self.say(render_update(message, channel=channel))
            self._versions[message.ts] = len(message.updates)
            replies = self.stub.replies(message)
            for reply in replies[self._replies.get(message.ts, 0):]:
                self.say(render_reply(reply, message, channel=channel))
            self._replies[message.ts] = len(replies)

    def summary(self) -> list[dict[str, Any]]:
        return [{"channel": self.channel(m), "ts": m.ts, "header": header_text(m),
                 "text": m.text, "updates": len(m.updates),
                 "replies": len(self.stub.replies(m)),
                 "buttons": [e.get("url") for b in m.blocks for e in b.get("elements", [])
                             if isinstance(e, dict) and e.get("type") == "button"]}
                for m in self.stub.roots()]
