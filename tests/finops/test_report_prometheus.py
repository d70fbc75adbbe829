"""The report against a real Prometheus holding the synthetic fortnight of ``fleet.py``.

Every expected number below is worked out by hand from the story in ``fleet.py``. This
week loses hours 150-152 to Prometheus and node-c loses hours 100-105:30 (hour 105 is
half scraped, and charged in full: a step's share is relative to the scrapes it had).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.clients.prometheus import PrometheusClient
from agent.config import StewardConfig
from agent.finops.aggregate import aggregate_usage
from agent.finops.parquet import ParquetSource, export_parquet
from agent.finops.period import ReportWeek
from agent.finops.queries import PrometheusSource
from agent.finops.report import run_finops_export, run_finops_report
from agent.finops.savings import GIB, PlanFound, SavingAction
from tests.finops.conftest import FleetPrometheus, fleet_config
from tests.finops.fleet import H100, NAMESPACE_TEAMS, NOW, PRICES, T0, WEEK

pytestmark = pytest.mark.integration
H100_PRICE, A100_PRICE = 4.0, 2.0
MIG_GI1, MIG_GI2 = 3 / 7, 2 / 7

# Hours each holder had data this week.
A0_HOURS = 168 - 2  # Prometheus gap
X2X4Z_HOURS = 72  # hours 0-72, before the gap
Q7K9P_HOURS = 0.5 + (168 - 96) - 2  # half of hour 95, then 96-168 minus the gap
ALICE_HOURS = 168 - 2
BOB_HOURS = 100
B1_HOURS = 168 - 2  # shared: each of the two containers is charged half
C0_HOURS = 168 - 2 - 5  # hours 100-105 had no scrape; 105 was half scraped, charged in full

NAMESPACES: dict[str, dict[str, Any]] = {
    "ml-train": {"team": "training", "alloc": A0_HOURS, "used": A0_HOURS * 0.8, "idle": 0,
                 "unmeasured": 0, "cost": A0_HOURS * H100_PRICE, "idle_cost": 0},
    "ml-infer": {
        "team": "inference",
        "alloc": X2X4Z_HOURS + Q7K9P_HOURS + B1_HOURS / 2,
        # hour 95: held half of it, at 0.5 while held -> 0.5 * 0.5 (the pod's own use, not
        # the GPU's mean over the whole hour)
        "used": X2X4Z_HOURS * 0.005 + 0.5 * 0.5 + (Q7K9P_HOURS - 0.5) * 0.5
        + B1_HOURS / 2 * 0.3,
        "idle": X2X4Z_HOURS, "unmeasured": 0,
        "cost": (X2X4Z_HOURS + Q7K9P_HOURS) * H100_PRICE + B1_HOURS / 2 * A100_PRICE,
        "idle_cost": X2X4Z_HOURS * H100_PRICE},
    "research": {"team": "research", "alloc": ALICE_HOURS * MIG_GI1 + BOB_HOURS * MIG_GI2,
                 "used": 0, "idle": 0,
                 "unmeasured": ALICE_HOURS * MIG_GI1 + BOB_HOURS * MIG_GI2,
                 "cost": (ALICE_HOURS * MIG_GI1 + BOB_HOURS * MIG_GI2) * A100_PRICE,
                 "idle_cost": 0},
    "scratch": {"team": "platform", "alloc": C0_HOURS, "used": 0, "idle": C0_HOURS,
                "unmeasured": 0, "cost": C0_HOURS * H100_PRICE, "idle_cost": C0_HOURS * H100_PRICE},
    "shared-tools": {"team": "unassigned", "alloc": B1_HOURS / 2, "used": B1_HOURS / 2 * 0.3,
                     "idle": 0, "unmeasured": 0, "cost": B1_HOURS / 2 * A100_PRICE,
                     "idle_cost": 0},
}
# The week before: a0 all week (ml-train), b1 shared all week (ml-infer, shared-tools).
PREVIOUS_COST = {"training": 168 * H100_PRICE, "inference": 84 * A100_PRICE,
                 "unassigned": 84 * A100_PRICE, "research": 0.0, "platform": 0.0}
METRIC_KEYS = {"alloc": "gpu_hours_allocated", "used": "gpu_hours_used",
               "idle": "gpu_hours_idle", "unmeasured": "gpu_hours_unmeasured", "cost": "cost",
               "idle_cost": "idle_cost"}


def total(key: str) -> float:
    return float(sum(ns[key] for ns in NAMESPACES.values()))


def config(prom_url: str, kubeconfig: Path | None) -> StewardConfig:
    return fleet_config(prom_url, kubeconfig=kubeconfig)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def report_dir(fleet_report_dir: Path) -> Path:
    return fleet_report_dir


@pytest.fixture(scope="module")
def summary(report_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((report_dir / "summary.json").read_text())
    return data


def test_folder_holds_every_output(report_dir: Path) -> None:
    names = {p.name for p in report_dir.iterdir()}
    assert {"report.html", "report.md", "summary.json", "teams.csv", "namespaces.csv",
            "models.csv", "top_idle_workloads.csv", "daily.csv", "gaps.csv",
            "hygiene_savings.csv"} <= names
    assert not [n for n in names if n.endswith(".partial")]


def test_summary_totals(summary: dict[str, Any]) -> None:
    assert summary["week"] == WEEK
    assert summary["currency"] == "USD"
    assert summary["start"] == "2026-11-02T00:00:00Z"
    assert summary["end"] == "2026-11-09T00:00:00Z"
    totals = summary["totals"]
    assert {k: totals[k] for k in METRIC_KEYS.values()} == pytest.approx(
        {METRIC_KEYS[k]: total(k) for k in METRIC_KEYS}, abs=1e-5)
    # Spelled out once, against arithmetic slips in the table above.
    assert summary["totals"]["cost"] == pytest.approx(2409.428571, abs=1e-5)
    assert summary["totals"]["idle_cost"] == pytest.approx(932.0)


def test_capacity_is_allocated_plus_unallocated(summary: dict[str, Any]) -> None:
    # Every physical GPU's hours with data: Prometheus' gap takes 2 h of each, c0's agent
    # 5 more (hour 105 was half scraped: the GPU reported in it, so it counts).
    h100, a100 = 166 + 166 + 161, 166 + 166
    totals = summary["totals"]
    assert totals["gpu_hours_capacity"] == pytest.approx(h100 + a100)
    assert totals["capacity_cost"] == pytest.approx(h100 * H100_PRICE + a100 * A100_PRICE)
    # Nobody held a1 between the two chat pods (72-95.5), nor b0's free slices.
    free_b0 = 166 - ALICE_HOURS * MIG_GI1 - BOB_HOURS * MIG_GI2
    assert totals["gpu_hours_unallocated"] == pytest.approx(23.5 + free_b0, abs=1e-5)
    assert totals["unallocated_cost"] == pytest.approx(
        23.5 * H100_PRICE + free_b0 * A100_PRICE, abs=1e-5)
    assert totals["capacity_cost"] == pytest.approx(
        totals["cost"] + totals["unallocated_cost"], abs=1e-5)


def test_shared_gpus_are_split_between_their_tenants(summary: dict[str, Any]) -> None:
    shared = {g["uuid"]: g for g in summary["shared_gpus"]}
    assert set(shared) == {"GPU-b0", "GPU-b1"}  # MIG and time-slicing; whole GPUs are not
    b1 = shared["GPU-b1"]
    assert (b1["gpu_hours"], b1["cost"]) == (166.0, 332.0)
    assert [(t["tenant"], t["mode"], t["share"], t["cost"]) for t in b1["tenants"]] == [
        ("ml-infer/embed-0", "time_sliced", 0.5, 166.0),
        ("shared-tools/tool-0", "time_sliced", 0.5, 166.0)]
    b0 = {t["tenant"]: t for t in shared["GPU-b0"]["tenants"]}
    assert b0["research/nb-alice"]["share"] == pytest.approx(3 / 7, abs=1e-6)
    assert b0["research/nb-alice"]["gpu_hours_unmeasured"] == pytest.approx(
        ALICE_HOURS * MIG_GI1, abs=1e-5)
    assert sum(t["cost"] for t in b0.values()) == pytest.approx(166 * A100_PRICE)
    assert b0["(unallocated)"]["gpu_hours_used"] is None


def test_summary_teams_sorted_by_cost(summary: dict[str, Any]) -> None:
    expected: dict[str, dict[str, float]] = {}
    for ns in NAMESPACES.values():
        team = expected.setdefault(ns["team"], dict.fromkeys(METRIC_KEYS.values(), 0.0))
        for key, name in METRIC_KEYS.items():
            team[name] += ns[key]
    teams = {t["team"]: {k: v for k, v in t.items() if k != "team"} for t in summary["teams"]}
    assert set(teams) == set(expected)
    for name, values in expected.items():
        assert teams[name] == pytest.approx(values, abs=1e-5), name
    costs = [t["cost"] for t in summary["teams"]]
    assert costs == sorted(costs, reverse=True)
    assert set(summary["teams"][0]) == {"team", *METRIC_KEYS.values()}


def test_teams_csv_with_week_over_week(report_dir: Path) -> None:
    rows = {r["team"]: r for r in read_csv(report_dir / "teams.csv")}
    assert float(rows["training"]["previous_cost"]) == pytest.approx(PREVIOUS_COST["training"])
    assert float(rows["inference"]["previous_cost"]) == pytest.approx(PREVIOUS_COST["inference"])
    assert float(rows["inference"]["cost_change"]) == pytest.approx(
        NAMESPACES["ml-infer"]["cost"] / PREVIOUS_COST["inference"] - 1, abs=1e-5)
    assert rows["platform"]["cost_change"] == ""  # nothing last week: no ratio
    # MIG has no utilization: research's GPU-hours are unmeasured. Utilization is used over
    # allocated everywhere, so the unmeasured hours count against it (and are shown).
    assert float(rows["research"]["gpu_hours_unmeasured"]) == pytest.approx(
        NAMESPACES["research"]["alloc"], abs=1e-5)
    assert float(rows["research"]["utilization"]) == 0.0
    assert float(rows["training"]["utilization"]) == pytest.approx(0.8)
    inference = NAMESPACES["ml-infer"]
    assert float(rows["inference"]["utilization"]) == pytest.approx(
        inference["used"] / inference["alloc"], abs=1e-6)


def test_week_over_week(summary: dict[str, Any]) -> None:
    wow = summary["week_over_week"]
    assert wow["available"] is True
    assert wow["previous_week"] == "2026-W44"
    assert wow["previous_totals"]["cost"] == pytest.approx(sum(PREVIOUS_COST.values()))
    assert wow["previous_totals"]["gpu_hours_allocated"] == pytest.approx(168 + 168)
    assert wow["cost_change"] == pytest.approx(total("cost") / 1008 - 1, abs=1e-5)


def test_namespaces_csv(report_dir: Path) -> None:
    rows = {r["namespace"]: r for r in read_csv(report_dir / "namespaces.csv")}
    assert set(rows) == set(NAMESPACES)
    for name, expected in NAMESPACES.items():
        row = rows[name]
        assert row["team"] == expected["team"], name
        for key, column in METRIC_KEYS.items():
            assert float(row[column]) == pytest.approx(expected[key], abs=1e-5), (name, key)


def test_models_csv(report_dir: Path) -> None:
    rows = {r["model"]: r for r in read_csv(report_dir / "models.csv")}
    h100 = A0_HOURS + X2X4Z_HOURS + Q7K9P_HOURS + C0_HOURS
    a100 = ALICE_HOURS * MIG_GI1 + BOB_HOURS * MIG_GI2 + B1_HOURS
    assert float(rows[H100]["gpu_hours_allocated"]) == pytest.approx(h100)
    assert float(rows[H100]["cost"]) == pytest.approx(h100 * H100_PRICE)
    assert float(rows[H100]["gpu_hours_idle"]) == pytest.approx(X2X4Z_HOURS + C0_HOURS)
    assert float(rows[H100]["price_per_gpu_hour"]) == H100_PRICE
    a100_row = next(r for m, r in rows.items() if m != H100)
    assert float(a100_row["gpu_hours_allocated"]) == pytest.approx(a100, abs=1e-5)
    assert float(a100_row["cost"]) == pytest.approx(a100 * A100_PRICE, abs=1e-5)


def test_top_idle_workloads(report_dir: Path) -> None:
    rows = read_csv(report_dir / "top_idle_workloads.csv")
    assert [(r["namespace"], r["workload"]) for r in rows] == [
        ("scratch", "debug-shell"), ("ml-infer", "chat")]
    chat = rows[1]
    assert chat["team"] == "inference"
    assert float(chat["gpu_hours_idle"]) == pytest.approx(X2X4Z_HOURS)
    assert float(chat["idle_cost"]) == pytest.approx(X2X4Z_HOURS * H100_PRICE)
    # Both chat pods count in the workload's allocation; only one of them idled.
    assert float(chat["gpu_hours_allocated"]) == pytest.approx(X2X4Z_HOURS + Q7K9P_HOURS)
    assert int(chat["pods"]) == 1
    assert float(rows[0]["idle_cost"]) == pytest.approx(C0_HOURS * H100_PRICE)


def test_daily_csv(report_dir: Path) -> None:
    rows = read_csv(report_dir / "daily.csv")
    assert [r["date"] for r in rows] == [f"2026-11-0{d}" for d in range(2, 9)]
    # Monday: a0, a1 (idle chat), GI 1 + GI 2, b1, c0 for 24 h each.
    monday = rows[0]
    assert float(monday["gpu_hours_allocated"]) == pytest.approx(24 * (4 + MIG_GI1 + MIG_GI2))
    assert float(monday["gpu_hours_idle"]) == pytest.approx(24 * 2)
    assert float(monday["gpu_hours_used"]) == pytest.approx(24 * (0.8 + 0.005 + 0.3))
    assert sum(float(r["cost"]) for r in rows) == pytest.approx(total("cost"), abs=1e-4)


def test_gaps(summary: dict[str, Any], report_dir: Path) -> None:
    gaps = summary["gaps"]
    assert {"kind": "no_data", "scope": "fleet", "start": "2026-11-08T06:00:00Z",
            "end": "2026-11-08T08:00:00Z", "hours": 2.0} in gaps
    assert {"kind": "node_agent_down", "scope": "10.0.0.3:9400",
            "start": "2026-11-06T04:00:00Z", "end": "2026-11-06T10:00:00Z",
            "hours": 5.5} in gaps
    unmeasured = next(g for g in gaps if g["kind"] == "utilization_unavailable")
    assert unmeasured["hours"] == pytest.approx(NAMESPACES["research"]["alloc"], abs=1e-5)
    assert len(gaps) == 3
    assert len(read_csv(report_dir / "gaps.csv")) == 3


def test_savings_not_claimed_without_an_audit_log(summary: dict[str, Any]) -> None:
    assert summary["hygiene_savings"]["available"] is False
    assert "gpu_cost" not in summary["hygiene_savings"]


def test_markdown_carries_the_tables(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    assert text.startswith(f"# GPU cost report {WEEK}")
    assert "| inference | 1 | 225.5 |" in text
    assert "$2,409.43" in text
    assert "debug-shell" in text


def test_chunk_boundaries_do_not_change_the_numbers(fleet_prometheus: FleetPrometheus) -> None:
    week = ReportWeek.parse(WEEK)
    client = PrometheusClient(fleet_prometheus.url, timeout=10)
    daily = aggregate_usage(PrometheusSource(client, step_seconds=3600), week.start, week.end,
                            idle_floor=0.01)
    odd = aggregate_usage(PrometheusSource(client, step_seconds=3600,
                                           chunk=timedelta(hours=5)),
                          week.start, week.end, idle_floor=0.01)
    assert len(daily) == len(odd) > 0
    columns = ["alloc_h", "used_h", "idle_h", "unmeasured_h"]
    assert daily[columns].to_numpy() == pytest.approx(odd[columns].to_numpy())
    assert (daily["pod"] == odd["pod"]).all()


def test_parquet_export_gives_the_same_report(fleet_prometheus: FleetPrometheus,
                                              report_dir: Path, tmp_path: Path) -> None:
    week = ReportWeek.parse(WEEK)
    source = PrometheusSource(PrometheusClient(fleet_prometheus.url), step_seconds=3600)
    exported = export_parquet(source, tmp_path / "fortnight.parquet", week.previous().start,
                              week.end)
    assert exported.rows > 0
    assert ParquetSource(exported.path).step_seconds == 3600
    out = tmp_path / "offline"
    offline = StewardConfig.model_validate({
        "prometheus": {"url": "http://127.0.0.1:9"},  # never asked
        "finops": {"prices": PRICES, "namespace_teams": {
            **NAMESPACE_TEAMS, "ml-infer": "inference", "research": "research"}}})
    assert run_finops_report(offline, week=WEEK, out_dir=out, slack=False,
                             parquet=exported.path, now=NOW) == 0
    online = json.loads((report_dir / "summary.json").read_text())
    again = json.loads((out / "summary.json").read_text())
    # Without a cluster the report says so; every number is the same.
    assert again.pop("warnings") == [
        "no Kubernetes cluster configured: namespaces not in finops.namespace_teams are "
        "reported as unassigned"]
    online.pop("warnings")
    assert again == online
    for table in ("namespaces", "models", "top_idle_workloads", "daily", "gaps"):
        assert read_csv(out / f"{table}.csv") == read_csv(report_dir / f"{table}.csv"), table


def test_export_command_writes_two_weeks(fleet_prometheus: FleetPrometheus,
                                         tmp_path: Path) -> None:
    path = tmp_path / "export" / "w45.parquet"
    assert run_finops_export(config(fleet_prometheus.url, None), path=path, week=WEEK,
                             now=NOW) == 0
    source = ParquetSource(path)
    week = ReportWeek.parse(WEEK)
    assert source.gaps(week.previous().start, week.end) == \
        PrometheusSource(PrometheusClient(fleet_prometheus.url), step_seconds=3600).gaps(
            week.previous().start, week.end)
    frames = list(source.batches(week.previous().start, week.start))
    # a0 and b1's two pods; a1, b0 (no MIG instance held) and c0 held by nobody
    assert sum(len(f) for f in frames) == 168 * 3 + 168 * 3
    assert run_finops_export(config("http://127.0.0.1:9", None), path=tmp_path / "x.parquet",
                             week=WEEK, now=NOW) == 1
    assert not (tmp_path / "x.parquet").exists()


def test_parquet_outside_its_range_is_a_gap(fleet_prometheus: FleetPrometheus,
                                            tmp_path: Path) -> None:
    week = ReportWeek.parse(WEEK)
    source = PrometheusSource(PrometheusClient(fleet_prometheus.url), step_seconds=3600)
    # Export only the first day of the week.
    path = export_parquet(source, tmp_path / "day.parquet", week.start,
                          week.start + timedelta(days=1)).path
    gaps = ParquetSource(path).gaps(week.start, week.end)
    assert [(g.kind, g.start, g.end, g.hours) for g in gaps] == [
        ("no_data", week.start + timedelta(days=1), week.end, 144.0)]


def test_a_week_without_data_is_a_gap_not_zero_cost(fleet_prometheus: FleetPrometheus,
                                                    tmp_path: Path) -> None:
    code = run_finops_report(config(fleet_prometheus.url, None), week="2026-W30",
                             out_dir=tmp_path, slack=False, parquet=None, now=NOW)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gaps"] == [{"kind": "no_data", "scope": "fleet",
                                "start": "2026-07-20T00:00:00Z",
                                "end": "2026-07-27T00:00:00Z", "hours": 168.0}]
    assert summary["week_over_week"] == {"previous_week": "2026-W29", "available": False}
    assert summary["teams"] == []
    assert "Data is missing" in (tmp_path / "report.html").read_text()


def test_missing_price_fails_with_the_model_named(fleet_prometheus: FleetPrometheus,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = StewardConfig.model_validate({
        "prometheus": {"url": fleet_prometheus.url},
        "finops": {"prices": {H100: 4.0}, "namespace_teams": NAMESPACE_TEAMS}})
    code = run_finops_report(cfg, week=WEEK, out_dir=tmp_path / "r", slack=False, parquet=None,
                             now=NOW)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("steward: finops.prices: no price for GPU model "
                             "'NVIDIA A100-SXM4-80GB'")
    assert not (tmp_path / "r").exists()


def test_unreachable_prometheus_is_a_runtime_failure(tmp_path: Path) -> None:
    cfg = config("http://127.0.0.1:9", None)
    assert run_finops_report(cfg, week=WEEK, out_dir=tmp_path, slack=False, parquet=None,
                             now=NOW) == 1


def test_backfill_really_holds_the_fleet(fleet_prometheus: FleetPrometheus) -> None:
    """Guards the fixture itself: the samples are there, at the times fleet.py says."""
    client = PrometheusClient(fleet_prometheus.url)
    result = client.query_range("count(count_over_time(steward_gpu_info[1h]))",
                                start=T0 + 3600, end=T0 + 3600, step=3600)
    assert result[0]["values"][0][1] == "7"
    per_hour = client.query_range('count_over_time(up{instance="10.0.0.1:9400"}[1h])',
                                  start=T0 + 3600, end=T0 + 3600, step=3600)
    assert per_hour[0]["values"][0][1] == "4"  # 15-minute samples, none on the boundary
    assert fleet_prometheus.samples > 20_000


class AuditLog:
    """A stand-in SavingsSource: what the hygiene audit log will answer."""

    def __init__(self, actions: list[SavingAction]) -> None:
        self.items = actions
        self.asked: list[tuple[datetime, datetime]] = []

    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        self.asked.append((start, end))
        return [a for a in self.items if start <= a.at < end]

    def latest_plans(self, until: datetime) -> list[PlanFound]:
        # A dry-run plan found 3 idle GPUs that nobody has acted on.
        return [PlanFound("idle-gpus", "dry_run", until - timedelta(hours=1), candidates=3,
                          gpus=3.0)]


def test_hygiene_savings_from_a_connected_audit_log(fleet_prometheus: FleetPrometheus,
                                                    tmp_path: Path) -> None:
    week = ReportWeek.parse(WEEK)
    log = AuditLog([
        # 2 H100s freed 10 hours before the week ends: 20 GPU-h at $4.
        SavingAction("idle-gpus", "scale_to_zero", "scratch/old-notebook",
                     week.end - timedelta(hours=10), gpus=2, gpu_model=H100),
        SavingAction("stale-images", "delete", "registry/repo@sha256:aa", week.start,
                     bytes=50 * GIB),
    ])
    code = run_finops_report(config(fleet_prometheus.url, None), week=WEEK, out_dir=tmp_path,
                             slack=False, parquet=None, now=NOW, savings=log)
    assert code == 0
    assert log.asked == [(week.start, week.end)]
    savings = json.loads((tmp_path / "summary.json").read_text())["hygiene_savings"]
    assert savings["available"] is True
    assert savings["gpu_hours_freed"] == 20.0
    assert savings["gpu_cost"] == 80.0
    assert savings["bytes_removed"] == 50 * GIB
    # Beside it, what is reclaimable and not acted on, priced at the week's mean GPU price.
    mean_price = total("cost") / total("alloc")
    assert savings["reclaimable"] == [{
        "job": "idle-gpus", "mode": "dry_run", "run_at": "2026-11-20T11:00:00Z",
        "candidates": 3, "gpus": 3.0, "bytes": 0,
        "gpu_cost_per_week": pytest.approx(3 * mean_price * 168), "storage_cost_per_month": 0.0}]
    page = (tmp_path / "report.html").read_text()
    assert "Reclaimable, not acted on" in page and "3 GPUs" in page
    assert savings["storage_cost_per_month"] == pytest.approx(50 * 0.023)
    rows = read_csv(tmp_path / "hygiene_savings.csv")
    assert [r["job"] for r in rows] == ["idle-gpus", "stale-images"]
    assert "50.0 GiB" in (tmp_path / "report.html").read_text()
