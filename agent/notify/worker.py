"""The delivery loop: drains the outbox group by group, paced and backed off per channel.

Each channel is a lane: one step at a time, at most one write per ``pacing`` seconds
(Slack allows about one message per second per channel), its own Retry-After and its own
exponential backoff with jitter. A channel that is rate limited or failing never holds up
another. Within a group, steps run one after another, so a group's messages keep their order.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from agent.notify.delivery import Delivery
from agent.notify.metrics import NotifierMetrics
from agent.notify.outbox import Outbox
from agent.notify.slack import SlackCallFailed, SlackRateLimited
from agent.notify.webhook import Notification

log = logging.getLogger(__name__)

_IDLE_WAKE_SECONDS: Final = 1.0
_PRUNE_EVERY_SECONDS: Final = 3600.0


@dataclass
class _Lane:
    busy: bool = False
    not_before: float = 0.0
    failures: int = 0


class DeliveryWorker:
    def __init__(self, delivery: Delivery, outbox: Outbox, metrics: NotifierMetrics, *,
                 pacing_seconds: float, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 300.0, threads: int = 4,
                 monotonic: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        self._delivery = delivery
        self._outbox = outbox
        self._metrics = metrics
        self._pacing = pacing_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._threads = threads
        self._monotonic = monotonic
        self._jitter = jitter
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pending: dict[str, int] = {}  # group -> oldest undelivered id (the queue order)
        self._dirty: set[str] = set()  # got webhooks while a step was running
        self._running: set[str] = set()
        self._lane_of: dict[str, str] = {}
        self._new: dict[str, Notification] = {}  # first webhook of a group with no lane yet
        self._lanes: dict[str, _Lane] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # --- control --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for group_id, first_id in self._outbox.pending_groups().items():
                self._pending[group_id] = min(first_id, self._pending.get(group_id, first_id))
        self._executor = ThreadPoolExecutor(max_workers=self._threads,
                                            thread_name_prefix="slack-delivery")
        self._thread = threading.Thread(target=self._loop, name="delivery-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._executor is not None:
            # Steps in flight finish (a Slack call is bounded by the client timeout);
            # queued ones are dropped and run again after the next start.
            self._executor.shutdown(wait=True, cancel_futures=True)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self, items: Sequence[tuple[Notification, int]]) -> None:
        """New webhooks were persisted: ``(notification, id)`` each."""
        with self._lock:
            for notification, new_id in items:
                group_id = notification.group_id
                if group_id not in self._pending and group_id not in self._lane_of:
                    self._new[group_id] = notification
                self._pending[group_id] = min(new_id, self._pending.get(group_id, new_id))
                if group_id in self._running:
                    self._dirty.add(group_id)
        self._wake.set()

    def idle(self) -> bool:
        """Nothing queued and nothing in flight (tests and the benchmark wait on this)."""
        with self._lock:
            return not self._pending and not self._running

    # --- loop -----------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        delay = min(self._retry_max, self._retry_base * 2.0 ** min(failures - 1, 30))
        return delay / 2 + self._jitter() * delay / 2  # "equal jitter": never a burst at 0

    def _upkeep(self) -> None:
        try:
            self._outbox.refresh_stats()
            now = self._monotonic()
            if now - self._last_prune > _PRUNE_EVERY_SECONDS:
                self._last_prune = now
                self._outbox.prune()
        except Exception:
            log.exception("outbox upkeep failed")

    def _lane_name(self, group_id: str) -> str:
        lane = self._lane_of.get(group_id)
        if lane is None:
            with self._lock:
                first = self._new.pop(group_id, None)
            # A group first seen in a webhook since start routes like that webhook; one
            # found in the store at start (or after a failure) asks the store.
            lane = self._delivery.lane_hint(first) if first is not None \
                else self._delivery.lane_for(group_id)
            self._lane_of[group_id] = lane
        return lane

    def _loop(self) -> None:
        last_upkeep = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            now = self._monotonic()
            if now - last_upkeep >= 1.0:
                last_upkeep = now
                self._upkeep()
            wait = _IDLE_WAKE_SECONDS
            try:
                wait = min(wait, self._dispatch(now))
            except Exception:
                log.exception("delivery loop failed; retrying")
            self._wake.wait(max(0.0, wait))

    def _dispatch(self, now: float) -> float:
        """Start a step for every group whose lane is free; returns how long to sleep."""
        wait = _IDLE_WAKE_SECONDS
        with self._lock:
            queue = sorted(self._pending.items(), key=lambda item: item[1])
        for group_id, _ in queue:
            if self._stopping.is_set():
                break
            with self._lock:
                if len(self._running) >= self._threads:
                    break
                if group_id in self._running:
                    continue
            lane_name = self._lane_name(group_id)
            with self._lock:
                lane = self._lanes.setdefault(lane_name, _Lane())
                if lane.busy:
                    continue
                if lane.not_before > now:
                    wait = min(wait, lane.not_before - now)
                    continue
                lane.busy = True
                self._running.add(group_id)
                self._dirty.discard(group_id)
            assert self._executor is not None
            self._executor.submit(self._run, group_id, lane_name)
        return wait

    def _run(self, group_id: str, lane_name: str) -> None:
        lane = self._lanes[lane_name]
        next_id: int | None = -1  # unknown: keep the group queued
        try:
            result = self._delivery.step(group_id)
        except SlackRateLimited as exc:
            self._metrics.slack_error()
            delay = min(exc.retry_after, self._retry_max)
            with self._lock:
                lane.not_before = max(lane.not_before, self._monotonic() + delay)
            log.warning("Slack rate limit; pausing channel", extra={
                "channel": lane_name, "retry_after": exc.retry_after, "method": exc.method})
        except SlackCallFailed as exc:
            self._failed(lane, lane_name, group_id, exc.method, exc.detail)
        except Exception as exc:
            # A store error or a bug: the webhooks stay in the outbox and are retried.
            log.exception("delivery step failed", extra={"group_id": group_id})
            self._failed(lane, lane_name, group_id, "step", type(exc).__name__)
        else:
            next_id = result.next_id
            # Paced from when the write returned, so that the gap between two requests as
            # Slack receives them is never under ``pacing``.
            paced = self._monotonic() + self._pacing
            with self._lock:
                lane.failures = 0
                if result.wrote:
                    lane.not_before = max(lane.not_before, paced)
                if result.lane is not None and result.lane != lane_name:
                    self._lane_of[group_id] = result.lane
                    other = self._lanes.setdefault(result.lane, _Lane())
                    other.not_before = max(other.not_before, paced)
        finally:
            with self._lock:
                lane.busy = False
                self._running.discard(group_id)
                if next_id is None and group_id not in self._dirty:
                    self._pending.pop(group_id, None)
                    self._lane_of.pop(group_id, None)
                    self._new.pop(group_id, None)
                elif next_id is not None and next_id >= 0 and group_id not in self._dirty:
                    self._pending[group_id] = next_id
            self._wake.set()

    def _failed(self, lane: _Lane, lane_name: str, group_id: str, method: str,
                detail: str) -> None:
        self._metrics.slack_error()
        with self._lock:
            lane.failures += 1
            delay = self._backoff(lane.failures)
            lane.not_before = max(lane.not_before, self._monotonic() + delay)
            # The lane may be recomputed (routing), and a failing group must not be stuck
            # behind a stale lane name.
            self._lane_of.pop(group_id, None)
        log.warning("Slack delivery failed; backing off", extra={
            "channel": lane_name, "group_id": group_id, "method": method, "error": detail,
            "retry_in_seconds": round(delay, 3), "failures": lane.failures})
