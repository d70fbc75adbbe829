"""``--slack`` against the Slack Web API stub: the summary message, then the HTML report and
a chart uploaded into its thread through ``files_upload_v2``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.finops.report import run_finops_report
from agent.sim.slack_stub import SlackStub
from tests.finops.conftest import FleetPrometheus, fleet_config
from tests.finops.fleet import NOW, WEEK

pytestmark = pytest.mark.integration
TOKEN = "xoxb-test"


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub(tokens=[TOKEN]) as server:
        yield server


Run = Callable[[Path], int]


@pytest.fixture
def run(fleet_prometheus: FleetPrometheus, kube_with_teams: Path, stub: SlackStub) -> Run:
    """``steward report finops --slack`` for the fleet's week into a folder; the exit code."""
    config = fleet_config(fleet_prometheus.url, kubeconfig=kube_with_teams,
                          slack={"api_url": stub.api_url, "token": TOKEN},
                          finops={"slack_channel": "#finops"})

    def report(out: Path) -> int:
        return run_finops_report(config, week=WEEK, out_dir=out, slack=True, parquet=None,
                                 now=NOW)
    return report


def test_summary_message_then_files_in_its_thread(run: Run, stub: SlackStub,
                                                   tmp_path: Path) -> None:
    assert run(tmp_path) == 0
    [root] = stub.roots("#finops")
    text = root.text
    assert text.startswith(f"*GPU cost report {WEEK}*")
    assert "*Total GPU cost:* $2,409.43 (+139.0% vs 2026-W44)" in text
    assert "*Allocated but idle:* $932.00 (38.7% of the cost, 233.0 GPU-h)" in text
    # Utilization with its denominator (used / allocated), and the unmeasured hours.
    assert "*GPU-hours:* 735.2 allocated, utilization 29.7% (218.2 of 735.2 GPU-h), " \
           "99.7 GPU-h unmeasured" in text
    # Top 3 teams by cost, in order, and only 3.
    top = next(line for line in text.splitlines() if "Top teams" in line)
    assert top.index("inference $736.00") < top.index("training $664.00") \
        < top.index("platform $644.00")
    assert "research" not in top
    assert "*Hygiene savings:* not available yet" in text
    assert "Data missing for 7.5 hours" in text

    [reply] = stub.replies(root)
    assert [f["name"] for f in reply.files] == [f"{WEEK}-report.html",
                                               f"{WEEK}-chart-cost-by-team.png"]
    uploads = {u["filename"]: u for u in stub.uploads.values()}
    html = uploads[f"{WEEK}-report.html"]
    assert html["completed"] and html["channel"] == root.channel
    assert html["data"] == (tmp_path / "report.html").read_bytes()
    chart = uploads[f"{WEEK}-chart-cost-by-team.png"]
    assert chart["data"] == (tmp_path / "chart-cost-by-team.png").read_bytes()
    [complete] = stub.calls("files.completeUploadExternal")
    assert complete.args["channel_id"] == root.channel
    assert complete.args["thread_ts"] == root.ts
    assert all(call.token == TOKEN for call in stub.calls())


def test_rate_limit_is_waited_out(run: Run, stub: SlackStub, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("time.sleep", waits.append)
    stub.fail("ratelimit", retry_after=2, times=1, methods=["chat.postMessage"])
    assert run(tmp_path) == 0
    assert len(waits) == 1 and 2 <= waits[0] < 3  # Retry-After plus jitter
    assert len(stub.roots("#finops")) == 1


def test_slack_failure_keeps_the_report_and_exits_1(run: Run, stub: SlackStub,
                                                     tmp_path: Path) -> None:
    stub.fail("error", error="not_in_channel", methods=["chat.postMessage"])
    assert run(tmp_path) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["week"] == WEEK
    assert stub.uploads == {}


def test_failed_upload_exits_1(run: Run, stub: SlackStub, tmp_path: Path) -> None:
    stub.fail("error", error="invalid_arguments", methods=["files.completeUploadExternal"])
    assert run(tmp_path) == 1
    assert len(stub.roots("#finops")) == 1


@pytest.mark.parametrize(("channel", "token", "key"), [
    (None, TOKEN, "finops.slack_channel"), ("#finops", None, "slack.token")])
def test_slack_without_channel_or_token_is_a_usage_error(
        fleet_prometheus: FleetPrometheus, stub: SlackStub, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], channel: str | None, token: str | None, key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    config = fleet_config(fleet_prometheus.url, slack={"api_url": stub.api_url, "token": token},
                          finops={"slack_channel": channel})
    code = run_finops_report(config, week=WEEK, out_dir=tmp_path / "r", slack=True,
                             parquet=None, now=NOW)
    assert code == 2
    assert capsys.readouterr().err.startswith(f"steward: {key}: --slack needs")
    assert stub.calls() == []
    assert not (tmp_path / "r").exists()  # checked before any work
