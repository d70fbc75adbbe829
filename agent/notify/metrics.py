"""The notifier's own metrics, on its own registry (served on ``/metrics``).

StewardNotifierDeliveryFailing is built on ``steward_notifier_outbox_depth``,
``steward_notifier_slack_messages_total{result="error"}`` and
``steward_notifier_dead_letters_total``; every counter child exists from start-up so that
``increase()`` sees the first error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

WEBHOOK_RESULTS: Final = ("accepted", "rejected", "unauthorized", "unavailable")
_ACK_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0)

# depth, received_at of the oldest undelivered webhook (None when empty), dead letters
StatsSource = Callable[[], tuple[int, float | None, int]]


class _OutboxCollector(Collector):
    def __init__(self, stats: StatsSource, clock: Callable[[], float]) -> None:
        self._stats = stats
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        depth, oldest, dead = self._stats()
        yield GaugeMetricFamily("steward_notifier_outbox_depth",
                                "Webhooks persisted but not yet delivered to Slack.", value=depth)
        age = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        yield GaugeMetricFamily(
            "steward_notifier_outbox_oldest_age_seconds",
            "Age of the oldest undelivered webhook; 0 when the outbox is empty.", value=age)
        yield GaugeMetricFamily(
            "steward_notifier_dead_letters_stored",
            "Dead letters in the store not yet replayed (steward notifier dead-letters).",
            value=dead)


class NotifierMetrics:
    def __init__(self, stats: StatsSource, *, clock: Callable[[], float] = time.time,
                 process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.alerts_received = Counter(
            "steward_notifier_alerts_received", "Alerts in accepted Alertmanager webhooks.",
            registry=self.registry)
        self.webhooks = Counter(
            "steward_notifier_webhooks",
            "Webhook requests by result: accepted (persisted), rejected (4xx: malformed, too "
            "large), unauthorized, unavailable (503: the store failed).",
            ["result"], registry=self.registry)
        self.slack_messages = Counter(
            "steward_notifier_slack_messages",
            "Slack API writes by result: ok, or error (an attempt that failed and will be "
            "retried, or dead-lettered after notifier.max_attempts).", ["result"],
            registry=self.registry)
        self.dead_letters = Counter(
            "steward_notifier_dead_letters",
            "Alert groups given up on after notifier.max_attempts failed attempts: kept as "
            "dead letters, a plain notice sent in their place.", registry=self.registry)
        self.ack_seconds = Histogram(
            "steward_notifier_webhook_ack_seconds",
            "Time from a webhook's body read to its acknowledgement (validate and persist).",
            buckets=_ACK_BUCKETS, registry=self.registry)
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result=result)
        for result in ("ok", "error"):
            self.slack_messages.labels(result=result)
        self.registry.register(_OutboxCollector(stats, clock))
        if process:
            ProcessCollector(registry=self.registry)

    def slack_ok(self) -> None:
        self.slack_messages.labels(result="ok").inc()

    def slack_error(self) -> None:
        self.slack_messages.labels(result="error").inc()

    def dead_lettered(self) -> None:
        self.dead_letters.inc()
