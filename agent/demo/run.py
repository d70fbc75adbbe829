"""``steward demo``: the whole loop on one machine, with no cluster and no cloud account.

An embedded Kubernetes API stand-in holds the simulated cluster; moto plays S3 and ECR; two
simulated GPU nodes run the fault scenarios; the controller (dry-run), the notifier and, when
their binaries are installed, a real Prometheus and Alertmanager are wired together. The
demo prints what an operator would see, in order, and leaves every artefact in one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent.demo.processes import Children, free_port
from agent.demo.servers import (
    ALERTMANAGER_BINARIES,
    PROMETHEUS_BINARIES,
    ScrapeJob,
    find_binary,
    rules_without_for,
    start_alertmanager,
    start_prometheus,
)
from agent.demo.slack_view import render_html, render_message

ROOT = Path(__file__).resolve().parents[2]
NODES: tuple[tuple[str, list[str]], ...] = (
    ("gpu-node-1", ["training", "training", "idle_allocated", "lost", "xid_storm",
                    "ecc_errors", "thermal_throttling", "mig"]),
    ("gpu-node-2", ["training", "training", "training", "bursty", "idle_allocated",
                    "training", "idle_free", "training"]),
)
MODEL = "NVIDIA H100 80GB HBM3"
TEAMS = {"ml-research": "research", "data-science": "data", "inference": "platform"}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
           "AWS_DEFAULT_REGION": "us-east-1"}
HYGIENE_JOBS = ("idle-gpus", "stale-images", "orphaned-buckets")


@dataclass
class DemoOptions:
    duration: float = 60.0
    prometheus: bool = True
    seed: int = 0
    out: Path | None = None


@dataclass
class DemoResult:
    workdir: Path
    skipped: dict[str, str] = field(default_factory=dict)
    alerts: list[dict[str, str]] = field(default_factory=list)
    slack_messages: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None


class Demo:
    def __init__(self, options: DemoOptions, *, out: TextIO = sys.stdout,
                 environ: dict[str, str] | None = None) -> None:
        self.options = options
        self.out = out
        self.env = dict(os.environ if environ is None else environ)
        workdir = options.out or Path(tempfile.mkdtemp(prefix="steward-demo-"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.result = DemoResult(workdir=workdir)
        self.children = Children(workdir)
        self.stop = threading.Event()
        self._stack = contextlib.ExitStack()
        self.alertmanager_url: str | None = None
        self.slack_stub: Any = None
        self.child_env: dict[str, str] = {}
        self.prometheus_url: str | None = None

    # -- output ------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.say(f"\n== {title}")

    def skip(self, part: str, why: str) -> None:
        self.result.skipped[part] = why
        self.say(f"   skipped {part}: {why}")

    # -- the world -----------------------------------------------------------------------

    def _kube(self) -> Path:
        from agent.sim.cluster import cluster_objects
        from agent.sim.kube_api import KubeApiServer
        from agent.sim.nvml import SimulatedNvml
        from agent.sim.pods import SimulatedPods
        from agent.sim.world import load_pods

        kube = KubeApiServer(namespaces=("default", "steward")).start()
        self._stack.callback(kube.stop)
        for obj in cluster_objects():
            kube.apply(obj)
        for hostname, scenarios in NODES:
            pods = SimulatedPods(SimulatedNvml(scenarios, hostname=hostname,
                                               seed=self.options.seed), hostname)
            load_pods(kube.apply, pods.pods(), hostname)
        self.kube = kube
        return kube.kubeconfig(self.result.workdir / "kubeconfig")

    def _aws(self) -> str | None:
        try:
            from moto.server import ThreadedMotoServer

            from agent.sim.moto import Moto
        except ImportError:
            self.skip("S3 and ECR (moto)", "moto is not installed: pip install -e '.[demo]'")
            return None
        from agent.sim.world import seed_aws

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._stack.callback(server.stop)
        host, port = server.get_host_and_port()
        moto = Moto(f"http://{host}:{port}", server)
        seed_aws(moto)
        return moto.url

    def _slack(self) -> tuple[str, str, str]:
        """(api_url, token, channel): a real workspace when configured, else the stub."""
        token, channel = self.env.get("SLACK_BOT_TOKEN"), self.env.get("STEWARD_DEMO_CHANNEL")
        if token and channel:
            self.say(f"   Slack: sending to {channel} in your workspace (SLACK_BOT_TOKEN)")
            self.slack_stub = None
            return "https://slack.com/api/", token, channel
        from agent.sim.slack_stub import SlackStub

        stub = SlackStub(tokens=("xoxb-steward-demo",)).start()
        self._stack.callback(stub.stop)
        self.slack_stub = stub
        self.say("   Slack: a local stub records the messages (set SLACK_BOT_TOKEN and "
                 "STEWARD_DEMO_CHANNEL to send them to a real channel)")
        return stub.api_url, "xoxb-steward-demo", "#gpu-oncall"

    # -- the processes ---------------------------------------------------------------------

    def _config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.result.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def _base_config(self, *, prometheus: str | None, aws: str | None, slack: tuple[str, str, str]
                     ) -> dict[str, Any]:
        from agent.sim.world import ECR_HOST

        config: dict[str, Any] = {
            "state": {"url": f"sqlite:///{self.result.workdir / 'steward-state.db'}"},
            "slack": {"api_url": slack[0], "default_channel": slack[2]},
            "grafana": {"url": "http://grafana.example"},
            "alertmanager": {"url": self.alertmanager_url or "http://alertmanager.example"},
            "finops": {"prices": {MODEL: 4.10}, "namespace_teams": TEAMS,
                       "out_dir": str(self.result.workdir / "finops")},
            "hygiene": {"idle_gpus": {"window": "15s", "grace": "2s", "mark_hours": 1},
                        "orphaned_buckets": {"teams": ["ml", "research", "data", "platform"],
                                             "quiet_days": 30},
                        "stale_images": {"keep_newest": 2}},
            "controller": {"lease_namespace": "steward", "collect_interval_seconds": 2,
                           "lease_duration_seconds": 3, "renew_deadline_seconds": 2,
                           "retry_period_seconds": 0.5},
        }
        if prometheus:
            config["prometheus"] = {"url": prometheus}
        if aws:
            config["aws"] = {"endpoint_url": aws, "region": "us-east-1"}
            config["registries"] = [{"type": "ecr", "url": ECR_HOST}]
        return config

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            return self._run()
        finally:
            self.step("Stopping")
            self.children.stop_all()
            self._stack.close()
            (self.result.workdir / "demo-summary.json").write_text(json.dumps({
                "skipped": self.result.skipped, "alerts": self.result.alerts,
                "slack_messages": self.result.slack_messages,
                "plans": {k: {"candidates": len(v.get("candidates", [])),
                              "reclaimable": v.get("reclaimable", {})}
                          for k, v in self.result.plans.items()},
                "report": str(self.result.report) if self.result.report else None,
            }, indent=2), encoding="utf-8")
            self.say(f"   everything the demo made is in {self.result.workdir}")

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: self.stop.set())

    def _run(self) -> int:
        opts = self.options
        self.say(f"Steward demo: a simulated cluster of {len(NODES)} GPU nodes x 8 GPUs, "
                 f"{opts.duration:g} s (Ctrl-C stops it). Work folder: {self.result.workdir}")
        self.step("Starting the simulated cluster")
        kubeconfig = self._kube()
        self.say(f"   Kubernetes API stand-in: {self.kube.url}")
        aws = self._aws()
        if aws:
            self.say(f"   S3 and ECR (moto): {aws}")
        slack = self._slack()
        prometheus_bin = find_binary(PROMETHEUS_BINARIES) if opts.prometheus else None
        alertmanager_bin = find_binary(ALERTMANAGER_BINARIES) if opts.prometheus else None
        if not opts.prometheus:
            self.skip("Prometheus and Alertmanager", "--no-prometheus")
        elif prometheus_bin is None:
            self.skip("Prometheus", "no prometheus binary on PATH (Debian: apt-get install "
                                    "prometheus)")
        if opts.prometheus and alertmanager_bin is None:
            self.skip("Alertmanager", "no prometheus-alertmanager binary on PATH")

        env = {**AWS_ENV, "KUBECONFIG": ""}  # the nodes simulate their own pods
        nodes = []
        for hostname, scenarios in NODES:
            port = free_port()
            cfg = self._config(f"node-{hostname}", {"node": {
                "collect_interval_seconds": 1, "sim": {"gpus": scenarios, "seed": opts.seed,
                                                       "lost_after_seconds": 10}}})
            nodes.append(self.children.steward(
                f"node-{hostname}", ["node", "--config", str(cfg), "--gpu-backend", "sim",
                                     "--listen", f"127.0.0.1:{port}"],
                env={**env, "NODE_NAME": hostname}, ready=f"http://127.0.0.1:{port}/readyz"))
            nodes[-1].url = f"http://127.0.0.1:{port}"

        prometheus_url = None
        notifier_port = free_port()
        # The notifier needs a bearer token; Alertmanager sends it from the same file.
        token_file = self.result.workdir / "notifier-token"
        token_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        token_file.chmod(0o600)
        if prometheus_bin is not None and alertmanager_bin is not None:
            am = start_alertmanager(self.children, alertmanager_bin,
                                    f"http://127.0.0.1:{notifier_port}/alertmanager",
                                    bearer_token_file=token_file)
            self.alertmanager_url = am.url
        base = self._base_config(prometheus=None, aws=aws, slack=slack)
        base["notifier"] = {**base.get("notifier", {}), "auth_token_file": str(token_file)}
        notifier = self.children.steward(
            "notifier", ["notifier", "--config", str(self._config("notifier", base)),
                         "--listen", f"127.0.0.1:{notifier_port}"],
            env={**env, "SLACK_BOT_TOKEN": slack[1]},
            ready=f"http://127.0.0.1:{notifier_port}/readyz")
        notifier.url = f"http://127.0.0.1:{notifier_port}"

        controller_port = free_port()
        jobs = [ScrapeJob("steward-node", [n.url.removeprefix("http://") for n in nodes
                                           if n.url]),
                ScrapeJob("steward-controller", [f"127.0.0.1:{controller_port}"]),
                ScrapeJob("steward-notifier", [f"127.0.0.1:{notifier_port}"])]
        if prometheus_bin is not None:
            rules = rules_without_for(ROOT / "alerts" / "prometheus-rules.yaml",
                                      self.result.workdir / "rules.yaml")
            prom = start_prometheus(self.children, prometheus_bin, jobs, rule_files=[rules],
                                    alertmanager=(self.alertmanager_url or "").removeprefix(
                                        "http://") or None)
            prometheus_url = prom.url
        self.prometheus_url = prometheus_url
        self.controller_config = self._config("controller", {
            **self._base_config(prometheus=prometheus_url, aws=aws, slack=slack),
            "controller": {**base["controller"], "listen": f"127.0.0.1:{controller_port}"}})
        self.child_env = {**env, "KUBECONFIG": str(kubeconfig), "POD_NAME": "controller-0",
                          "SLACK_BOT_TOKEN": slack[1]}
        self.children.steward(
            "controller", ["controller", "--config", str(self.controller_config)],
            env=self.child_env, ready=f"http://127.0.0.1:{controller_port}/readyz")

        self.step("Endpoints")
        for node in nodes:
            self.say(f"   node agent {node.name[5:]:<12} {node.url}/metrics")
        self.say(f"   controller              http://127.0.0.1:{controller_port}/metrics "
                 "(dry-run)")
        self.say(f"   notifier                {notifier.url}/alertmanager")
        if prometheus_url:
            self.say(f"   Prometheus              {prometheus_url}/alerts")
        if self.alertmanager_url:
            self.say(f"   Alertmanager            {self.alertmanager_url}")

        self.step(f"Watching alerts and Slack for {opts.duration:g} s")
        self._watch(prometheus_url, opts.duration)
        if self.stop.is_set():
            return 130
        self.step("Hygiene plans (dry-run: nothing is touched)")
        self._plans()
        self.step("Weekly FinOps report")
        self._report()
        self.step("Dashboards")
        dashboards = sorted((ROOT / "dashboards").glob("*.json"))
        self.say(f"   {len(dashboards)} Grafana dashboards in {ROOT / 'dashboards'} "
                 "(import them, or install the Helm chart with dashboards.enabled)")
        return 0

    # -- watching ------------------------------------------------------------------------

    def _watch(self, prometheus_url: str | None, duration: float) -> None:
        seen_alerts: set[tuple[str, ...]] = set()
        seen_messages: dict[str, int] = {}
        deadline = time.monotonic() + duration
        while not self.stop.wait(1.0) and time.monotonic() < deadline:
            if prometheus_url:
                for alert in self._firing(prometheus_url):
                    labels = alert["labels"]
                    key = tuple(sorted(labels.items()))
                    if key in seen_alerts:
                        continue
                    seen_alerts.add(key)
                    self.result.alerts.append(labels)
                    where = " ".join(f"{k}={labels[k]}" for k in (
                        "hostname", "gpu", "namespace", "pod", "pipeline") if k in labels)
                    self.say(f"   ALERT {labels['alertname']:<28} {labels.get('severity', ''):<8}"
                             f" {where}")
            stub = getattr(self, "slack_stub", None)
            if stub is not None:
                for message in stub.roots():
                    version = len(message.updates) + len(stub.replies(message))
                    if seen_messages.get(message.ts) == version:
                        continue
                    seen_messages[message.ts] = version
                    self.say(render_message(message, replies=stub.replies(message)))
        if stub := getattr(self, "slack_stub", None):
            page = self.result.workdir / "slack-messages.html"
            page.write_text(render_html([(m, stub.replies(m)) for m in stub.roots()]),
                            encoding="utf-8")
            self.say(f"   the Slack messages as a page: {page}")
            self.result.slack_messages = [
                {"channel": m.channel, "ts": m.ts, "text": m.text, "updates": len(m.updates),
                 "replies": len(stub.replies(m)),
                 "buttons": [e.get("url") for b in m.blocks for e in b.get("elements", [])
                             if isinstance(e, dict) and e.get("type") == "button"]}
                for m in stub.roots()]

    @staticmethod
    def _firing(url: str) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=2) as response:
                alerts = json.load(response)["data"]["alerts"]
        except (OSError, ValueError, KeyError):
            return []
        return [a for a in alerts if a.get("state") == "firing"]

    # -- plans and report ------------------------------------------------------------------

    def _steward(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args],
                              capture_output=True, text=True, check=False, timeout=300,
                              env={**self.env, **self.child_env}, cwd=self.result.workdir)

    def _plans(self) -> None:
        for job in HYGIENE_JOBS:
            if job == "idle-gpus" and self.prometheus_url is None:
                self.skip("hygiene plan idle-gpus", "its evidence comes from Prometheus, "
                                                    "which is not running")
                continue
            result = self._steward("hygiene", "run", job, "--output", "json",
                                   "--config", str(self.controller_config),
                                   "--log-format", "text", "--log-level", "warning")
            path = self.result.workdir / f"plan-{job}.json"
            try:
                plan = json.loads(result.stdout)
            except ValueError:
                reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
                self.skip(f"hygiene plan {job}", reason)
                continue
            path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
            self.result.plans[job] = plan
            reclaim = ", ".join(f"{v:,.0f} {k}" if k == "bytes" else f"{v:g} {k}"
                                for k, v in plan.get("reclaimable", {}).items()) or "nothing"
            self.say(f"   {job}: {len(plan['candidates'])} candidates, "
                     f"{len(plan['skipped'])} left alone, reclaimable {reclaim}  ({path.name})")
            for candidate in plan["candidates"][:4]:
                self.say(f"      {candidate['action']:<14} {candidate['resource']}: "
                         f"{candidate['reason']}")

    def _report(self) -> None:
        from agent.finops.period import ReportWeek
        from agent.sim.finops_week import write_simulated_week

        week = ReportWeek.last_complete(datetime.now(UTC))
        parquet = write_simulated_week(self.result.workdir / "simulated-week.parquet",
                                       start=week.start, end=week.end, nodes=list(NODES),
                                       seed=self.options.seed)
        folder = self.result.workdir / "finops" / week.name
        result = self._steward("report", "finops", "--config", str(self.controller_config),
                               "--parquet", str(parquet), "--week", week.name, "--out",
                               str(folder), "--log-level", "warning")
        if result.returncode != 0:
            self.skip("FinOps report", (result.stderr.strip().splitlines() or ["failed"])[-1])
            return
        self.result.report = folder / "report.html"
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        totals = summary["totals"]
        self.say(f"   {week.name}: ${totals['cost']:,.2f} for {totals['gpu_hours_allocated']:,.0f}"
                 f" GPU-hours; ${totals['idle_cost']:,.2f} allocated but idle")
        for team in summary["teams"][:3]:
            self.say(f"      {team['team']:<10} ${team['cost']:>9,.2f}   idle "
                     f"${team['idle_cost']:>8,.2f}")
        self.say(f"   report: {self.result.report}")


def run_demo(options: DemoOptions, *, out: TextIO = sys.stdout) -> int:
    return Demo(options, out=out).run()
