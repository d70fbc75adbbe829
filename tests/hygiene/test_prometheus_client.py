"""The Prometheus client against the real Prometheus: answers, and every way it fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest

from agent.clients.prometheus import PrometheusClient, PrometheusError
from tests.hygiene.conftest import Fleet
from tests.support.net import free_port

pytestmark = pytest.mark.integration


def test_instant_vector(fleet: Fleet) -> None:
    samples = PrometheusClient(fleet.url).instant(
        'steward_gpu_utilization_ratio{hostname="gpu-node-a"}')
    assert {s.labels["gpu"] for s in samples} == {"0", "1", "2"}
    assert all(0.0 <= s.value <= 1.0 for s in samples)


def test_rejected_query_names_the_error_and_the_query(fleet: Fleet) -> None:
    with pytest.raises(PrometheusError) as caught:
        PrometheusClient(fleet.url).instant("max_over_time(steward_gpu_utilization_ratio)")
    message = str(caught.value)
    assert f"Prometheus at {fleet.url} rejected the query" in message
    assert "query: max_over_time(steward_gpu_utilization_ratio)" in message


def test_not_a_vector(fleet: Fleet) -> None:
    with pytest.raises(PrometheusError, match="answered a 'scalar', not a vector"):
        PrometheusClient(fleet.url).instant("scalar(vector(1))")


def test_raw_samples_of_a_range_selector(fleet: Fleet) -> None:
    """Exactly the backfilled samples, gaps included: no lookback fills the hole."""
    (series,) = PrometheusClient(fleet.url).samples(
        'steward_gpu_utilization_ratio{hostname="gpu-node-c",gpu="0"}[2h]', at=fleet.at)
    times = [t for t, _ in series.points]
    assert times == sorted(times) and times[-1] == fleet.at
    gaps = [b - a for a, b in pairwise(times)]
    assert max(gaps) == 40 * 60 + 30 and gaps.count(30) == len(gaps) - 1
    assert all(v == 0.002 for _, v in series.points)
    with pytest.raises(PrometheusError, match="answered a 'vector', not a matrix"):
        PrometheusClient(fleet.url).samples("steward_gpu_up", at=fleet.at)


def test_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError,
                       match=f"cannot reach Prometheus at {url}: connection refused"):
        PrometheusClient(url).instant("up")


class _Hanging(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_POST(self) -> None:
        self.release.wait(5)
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>bad gateway</html>")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Hanging.release.set()
    server.shutdown()
    server.server_close()


def test_timeout_and_non_json_answers(proxy: str) -> None:
    _Hanging.release.clear()
    with pytest.raises(PrometheusError, match=r"did not answer within 0\.2s"):
        PrometheusClient(proxy, timeout=0.2).instant("up")
    _Hanging.release.set()
    with pytest.raises(PrometheusError, match="answered HTTP 502 without a JSON body"):
        PrometheusClient(proxy).instant("up")
