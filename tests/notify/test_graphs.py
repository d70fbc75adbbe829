"""A graph in the thread of a firing alert: the catalog's expression narrowed to the alert's
series, from a real Prometheus (backfilled history), uploaded once; none when Prometheus is
down, and the alert is delivered all the same."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clients.prometheus import PrometheusClient
from agent.notify.graphs import alert_series, graph_expression, graphs
from agent.sim.slack_stub import SlackStub
from tests.notify.conftest import MakeNotifier
from tests.notify.payloads import alert, post, webhook
from tests.support.net import free_port, wait_until
from tests.support.prometheus import BackfillSeries, Prometheus, openmetrics, start_prometheus

GPU0 = {"hostname": "gpu-node-1", "gpu": "0", "UUID": "GPU-aaaa", "pci_bus_id": "0000:01:00.0",
        "modelName": "NVIDIA H100"}
GPU1 = {**GPU0, "gpu": "1", "UUID": "GPU-bbbb", "pci_bus_id": "0000:02:00.0"}


def test_graph_expression_drops_the_threshold() -> None:
    assert graph_expression("max by (a) (x) > 85") == "max by (a) (x)"
    assert graph_expression('x{a=~"b>c"} >= 1') == 'x{a=~"b>c"}'
    assert graph_expression("rate(x[5m]) != 0 and on() y") == "rate(x[5m])"
    assert graph_expression('sum(x{a!="b"})') == 'sum(x{a!="b"})'
    assert graph_expression("(a > 1) or b") == "(a > 1) or b"


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    end = time.time()
    points = [(end - 3500 + 15 * i, 70.0 + i * 0.1) for i in range(230)]
    backfill = openmetrics([
        BackfillSeries("steward_gpu_temperature_celsius", GPU0, points),
        BackfillSeries("steward_gpu_temperature_celsius", GPU1,
                       [(t, 40.0) for t, _ in points]),
    ])
    server = start_prometheus([], backfill=backfill)
    try:
        yield server
    finally:
        server.stop()


def temperature_alert() -> dict[str, str]:
    return {"alertname": "GpuTemperatureHigh", "severity": "warning", **GPU0}


@pytest.mark.integration
def test_the_alerts_own_series(prometheus: Prometheus) -> None:
    from agent.notify.graphs import catalog_expressions

    expr = catalog_expressions()["GpuTemperatureHigh"]
    series = alert_series(PrometheusClient(prometheus.url), expr, temperature_alert(),
                          end=time.time())
    assert [s.labels["gpu"] for s in series] == ["0"]
    assert len(series[0].points) > 100
    assert max(v for _, v in series[0].points) > 80  # GPU 1's 40 °C is not in it


@pytest.mark.integration
def test_graph_uploaded_once_into_the_thread(prometheus: Prometheus, stub: SlackStub,
                                             make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(prometheus={"url": prometheus.url})
    hot = alert("GpuTemperatureHigh", severity="warning", **GPU0)
    assert post(notifier.url, webhook([hot]))[0] == 200
    stub.wait_for(lambda: bool(stub.roots()), timeout=10)
    root = stub.roots()[0]

    def uploaded() -> bool:
        return any(m.files for m in stub.replies(root))
    stub.wait_for(uploaded, timeout=20)
    [message] = [m for m in stub.replies(root) if m.files]
    assert message.thread_ts == root.ts
    [shared] = message.files
    data = stub.uploads[shared["id"]]["data"]
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert "GpuTemperatureHigh" in shared["title"]
    # The same alert again (Alertmanager repeats): no second graph within the hour.
    assert post(notifier.url, webhook([hot, alert("GpuLost", **GPU1)]))[0] == 200
    stub.wait_for(lambda: len(stub.replies(root)) >= 2, timeout=10)
    time.sleep(4.5)  # two more rounds of the graph work
    assert len([m for m in stub.replies(root) if m.files]) == 1
    assert len(stub.uploads) == 1


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_prometheus_down_no_graph_alert_delivered(stub: SlackStub,
                                                 make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(prometheus={"url": f"http://127.0.0.1:{free_port()}"})
    assert post(notifier.url, webhook([alert("GpuTemperatureHigh", severity="warning",
                                             **GPU0)]))[0] == 200
    stub.wait_for(lambda: bool(stub.roots()), timeout=10)

    def recorded() -> list[str]:
        with notifier.engine.connect() as conn:
            return [str(r.state) for r in conn.execute(graphs.select())]
    wait_until(lambda: recorded() == ["skipped"], timeout=15, what="the graph skipped")
    assert stub.uploads == {}
    assert stub.calls("files.getUploadURLExternal") == []


def test_graphs_can_be_turned_off(stub: SlackStub, make_notifier: MakeNotifier,
                                  tmp_path: Path) -> None:
    notifier = make_notifier(notifier={"actions": {"graphs": False}})
    assert notifier.actions is None
