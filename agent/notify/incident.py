"""An alert group's incident: the alerts it has seen so far and the changes between webhooks.

Alertmanager sends a resolved alert once and then forgets it, so a group's later webhooks no
longer carry it. The Slack message must still show it, so the notifier keeps the union of
every alert seen in the incident (:func:`accumulate`), and derives the thread replies
("fired", "resolved") from the order in which webhooks changed that union.

Alertmanager peers in an HA cluster notify independently, so one that is behind can send a
group's "firing" after another sent its "resolved". :func:`without_stale` drops what the
group has already seen superseded, so that an incident that is over does not page again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from agent.notify.webhook import Notification, Status, WebhookAlert

ChangeKind = Literal["firing", "resolved"]
SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}


@dataclass(frozen=True)
class AlertState:
    fingerprint: str
    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str = ""

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @classmethod
    def from_webhook(cls, alert: WebhookAlert) -> AlertState:
        return cls(
            fingerprint=alert.key, status=alert.status, labels=dict(alert.labels),
            annotations=dict(alert.annotations), starts_at=alert.starts_utc,
            ends_at=alert.ends_utc if alert.status == "resolved" else None,
            generator_url=alert.generator_url,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "status": self.status, "labels": dict(self.labels),
            "annotations": dict(self.annotations), "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat() if self.ends_at else None,
            "generatorURL": self.generator_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertState:
        ends = data.get("endsAt")
        return cls(
            fingerprint=data["fingerprint"], status=data["status"], labels=data["labels"],
            annotations=data["annotations"], starts_at=datetime.fromisoformat(data["startsAt"]),
            ends_at=datetime.fromisoformat(ends) if ends else None,
            generator_url=data.get("generatorURL", ""),
        )


@dataclass(frozen=True)
class Change:
    """One state change of one alert, in the order the webhooks reported it."""

    kind: ChangeKind
    alert: AlertState


Alerts = dict[str, AlertState]


def accumulate(base: Mapping[str, AlertState], notifications: Iterable[Notification], *,
               received_at: datetime | None = None) -> tuple[Alerts, list[Change]]:
    """Apply webhooks in order to ``base``; return the new union and what changed.

    A webhook whose group status is ``resolved`` ends the incident: any alert still firing
    in the union (one that Alertmanager stopped sending) is resolved with it.
    """
    alerts: Alerts = dict(base)
    changes: list[Change] = []
    for notification in notifications:
        for webhook_alert in notification.alerts:
            new = AlertState.from_webhook(webhook_alert)
            old = alerts.get(new.fingerprint)
            alerts[new.fingerprint] = new
            if new.firing and (old is None or not old.firing):
                changes.append(Change("firing", new))
            elif not new.firing and (old is None or old.firing):
                changes.append(Change("resolved", new))
        if notification.status == "resolved":
            ended = max((a.ends_at for a in alerts.values() if a.ends_at is not None),
                        default=received_at or datetime.now(UTC))
            for key, state in list(alerts.items()):
                if state.firing:
                    resolved = AlertState(
                        fingerprint=state.fingerprint, status="resolved", labels=state.labels,
                        annotations=state.annotations, starts_at=state.starts_at,
                        ends_at=ended, generator_url=state.generator_url)
                    alerts[key] = resolved
                    changes.append(Change("resolved", resolved))
    return alerts, changes


def is_stale(new: WebhookAlert, known: AlertState | None, *, received_at: datetime,
             window: timedelta) -> bool:
    """``new`` is older news than ``known``: the occurrence it reports as firing already
    resolved, and it arrived within ``window`` of that resolution.

    A firing alert that started no later than the known resolution describes that same (or
    an older) occurrence: an alert that fires again gets a new startsAt. Past ``window`` it
    is taken as firing again after all (Prometheus restores an alert's start time after a
    restart, so a real re-fire can carry the old startsAt): a missed page is worse than a
    repeated one. A resolve is never dropped: Alertmanager moves an alert's startsAt
    earlier when it merges the same alert from two Prometheus replicas.
    """
    if known is None or known.firing or new.status != "firing" or known.ends_at is None:
        return False
    return new.starts_utc <= known.ends_at and received_at - known.ends_at <= window


def without_stale(notification: Notification, known: Mapping[str, AlertState], *,
                  received_at: datetime, window: timedelta) -> Notification | None:
    """``notification`` without its stale alerts (see :func:`is_stale`); None when nothing
    in it is news."""
    kept = [a for a in notification.alerts
            if not is_stale(a, known.get(a.key), received_at=received_at, window=window)]
    if len(kept) == len(notification.alerts):
        return notification
    if not kept:
        return None
    return notification.model_copy(update={"alerts": kept})


def ordered(alerts: Iterable[AlertState]) -> list[AlertState]:
    """Firing before resolved, most severe first, then oldest first: what on-call reads first."""
    return sorted(alerts, key=lambda a: (
        not a.firing, SEVERITY_RANK.get(a.severity, 9), a.starts_at, a.alertname, a.fingerprint))


def all_resolved(alerts: Mapping[str, AlertState]) -> bool:
    return bool(alerts) and not any(a.firing for a in alerts.values())


def dump_alerts(alerts: Mapping[str, AlertState]) -> str:
    return json.dumps([a.to_json() for a in alerts.values()], ensure_ascii=False)


def load_alerts(text: str | None) -> Alerts:
    if not text:
        return {}
    return {a.fingerprint: a for a in (AlertState.from_json(d) for d in json.loads(text))}
