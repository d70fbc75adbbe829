"""``make demo`` end to end, as the README tells a newcomer to run it.

It runs once for this module (it is slow) in a clean environment: no Kubernetes, no Slack
token, and a PATH without Prometheus or Alertmanager, so the install step must find them
missing, install them (``apt-get install`` is idempotent where CI already has them: it is
run, and must succeed) and the demo must then find what the packages installed. Every test
below reads that one run: its output, as it arrived, and the folder it left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.alerts.catalog import CATALOG
from agent.demo.story import EXPECTED_ALERTS, NOT_SIMULATED
from tests.support.binaries import require_binary

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SERVERS = re.compile(r"^(prometheus.*|alertmanager.*|amtool|promtool)$")


@dataclass
class DemoRun:
    code: int
    lines: list[tuple[float, str]]  # (seconds since `make demo` started, line)
    workdir: Path
    path: str

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.workdir / "demo-summary.json").read_text())
        return data


def path_without_servers(folder: Path) -> str:
    """A PATH folder of links to every program on PATH but Prometheus and Alertmanager."""
    folder.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or not Path(entry).is_dir() or Path(entry).resolve() == \
                (ROOT / ".venv" / "bin").resolve():
            continue
        for program in Path(entry).iterdir():
            link = folder / program.name
            if SERVERS.match(program.name) or link.exists() or not os.access(program, os.X_OK):
                continue
            link.symlink_to(program)
    return str(folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    # The servers exist on this machine (the install step must be able to put them there);
    # the demo is started without them on PATH.
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    if shutil.which("make") is None:
        pytest.fail("make is not installed") if os.environ.get("CI") else pytest.skip("make")
    # apt runs its helpers (gpgv) as the _apt user, who must be able to read this folder.
    home = Path(tempfile.mkdtemp(prefix="steward-demo-path-"))
    home.chmod(0o755)
    path = path_without_servers(home / "bin")
    assert shutil.which("prometheus", path=path) is None
    assert shutil.which("prometheus-alertmanager", path=path) is None
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    started = time.monotonic()
    process = subprocess.Popen(["make", "demo"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert process.stdout is not None
    lines: list[tuple[float, str]] = []
    try:
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        code = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = "\n".join(line for _, line in lines)
    # What a newcomer saw, kept for whoever reads a failure.
    (tmp_path_factory.getbasetemp() / "make-demo.log").write_text(text, encoding="utf-8")
    found = re.search(r"^Work folder: (\S+)$", text, re.M)
    assert found, text[-3000:]
    run = DemoRun(code=code, lines=lines, workdir=Path(found.group(1)), path=path)
    yield run
    shutil.rmtree(run.workdir, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def test_it_ran_and_said_so_from_the_first_second(demo: DemoRun) -> None:
    assert demo.code == 0, demo.text[-4000:]
    assert demo.lines[0][0] < 2.0, demo.lines[:3]
    gaps = [(b[0] - a[0], a[1]) for a, b in zip(demo.lines, demo.lines[1:], strict=False)]
    longest = max(gaps)
    assert longest[0] < 20, f"{longest[0]:.0f} s of silence after: {longest[1]!r}"
    closing = re.search(r"^Steward demo done in (\d+) s; first alert after (\d+) s\.$",
                        demo.text, re.M)
    assert closing, demo.text[-2000:]
    wall, first = int(closing.group(1)), int(closing.group(2))
    assert first < wall <= 240
    summary = demo.summary()
    assert summary["first_alert_seconds"] == pytest.approx(first, abs=1)
    print(f"\nmake demo: {demo.lines[-1][0]:.0f} s in all; the demo itself {wall} s, first "
          f"alert after {first} s")


def test_the_install_step_installed_the_servers_without_asking(demo: DemoRun) -> None:
    text = demo.text
    assert ("make demo: installing prometheus prometheus-alertmanager (Debian packages): "
            "Prometheus evaluates") in text
    assert "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager" \
        in text
    # ... and the demo used them, from where the packages put them.
    assert re.search(r"Prometheus +http://127\.0\.0\.1:\d+ +\(/usr/bin/prometheus;", text)
    assert re.search(r"Alertmanager +http://127\.0\.0\.1:\d+ +\(/usr/bin/prometheus-alert",
                     text)
    assert demo.summary()["skipped"] == {}
    assert "NOT SHOWN" not in text


def test_sections_in_order(demo: DemoRun) -> None:
    order = ["== The simulated cluster", "== Starting", "== Endpoints", "== Watching alerts "
             "and Slack", "== Hygiene plans", "== Weekly FinOps", "== Dashboards",
             "== Summary", "== Stopping"]
    positions = [demo.text.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_every_fault_raised_its_alert(demo: DemoRun) -> None:
    summary = demo.summary()
    fired = {alert["alertname"] for alert in summary["alerts"]}
    assert summary["missing_alerts"] == []
    assert set(EXPECTED_ALERTS) <= fired
    assert "GpuXidCritical" in fired
    assert set(EXPECTED_ALERTS) | set(NOT_SIMULATED) == {a.name for a in CATALOG}
    critical = {(a["xid"], a["action"]) for a in summary["alerts"]
                if a["alertname"] == "GpuXidCritical"}
    assert ("79", "reboot-node") in critical and ("48", "reset-gpu") in critical
    # The MIG scenario shows: the alert names the instance, not only the GPU.
    mig = [a for a in summary["alerts"] if a["alertname"] == "GpuMemoryNearlyFull"]
    assert mig and all(a.get("GPU_I_PROFILE") == "1g.10gb" for a in mig)
    assert "MIG mode, three slices" in demo.text


def test_alert_lines_show_what_tells_them_apart(demo: DemoRun) -> None:
    alert_lines = [line.split("] ", 1)[1] for _, line in demo.lines
                   if re.search(r"\] ALERT ", line)]
    assert len(alert_lines) == len(set(alert_lines)), "two alert lines look the same"
    assert any("reason=sw_thermal" in line for line in alert_lines)
    assert any("reason=hw_thermal" in line for line in alert_lines)
    assert any("xid=79" in line for line in alert_lines)
    assert any("GPU_I_ID=13 GPU_I_PROFILE=1g.10gb" in line for line in alert_lines)


def test_each_slack_message_once_and_its_edits_as_edits(demo: DemoRun) -> None:
    summary = demo.summary()
    messages = summary["slack_messages"]
    new = [line for _, line in demo.lines if re.search(r"\] SLACK \S+: new message", line)]
    assert len(new) == len(messages) > 0
    # On-call's messages in its channel; the owner notices each in its team's channel (the
    # lost GPU's job: ml-research/train-resnet, team research), linked both ways.
    notices = [m for m in messages if m["channel"] != "#gpu-oncall"]
    assert {m["channel"] for m in notices} <= {"#research-gpu-jobs", "#data-gpu-jobs",
                                               "#platform-gpu-jobs"}
    assert any(m["channel"] == "#research-gpu-jobs" and "train-resnet" in m["text"]
               for m in notices), notices
    assert sum("SLACK #gpu-oncall:" in line for line in new) == len(messages) - len(notices)
    assert not re.search(r"SLACK C[0-9A-F]{8,}", demo.text)  # a name, not a channel id
    updates = [line for _, line in demo.lines if "message updated in place" in line]
    assert len(updates) == sum(m["updates"] for m in messages)
    replies = [line for _, line in demo.lines if "thread reply to" in line]
    assert len(replies) == sum(m["replies"] for m in messages)
    # One on-call message per Alertmanager group (alertname, hostname), each with its links.
    oncall = [m for m in messages if m not in notices]
    groups = {(a["alertname"], a.get("hostname", "")) for a in summary["alerts"]}
    assert len(oncall) == len(groups)
    for name in EXPECTED_ALERTS:
        assert any(name in m["text"] for m in oncall), name
    for message in oncall:
        urls = message["buttons"]
        assert any(u and "/runbooks/" in u for u in urls), message
        assert any(u and "/d/steward-" in u for u in urls), message
        if not message["header"].startswith("✅ RESOLVED"):  # nothing left to silence
            assert any(u and "#/silences/new" in u for u in urls), message
    page = (demo.workdir / "slack-messages.html").read_text(encoding="utf-8")
    assert "<h2>#gpu-oncall</h2>" in page
    # The owner notice shown next to the on-call message, which links to it.
    assert "in #research-gpu-jobs</span>" in page
    assert "Owners told:" in page
    assert re.search(r"ml-research/train-resnet\S* \(research, #research-gpu-jobs\)", page), \
        page[-2000:]


def test_no_message_claims_a_window_the_demo_did_not_have(demo: DemoRun) -> None:
    slack = "\n".join(line for _, line in demo.lines if "|" in line)
    assert "idle for 2 hours" not in slack and "for 2 hours" not in slack
    assert "for 10 minutes" not in slack
    idle = next(m for m in demo.summary()["slack_messages"] if "GpuIdleAllocated" in m["text"])
    assert idle
    assert "idle for 1 minute" in demo.text


def test_three_plans_with_every_candidate(demo: DemoRun) -> None:
    plans = demo.summary()["plans"]
    assert set(plans) == {"idle-gpus", "stale-images", "orphaned-buckets"}
    for job, plan in plans.items():
        assert plan["candidates"] > 0, job
        full = json.loads((demo.workdir / f"plan-{job}.json").read_text(encoding="utf-8"))
        assert full["mode"] == "dry_run"
        section = re.split(r"\n(?=   \S|\n)", demo.text.split(f"\n   {job}: ", 1)[1])[0]
        shown = [c for c in full["candidates"] if c["resource"] in section]
        more = re.search(r"and (\d+) more, see ", section)
        assert len(shown) + (int(more.group(1)) if more else 0) == len(full["candidates"])
    assert plans["idle-gpus"]["reclaimable"]["gpus"] >= 1
    assert plans["stale-images"]["reclaimable"]["bytes"] > 0


def test_the_report_of_a_week_that_varies(demo: DemoRun) -> None:
    report = Path(demo.summary()["report"])
    assert report.name == "report.html" and report.is_file()
    summary = json.loads((report.parent / "summary.json").read_text(encoding="utf-8"))
    totals = summary["totals"]
    assert totals["cost"] > 0 and totals["idle_cost"] > 0
    assert totals["gpu_hours_unmeasured"] > 0
    used, allocated = totals["gpu_hours_used"], totals["gpu_hours_allocated"]
    assert f"utilization {used / allocated:.1%} = {used:,.1f} GPU-h used / {allocated:,.1f}" \
        in demo.text
    daily = (report.parent / "daily.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[1] for row in daily}) > 2  # not seven identical days
    assert "reclaimable, not acted on" in demo.text
    assert "8 Grafana dashboards" in demo.text


def test_shared_gpus_tenants_on_the_dashboard_and_in_the_report(demo: DemoRun) -> None:
    # The namespace dashboard's tenant table, queried live: the four tenants of the
    # time-sliced GPU, the KAI fractions (not their reservation pod) and the HAMi pod.
    rows = {r["pod"]: r for r in demo.summary()["shared_gpu_tenants"]}
    quarters = {"llm-serve-2", "embed-api-2", "jupyter-carol-2", "eval-nightly-2"}
    assert quarters | {"tune-lora-5", "jupyter-dave-5", "rerank-hami-7"} <= set(rows)
    assert not any(pod.startswith("gpu-reservation") for pod in rows)
    for pod in quarters:
        assert (rows[pod]["mode"], rows[pod]["Share of the GPU"]) == ("time_sliced", 0.25)
    assert rows["llm-serve-2"]["Own use of the GPU"] == pytest.approx(0.45)
    assert rows["jupyter-carol-2"]["Own use of the GPU"] == 0.0
    assert (rows["tune-lora-5"]["mode"], rows["tune-lora-5"]["Share of the GPU"]) == (
        "fraction", 0.5)
    assert rows["jupyter-dave-5"]["Share of the GPU"] == 0.25  # gpu-memory: 20480 MiB
    assert rows["rerank-hami-7"]["Share of the GPU"] == pytest.approx(0.3)
    assert "Tenants of shared GPUs\" (live, from Prometheus)" in demo.text
    # The report charges them, and its shared GPUs add up to the GPU's cost.
    report = Path(demo.summary()["report"])
    summary = json.loads((report.parent / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["shared_gpus"]) == 5
    for gpu in summary["shared_gpus"]:
        assert round(sum(t["cost"] for t in gpu["tenants"]), 2) == gpu["cost"]
    assert "shared GPU gpu-node-2" in demo.text and "GPU capacity" in demo.text
    # An idle tenant of a busy shared GPU is planned for a notice, never a scale-down.
    plan = json.loads((demo.workdir / "plan-idle-gpus.json").read_text(encoding="utf-8"))
    carol = next(c for c in plan["candidates"] if "jupyter-carol" in c["resource"])
    assert carol["action"] == "notify" and "judged by its own use" in carol["reason"]


def test_the_simulated_backend_never_claims_a_driver(demo: DemoRun) -> None:
    for log in demo.workdir.glob("node-*.log"):
        text = log.read_text(encoding="utf-8")
        assert "NVML initialised" not in text and "550.90.07" not in text, log.name


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    import psutil

    require_binary("prometheus")
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "KUBECONFIG")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "300", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("== Watching"):
            break
    children = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(out)]
    assert len(children) >= 5  # two nodes, notifier, controller, Prometheus, ...
    started = time.monotonic()
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130
    assert time.monotonic() - started < 30
    assert "== Stopping" in rest and "Steward demo stopped in" in rest
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_without_prometheus_it_says_what_is_missing_and_watches_nothing(
        tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "KUBECONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--no-prometheus", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== Watching" not in result.stdout
    assert "NOT SHOWN: alerts, Slack messages and the idle-GPU plan: --no-prometheus" \
        in result.stdout
    assert "== Alerts and Slack: not shown" in result.stdout
    summary = json.loads((out / "demo-summary.json").read_text(encoding="utf-8"))
    assert set(summary["plans"]) == {"stale-images", "orphaned-buckets"}
    assert summary["alerts"] == [] and summary["report"]


def test_the_missing_servers_are_named_with_the_command_that_adds_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from agent.demo import run as demo_run

    monkeypatch.setattr(demo_run, "find_binary", lambda names: None)
    out = io.StringIO()
    demo = demo_run.Demo(demo_run.DemoOptions(out=tmp_path), out=out)
    assert demo._binaries() == (None, None)
    text = out.getvalue()
    assert "NOT SHOWN: alerts, Slack messages and the idle-GPU plan: Prometheus is not " \
           "installed" in text
    assert "sudo apt-get install -y --no-install-recommends prometheus " \
           "prometheus-alertmanager" in text
