"""The delivery loop: drains the outbox group by group, paced per channel, failures isolated
per group.

Each channel is a lane: one write at a time, at most one per ``pacing`` seconds (Slack allows
about one message per second per channel) and its own Retry-After. Within a lane, the group
with the oldest undelivered webhook goes first. A group whose step fails is backed off on its
own (exponential, with jitter) and the lane serves the next group meanwhile, so one group
that cannot be rendered or delivered never holds up the others.

Failures are sorted by whose they are:

- the group's own (its rendering raised, Slack refused its message or its channel): counted
  in the store; after ``max_attempts`` the group is dead-lettered (``Delivery.dead_letter``);
- everyone's (Slack down or rate limiting, a revoked token, the store unreachable): retried
  without end, never dead-lettered; a long outage is what StewardNotifierDeliveryFailing is
  for.

Several replicas may share a PostgreSQL store: each polls it for groups with work, and the
group lock (``group_lock``) decides which one runs a group's step.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from agent.clients.slack import CHANNEL_ERRORS, SlackRateLimited, SlackRejected, SlackUnavailable
from agent.notify.delivery import KEEP_QUEUED, UNROUTABLE_LANE, Delivery, StepResult
from agent.notify.group_lock import GroupLocks, ProcessGroupLocks
from agent.notify.metrics import NotifierMetrics
from agent.notify.outbox import Outbox, OutboxUnavailable
from agent.notify.webhook import Notification

log = logging.getLogger(__name__)

_IDLE_WAKE_SECONDS: Final = 1.0
_PRUNE_EVERY_SECONDS: Final = 3600.0
_STATS_EVERY_SECONDS: Final = 1.0
_CHECKPOINT_EVERY_SECONDS: Final = 5.0
# Another replica holds the group: look again soon (it is probably delivering it now).
_BUSY_RETRY_SECONDS: Final = 0.5
# /healthz fails when the loop has not gone round for this long (a store call hanging).
_STALLED_SECONDS: Final = 60.0
_REASON_MAX: Final = 300


@dataclass
class _Lane:
    busy: bool = False
    not_before: float = 0.0
    heap: list[tuple[int, str]] = field(default_factory=list)  # (first pending id, group)


@dataclass
class _Group:
    first_id: int  # oldest undelivered webhook: the group's place in its lane
    lane: str | None = None  # None: to be looked up
    not_before: float = 0.0  # monotonic
    running: bool = False
    dirty: bool = False  # got webhooks while a step was running
    queued: tuple[str, int] | None = None  # the lane heap entry that is current
    sleeping: bool = False
    transient_failures: int = 0


def _transient(exc: Exception) -> bool:
    """Not the group's fault: Slack or the store as a whole."""
    if isinstance(exc, SlackUnavailable | OutboxUnavailable | OperationalError
                  | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    return isinstance(exc, SlackRejected) and exc.sink_wide


def _reason(exc: Exception) -> str:
    if isinstance(exc, SlackRejected):
        return f"Slack refused {exc.method}: {exc.error}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:_REASON_MAX] if text else type(exc).__name__


class DeliveryWorker:
    def __init__(self, delivery: Delivery, outbox: Outbox, metrics: NotifierMetrics, *,
                 pacing_seconds: float, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 300.0, max_attempts: int = 6,
                 poll_seconds: float = 1.0, threads: int = 4,
                 locks: GroupLocks | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        self._delivery = delivery
        self._outbox = outbox
        self._metrics = metrics
        self._pacing = pacing_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._max_attempts = max_attempts
        self._poll = poll_seconds
        self._threads = threads
        self._locks: GroupLocks = locks if locks is not None else ProcessGroupLocks(None)
        self._monotonic = monotonic
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._groups: dict[str, _Group] = {}
        self._lanes: dict[str, _Lane] = {}
        self._unrouted: list[str] = []
        self._arrived: list[tuple[Notification, int]] = []
        self._sleeping: list[tuple[float, str]] = []
        self._running = 0
        self._cursor = 0
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._tick = monotonic()
        self._last: dict[str, float] = {}

    # --- control --------------------------------------------------------------------------

    def start(self) -> None:
        self._merge(self._outbox.pending_groups())
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
        return (self._thread is not None and self._thread.is_alive()
                and self._monotonic() - self._tick < _STALLED_SECONDS)

    def notify(self, items: Sequence[tuple[Notification, int]]) -> None:
        """New webhooks were persisted: ``(notification, id)`` each.

        Called on the outbox's writer thread right after its commit: only queued here, so
        that the next batch of webhooks is not kept waiting on routing.
        """
        with self._lock:
            self._arrived.extend(items)
        self._wake.set()

    def _take_arrived(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, []
        if not arrived:
            return
        # A group first seen in a webhook routes like that webhook (no store read); the
        # step corrects the lane when the group's messages live elsewhere.
        hints = {}
        for notification, _ in arrived:
            if notification.group_id not in hints:
                hints[notification.group_id] = notification
        with self._lock:
            for notification, new_id in arrived:
                group_id = notification.group_id
                group = self._groups.get(group_id)
                if group is None:
                    first = hints[group_id]
                    group = _Group(first_id=new_id, lane=self._delivery.lane_hint(first))
                    self._groups[group_id] = group
                    self._queue(group_id, group)
                elif group.running:
                    group.dirty = True
                elif new_id < group.first_id:
                    group.first_id = new_id
                    self._queue(group_id, group)

    def idle(self) -> bool:
        """Nothing queued and nothing in flight (tests and the benchmark wait on this)."""
        with self._lock:
            return not self._groups and not self._running and not self._arrived

    # --- queues (callers hold self._lock) -------------------------------------------------

    def _merge(self, found: dict[str, int]) -> None:
        """Groups with work in the store (other replicas' webhooks, replayed dead letters)."""
        with self._lock:
            for group_id, first_id in found.items():
                group = self._groups.get(group_id)
                if group is None:
                    self._groups[group_id] = group = _Group(first_id=first_id)
                elif group.running or first_id >= group.first_id:
                    continue
                group.first_id = first_id
                self._queue(group_id, group)
        self._wake.set()

    def _queue(self, group_id: str, group: _Group) -> None:
        if group.running:
            return
        if group.lane is None:
            if group_id not in self._unrouted:
                self._unrouted.append(group_id)
            return
        if group.not_before > self._monotonic():
            if not group.sleeping:
                group.sleeping = True
                heapq.heappush(self._sleeping, (group.not_before, group_id))
            return
        entry = (group.lane, group.first_id)
        if group.queued != entry:
            group.queued = entry
            heapq.heappush(self._lanes.setdefault(group.lane, _Lane()).heap,
                           (group.first_id, group_id))

    # --- loop -----------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        delay = min(self._retry_max, self._retry_base * 2.0 ** min(failures - 1, 30))
        return delay / 2 + self._jitter() * delay / 2  # "equal jitter": never a burst at 0

    def _upkeep(self, now: float) -> None:
        try:
            self._outbox.refresh_stats()
            if now - self._last["poll"] >= self._poll:
                self._last["poll"] = now
                self._merge(self._outbox.pending_groups())
            if now - self._last["checkpoint"] >= _CHECKPOINT_EVERY_SECONDS:
                self._last["checkpoint"] = now
                self._outbox.checkpoint()
            if now - self._last["prune"] > _PRUNE_EVERY_SECONDS:
                self._last["prune"] = now
                self._outbox.prune()
        except Exception:
            log.exception("outbox upkeep failed")

    def _loop(self) -> None:
        last_stats = 0.0
        self._last = {"poll": 0.0, "checkpoint": 0.0, "prune": self._monotonic()}
        while not self._stopping.is_set():
            self._wake.clear()
            now = self._monotonic()
            self._tick = now
            if now - last_stats >= _STATS_EVERY_SECONDS:
                last_stats = now
                self._upkeep(now)
            wait = _IDLE_WAKE_SECONDS
            try:
                wait = min(wait, self._dispatch(self._monotonic()))
            except Exception:
                log.exception("delivery loop failed; retrying")
            self._wake.wait(max(0.0, wait))

    def _route(self) -> None:
        """Look up the lane of groups found in the store (one read each, once)."""
        with self._lock:
            todo, self._unrouted = self._unrouted, []
        for group_id in todo:
            try:
                lane = self._delivery.lane_for(group_id)
            except Exception:
                # Whatever is wrong with the group shows in its step, which is isolated.
                log.warning("cannot route alert group; trying its step anyway",
                            extra={"group_id": group_id}, exc_info=True)
                lane = UNROUTABLE_LANE
            with self._lock:
                group = self._groups.get(group_id)
                if group is not None and group.lane is None:
                    group.lane = lane
                    self._queue(group_id, group)

    def _dispatch(self, now: float) -> float:
        """Start a step for the first ready group of every free lane; how long to sleep."""
        self._take_arrived()
        self._route()
        wait = _IDLE_WAKE_SECONDS
        picks: list[tuple[str, str]] = []
        with self._lock:
            while self._sleeping and self._sleeping[0][0] <= now:
                _, group_id = heapq.heappop(self._sleeping)
                group = self._groups.get(group_id)
                if group is None or not group.sleeping:
                    continue
                if group.not_before > now:
                    heapq.heappush(self._sleeping, (group.not_before, group_id))
                    continue
                group.sleeping = False
                self._queue(group_id, group)
            # Start from a different lane each time, so that with every thread busy no
            # channel waits behind the same others.
            lanes = list(self._lanes.items())
            self._cursor = (self._cursor + 1) % max(1, len(lanes))
            for name, lane in lanes[self._cursor:] + lanes[:self._cursor]:
                if self._running >= self._threads or self._stopping.is_set():
                    break
                if lane.busy or not lane.heap:
                    continue
                if lane.not_before > now:
                    wait = min(wait, lane.not_before - now)
                    continue
                while lane.heap:
                    first_id, group_id = heapq.heappop(lane.heap)
                    group = self._groups.get(group_id)
                    if group is None or group.running or group.queued != (name, first_id):
                        continue  # an entry a later one replaced
                    group.queued = None
                    group.running = True
                    lane.busy = True
                    self._running += 1
                    picks.append((group_id, name))
                    break
            if self._sleeping:
                wait = min(wait, self._sleeping[0][0] - now)
        assert self._executor is not None
        for group_id, name in picks:
            self._executor.submit(self._run, group_id, name)
        return wait

    def _run(self, group_id: str, lane_name: str) -> None:
        lane = self._lanes[lane_name]
        result: StepResult | None = None
        delay = 0.0
        locked = False
        try:
            locked = self._locks.try_lock(group_id)
            if not locked:
                delay = _BUSY_RETRY_SECONDS * (0.5 + self._jitter())
            else:
                result = self._delivery.step(group_id)
        except SlackRateLimited as exc:
            self._metrics.slack_error()
            retry_after = min(exc.retry_after, self._retry_max)
            with self._lock:
                lane.not_before = max(lane.not_before, self._monotonic() + retry_after)
            log.warning("Slack rate limit; pausing channel", extra={
                "channel": lane_name, "retry_after": exc.retry_after, "method": exc.method})
        except Exception as exc:
            delay = self._failed(group_id, lane_name, exc)
        finally:
            if locked:
                self._locks.unlock(group_id)
            self._finish(group_id, lane, lane_name, result, delay)

    def _finish(self, group_id: str, lane: _Lane, lane_name: str, result: StepResult | None,
                delay: float) -> None:
        now = self._monotonic()
        with self._lock:
            lane.busy = False
            self._running -= 1
            group = self._groups[group_id]
            group.running = False
            if result is not None:
                group.transient_failures = 0
                if result.wrote:
                    # Paced from when the write returned, so that the gap between two
                    # requests as Slack receives them is never under ``pacing``.
                    lane.not_before = max(lane.not_before, now + self._pacing)
                if result.lane is not None and result.lane != lane_name:
                    group.lane = result.lane
                    other = self._lanes.setdefault(result.lane, _Lane())
                    other.not_before = max(other.not_before, now + self._pacing)
                if result.retry_at is not None:
                    delay = max(delay, result.retry_at - self._clock())
            if result is not None and result.next_id is None and not group.dirty:
                del self._groups[group_id]
            else:
                if result is not None and result.next_id not in (None, KEEP_QUEUED) \
                        and not group.dirty:
                    assert result.next_id is not None
                    group.first_id = result.next_id
                group.dirty = False
                group.not_before = now + delay if delay > 0 else 0.0
                self._queue(group_id, group)
        self._wake.set()

    def _failed(self, group_id: str, lane_name: str, exc: Exception) -> float:
        """Record a failed step; returns how long the group waits before the next."""
        self._metrics.slack_error()
        if not _transient(exc):
            try:
                return self._group_failed(group_id, lane_name, exc)
            except Exception:
                log.exception("cannot record a failed delivery attempt",
                              extra={"group_id": group_id})
        with self._lock:
            group = self._groups[group_id]
            group.transient_failures += 1
            failures = group.transient_failures
        delay = self._backoff(failures)
        if isinstance(exc, SlackUnavailable | SlackRejected):
            log.warning("Slack delivery failed; backing off", extra={
                "channel": lane_name, "group_id": group_id, "method": exc.method,
                "error": exc.detail, "retry_in_seconds": round(delay, 3),
                "failures": failures})
        else:
            log.warning("delivery step failed (store); backing off", extra={
                "group_id": group_id, "error": _reason(exc),
                "retry_in_seconds": round(delay, 3), "failures": failures})
        return delay

    def _group_failed(self, group_id: str, lane_name: str, exc: Exception) -> float:
        reason = _reason(exc)
        if isinstance(exc, SlackRejected):
            log.warning("Slack refused the group's message", extra={
                "channel": lane_name, "group_id": group_id, "method": exc.method,
                "error": exc.error})
        else:
            log.exception("delivery step failed", extra={"group_id": group_id})
        attempts, delay = self._delivery.record_failure(group_id, reason,
                                                        delay_for=self._backoff)
        if attempts < self._max_attempts:
            log.warning("alert group failed; retrying it on its own", extra={
                "group_id": group_id, "attempts": attempts, "reason": reason,
                "retry_in_seconds": round(delay, 3)})
            return delay
        refused = isinstance(exc, SlackRejected) and exc.error in CHANNEL_ERRORS
        dead = self._delivery.dead_letter(group_id, reason=reason, attempts=attempts,
                                          channel_refused=refused)
        if dead is not None:
            self._metrics.dead_lettered()
        return 0.0  # the notice is the group's next step
