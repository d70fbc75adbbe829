"""Hygiene test fixtures: one real Prometheus scraping two simulated GPU nodes for the whole
session, an API stand-in per test, and a state store in a temp dir.

The idle window is seconds long (``WINDOW`` + ``GRACE``) so that real scraped history covers
it quickly. The session fixture also computes the first plan as soon as that history
exists: the bursty GPU is busy for the first 30 s of its node's life only, so the "bursty is
left alone" check has to look at a window inside that time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import StewardConfig
from agent.controller.hygiene.engine import RunOutcome
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.notify import NotifyFailed, OwnerNotice
from agent.controller.hygiene.runner import HygieneRuntime
from agent.sim.kube_api import KubeApiServer
from tests.hygiene import world
from tests.support.net import wait_until
from tests.support.prometheus import Prometheus, ScrapeJob, start_prometheus
from tests.support.steward import StewardProcess, start_node

WINDOW, GRACE = "8s", "1s"
SPAN_SECONDS = 9
# node a: index 0 bursty (busy for its first 30 s), 1 idle, 2 training, 3 MIG (3 slices)
NODE_A = "node:\n  sim:\n    seed: 0\n    gpus: [bursty, idle_allocated, training, mig]\n"
# node b: 4 free GPUs, then idle pods jupyter-alice-4 ... jupyter-alice-9
NODE_B = ("node:\n  sim:\n    gpus: [idle_free, idle_free, idle_free, idle_free, "
          "idle_allocated, idle_allocated, idle_allocated, idle_allocated, idle_allocated, "
          "idle_allocated]\n")
UTILIZATION_SERIES = 3 + 10  # node a's MIG GPU has none


class RecordingNotifier:
    """Owner notices, kept for assertions; ``fail`` makes the next ones raise."""

    def __init__(self) -> None:
        self.notices: list[OwnerNotice] = []
        self.fail = False

    def notify(self, notice: OwnerNotice) -> None:
        if self.fail:
            raise NotifyFailed("slack is down (test)")
        self.notices.append(notice)


def hygiene_config(tmp_path: Path, prometheus_url: str, **idle_gpus: Any) -> StewardConfig:
    settings = {"window": WINDOW, "grace": GRACE, "mark_hours": 0, "max_percent": 100,
                "max_actions": 10, **idle_gpus}
    return StewardConfig.model_validate({
        "prometheus": {"url": prometheus_url, "timeout_seconds": 5},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "controller": {"lease_namespace": "steward", "identity": "test-controller"},
        "hygiene": {"idle_gpus": settings},
    })


def make_runtime(config: StewardConfig, kube: KubeApiServer, *,
                 notifier: RecordingNotifier | None = None,
                 metrics: HygieneMetrics | None = None) -> HygieneRuntime:
    return HygieneRuntime(config, api_client=kube.api_client(),
                          notifier=notifier or RecordingNotifier(), metrics=metrics)


@dataclass
class Fleet:
    prometheus: Prometheus
    nodes: list[StewardProcess]
    first_plan: RunOutcome
    first_plan_age: float  # node a's age (s) when the first plan was computed
    workdir: Path

    @property
    def url(self) -> str:
        return self.prometheus.url


def _first_plan(workdir: Path, prometheus_url: str) -> RunOutcome:
    with KubeApiServer(namespaces=("default", "steward")) as kube:
        world.full_world(kube)
        config = hygiene_config(workdir, prometheus_url)
        return make_runtime(config, kube).run("idle-gpus", apply=False)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    nodes: list[StewardProcess] = []
    prometheus: Prometheus | None = None
    try:
        started = time.monotonic()
        nodes.append(start_node(workdir, config=NODE_A, env={"NODE_NAME": "gpu-node-a"}))
        nodes.append(start_node(workdir, config=NODE_B, env={"NODE_NAME": "gpu-node-b"}))
        prometheus = start_prometheus([ScrapeJob(
            "steward-node", [f"127.0.0.1:{node.port}" for node in nodes])])
        covered = f"count(steward_gpu_utilization_ratio offset {SPAN_SECONDS}s)"

        def history_covers_window() -> bool:
            assert prometheus is not None
            result = prometheus.query(covered)
            return bool(result) and int(float(result[0]["value"][1])) == UTILIZATION_SERIES

        wait_until(history_covers_window, timeout=40, interval=0.25,
                   what="scraped GPU history as long as the idle window")
        plan = _first_plan(workdir, prometheus.url)
        yield Fleet(prometheus=prometheus, nodes=nodes, first_plan=plan,
                    first_plan_age=time.monotonic() - started, workdir=workdir)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for node in nodes:
            node.stop()


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(bookmark_interval=0.2, namespaces=("default", "steward")) as server:
        yield server
