"""Collection loops: each collector runs on its own thread and interval, off the scrape path.

A collector returns metric families (and the names of partial errors); the loop keeps its
last result, times it and counts its errors. A collector that hangs (a wedged NVML call)
stalls only itself: the other collectors and ``/metrics`` go on.

``on_publish`` (the exposition re-renders) runs once per collection cycle, not after every
collector's run: once every collector has run since the last publish, or one shortest
interval after the first of them finished (a slow or hung collector delays what the others
collected by one interval at most). Four collectors used to mean four renders of every
format a cycle, for scrapes that read one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)
_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass(frozen=True)
class CollectResult:
    families: list[Metric]
    # Bounded names of problems that did not stop the run (one GPU field unreadable).
    errors: list[str] = field(default_factory=list)
    # (kind, message): the families are the best there is but may be stale (a watch is
    # reconnecting); exported, with the collector reported down until it recovers.
    degraded: tuple[str, str] | None = None


@dataclass(frozen=True)
class Collector:
    name: str
    collect: Callable[[], CollectResult]
    interval: float


class CollectorFailed(Exception):
    """A collector's run failed for a reason with a bounded name (the ``error`` label).

    ``reported``: whoever caused it has logged it already (NVML missing is one line, not
    one per collector that depends on it); the loop then logs the failure at debug only.
    """

    def __init__(self, kind: str, message: str, *, reported: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.reported = reported


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, CollectorFailed):
        return exc.kind
    return _CAMEL_RE.sub("_", type(exc).__name__).lower()


@dataclass
class CollectorState:
    families: list[Metric] = field(default_factory=list)
    up: bool = False
    ran: bool = False
    duration: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    last_message: str | None = None


class CollectionLoops:
    def __init__(self, collectors: Sequence[Collector], *,
                 on_publish: Callable[[], None] = lambda: None,
                 monotonic: Callable[[], float] = time.monotonic,
                 const_labels: dict[str, str] | None = None) -> None:
        # Labels on the self-metrics (hostname on the node agent, so alerts can name it).
        self._const_labels = dict(const_labels or {})
        self._collectors = list(collectors)
        self._states = {c.name: CollectorState() for c in self._collectors}
        self._lock = threading.Lock()
        self._on_publish = on_publish
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # The cycle: collectors that ran since the last publish, and when it is due anyway.
        self._cycle = threading.Condition(threading.Lock())
        self._names = frozenset(c.name for c in self._collectors)
        self._fresh: set[str] = set()
        self._publish_due: float | None = None
        self._window = min((c.interval for c in self._collectors), default=0.0)
        self._publisher: threading.Thread | None = None

    def run_once(self, collector: Collector) -> None:
        """One run of ``collector`` (never raises), then publish once its cycle is done
        (at once while the loops are not started)."""
        self._collect(collector)
        self._ran(collector.name)

    def _ran(self, name: str) -> None:
        with self._cycle:
            self._fresh.add(name)
            if self._publisher is not None and not self._fresh >= self._names:
                if self._publish_due is None:
                    self._publish_due = self._monotonic() + self._window
                    self._cycle.notify_all()
                return
            self._fresh.clear()
            self._publish_due = None
        self._on_publish()

    def _publish_when_due(self) -> None:
        """The publisher thread: publishes a cycle some collector has not finished in time."""
        with self._cycle:
            while not self._stop.is_set():
                due = self._publish_due
                if due is None:
                    self._cycle.wait()
                    continue
                remaining = due - self._monotonic()
                if remaining > 0:
                    self._cycle.wait(remaining)
                    continue
                self._fresh.clear()
                self._publish_due = None
                self._cycle.release()
                try:
                    self._on_publish()
                except Exception:  # the exposition's bug must not end publishing
                    log.exception("publishing the collected metrics failed")
                finally:
                    self._cycle.acquire()

    def _collect(self, collector: Collector) -> None:
        started = self._monotonic()
        try:
            result = collector.collect()
        except Exception as exc:  # a collector bug must not kill its loop thread
            kind = _error_kind(exc)
            duration = self._monotonic() - started
            with self._lock:
                state = self._states[collector.name]
                changed = state.up or state.last_message != str(exc)
                state.families, state.up, state.ran, state.duration = [], False, True, duration
                state.errors[kind] = state.errors.get(kind, 0) + 1
                state.last_message = str(exc)
            if changed:  # log transitions, not every failed run
                reported = isinstance(exc, CollectorFailed) and exc.reported
                log.log(logging.DEBUG if reported else logging.ERROR, "collector failed",
                        extra={"collector": collector.name, "error": kind, "detail": str(exc)})
        else:
            duration = self._monotonic() - started
            degraded = result.degraded
            up = degraded is None
            kinds = [*result.errors, *([degraded[0]] if degraded is not None else [])]
            with self._lock:
                state = self._states[collector.name]
                if up and not state.up and state.ran:
                    log.info("collector recovered", extra={"collector": collector.name})
                state.families, state.up, state.ran, state.duration = (
                    result.families, up, True, duration)
                state.last_message = None if degraded is None else degraded[1]
                for kind in kinds:
                    state.errors[kind] = state.errors.get(kind, 0) + 1

    def run_all_once(self) -> None:
        """Every collector once, in this thread, then one publish (tests, one-shot runs)."""
        for collector in self._collectors:
            self._collect(collector)
        with self._cycle:
            self._fresh.clear()
            self._publish_due = None
        self._on_publish()

    def _loop(self, collector: Collector, origin: float) -> None:
        # Runs on a schedule from one origin shared by every loop, not "interval after the
        # last run ended": collectors with one interval then stay in step, so a cycle's
        # publish follows its last collector by milliseconds instead of drifting apart.
        next_run = origin
        while not self._stop.is_set():
            self.run_once(collector)
            next_run += collector.interval
            now = self._monotonic()
            next_run = max(next_run, now)  # a run overran: go on from now, no catch-up burst
            self._stop.wait(next_run - now)

    def start(self) -> None:
        with self._cycle:
            self._publisher = threading.Thread(target=self._publish_when_due, name="publish",
                                               daemon=True)
        self._publisher.start()
        origin = self._monotonic()
        for collector in self._collectors:
            thread = threading.Thread(target=self._loop, args=(collector, origin),
                                      name=f"collect-{collector.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cycle:
            self._cycle.notify_all()
        for thread in [*self._threads, *([self._publisher] if self._publisher else [])]:
            thread.join(timeout)

    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def ready(self) -> bool:
        with self._lock:
            return all(s.ran for s in self._states.values())

    def families(self) -> list[Metric]:
        """Every collector's last families plus the self-monitoring families."""
        up = Metric("steward_collector_up", "1 when the collector's last run succeeded.", "gauge")
        duration = Metric("steward_collector_duration_seconds",
                          "How long the collector's last run took.", "gauge")
        errors = Metric("steward_collector_errors", "Collector errors by kind.", "counter")
        out: list[Metric] = []
        with self._lock:
            for name, state in self._states.items():
                out.extend(state.families)
                if not state.ran:
                    continue
                labels = {**self._const_labels, "collector": name}
                up.add_sample("steward_collector_up", labels, 1.0 if state.up else 0.0)
                duration.add_sample("steward_collector_duration_seconds", labels, state.duration)
                for kind, count in sorted(state.errors.items()):
                    errors.add_sample("steward_collector_errors_total",
                                      {**labels, "error": kind}, float(count))
        out.extend(m for m in (up, duration, errors) if m.samples)
        return out

    def state(self, name: str) -> CollectorState:
        with self._lock:
            return self._states[name]
