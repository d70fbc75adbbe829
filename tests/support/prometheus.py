"""A real Prometheus (Debian package) started by a test, queried through the one client."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.clients.prometheus import PrometheusClient
from agent.demo.servers import ScrapeJob, prometheus_config
from agent.localnet import stop_process
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, wait_until


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    rule_files: list[Path] = field(default_factory=list)

    @property
    def client(self) -> PrometheusClient:
        return PrometheusClient(self.url, timeout=10)

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        return self.client.query(expr, at=at)

    def scalar_values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant vector -> {sorted label items (without __name__): value}."""
        out = {}
        for sample in self.query(expr):
            labels = tuple(sorted((k, v) for k, v in sample["metric"].items() if k != "__name__"))
            out[labels] = float(sample["value"][1])
        return out

    def alerts(self) -> list[dict[str, Any]]:
        return self.client.alerts()

    def targets_up(self) -> bool:
        active = self.client.targets()
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, expr: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty result (new targets take ~5 s to appear)."""
        result: list[dict[str, Any]] = []

        def has_data() -> bool:
            nonlocal result
            result = self.query(expr)
            return bool(result)

        wait_until(has_data, timeout=timeout, interval=0.25, what=f"PromQL {expr!r}")
        return result

    def stop(self) -> None:
        stop_process(self.process)


@dataclass(frozen=True)
class BackfillSeries:
    """One gauge's samples for :func:`openmetrics`: (unix seconds, value), oldest first."""

    name: str
    labels: dict[str, str]
    points: list[tuple[float, float]]


def openmetrics(series: list[BackfillSeries]) -> str:
    """OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``: each family
    contiguous, each series in time order, as promtool wants them."""
    lines: list[str] = []
    for name in sorted({s.name for s in series}):
        lines.append(f"# TYPE {name} gauge")
        for one in (s for s in series if s.name == name):
            rendered = ",".join(f'{k}="{v}"' for k, v in sorted(one.labels.items()))
            lines.extend(f"{name}{{{rendered}}} {value:g} {t:.3f}"
                         for t, value in sorted(one.points))
    return "\n".join([*lines, "# EOF", ""])


def history(series: list[tuple[str, dict[str, str]]], *, start: float, end: float,
            step: float = 60.0, value: float = 1.0) -> str:
    """OpenMetrics text: each ``(name, labels)`` gauge at ``value`` from ``start`` to ``end``.

    For backfilling, so a Prometheus started now has the past that ``offset`` guards need
    (a series that existed 30 minutes ago), as it would after running for a while.
    """
    lines: list[str] = []
    for name in sorted({n for n, _ in series}):
        lines.append(f"# TYPE {name} gauge")
        for series_name, labels in series:
            if series_name != name:
                continue
            rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            t = start
            while t <= end:
                lines.append(f"{name}{{{rendered}}} {value} {t:.3f}")
                t += step
    return "\n".join([*lines, "# EOF", ""])


def start_prometheus(jobs: list[ScrapeJob], *, rule_files: list[Path] | None = None,
                     evaluation_interval: str = "1s", backfill: str | None = None,
                     alertmanager: str | None = None, blocks: Path | None = None) -> Prometheus:
    """A real Prometheus; ``alertmanager`` is ``host:port`` to send alerts to; ``blocks``
    a folder of TSDB blocks (``promtool tsdb create-blocks-from rules``) it starts with."""
    binary = require_binary("prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="steward-prom-"))
    if backfill is not None:
        source = workdir / "backfill.om"
        source.write_text(backfill, encoding="utf-8")
        subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics",
                        str(source), str(workdir / "data")], check=True, capture_output=True)
    if blocks is not None:
        for block in blocks.iterdir():
            if block.is_dir() and (block / "meta.json").is_file():
                shutil.copytree(block, workdir / "data" / block.name)
    config = prometheus_config(jobs, rule_files=rule_files,
                               evaluation_interval=evaluation_interval,
                               alertmanager=alertmanager)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log_path = workdir / "prometheus.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
         # Firing alerts re-sent every second: one evaluated before Alertmanager is
         # discovered is not held back for a minute.
         "--rules.alert.resend-delay=1s"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{url}/-/ready"), timeout=20,
                   what="prometheus ready")
    except TimeoutError:
        process.kill()
        raise AssertionError(
            f"prometheus did not start: {log_path.read_text()[-2000:]}") from None
    return Prometheus(url=url, process=process, workdir=workdir, log_path=log_path,
                      rule_files=list(rule_files or []))
