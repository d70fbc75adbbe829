"""A real Alertmanager (Debian ``prometheus-alertmanager``) started by a test, and a Prometheus
that sends it alerts.

``start_prometheus_with_alerting`` exists beside ``tests.support.prometheus.start_prometheus``
because the alerting section must be in Prometheus's config from the start: a reload that
adds it empties Prometheus's Alertmanager list for up to 5 s (service discovery batches),
and alerts evaluated meanwhile are dropped until the next resend.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.localnet import stop_process
from tests.support.binaries import require_binary
from tests.support.net import free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "prometheus-rules.yaml"


@dataclass
class Alertmanager:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """``POST /api/v2/alerts`` as Prometheus does."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
            return list(json.load(response))

    def stop(self) -> None:
        stop_process(self.process)


def webhook_receiver(name: str, url: str, *, bearer_token: str | None = None,
                     send_resolved: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {"url": url, "send_resolved": send_resolved}
    if bearer_token is not None:
        config["http_config"] = {"authorization": {"type": "Bearer",
                                                   "credentials": bearer_token}}
    return {"name": name, "webhook_configs": [config]}


def start_alertmanager(config: dict[str, Any], *, port: int | None = None) -> Alertmanager:
    """``port``: chosen beforehand when something configured earlier must know the URL."""
    binary = require_binary("prometheus-alertmanager")
    workdir = Path(tempfile.mkdtemp(prefix="steward-am-"))
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "alertmanager.log"
    process = subprocess.Popen(
        [binary, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         f"--web.external-url={url}"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        # An exit is an answer: stop waiting (a bind error used to cost the whole timeout).
        wait_until(lambda: process.poll() is not None or http_ok(f"{url}/-/ready"),
                   timeout=20, what="alertmanager ready")
        if process.poll() is not None:
            raise TimeoutError
    except TimeoutError:
        process.kill()
        raise AssertionError(
            f"alertmanager did not start: {log_path.read_text()[-2000:]}") from None
    return Alertmanager(url=url, process=process, workdir=workdir, log_path=log_path)
