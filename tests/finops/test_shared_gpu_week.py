"""A closed-form week on one shared GPU, through a real Prometheus and the report's PromQL.

One L40S ($3.33 an hour) on node-s, shared all week through KAI Scheduler fractions by four
tenants, its agent down for hours 100-102 (Friday 04:00-06:00: 166 hours of data). Samples
every 15 minutes at hh:07:30 .. hh:52:30, none on a step boundary. Every expected figure is
worked out by hand below, not by the code under test:

| tenant          | share | own use of the GPU               | of its share      |
|-----------------|-------|----------------------------------|-------------------|
| llm/serve-0     | 0.40  | 0.30 on weekdays, 0.10 weekends  | 0.75, 0.25        |
| nb/idle-0       | 0.25  | 0.0 all week                     | 0: idle           |
| batch/steady-0  | 0.20  | 0.20 all week                    | 1.0               |
| tools/trickle-0 | 0.10  | 0.0005 all week                  | 0.005: idle       |
| nobody          | 0.05  |                                  |                   |

The GPU itself is busy (0.3005 to 0.5005) all week: two tenants are idle for their share
on a busy GPU. Rounded one by one the five charges add up to a cent more than the GPU's
cost; the report's add up to the GPU's cost exactly.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.config import StewardConfig
from agent.finops.recording import INTERVAL_SECONDS, RULES_FILE, recording_rules
from agent.finops.report import run_finops_report
from tests.finops.fleet import NOW, T0, WEEK
from tests.support.binaries import require_binary
from tests.support.prometheus import BackfillSeries, Prometheus, openmetrics, start_prometheus

pytestmark = pytest.mark.integration
L40S, PRICE = "NVIDIA L40S", 3.33
HOURS = 166  # 168 minus the agent's two hours down
DOWN = range(100, 102)
GPU = {"job": "steward-node", "instance": "10.0.0.9:9400", "hostname": "node-s", "gpu": "0",
       "UUID": "GPU-s0", "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
       "modelName": L40S}
TENANTS = {  # pod -> (namespace, share, own use on weekdays, on weekends)
    "serve-0": ("llm", 0.40, 0.30, 0.10),
    "idle-0": ("nb", 0.25, 0.0, 0.0),
    "steady-0": ("batch", 0.20, 0.20, 0.20),
    "trickle-0": ("tools", 0.10, 0.0005, 0.0005),
}


def _weekday(hour: float) -> bool:
    return hour // 24 < 5


def week_series() -> list[BackfillSeries]:
    times = [T0 + h * 3600 + m for h in range(168) for m in (450, 1350, 2250, 3150)
             if h not in DOWN]
    gpu_use = [(t, sum(u[2] if _weekday((t - T0) / 3600) else u[3] for u in TENANTS.values()))
               for t in times]
    series = [BackfillSeries("steward_gpu_info", {**GPU, "driver_version": "550.90.07",
                                                  "mig_mode": "disabled"},
                             [(t, 1.0) for t in times]),
              BackfillSeries("steward_gpu_utilization_ratio", GPU, gpu_use),
              BackfillSeries("up", {"job": "steward-node", "instance": "10.0.0.9:9400"},
                             [(T0 + h * 3600 + m, 0.0 if h in DOWN else 1.0)
                              for h in range(168) for m in (450, 1350, 2250, 3150)])]
    for pod, (namespace, share, weekday, weekend) in TENANTS.items():
        labels = {**GPU, "namespace": namespace, "pod": pod}
        series.append(BackfillSeries("steward_gpu_pod_allocated_ratio",
                                     {**labels, "mode": "fraction"},
                                     [(t, share) for t in times]))
        series.append(BackfillSeries(
            "steward_gpu_pod_utilization_ratio", labels,
            [(t, weekday if _weekday((t - T0) / 3600) else weekend) for t in times]))
    return series


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    server = start_prometheus([], backfill=openmetrics(week_series()))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def summary(prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _report(prometheus, tmp_path_factory)


def _report(prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("shared") / WEEK
    config = StewardConfig.model_validate({
        "prometheus": {"url": prometheus.url, "timeout_seconds": 10},
        "finops": {"prices": {L40S: PRICE}, "namespace_teams": {
            "llm": "inference", "nb": "data", "batch": "research", "tools": "platform"}},
        "state": {"url": "sqlite:////nonexistent/steward-state.db"}})
    assert run_finops_report(config, week=WEEK, out_dir=out, slack=False, parquet=None,
                             now=NOW) == 0, prometheus.log_path.read_text()[-2000:]
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    data["_folder"] = str(out)
    return data


def test_each_tenant_is_charged_its_share_to_the_cent(summary: dict[str, Any]) -> None:
    [gpu] = summary["shared_gpus"]
    assert (gpu["uuid"], gpu["gpu_hours"], gpu["cost"]) == ("GPU-s0", 166.0, 552.78)
    charges = {t["tenant"]: t["cost"] for t in gpu["tenants"]}
    # 0.4 x 166 x 3.33 = 221.112 ... 0.05 x 166 x 3.33 = 27.639: the three largest
    # remainders get the three cents the floors leave over.
    assert charges == {"llm/serve-0": 221.11, "nb/idle-0": 138.19, "batch/steady-0": 110.56,
                       "tools/trickle-0": 55.28, "(unallocated)": 27.64}
    assert round(sum(charges.values()), 2) == round(HOURS * PRICE, 2) == 552.78
    # What rounding each charge alone (half up, on the exact amounts) would have billed:
    exact = [Decimal(str(share)) * HOURS * Decimal(str(PRICE))
             for share in (*(t[1] for t in TENANTS.values()), 0.05)]
    assert sum(e.quantize(Decimal("0.01"), ROUND_HALF_UP) for e in exact) == Decimal("552.79")


def test_shares_use_and_held_but_idle_per_share(summary: dict[str, Any]) -> None:
    [gpu] = summary["shared_gpus"]
    rows = {t["tenant"]: t for t in gpu["tenants"]}
    weekend = 48  # the agent was down on Friday (hours 100-102): a weekday
    weekday = HOURS - weekend
    serve = rows["llm/serve-0"]
    assert serve["share"] == pytest.approx(0.4) and serve["mode"] == "fraction"
    assert serve["gpu_hours_allocated"] == pytest.approx(0.4 * HOURS)
    assert serve["gpu_hours_used"] == pytest.approx(0.3 * weekday + 0.1 * weekend)
    assert serve["gpu_hours_idle"] == 0
    # Idle for its whole share although the GPU it shares was busy all week.
    assert rows["nb/idle-0"]["gpu_hours_idle"] == pytest.approx(0.25 * HOURS)
    assert rows["nb/idle-0"]["idle_cost"] == pytest.approx(0.25 * HOURS * PRICE)
    # 0.0005 of the GPU is 0.5 % of a 0.1 share: under the 1 % floor, held idle.
    assert rows["tools/trickle-0"]["gpu_hours_idle"] == pytest.approx(0.1 * HOURS)
    assert rows["tools/trickle-0"]["gpu_hours_used"] == pytest.approx(0.0005 * HOURS)
    assert rows["batch/steady-0"]["gpu_hours_used"] == pytest.approx(0.2 * HOURS)
    assert rows["(unallocated)"]["gpu_hours_allocated"] == pytest.approx(0.05 * HOURS)
    assert rows["(unallocated)"]["team"] == ""


def test_teams_and_totals_reconcile_with_the_gpus_cost(summary: dict[str, Any]) -> None:
    teams = {t["team"]: t for t in summary["teams"]}
    assert set(teams) == {"inference", "data", "research", "platform"}
    assert teams["inference"]["cost"] == pytest.approx(0.4 * HOURS * PRICE)
    assert teams["data"]["idle_cost"] == pytest.approx(0.25 * HOURS * PRICE)
    totals = summary["totals"]
    assert totals["gpu_hours_allocated"] == pytest.approx(0.95 * HOURS)
    assert totals["gpu_hours_unallocated"] == pytest.approx(0.05 * HOURS)
    assert totals["gpu_hours_capacity"] == pytest.approx(HOURS)
    assert round(totals["cost"] + totals["unallocated_cost"], 2) == 552.78
    assert totals["capacity_cost"] == pytest.approx(HOURS * PRICE)
    assert totals["idle_cost"] == pytest.approx(0.35 * HOURS * PRICE)


def test_the_report_shows_the_shared_gpu(summary: dict[str, Any]) -> None:
    folder = Path(summary["_folder"])
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "<h2>Shared GPUs</h2>" in page
    assert ("node-s GPU-s0 (NVIDIA L40S): 166.0 GPU-h x $3.33 = $552.78 = 4 tenant(s) "
            "$525.14 + unallocated $27.64") in page
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert "| nb/idle-0 | data | fraction | 25.0% | 41.5 | 0.0 | 0.0% | 41.5 | $138.19 |" \
        in markdown
    csv_text = (folder / "shared_gpus.csv").read_text(encoding="utf-8")
    assert csv_text.count("\n") == 1 + 5


RULES = Path(__file__).resolve().parents[2] / "alerts" / RULES_FILE


def test_the_hourly_recording_rules_give_the_same_report(
        prometheus: Prometheus, summary: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shipped rules, backfilled over the week by promtool from the raw samples: the
    report reads the recorded hours and bills the same cents, wherever the rules file lives
    (its path moves the group's evaluations within the hour: see the test after this).
    Each hour is recorded by the first evaluation after it, so the backfill runs an hour
    past the week. The day the agent was down has steps with no recorded hour (no GPU
    reported): that day is reduced from raw samples, as is the empty week before."""
    blocks = tmp_path_factory.mktemp("rule-blocks")
    subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "rules",
                    f"--start={T0}", f"--end={T0 + 169 * 3600 + 60}", f"--url={prometheus.url}",
                    f"--output-dir={blocks}", "--quiet", str(RULES)],
                   check=True, capture_output=True)
    _assert_the_same_report(summary, tmp_path_factory, backfill=openmetrics(week_series()),
                            blocks=blocks)


def _assert_the_same_report(summary: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                            *, backfill: str, blocks: Path | None = None) -> None:
    """The report from a Prometheus holding the raw week and the recorded hours reads them
    for the six whole days and bills exactly what the raw samples gave."""
    recorded = start_prometheus([], backfill=backfill, blocks=blocks)
    try:
        again = _report(recorded, tmp_path_factory)
    finally:
        recorded.stop()
    markdown = (Path(again["_folder"]) / "report.md").read_text(encoding="utf-8")
    assert "hourly recording rules for 6 of 14 chunks" in markdown
    for key in ("shared_gpus", "teams", "totals"):
        assert again[key] == summary[key], key


@pytest.mark.parametrize("offset", [0.0, 0.001, 1196.95, 1922.942, 3171.151, 3599.999])
def test_the_recorded_hours_do_not_depend_on_when_in_the_hour_the_rules_run(
        prometheus: Prometheus, summary: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory, offset: float) -> None:
    """Prometheus and promtool evaluate the group at an offset within the hour hashed from
    the rules file's path (1196.95 s from one checkout, 1922.942 s from another: each once
    billed serve-0 a Saturday hour at weekday use). Each rule is evaluated here at that
    offset past every hour, as the rule evaluator does (a range query at the group's
    interval), the results stored under the recorded names: the same report."""
    client = prometheus.client
    lines = openmetrics(week_series()).removesuffix("# EOF\n").splitlines()
    for name, expr in recording_rules().items():
        lines.append(f"# TYPE {name} gauge")
        for series in client.query_range(expr, start=T0 + offset,
                                         end=T0 + offset + 169 * INTERVAL_SECONDS,
                                         step=INTERVAL_SECONDS):
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items()))
            lines.extend(f"{name}{{{labels}}} {float(v)!r} {float(t):.3f}"
                         for t, v in series["values"])
    _assert_the_same_report(summary, tmp_path_factory,
                            backfill="\n".join([*lines, "# EOF", ""]))
