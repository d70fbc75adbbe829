"""The exposition's OpenMetrics renderer writes exactly prometheus-client's bytes: for the
node's real families, and for any families hypothesis makes (odd names, escapes in help
texts and label values, special float values, timestamps, exemplars), render after render
(its caches carry escaped names and label sets from one render to the next)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Exemplar

from agent.config import load_config
from agent.exporter.exposition import OpenMetricsRenderer
from agent.node.app import build_node_agent
from agent.sim.node import simulated_sources


class _Source:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def reference(families: list[Metric]) -> bytes:
    return bytes(openmetrics.generate_latest(_Source(families)))  # type: ignore[no-untyped-call]


def test_the_node_agents_families_render_as_prometheus_client_renders_them() -> None:
    config = load_config(None, environ={"STEWARD_NODE__GPU_BACKEND": "sim",
                                        "STEWARD_NODE__LISTEN": "127.0.0.1:0"})
    agent = build_node_agent(config, sources=simulated_sources(config))
    renderer = OpenMetricsRenderer()
    try:
        for _ in range(3):  # a fresh cache, then warm ones with new values
            agent.loops.run_all_once()
            families = agent.exposition._families()
            assert sum(len(f.samples) for f in families) > 200
            assert renderer.render(families) == reference(families)
    finally:
        agent.stop()


NAME_CHARS = st.sampled_from("abcxyz_:019.é-")
names = st.text(NAME_CHARS, min_size=1, max_size=12)
label_names = st.text(st.sampled_from("abz_019.é"), min_size=1, max_size=6)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | \
    st.sampled_from(["", "a\\b", 'say "hi"', "two\nlines", "\\n", "tab\there"])
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**20, 10**20) | \
    st.sampled_from([0.0, -0.0, 1e-300, 123456789.0, 1234567.5, 0.1])


@st.composite
def family(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(["gauge", "counter", "info", "stateset", "unknown",
                                 "histogram", "summary", "gaugehistogram"]))
    name = draw(names)
    unit = draw(st.sampled_from(["", "", "seconds", "bytes"]))
    if unit:
        name = f"{name}_{unit}"
    metric = Metric(name, draw(texts), kind, unit)
    for _ in range(draw(st.integers(0, 5))):
        suffix = draw(st.sampled_from(["", "_total", "_created", "_bucket", "_info", ":x"]))
        labels = draw(st.dictionaries(label_names, texts, max_size=3))
        timestamp = draw(st.none() | st.floats(0, 2e9, allow_nan=False) | st.integers(0, 2**40))
        exemplar = None
        if kind == "counter" and suffix == "_total" and draw(st.booleans()):
            exemplar = Exemplar(draw(st.dictionaries(label_names, texts, max_size=2)),
                                draw(values), draw(st.none() | st.floats(0, 2e9)))
        metric.add_sample(name + suffix, labels, draw(values), timestamp, exemplar)
    return metric


@pytest.mark.slow  # ~10 s of hypothesis examples
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(family(), max_size=5), min_size=1, max_size=3))
def test_any_families_render_as_prometheus_client_renders_them(
        renders: list[list[Metric]]) -> None:
    renderer = OpenMetricsRenderer()
    for families in [*renders, *renders]:  # each set twice: from a cache that holds it
        assert renderer.render(families) == reference(families)


def test_special_values_keep_their_go_spelling() -> None:
    metric = Metric("m", "help", "gauge")
    for value in (math.inf, -math.inf, math.nan, 1e21, 0.5):
        metric.add_sample("m", {"v": repr(value)}, value)
    rendered = OpenMetricsRenderer().render([metric]).decode()
    assert 'm{v="inf"} +Inf' in rendered and 'm{v="nan"} NaN' in rendered
    assert 'm{v="1e+21"} 1e+21' in rendered
    assert rendered == reference([metric]).decode()
