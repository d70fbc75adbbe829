"""The agent's HTTP side: a slow source never stalls a scrape; probes; formats; caching."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agent.config import load_config
from agent.exporter.collection import Collector, CollectResult
from agent.exporter.exposition import Exposition
from agent.node.app import NodeAgent, build_node_agent
from agent.sim.node import simulated_sources
from tests.support.net import wait_until


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def agent(release: threading.Event) -> Iterator[NodeAgent]:
    """A sim node agent with one extra collector that hangs until ``release`` is set."""

    def hanging() -> CollectResult:
        release.wait()
        family = Metric("steward_test_slow", "A collector stuck in a slow source.", "gauge")
        family.add_sample("steward_test_slow", {}, 1.0)
        return CollectResult([family])

    config = load_config(None, environ={"STEWARD_NODE__GPU_BACKEND": "sim",
                                        "STEWARD_NODE__LISTEN": "127.0.0.1:0",
                                        "STEWARD_NODE__COLLECT_INTERVAL_SECONDS": "0.2"})
    node_agent = build_node_agent(config, sources=simulated_sources(config),
                                  extra_collectors=[Collector("slow", hanging, 0.2)])
    node_agent.start()
    yield node_agent
    release.set()
    node_agent.stop()


def test_hung_collector_does_not_stall_scrapes(agent: NodeAgent,
                                               release: threading.Event) -> None:
    url = f"http://127.0.0.1:{agent.port}"
    wait_until(lambda: b"steward_gpu_up" in get(f"{url}/metrics")[2], timeout=10,
               what="GPU metrics while another collector hangs")
    started = time.monotonic()
    status, _, body = get(f"{url}/metrics")
    assert status == 200
    assert time.monotonic() - started < 1.0
    assert b"steward_test_slow" not in body
    # not ready until every collector finished once; alive all along
    assert get(f"{url}/readyz")[0] == 503
    assert get(f"{url}/healthz")[0] == 200
    release.set()
    wait_until(lambda: get(f"{url}/readyz")[0] == 200, timeout=5, what="ready")
    wait_until(lambda: b"steward_test_slow 1.0" in get(f"{url}/metrics")[2], timeout=5,
               what="slow collector's metrics")


def test_content_negotiation_and_gzip(agent: NodeAgent, release: threading.Event) -> None:
    release.set()
    url = f"http://127.0.0.1:{agent.port}/metrics"
    wait_until(lambda: get(url.replace("/metrics", "/readyz"))[0] == 200, timeout=10,
               what="ready")
    status, headers, body = get(url, {"Accept": "application/openmetrics-text;version=1.0.0,"
                                                "text/plain;version=0.0.4;q=0.5",
                                      "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE steward_gpu_energy_joules counter" in text

    status, headers, body = get(url)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"steward_gpu_up", "steward_gpu_energy_joules", "steward_collector_up",
            "process_resident_memory_bytes"} <= names


def test_unknown_path_is_404(agent: NodeAgent) -> None:
    assert get(f"http://127.0.0.1:{agent.port}/nope")[0] == 404


def test_healthz_fails_when_loops_stop(agent: NodeAgent, release: threading.Event) -> None:
    release.set()
    url = f"http://127.0.0.1:{agent.port}/healthz"
    assert get(url)[0] == 200
    agent.loops.stop()
    assert get(url)[0] == 503


def test_render_once_per_publish_not_per_scrape() -> None:
    calls = []

    def families() -> list[Metric]:
        calls.append(1)
        family = Metric("steward_x", "x", "gauge")
        family.add_sample("steward_x", {}, float(len(calls)))
        return [family]

    exposition = Exposition(families)
    first = exposition.body()
    assert len(calls) == 1
    for _ in range(5):
        assert exposition.body() is first  # cached: no re-render per scrape
    assert len(calls) == 1
    exposition.publish()  # a collection finished: re-rendered eagerly, off the scrape path
    assert len(calls) == 2
    second = exposition.body()
    assert second is not first and b"steward_x 2.0" in second.data
    assert len(calls) == 2
