"""``steward demo``: the whole loop on one machine, with no cluster and no cloud account.

An embedded Kubernetes API stand-in holds the simulated cluster; moto plays S3 and ECR; two
simulated GPU nodes run the fault scenarios; a real Prometheus (with the demo's shortened
rules, ``agent.demo.rules``) and Alertmanager, the controller (dry-run) and the notifier are
wired together. The demo prints what an operator would see, in order, each line with the
seconds since it started, says plainly what it cannot show and why, and leaves every
artefact in one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent.demo.processes import Child, Children, free_port
from agent.demo.rules import write_demo_rules
from agent.demo.servers import (
    ALERTMANAGER_BINARIES,
    PROMETHEUS_BINARIES,
    ScrapeJob,
    find_binary,
    start_alertmanager,
    start_prometheus,
)
from agent.demo.slack_view import header_text, plain_text, render_html
from agent.demo.story import (
    ECC_AFTER_SECONDS,
    EXPECTED_ALERTS,
    FAULTS,
    LOST_AFTER_SECONDS,
    NODES,
    NOT_SIMULATED,
    PIPELINE_FAILS_AFTER_SECONDS,
    SCENARIO_TEXT,
)
from agent.demo.watch import AlertWatch, SlackWatch, alert_labels_text
from agent.signals import stop_on_signals

ROOT = Path(__file__).resolve().parents[2]
MODEL = "NVIDIA H100 80GB HBM3"
PRICE = 4.10
TEAMS = {"ml-research": "research", "data-science": "data", "inference": "platform"}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
           "AWS_DEFAULT_REGION": "us-east-1"}
HYGIENE_JOBS = ("idle-gpus", "stale-images", "orphaned-buckets")
APT_COMMAND = ("sudo apt-get install -y --no-install-recommends prometheus "
               "prometheus-alertmanager")
PLAN_LINES = 10  # candidates printed per plan; the rest are in its JSON file
SKIPPED_LINES = 3  # what each plan left alone, and why
DEFAULT_DURATION = 150.0
# After the last expected alert has its Slack message: time for what changes next to show
# as edits and thread replies (XID 31 joining its group, GpuXidCritical resolving).
SETTLE_SECONDS = 15.0
HEARTBEAT_SECONDS = 8.0  # a line at least this often: the demo is never silent for long
# The notifier's buttons in the demo: the hygiene ones too (the controller shares its store).
DEMO_ACTIONS = {"hygiene_buttons": True, "admin_users": ["U0DEMOADMIN"]}


@dataclass
class DemoOptions:
    duration: float = DEFAULT_DURATION  # the most seconds to watch alerts and Slack
    prometheus: bool = True
    seed: int = 0
    out: Path | None = None


@dataclass
class DemoResult:
    workdir: Path
    skipped: dict[str, str] = field(default_factory=dict)
    alerts: list[dict[str, str]] = field(default_factory=list)
    alert_seconds: list[float] = field(default_factory=list)
    slack_messages: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Path | None = None
    screenshot: Path | None = None  # the acknowledged alert's thread, with its graph
    watched_seconds: float = 0.0
    shared_tenants: list[dict[str, Any]] = field(default_factory=list)


class Demo:
    def __init__(self, options: DemoOptions, *, out: TextIO = sys.stdout,
                 environ: dict[str, str] | None = None) -> None:
        self.started = time.monotonic()
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
        self.prometheus_url: str | None = None
        self.slack_stub: Any = None
        self.slack_channel = "#gpu-oncall"
        # Where each team's owner notices go (slack.team_channels): a channel per team in
        # the stand-in; the demo's one channel in a real workspace (next to on-call's).
        self.team_channels = {team: f"#{team}-gpu-jobs" for team in sorted(set(TEAMS.values()))}
        self.child_env: dict[str, str] = {}
        self.controller_config = workdir / "controller.yaml"
        self.kube: Any = None
        self.aws_url: str | None = None
        self.notifier_url = ""
        self.signing_secret = ""
        self.last_event = self.started

    # -- output ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def event(self, text: str) -> None:
        """A line of what happened, with the seconds since the demo started."""
        self.last_event = time.monotonic()
        stamp = f"[{self.elapsed():4.0f}s]"
        lines = text.splitlines() or [""]
        self.say(f"   {stamp} {lines[0]}")
        for line in lines[1:]:
            self.say(f"   {' ' * len(stamp)} {line}")

    def step(self, title: str) -> None:
        self.say(f"\n== {title}   [{self.elapsed():.0f}s]")

    def skip(self, part: str, why: str) -> None:
        self.result.skipped[part] = why
        self.say(f"   NOT SHOWN: {part}: {why}")

    # -- the world -----------------------------------------------------------------------

    def _describe(self) -> None:
        from agent.sim.cluster import cluster_objects
        from agent.sim.nvml import SimulatedNvml
        from agent.sim.pods import SimulatedPods, simulated_shares

        self.step("The simulated cluster")
        for hostname, scenarios in NODES:
            nvml = SimulatedNvml(scenarios, hostname=hostname, seed=self.options.seed)
            pods = SimulatedPods(nvml, hostname)
            holders: dict[str, list[str]] = {}
            for entry in pods.list_devices():
                device = entry.device_ids[0].split("::")[0]
                holders.setdefault(device, []).append(f"{entry.namespace}/{entry.pod}")
            # Shared GPUs by each tenant's share, as the node agent exports it (a KAI
            # GPU's device is held by its reservation pod, not by its tenants).
            tenants: dict[str, list[str]] = {}
            for share in simulated_shares(nvml, pods):
                if share.mode in ("time_sliced", "fraction", "mps"):
                    tenants.setdefault(share.identity.uuid, []).append(
                        f"{share.namespace}/{share.pod} {share.ratio:.0%}")
            self.say(f"   {hostname}: {len(scenarios)} x {MODEL}")
            for index, (uuid, scenario, _) in enumerate(nvml.gpus()):
                if scenario == "mig":
                    slices = [f"{nvml.mig_profile(index, slot)} {holders.get(mig, ['free'])[0]}"
                              for slot, mig in enumerate(nvml.mig_uuids(index))]
                    held = "; ".join(slices)
                elif uuid in tenants:
                    held = ", ".join(tenants[uuid])
                else:
                    held = ", ".join(holders.get(uuid, ["not allocated"]))
                self.say(f"      GPU {index}  {SCENARIO_TEXT.get(scenario, scenario)}: {held}")
        pipelines = sorted({o["metadata"]["name"] for o in cluster_objects()
                            if o["kind"] in ("CronJob", "Workflow")} | {"train-sweep"})
        self.say(f"   Kubernetes API stand-in: pipelines {', '.join(pipelines)}; a GPU pod "
                 "that cannot be scheduled")
        self.say("   S3 and ECR (moto): images and buckets in every state the hygiene jobs "
                 "tell apart")
        self.say("   Each fault and the alert it must raise:")
        for fault in FAULTS:
            self.say(f"      {fault.alert:<24} {fault.what}")
        self.say(f"   Not simulated (Steward's own health; alerts/tests/ covers them): "
                 f"{', '.join(NOT_SIMULATED)}")

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
            self.skip("the stale-images and orphaned-buckets plans",
                      "moto is not installed; add it with: .venv/bin/pip install -e '.[demo]' "
                      "(make demo does)")
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
            self.say(f"   Slack: the messages go to {channel} in your workspace "
                     "(SLACK_BOT_TOKEN); look there")
            self.slack_channel = channel
            self.team_channels = {team: channel for team in self.team_channels}
            return "https://slack.com/api/", token, channel
        from agent.sim.slack_stub import SlackStub

        stub = SlackStub(tokens=("xoxb-steward-demo",)).start()
        self._stack.callback(stub.stop)
        self.slack_stub = stub
        self.say(f"   Slack: a local stand-in of the Slack API records the messages for "
                 f"{self.slack_channel}, and the owner notices for the teams whose jobs were "
                 f"on a failed GPU in {', '.join(sorted(set(self.team_channels.values())))} "
                 "(set SLACK_BOT_TOKEN and STEWARD_DEMO_CHANNEL to send them to a real "
                 "channel)")
        return stub.api_url, "xoxb-steward-demo", self.slack_channel

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
            "slack": {"api_url": slack[0], "default_channel": slack[2],
                      "team_channels": self.team_channels},
            "grafana": {"url": "http://grafana.example"},
            "alertmanager": {"url": self.alertmanager_url or "http://alertmanager.example"},
            "finops": {"prices": {MODEL: PRICE}, "namespace_teams": TEAMS,
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
        code = 1
        try:
            code = self._run()
            return code
        finally:
            self.step("Stopping")
            self.children.stop_all()
            self._stack.close()
            self._write_summary()
            self.say(f"   everything the demo made is in {self.result.workdir}")
            self._closing_note(code)

    def _install_signal_handlers(self) -> None:
        # Past the deadline the children are killed too: they run in their own sessions and
        # would outlive the demo.
        stop_on_signals(self.stop, on_overdue=lambda: self.children.stop_all(grace=0))

    def _binaries(self) -> tuple[str | None, str | None]:
        """Prometheus and Alertmanager, and plainly what the demo cannot show without them."""
        if not self.options.prometheus:
            self.skip("alerts, Slack messages and the idle-GPU plan",
                      "--no-prometheus was given")
            return None, None
        prometheus = find_binary(PROMETHEUS_BINARIES)
        alertmanager = find_binary(ALERTMANAGER_BINARIES)
        if prometheus is None:
            self.skip("alerts, Slack messages and the idle-GPU plan",
                      "Prometheus is not installed (it evaluates the alert rules and holds "
                      f"the idle-GPU evidence); add it with: {APT_COMMAND}")
            return None, None
        if alertmanager is None:
            self.skip("Slack messages", "Alertmanager is not installed (it sends the alerts "
                      f"to Steward's notifier); add it with: {APT_COMMAND}")
        return prometheus, alertmanager

    def _run(self) -> int:
        opts = self.options
        self.say(f"Steward demo: {len(NODES)} simulated GPU nodes x 8 GPUs. It watches until "
                 f"every simulated fault has raised its alert (at most {opts.duration:g} s); "
                 "Ctrl-C stops everything.\nWork folder: " + str(self.result.workdir))
        self._describe()

        self.step("Starting the simulated cluster and Steward")
        prometheus_bin, alertmanager_bin = self._binaries()
        kubeconfig = self._kube()
        self.event(f"Kubernetes API stand-in  {self.kube.url}")
        aws = self.aws_url = self._aws()
        if aws:
            self.event(f"S3 and ECR (moto)        {aws}")
        slack = self._slack()

        env = {**AWS_ENV, "KUBECONFIG": ""}  # the nodes simulate their own pods
        node_ports = [free_port() for _ in NODES]
        notifier_port, controller_port = free_port(), free_port()
        # The notifier wants a bearer token, as in production; Alertmanager sends it.
        token_file = self.result.workdir / "notifier-token"
        token_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        token_file.chmod(0o600)
        # The Slack app's signing secret: the demo signs its simulated clicks with it.
        self.signing_secret = secrets.token_hex(16)
        signing_file = self.result.workdir / "slack-signing-secret"
        signing_file.write_text(self.signing_secret, encoding="utf-8")
        signing_file.chmod(0o600)
        if alertmanager_bin is not None and prometheus_bin is not None:
            am = start_alertmanager(self.children, alertmanager_bin,
                                    f"http://127.0.0.1:{notifier_port}/alertmanager",
                                    bearer_token_file=token_file)
            self.alertmanager_url = am.url
            self.event(f"Alertmanager             {am.url}  ({alertmanager_bin})")
        if prometheus_bin is not None:
            # Prometheus first: it scrapes the node agents from their first second, so a
            # fault that comes later is seen as new (GpuXidCritical needs that history).
            rules = write_demo_rules(self.result.workdir / "demo-rules.yaml")
            jobs = [ScrapeJob("steward-node", [f"127.0.0.1:{p}" for p in node_ports]),
                    ScrapeJob("steward-controller", [f"127.0.0.1:{controller_port}"]),
                    ScrapeJob("steward-notifier", [f"127.0.0.1:{notifier_port}"])]
            prom = start_prometheus(self.children, prometheus_bin, jobs, rule_files=[rules],
                                    alertmanager=(self.alertmanager_url or "").removeprefix(
                                        "http://") or None)
            self.prometheus_url = prom.url
            self.event(f"Prometheus               {prom.url}  ({prometheus_bin}; rules: "
                       f"{rules.name})")

        # Steward's own processes start together and are waited for together.
        starting: list[tuple[Child, str]] = []
        for (hostname, scenarios), port in zip(NODES, node_ports, strict=True):
            cfg = self._config(f"node-{hostname}", {"node": {
                "collect_interval_seconds": 1,
                "sim": {"gpus": scenarios, "seed": opts.seed,
                        "lost_after_seconds": LOST_AFTER_SECONDS,
                        "ecc_after_seconds": ECC_AFTER_SECONDS}}})
            child = self.children.steward(
                f"node-{hostname}", ["node", "--config", str(cfg), "--gpu-backend", "sim",
                                     "--listen", f"127.0.0.1:{port}"],
                env={**env, "NODE_NAME": hostname})
            child.url = f"http://127.0.0.1:{port}"
            starting.append((child, f"{child.url}/readyz"))
        base = self._base_config(prometheus=None, aws=aws, slack=slack)
        notifier_config = {
            **base, "slack": {**base["slack"], "signing_secret_file": str(signing_file)},
            "notifier": {"auth_token_file": str(token_file), "actions": DEMO_ACTIONS}}
        if self.prometheus_url:
            notifier_config["prometheus"] = {"url": self.prometheus_url}  # graphs
        notifier = self.children.steward(
            "notifier", ["notifier", "--config", str(self._config("notifier", notifier_config)),
                         "--listen", f"127.0.0.1:{notifier_port}"],
            env={**env, "SLACK_BOT_TOKEN": slack[1]})
        notifier.url = self.notifier_url = f"http://127.0.0.1:{notifier_port}"
        starting.append((notifier, f"{notifier.url}/readyz"))
        self.controller_config = self._config("controller", {
            **self._base_config(prometheus=self.prometheus_url, aws=aws, slack=slack),
            "controller": {**base["controller"], "listen": f"127.0.0.1:{controller_port}"}})
        self.child_env = {**env, "KUBECONFIG": str(kubeconfig), "POD_NAME": "controller-0",
                          "SLACK_BOT_TOKEN": slack[1]}
        controller = self.children.steward(
            "controller", ["controller", "--config", str(self.controller_config)],
            env=self.child_env)
        controller.url = f"http://127.0.0.1:{controller_port}"
        starting.append((controller, f"{controller.url}/readyz"))
        ready_at: dict[str, float] = {}
        for child, ready in starting:
            self.children.wait_ready(child, ready, timeout=60)
            ready_at[child.name] = time.monotonic()
            self.event(f"{child.name:<24} {child.url}/metrics   (log: {child.log.name})")

        self.step("Endpoints")
        for child, _ in starting:
            suffix = "/alertmanager (Alertmanager's webhook)" if child is notifier else \
                "/metrics" + (" (dry-run: it plans, it does not act)"
                              if child is controller else "")
            self.say(f"   {child.name:<24} {child.url}{suffix}")
        if self.prometheus_url:
            self.say(f"   {'Prometheus':<24} {self.prometheus_url}/alerts")
        if self.alertmanager_url:
            self.say(f"   {'Alertmanager':<24} {self.alertmanager_url}")

        if self.prometheus_url is None:
            self.step("Alerts and Slack: not shown")
            self.say("   Without Prometheus no alert rule is evaluated, so nothing fires and "
                     "nothing reaches Slack.")
        else:
            nodes_ready = min(ready_at[f"node-{h}"] for h, _ in NODES)
            self._watch(nodes_ready=nodes_ready, controller_ready=ready_at["controller"])
        if self.stop.is_set():
            return 130
        if self.slack_stub is not None and self.alertmanager_url and not self.stop.is_set():
            self.step("On-call acts from Slack (simulated clicks, signed as Slack signs them)")
            self._acknowledge()
        self.step("Hygiene plans (dry-run: nothing is touched)")
        self._plans()
        if self.slack_stub is not None and self.result.plans.get("idle-gpus"):
            self._keep_from_slack()
        self._write_slack_page()
        self.step("Weekly FinOps report")
        self._report()
        self.step("Dashboards")
        dashboards = sorted((ROOT / "dashboards").glob("*.json"))
        self.say(f"   {len(dashboards)} Grafana dashboards in {ROOT / 'dashboards'}: "
                 + ", ".join(d.stem for d in dashboards))
        self._shared_gpus()
        self.say("   (import them into Grafana, or install the Helm chart with "
                 "dashboards.enabled=true)")
        self._summary()
        return 0

    # -- watching ------------------------------------------------------------------------

    def _watch(self, *, nodes_ready: float, controller_ready: float) -> None:
        from agent.sim.cluster import failing_run

        assert self.prometheus_url is not None
        opts = self.options
        watching = "alerts" + (" and Slack" if self.slack_stub is not None and
                               self.alertmanager_url else "")
        self.step(f"Watching {watching} until every fault has raised its alert "
                  f"(at most {opts.duration:g} s)")
        self.say("   The alert rules are the shipped ones with shorter windows (demo-rules.yaml, "
                 "agent/demo/rules.py): a `for: 1h` is 30 s here, and every message says "
                 "the window the demo uses.")
        alerts = AlertWatch(self.prometheus_url, self.event)
        slack = SlackWatch(self.slack_stub, self.event) if (
            self.slack_stub is not None and self.alertmanager_url) else None
        timeline: list[tuple[float, str, Callable[[], None]]] = [
            (nodes_ready + ECC_AFTER_SECONDS, "gpu-node-1 GPU 5 reports an uncorrectable ECC "
             "error (XID 48) and a failed row remap", lambda: None),
            (nodes_ready + LOST_AFTER_SECONDS, "gpu-node-1 GPU 3 falls off the bus (XID 79)",
             lambda: None),
            (controller_ready + PIPELINE_FAILS_AFTER_SECONDS,
             "a feature-refresh run fails (Job ml-research/feature-refresh-28001)",
             lambda: self.kube.apply(failing_run())),
        ]
        deadline = self.started + self.elapsed() + opts.duration
        watch_start = time.monotonic()
        settled_at: float | None = None
        while not self.stop.wait(1.0):
            now = time.monotonic()
            for item in [t for t in timeline if t[0] <= now]:
                timeline.remove(item)
                item[2]()
                self.event(f"simulated: {item[1]}")
            alerts.poll(self.elapsed())
            if slack is not None:
                slack.poll()
            if now - self.last_event >= HEARTBEAT_SECONDS:
                waiting = [n for n in EXPECTED_ALERTS if n not in alerts.names()]
                self.event(f"waiting for {len(waiting)} of {len(EXPECTED_ALERTS)} alerts: "
                           f"{', '.join(waiting)}" if waiting else
                           "every fault has raised its alert; watching for updates")
            if self._all_shown(alerts, slack):
                settled_at = settled_at or now
                if now - settled_at >= SETTLE_SECONDS:
                    break
            if now >= deadline:
                break
        self.result.watched_seconds = time.monotonic() - watch_start
        self.result.alerts = alerts.fired
        self.result.alert_seconds = alerts.fired_at
        missing = [name for name in EXPECTED_ALERTS if name not in alerts.names()]
        if missing and not self.stop.is_set():
            self.say(f"   DID NOT FIRE within {opts.duration:g} s: {', '.join(missing)} "
                     "(a slow machine: run steward demo --duration 300)")
        if self.slack_stub is not None:
            page = self._write_slack_page()
            # What the watch showed, line by line (the clicks that follow add their own).
            self.result.slack_messages = SlackWatch(self.slack_stub, self.event).summary()
            if self.alertmanager_url:
                self.say(f"   the Slack messages as the channel shows them: {page}")

    def _write_slack_page(self) -> Path:
        page = self.result.workdir / "slack-messages.html"
        if self.slack_stub is not None:
            page.write_text(self._channel_html(None), encoding="utf-8")
        return page

    def _channel_html(self, click_url: str | None) -> str:
        stub = self.slack_stub
        files = {k: v["data"] for k, v in dict(stub.uploads).items() if v.get("data")}
        return render_html([(m, stub.replies(m)) for m in stub.roots()],
                           channel=self.slack_channel, click_url=click_url, files=files,
                           channel_of=stub.channel_name)

    # -- acting from Slack -------------------------------------------------------------------

    def _acknowledge(self) -> None:
        """Click Acknowledge (4 h) on a firing alert, as on-call would in Slack: the
        notifier creates the Alertmanager silence and says so in the thread."""
        from agent.clients.alertmanager import AlertmanagerClient, AlertmanagerError
        from agent.demo.clicks import DEMO_USER, ChannelPage, SlackClicker

        stub = self.slack_stub
        clicker = SlackClicker(self.notifier_url, self.signing_secret)
        page = ChannelPage(self._channel_html, clicker).start()
        self._stack.callback(page.stop)
        self.say(f"   the channel, live, with working buttons: {page.url} (until the demo "
                 "ends)")
        target = self._ack_target()
        if target is None:
            self.skip("Acknowledge", "no firing alert with an Acknowledge button in Slack")
            return
        root, value = target
        graphed = any(r.files for r in stub.replies(root))
        if not graphed:
            self.event(f"waiting for the graph of \"{header_text(root)}\" (at most 15 s)")
            graphed = self._wait(lambda: any(r.files for r in stub.replies(root)), 15)
        alertname = json.loads(value).get("f", "")
        self.event(f"{DEMO_USER[1]} clicks \"Ack 4h\" on \"{header_text(root)}\"")
        status = clicker.click(value, channel=root.channel, ts=root.ts)
        if status != 200 or not self._wait(lambda: any(
                "acknowledged by" in r.text for r in stub.replies(root)), 20):
            self.skip("Acknowledge", f"the notifier did not carry the click out (HTTP {status}; "
                                     "see notifier.log)")
            return
        try:
            silences = [s for s in AlertmanagerClient(self.alertmanager_url or "").silences()
                        if "steward-action-" in s.comment and s.state == "active"]
        except AlertmanagerError as exc:
            silences = []
            self.event(f"cannot list Alertmanager's silences: {exc}")
        for silence in silences:
            matchers = ", ".join(f'{k}="{v}"' for k, v in sorted(silence.exact_labels().items()))
            self.event(f"Alertmanager silence {silence.id} until "
                       f"{silence.ends_at:%H:%M} UTC, createdBy \"{silence.created_by}\", "
                       f"exact matchers: {matchers}")
        self.event("thread: " + plain_text(next(r.text for r in stub.replies(root)
                                                if "acknowledged by" in r.text)))
        # The acknowledged alert alone, its thread and graph: what docs/images shows.
        self._wait(lambda: "unack" in json.dumps(current(stub, root).blocks), 10)
        files = {k: v["data"] for k, v in dict(stub.uploads).items() if v.get("data")}
        single = self.result.workdir / "slack-acknowledged.html"
        single.write_text(render_html([(current(stub, root), stub.replies(root))],
                                      channel=self.slack_channel, files=files),
                          encoding="utf-8")
        self.event(f"the acknowledged alert's thread: {single}")
        self.result.screenshot = self._screenshot(single)
        self.event("graph in the thread: " + ("yes" if graphed else
                                               f"not yet (fingerprint {alertname[:8]})"))

    def _screenshot(self, page: Path) -> Path | None:
        """A PNG of ``page`` through a headless Chromium, when one is installed."""
        import shutil

        browser = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                        if shutil.which(b)), None)
        if browser is None:
            self.skip("Screenshot", "no Chromium on PATH (apt-get install -y chromium)")
            return None
        out = page.with_suffix(".png")
        with tempfile.TemporaryDirectory(prefix="steward-chromium-") as profile, \
                contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update",
                            "--no-first-run", f"--user-data-dir={profile}",
                            f"--screenshot={out}", "--window-size=900,1300", page.as_uri()],
                           capture_output=True, timeout=90, check=False)
        if not out.exists():
            self.skip("Screenshot", f"{browser} made no screenshot")
            return None
        self.event(f"screenshot of the acknowledged alert's thread: {out}")
        return out

    def _ack_target(self) -> tuple[Any, str] | None:
        """The root and the "Ack 4h" value of its first firing alert, graphed ones first."""
        found = []
        for root in self.slack_stub.roots():
            for block in root.blocks:
                for element in block.get("elements") or []:
                    value = element.get("value") if isinstance(element, dict) else None
                    if value and '"d":"4h"' in value:
                        found.append((root, value))
        # A GPU's temperature makes the clearest graph; then any alert with a graph.
        found.sort(key=lambda item: ("Temperature" not in header_text(item[0]),
                                     not any(r.files for r in self.slack_stub.replies(item[0]))))
        return found[0] if found else None

    def _wait(self, condition: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline or self.stop.wait(0.5):
                return False
        return True

    def _keep_from_slack(self) -> None:
        """An owner's Keep on a hygiene notice. The demo's controller is dry-run and marks
        nothing, so the demo marks the plan's first idle-GPU candidate itself and posts the
        notice an apply-mode run would post (with its buttons); the click is real."""
        from agent.clients.slack import SlackSink
        from agent.clients.slack_params import SlackSettings
        from agent.config import load_config
        from agent.controller.hygiene.notify import OwnerNotice, SlackNotifier
        from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
        from agent.controller.hygiene.store import HygieneStore, Mark
        from agent.demo.clicks import SlackClicker
        from agent.state import open_store

        candidates = self.result.plans["idle-gpus"].get("candidates") or []
        if not candidates:
            return
        candidate = candidates[0]
        resource = str(candidate.get("resource"))
        config = load_config(self.controller_config, environ={})
        store = HygieneStore(open_store(config.state.url, tables=[HYGIENE_TABLES]))
        now = time.time()
        mark = Mark(mark_id=secrets.token_hex(16), job="idle-gpus", resource=resource,
                    action=str(candidate.get("action", "scale_to_zero")),
                    reason=str(candidate.get("reason", "idle")), evidence={}, reclaim={},
                    owner=None, kube_object=None, run_id="demo", marked_at=now,
                    deadline=now + 3600)
        if not store.create_mark(mark, mode="apply"):
            return
        store.set_notified(mark.mark_id, now, deadline=mark.deadline)
        settings = SlackSettings.from_config(config.slack.model_copy(
            update={"token": config.slack.token or _secret(self.child_env["SLACK_BOT_TOKEN"])}))
        SlackNotifier(SlackSink.create(settings), settings.router(), buttons=True).notify(
            OwnerNotice(kind="marked", job="idle-gpus", resource=resource, action=mark.action,
                        reason=mark.reason, deadline=mark.deadline, mark_id=mark.mark_id,
                        labels={"hygiene_job": "idle-gpus"}))
        notice = self.slack_stub.messages()[-1]
        value = json.dumps({"a": "hygiene", "c": "keep", "m": mark.mark_id},
                           separators=(",", ":"))
        self.event(f"hygiene owner notice for {resource} (what an apply run posts); the owner "
                   "clicks \"Keep 7 days\"")
        SlackClicker(self.notifier_url, self.signing_secret).click(
            value, channel=notice.channel, ts=notice.ts, user=("U0TEAMOWNER", "ml-owner"))
        if self._wait(lambda: bool(self.slack_stub.replies(notice)), 20):
            self.event("thread: " + plain_text(self.slack_stub.replies(notice)[0].text))
            kept = [e for e in store.audit_entries("idle-gpus") if e["action"] == "owner_keep"]
            if kept:
                self.event(f"hygiene audit: owner_keep {resource} {kept[0]['detail']}")
        else:
            self.skip("Hygiene Keep", "the notifier did not carry the click out")

    def _all_shown(self, alerts: AlertWatch, slack: SlackWatch | None) -> bool:
        fired = alerts.names()
        if not all(name in fired for name in EXPECTED_ALERTS):
            return False
        if slack is None:
            return True
        texts = [m.text for m in slack.stub.roots()]
        from agent.sim.pods import WORKLOADS

        # The lost GPU's team is told in its own channel, beside the on-call message.
        owners = self.team_channels[TEAMS[WORKLOADS["lost"].namespace]]
        return all(any(name in text for text in texts) for name in EXPECTED_ALERTS) and \
            bool(slack.stub.roots(owners))

    # -- plans and report ------------------------------------------------------------------

    def _steward(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args],
                              capture_output=True, text=True, check=False, timeout=300,
                              env={**self.env, **self.child_env}, cwd=self.result.workdir)

    def _plans(self) -> None:
        for job in HYGIENE_JOBS:
            if job == "idle-gpus" and self.prometheus_url is None:
                continue  # its evidence is Prometheus': said so when starting
            if job != "idle-gpus" and self.aws_url is None:
                continue  # moto missing: said so when starting
            result = self._steward("hygiene", "run", job, "--output", "json",
                                   "--config", str(self.controller_config),
                                   "--log-format", "text", "--log-level", "error")
            path = self.result.workdir / f"plan-{job}.json"
            try:
                plan = json.loads(result.stdout)
            except ValueError:
                reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
                self.skip(f"hygiene plan {job}", reason)
                continue
            path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
            self.result.plans[job] = plan
            self._print_plan(job, plan, path)

    def _print_plan(self, job: str, plan: dict[str, Any], path: Path) -> None:
        reclaim = ", ".join(_amount(k, v) for k, v in plan.get("reclaimable", {}).items()
                            if v) or "nothing"
        candidates, skipped = plan["candidates"], plan["skipped"]
        self.say(f"   {job}: {len(candidates)} candidates, reclaimable {reclaim}; "
                 f"{len(skipped)} left alone  ({path.name})")
        for candidate in candidates[:PLAN_LINES]:
            self.say(f"      {candidate['action']:<14} {candidate['resource']}")
            self.say(f"      {'':<14} {candidate['reason']}")
        if len(candidates) > PLAN_LINES:
            self.say(f"      and {len(candidates) - PLAN_LINES} more, see {path}")
        for item in skipped[:SKIPPED_LINES]:
            self.say(f"      {'left alone':<14} {item['resource']}: {item['reason']}")
        if len(skipped) > SKIPPED_LINES:
            self.say(f"      and {len(skipped) - SKIPPED_LINES} more left alone, see {path}")

    def _report(self) -> None:
        from agent.finops.period import ReportWeek
        from agent.sim.finops_week import write_simulated_week

        week = ReportWeek.last_complete(datetime.now(UTC))
        parquet = write_simulated_week(self.result.workdir / "simulated-week.parquet",
                                       start=week.start, end=week.end, nodes=list(NODES))
        folder = self.result.workdir / "finops" / week.name
        self.say(f"   from a simulated week ({week.name}, {parquet.name}): weekdays busier "
                 "than the weekend, a training burst Tuesday to Thursday, a notebook left "
                 "idle, a GPU lost on Thursday, a node agent down two hours; a GPU "
                 "time-sliced by four tenants, KAI and HAMi fractions")
        result = self._steward("report", "finops", "--config", str(self.controller_config),
                               "--parquet", str(parquet), "--week", week.name, "--out",
                               str(folder), "--log-level", "error")
        if result.returncode != 0:
            self.skip("FinOps report", (result.stderr.strip().splitlines() or ["failed"])[-1])
            return
        self.result.report = folder / "report.html"
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        for line in report_lines(summary):
            self.say(f"   {line}")
        self.say(f"   report: {self.result.report}  (and report.md, CSVs, summary.json)")

    def _shared_gpus(self) -> None:
        """The namespace dashboard's tenants of shared GPUs, from the live Prometheus."""
        from agent.demo.tenants import TABLE, tenant_lines, tenant_rows

        if self.prometheus_url is None:
            return
        try:
            rows = tenant_rows(self.prometheus_url, ROOT / "dashboards" / "namespace-usage.json")
        except OSError as exc:
            self.skip("the shared GPUs' tenants on the dashboard", f"Prometheus: {exc}")
            return
        self.result.shared_tenants = rows
        self.say(f"   namespace-usage, \"{TABLE}\" (live, from Prometheus):")
        for line in tenant_lines(rows):
            self.say(f"      {line}")

    # -- the end ---------------------------------------------------------------------------

    def _summary(self) -> None:
        self.step("Summary")
        by_name: dict[str, list[dict[str, str]]] = {}
        for labels in self.result.alerts:
            by_name.setdefault(labels.get("alertname", "?"), []).append(labels)
        if by_name:
            self.say(f"   {len(self.result.alerts)} alerts fired ({len(by_name)} kinds):")
            for name, fired in by_name.items():
                self.say(f"      {name} x{len(fired)}")
                for labels in fired:
                    self.say(f"         {alert_labels_text(labels)}")
        messages = self.result.slack_messages
        if messages:
            updates = sum(m["updates"] for m in messages)
            replies = sum(m["replies"] for m in messages)
            per_channel: dict[str, int] = {}
            for message in messages:
                per_channel[message["channel"]] = per_channel.get(message["channel"], 0) + 1
            where = ", ".join(f"{n} in {channel}" for channel, n in per_channel.items())
            self.say(f"   {len(messages)} Slack messages ({where}), edited in "
                     f"place {updates} times, {replies} thread replies: "
                     f"{self.result.workdir / 'slack-messages.html'}")
        for job, plan in self.result.plans.items():
            reclaim = ", ".join(_amount(k, v) for k, v in plan.get("reclaimable", {}).items()
                                if v)
            self.say(f"   plan {job}: {len(plan['candidates'])} candidates "
                     f"({reclaim or 'nothing'})")
        if self.result.report:
            self.say(f"   FinOps report: {self.result.report}")
        for part, why in self.result.skipped.items():
            self.say(f"   NOT SHOWN: {part}: {why}")

    def _write_summary(self) -> None:
        alerts = self.result.alerts
        (self.result.workdir / "demo-summary.json").write_text(json.dumps({
            "skipped": self.result.skipped, "alerts": alerts,
            "alert_seconds": [round(s, 1) for s in self.result.alert_seconds],
            "expected_alerts": list(EXPECTED_ALERTS),
            "missing_alerts": [n for n in EXPECTED_ALERTS
                               if n not in {a.get("alertname") for a in alerts}],
            "slack_messages": self.result.slack_messages,
            "plans": {k: {"candidates": len(v.get("candidates", [])),
                          "skipped": len(v.get("skipped", [])),
                          "reclaimable": v.get("reclaimable", {})}
                      for k, v in self.result.plans.items()},
            "report": str(self.result.report) if self.result.report else None,
            "shared_gpu_tenants": self.result.shared_tenants,
            "screenshot": str(self.result.screenshot) if self.result.screenshot else None,
            "watched_seconds": round(self.result.watched_seconds, 1),
            "wall_seconds": round(self.elapsed(), 1),
            "first_alert_seconds": round(min(self.result.alert_seconds), 1)
            if self.result.alert_seconds else None,
        }, indent=2), encoding="utf-8")

    def _closing_note(self, code: int) -> None:
        first = (f"first alert after {min(self.result.alert_seconds):.0f} s"
                 if self.result.alert_seconds else "no alert fired")
        verdict = "done" if code == 0 else ("stopped" if code == 130 else "failed")
        self.say(f"\nSteward demo {verdict} in {self.elapsed():.0f} s; {first}.")
        if self.result.screenshot is not None:
            self.say(f"Screenshot of an acknowledged alert thread with its graph: "
                     f"{self.result.screenshot}")


def _amount(unit: str, value: float) -> str:
    if unit == "bytes":
        return f"{value / 2**30:,.2f} GiB" if value >= 2**26 else f"{value:,.0f} bytes"
    return f"{value:g} {unit}"


def report_lines(summary: dict[str, Any]) -> list[str]:
    """The report's numbers for the terminal: each ratio with what it is a ratio of."""
    totals = summary["totals"]
    allocated = totals["gpu_hours_allocated"]
    used, idle = totals["gpu_hours_used"], totals["gpu_hours_idle"]
    unmeasured = totals.get("gpu_hours_unmeasured", 0.0)
    utilization = f"{used / allocated:.1%}" if allocated else "n/a"
    lines = [
        f"{summary['week']}: ${totals['cost']:,.2f} for {allocated:,.1f} GPU-hours allocated",
        f"utilization {utilization} = {used:,.1f} GPU-h used / {allocated:,.1f} GPU-h "
        f"allocated; {idle:,.1f} GPU-h idle (${totals['idle_cost']:,.2f}); "
        f"{unmeasured:,.1f} GPU-h unmeasured (MIG, a lost GPU: no utilization)",
        f"{'team':<10} {'allocated':>10} {'used':>9} {'idle':>9} {'unmeas.':>8} "
        f"{'util.':>6} {'cost':>11} {'idle cost':>10}",
    ]
    for team in summary["teams"]:
        alloc = team["gpu_hours_allocated"]
        share = f"{team['gpu_hours_used'] / alloc:.1%}" if alloc else "n/a"
        lines.append(f"{team['team']:<10} {alloc:>10,.1f} {team['gpu_hours_used']:>9,.1f} "
                     f"{team['gpu_hours_idle']:>9,.1f} "
                     f"{team.get('gpu_hours_unmeasured', 0.0):>8,.1f} {share:>6} "
                     f"${team['cost']:>10,.2f} ${team['idle_cost']:>9,.2f}")
    if "gpu_hours_capacity" in totals:
        lines.append(f"GPU capacity {totals['gpu_hours_capacity']:,.1f} GPU-h "
                     f"(${totals['capacity_cost']:,.2f}) = allocated ${totals['cost']:,.2f} + "
                     f"unallocated ${totals['unallocated_cost']:,.2f} "
                     f"({totals['gpu_hours_unallocated']:,.1f} GPU-h nobody held)")
    for gpu in summary.get("shared_gpus", []):
        charged = " + ".join(f"{t['tenant']} {t['share']:.0%} ${t['cost']:,.2f}"
                             for t in gpu["tenants"])
        lines.append(f"shared GPU {gpu['hostname']} {gpu['uuid'][:12]}: {gpu['gpu_hours']:,.1f}"
                     f" GPU-h = ${gpu['cost']:,.2f} = {charged}")
    savings = summary.get("hygiene_savings", {})
    if savings.get("available"):
        lines.append(f"hygiene savings: ${savings['gpu_cost']:,.2f} realised this week "
                     f"({savings['actions']} actions applied); reclaimable, not acted on:")
        for item in savings.get("reclaimable", []):
            lines.append(f"   {item['job']:<17} {item['candidates']} candidates, "
                         f"{_reclaim_text(item)}  ({item['mode'].replace('_', '-')} plan of "
                         f"{item['run_at']})")
    else:
        lines.append(f"hygiene savings: not available ({savings.get('reason', '')})")
    return lines


def _reclaim_text(item: dict[str, Any]) -> str:
    parts = []
    if item.get("gpus"):
        parts.append(f"{item['gpus']:g} GPUs (${item['gpu_cost_per_week']:,.2f} a week)")
    if item.get("bytes"):
        parts.append(f"{_amount('bytes', item['bytes'])} "
                     f"(${item['storage_cost_per_month']:,.2f} a month)")
    return ", ".join(parts) or "nothing"


def current(stub: Any, message: Any) -> Any:
    """The stub's message as it is now (its blocks after every chat.update)."""
    return next((m for m in stub.messages() if m.ts == message.ts), message)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def run_demo(options: DemoOptions, *, out: TextIO = sys.stdout) -> int:
    return Demo(options, out=out).run()
