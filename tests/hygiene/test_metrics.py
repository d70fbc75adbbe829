"""The ``steward_hygiene_*`` families as Prometheus scrapes them, and the catalog's hygiene
alert expressions evaluated on them by a real Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric

from agent.alerts.catalog import CATALOG
from agent.controller.hygiene.metrics import HygieneMetrics
from tests.hygiene.fakes import Thing, make_rig
from tests.support.net import free_port
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus

EXPR = {alert.name: alert.expr for alert in CATALOG}


class _Families:
    def __init__(self, metrics: HygieneMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics.families()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Prometheus]]:
    rig = make_rig(tmp_path, {f"ns/Deployment/d{i}": Thing(uid=str(i)) for i in range(3)},
                   max_actions=1)
    rig.metrics.declare("idle-gpus")
    registry = CollectorRegistry()
    registry.register(_Families(rig.metrics))  # type: ignore[arg-type]
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    prometheus = start_prometheus([ScrapeJob("steward-controller", [f"127.0.0.1:{port}"])])
    try:
        yield rig, prometheus
    finally:
        prometheus.stop()
        server.shutdown()
        thread.join(5)


def test_label_is_hygiene_job_and_every_family_is_exported(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, {"ns/Deployment/d": Thing()})
    rig.engine().run(apply=False)
    names = {(s.name, tuple(sorted(s.labels))) for f in rig.metrics.families()
             for s in f.samples}
    assert names == {
        ("steward_hygiene_runs_total", ("hygiene_job", "result")),
        ("steward_hygiene_last_success_timestamp_seconds", ("hygiene_job",)),
        ("steward_hygiene_candidates", ("hygiene_job",)),
        ("steward_hygiene_actions_total", ("action", "hygiene_job", "mode")),
        ("steward_hygiene_reclaimable", ("hygiene_job", "unit")),
    }
    assert rig.metrics.value("steward_hygiene_last_success_timestamp_seconds") == rig.clock.now


@pytest.mark.integration
def test_hygiene_alert_expressions_fire_on_the_engines_metrics(
        served: tuple[Any, Prometheus]) -> None:
    rig, prometheus = served
    prometheus.wait_for('steward_hygiene_runs_total{result="blast_radius_tripped"} == 0')
    assert rig.engine().run(apply=True).result == "blast_radius_tripped"
    rig.job.scan_error = "Prometheus down"
    assert rig.engine().run(apply=True).result == "failed"
    tripped = prometheus.wait_for(EXPR["StewardHygieneBlastRadiusTripped"])
    assert [r["metric"]["hygiene_job"] for r in tripped] == ["idle-gpus"]
    failing = prometheus.wait_for(EXPR["StewardHygieneJobFailing"])
    assert [r["metric"]["hygiene_job"] for r in failing] == ["idle-gpus"]
