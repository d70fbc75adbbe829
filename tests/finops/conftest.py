"""Fixtures for the FinOps report: a real Prometheus holding the synthetic fortnight of
``fleet.py`` (backfilled with promtool), and the Kubernetes API stand-in with the
namespaces' team labels."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.config import StewardConfig
from agent.finops.report import run_finops_report
from agent.finops.savings import PlanFound, SavingAction
from tests.finops.fleet import (
    NAMESPACE_LABELS,
    NAMESPACE_TEAMS,
    NOW,
    PRICES,
    WEEK,
    write_openmetrics,
)
from tests.support.binaries import require_binary
from tests.support.kube import KubeStandIns
from tests.support.net import free_port, http_ok, wait_until


@dataclass
class FleetPrometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    samples: int

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def fleet_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetPrometheus]:
    promtool = require_binary("promtool")
    prometheus = require_binary("prometheus")
    work = tmp_path_factory.mktemp("finops-prometheus")
    source, data = work / "fleet.om", work / "data"
    samples = write_openmetrics(source)
    backfill = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
        capture_output=True, text=True, timeout=120, check=False)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    config = work / "prometheus.yml"
    config.write_text("global: {scrape_interval: 15s}\n", encoding="utf-8")
    port = free_port()
    log_path = work / "prometheus.log"
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
         # Retention counts back from the newest block; keep the backfilled past anyway.
         "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = FleetPrometheus(url=url, process=process, log_path=log_path, samples=samples)
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{url}/-/ready"), timeout=30,
                   what="prometheus ready")
    except TimeoutError:
        process.kill()
        raise AssertionError(f"prometheus did not start: {server.log()[-2000:]}") from None
    yield server
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def kube_with_teams(make_session_kube: KubeStandIns,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The API stand-in with the fleet's namespaces and labels; its kubeconfig."""
    kube = make_session_kube()
    for name, labels in NAMESPACE_LABELS.items():
        kube.create({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "labels": labels}})
    return kube.kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


def fleet_config(prometheus_url: str, *, kubeconfig: Path | None = None,
                 **sections: dict[str, object]) -> StewardConfig:
    """The fleet's prices and static teams; ``sections`` add or replace config sections."""
    data: dict[str, dict[str, object]] = {
        "prometheus": {"url": prometheus_url, "timeout_seconds": 10},
        "kubernetes": {"kubeconfig": str(kubeconfig) if kubeconfig else None},
        "finops": {"prices": PRICES, "namespace_teams": NAMESPACE_TEAMS},
        # No hygiene audit log unless a test brings one: never whatever is in the cwd.
        "state": {"url": "sqlite:////nonexistent/steward-state.db"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return StewardConfig.model_validate(data)


@pytest.fixture(scope="session")
def fleet_report_dir(fleet_prometheus: FleetPrometheus, kube_with_teams: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the fleet's week, teams from the Kubernetes API stand-in."""
    out = tmp_path_factory.mktemp("report") / WEEK
    code = run_finops_report(fleet_config(fleet_prometheus.url, kubeconfig=kube_with_teams),
                             week=WEEK, out_dir=out, slack=False, parquet=None, now=NOW)
    assert code == 0, fleet_prometheus.log()[-2000:]
    return out


SIMULATED_WEEK = "2026-W48"
SIMULATED_PRICE = 4.10
SIMULATED_TEAMS = {"ml-research": "research", "data-science": "data", "inference": "platform"}


class LatestPlans:
    """A SavingsSource with no applied action and the demo's three dry-run plans."""

    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        return []

    def latest_plans(self, until: datetime) -> list[PlanFound]:
        return [PlanFound("idle-gpus", "dry_run", until - timedelta(minutes=5), 3, gpus=3.0),
                PlanFound("orphaned-buckets", "dry_run", until - timedelta(minutes=4), 2),
                PlanFound("stale-images", "dry_run", until - timedelta(minutes=4), 5,
                          bytes=3_144_679_424)]


@pytest.fixture(scope="session")
def simulated_week_report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's report: its simulated week (agent/sim/finops_week.py) from Parquet."""
    from agent.demo.story import NODES
    from agent.finops.period import ReportWeek
    from agent.sim.finops_week import write_simulated_week

    week = ReportWeek.parse(SIMULATED_WEEK)
    folder = tmp_path_factory.mktemp("simulated-week")
    parquet = write_simulated_week(folder / "week.parquet", start=week.start, end=week.end,
                                   nodes=list(NODES))
    config = StewardConfig.model_validate({
        "finops": {"prices": {"NVIDIA H100 80GB HBM3": SIMULATED_PRICE},
                   "namespace_teams": SIMULATED_TEAMS},
        "state": {"url": "sqlite:////nonexistent/steward-state.db"}})
    out = folder / SIMULATED_WEEK
    code = run_finops_report(config, week=SIMULATED_WEEK, out_dir=out, slack=False,
                             parquet=parquet, now=week.end + timedelta(days=3, hours=8),
                             savings=LatestPlans())
    assert code == 0
    return out
