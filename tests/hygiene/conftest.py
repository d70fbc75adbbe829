"""Hygiene test fixtures: one real Prometheus over a backfilled GPU history for the whole
session (``history``: no live scrapes, so no verdict depends on timing or load), the API
stand-in per test (``kube``, tests/conftest.py), and a state store in a temp dir.

``Fleet.at`` is the moment the history is built around; runtimes in the tests take it as
their clock, so every query is evaluated at a time the test controls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import StewardConfig
from agent.controller.hygiene.metrics import HygieneMetrics
from agent.controller.hygiene.notify import NotifyFailed, OwnerNotice
from agent.controller.hygiene.runner import HygieneRuntime
from agent.sim.kube_api import KubeApiServer
from tests.hygiene import history
from tests.support.prometheus import Prometheus, openmetrics, start_prometheus

WINDOW, GRACE = history.WINDOW, history.GRACE
SCRAPE_INTERVAL = f"{history.SCRAPE}s"


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
    settings = {"window": WINDOW, "grace": GRACE, "scrape_interval": SCRAPE_INTERVAL,
                "mark_hours": 0, "max_percent": 100, "max_actions": 10, **idle_gpus}
    return StewardConfig.model_validate({
        "prometheus": {"url": prometheus_url, "timeout_seconds": 5},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "controller": {"lease_namespace": "steward", "identity": "test-controller"},
        "hygiene": {"idle_gpus": settings},
    })


def make_runtime(config: StewardConfig, kube: KubeApiServer, *,
                 notifier: RecordingNotifier | None = None,
                 metrics: HygieneMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> HygieneRuntime:
    return HygieneRuntime(config, api_client=kube.api_client(),
                          notifier=notifier or RecordingNotifier(), metrics=metrics,
                          clock=clock)


@dataclass
class Fleet:
    prometheus: Prometheus
    at: float  # the history's "now"

    @property
    def url(self) -> str:
        return self.prometheus.url

    def clock(self) -> float:
        return self.at


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    at = float(math.floor(time.time() / history.SCRAPE) * history.SCRAPE)
    prometheus = start_prometheus([], backfill=openmetrics(history.series(at)))
    try:
        yield Fleet(prometheus=prometheus, at=at)
    finally:
        prometheus.stop()

