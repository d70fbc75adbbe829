"""``/metrics`` bodies are rendered once per collection cycle and format, not once per
collector run: four collectors used to mean four renders of every format a cycle."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric

from agent.exporter.collection import CollectionLoops, Collector, CollectResult
from agent.exporter.exposition import Body, Exposition
from tests.support.net import metric_value, wait_until

PROMETHEUS = ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")


class CountingExposition(Exposition):
    """Counts renders by format (openmetrics, gzip)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renders: Counter[tuple[bool, bool]] = Counter()

    def _render(self, families: list[Metric], openmetrics_format: bool, gzipped: bool) -> Body:
        self.renders[(openmetrics_format, gzipped)] += 1
        return super()._render(families, openmetrics_format, gzipped)


def counting_collector(name: str, interval: float, runs: Counter[str], *,
                       hang: threading.Event | None = None) -> Collector:
    def collect() -> CollectResult:
        if hang is not None:
            hang.wait()
        runs[name] += 1
        family = Metric(f"test_{name}", "a test family", "gauge")
        family.add_sample(f"test_{name}", {}, float(runs[name]))
        return CollectResult([family])

    return Collector(name, collect, interval)


@pytest.fixture
def hang() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def run_loops(collectors: list[Collector], seconds: float) -> CountingExposition:
    loops = CollectionLoops(collectors, on_publish=lambda: exposition.publish())
    exposition = CountingExposition(loops.families)
    # Two scrapers' formats are wanted: each must be rendered once per cycle, not per run.
    exposition.body()
    exposition.body(accept=PROMETHEUS, accept_encoding="gzip")
    exposition.renders.clear()
    loops.start()
    try:
        time.sleep(seconds)
    finally:
        loops.stop()
    return exposition


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_four_collectors_render_each_format_once_per_cycle() -> None:
    runs: Counter[str] = Counter()
    interval = 0.2
    collectors = [counting_collector(n, interval, runs) for n in ("a", "b", "c", "d")]
    exposition = run_loops(collectors, 2.0)
    cycles = max(runs.values())
    assert cycles >= 5, runs
    assert set(exposition.renders) == {(False, False), (True, True)}
    for key, renders in exposition.renders.items():
        # Once per cycle (a cycle may straddle the stop): never once per collector run.
        assert renders <= cycles + 1, (key, renders, runs)
        assert renders >= cycles - 2, (key, renders, runs)


def test_a_hung_collector_delays_the_others_by_one_interval_at_most(
        hang: threading.Event) -> None:
    runs: Counter[str] = Counter()
    interval = 0.2
    loops = CollectionLoops([counting_collector("a", interval, runs),
                             counting_collector("b", interval, runs),
                             counting_collector("wedged", interval, runs, hang=hang)],
                            on_publish=lambda: exposition.publish())
    exposition = CountingExposition(loops.families)
    exposition.body()
    loops.start()
    def published_a() -> float:
        return metric_value(exposition.body().data.decode(), "test_a") or 0.0

    try:
        wait_until(lambda: published_a() >= 3, timeout=5,
                   what="the others published while one collector hangs")
        seen, started = runs["a"], time.monotonic()
        wait_until(lambda: published_a() >= seen + 2, timeout=5, what="publishing goes on")
        assert time.monotonic() - started < 4 * interval + 0.5
    finally:
        hang.set()
        loops.stop()
    assert runs["wedged"] <= 1
    # One render per cycle of the live collectors, not one per run of each.
    assert exposition.renders[(False, False)] <= runs["a"] + 2, (exposition.renders, runs)
