"""Real Prometheus and Alertmanager for the demo, when their binaries are on PATH.

The configs are built here once; the tests' fixtures use the same functions, so the demo
runs exactly what the tests check.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.demo.processes import Child, Children, free_port

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: list[str]
    interval: str = "1s"


def prometheus_config(jobs: list[ScrapeJob], *, rule_files: list[Path] | None = None,
                      evaluation_interval: str = "1s",
                      alertmanager: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval,
                   "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in (rule_files or [])],
        "scrape_configs": [
            {"job_name": job.name, "scrape_interval": job.interval,
             "static_configs": [{"targets": job.targets}]}
            for job in jobs
        ],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def rules_without_for(rules: Path, out: Path) -> Path:
    """The rules with every ``for:`` at 0s: a one-minute demo (or test) cannot wait the real
    durations; those are covered by the promtool unit tests."""
    text = re.sub(r"(?m)^(\s+for: ).*$", r"\g<1>0s", rules.read_text(encoding="utf-8"))
    out.write_text(text, encoding="utf-8")
    return out


def find_binary(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


def start_prometheus(children: Children, binary: str, jobs: list[ScrapeJob], *,
                     rule_files: list[Path], alertmanager: str | None) -> Child:
    workdir = children.workdir / "prometheus"
    workdir.mkdir(exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(
        jobs, rule_files=rule_files, alertmanager=alertmanager)), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return children.start("prometheus", [
        binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s"],
        url=url, ready=f"{url}/-/ready")


def alertmanager_config(webhook_url: str, *, bearer_token_file: Path | None = None
                        ) -> dict[str, Any]:
    http_config: dict[str, Any] = {}
    if bearer_token_file is not None:
        http_config = {"authorization": {"type": "Bearer",
                                         "credentials_file": str(bearer_token_file)}}
    return {
        "route": {"receiver": "steward", "group_by": ["alertname", "hostname"],
                  "group_wait": "1s", "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [{"name": "steward", "webhook_configs": [
            {"url": webhook_url, "send_resolved": True, "max_alerts": 0,
             **({"http_config": http_config} if http_config else {})}]}],
    }


def start_alertmanager(children: Children, binary: str, webhook_url: str, *,
                       bearer_token_file: Path | None = None) -> Child:
    workdir = children.workdir / "alertmanager"
    workdir.mkdir(exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(
        webhook_url, bearer_token_file=bearer_token_file)), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # An empty --cluster.listen-address turns clustering off (else it binds 0.0.0.0:9094).
    return children.start("alertmanager", [
        binary, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        f"--web.external-url={url}"], url=url, ready=f"{url}/-/ready")
