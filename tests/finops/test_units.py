"""The report's parts on their own: weeks, steps, MIG shares, prices, the pandas reduction,
team mapping (through the Kubernetes API stand-in), savings, PromQL chunking."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clients.prometheus import MAX_POINTS, PrometheusClient
from agent.finops import teams as teams_module
from agent.finops.aggregate import (
    STEP_SUMS,
    build_tables,
    combine_usage,
    price_usage,
    reduce_batch,
    workload_of,
)
from agent.finops.period import ReportWeek
from agent.finops.pricing import MissingPriceError, PriceTable, gpu_fraction
from agent.finops.queries import chunks, matrix_frame
from agent.finops.savings import GIB, PlanFound, SavingAction, compute_savings
from agent.finops.series import FinopsInputError, Gap, merge_step_gaps, parse_step
from agent.finops.shares import cents_that_add_up
from agent.finops.teams import KubernetesNamespaceLabels, resolve_teams
from tests.support.kube import KubeStandIns

# --- weeks and steps ----------------------------------------------------------------------


def test_iso_week_is_monday_to_monday_utc() -> None:
    week = ReportWeek.parse("2026-W47")
    assert week.start == datetime(2026, 11, 16, tzinfo=UTC)
    assert week.end == datetime(2026, 11, 23, tzinfo=UTC)
    assert week.previous().name == "2026-W46"
    assert str(ReportWeek.parse("2027-W01").previous()) == "2026-W53"  # 2026 has 53 weeks


@pytest.mark.parametrize("text", ["2026-47", "2026-W7", "W47", "2025-W53", "2026-W00"])
def test_bad_weeks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=text):
        ReportWeek.parse(text)


@pytest.mark.parametrize(("now", "expected"), [
    (datetime(2026, 11, 18, 15, tzinfo=UTC), "2026-W46"),
    (datetime(2026, 11, 23, 0, tzinfo=UTC), "2026-W47"),  # the week ended just now
    (datetime(2026, 11, 22, 23, 59, tzinfo=UTC), "2026-W46"),
    (datetime(2027, 1, 1, 12, tzinfo=UTC), "2026-W52"),
])
def test_default_week_is_the_last_complete_one(now: datetime, expected: str) -> None:
    assert ReportWeek.last_complete(now).name == expected


def test_run_with_a_bad_week_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from agent.config import StewardConfig
    from agent.finops.report import run_finops_report

    code = run_finops_report(StewardConfig(), week="2026-W99", out_dir=tmp_path, slack=False,
                             parquet=None)
    assert code == 2
    assert capsys.readouterr().err == \
        "steward: --week: week '2026-W99' does not exist: 2026 has no ISO week 99\n"


@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600), ("15m", 900), ("1h30m", 5400),
                                               ("1d", 86400), ("60s", 60)])
def test_step(text: str, seconds: int) -> None:
    assert parse_step(text) == seconds


@pytest.mark.parametrize("text", ["7m", "1x", "", "30s", "2d", "h1"])
def test_bad_step(text: str) -> None:
    with pytest.raises(FinopsInputError, match=r"finops\.step"):
        parse_step(text)


def test_chunks_respect_steps_days_and_point_limit() -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    end = start + timedelta(days=7)
    day = list(chunks(start, end, step=3600))
    assert len(day) == 7 and all(hi - lo == 86400 for lo, hi in day)
    odd = list(chunks(start, end, step=3600, chunk=timedelta(hours=5, minutes=30)))
    assert all((hi - lo) % 3600 == 0 for lo, hi in odd)  # rounded down to whole steps
    assert odd[0][0] == int(start.timestamp()) and odd[-1][1] == int(end.timestamp())
    huge = list(chunks(start, end, step=60, chunk=timedelta(days=30)))
    assert max((hi - lo) // 60 for lo, hi in huge) < MAX_POINTS


def test_client_refuses_too_many_points() -> None:
    client = PrometheusClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="11000"):
        client.query_range("up", start=0, end=60 * MAX_POINTS, step=60)


def test_matrix_frame_shifts_points_to_step_starts() -> None:
    result = [{"metric": {"hostname": "n", "UUID": "GPU-1"}, "values": [[7200, "0.5"],
                                                                       [10800, "NaN"]]},
              {"metric": {"hostname": "m"}, "values": [[7200, "1"]]}]
    frame = matrix_frame(result, {"hostname": "hostname", "uuid": "UUID"}, "v", shift=3600)
    assert frame["ts"].tolist() == [3600, 7200, 3600]
    assert frame["uuid"].tolist() == ["GPU-1", "GPU-1", ""]
    assert frame["v"].iloc[0] == 0.5 and math.isnan(frame["v"].iloc[1])
    assert matrix_frame([], {"hostname": "hostname"}, "v", shift=0).empty


def test_gap_runs_merge_consecutive_steps() -> None:
    gaps = merge_step_gaps([7200, 0, 3600, 14400], kind="node_agent_down", scope="n:9400",
                           step_seconds=3600, missing=[1.0, 0.5, 1.0, 0.25])
    assert [(g.start.hour, g.end.hour, g.hours) for g in gaps] == [(0, 3, 2.5), (4, 5, 0.25)]
    again = Gap.from_json(gaps[0].to_json())
    assert again == gaps[0]


# --- MIG and prices -----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "profile", "fraction"), [
    ("NVIDIA H100 80GB HBM3", "", 1.0),
    ("NVIDIA H100 80GB HBM3", "3g.40gb", 3 / 7),
    ("NVIDIA A100-SXM4-40GB", "1g.5gb+me", 1 / 7),
    ("NVIDIA A100-SXM4-40GB", "1c.3g.20gb", 3 / 7),  # compute instance of a 3g GPU instance
    ("NVIDIA H200", "7g.141gb", 1.0),
    ("NVIDIA A30", "2g.12gb", 2 / 4),
    ("NVIDIA H100 80GB HBM3", "unknown", None),
])
def test_mig_fraction(model: str, profile: str, fraction: float | None) -> None:
    assert gpu_fraction(model, profile) == fraction


def test_missing_price_names_the_model_with_most_hours() -> None:
    table = PriceTable({"H100": 4.0}, 0.023)
    with pytest.raises(MissingPriceError, match=r"no price for GPU model 'B200' \(12\.0 GPU"):
        table.check({"H100": 100.0, "A10": 1.0, "B200": 12.0})


# --- the pandas reduction -----------------------------------------------------------------


def rows(*items: tuple[int, str, str, str, str, float, float, float]) -> pd.DataFrame:
    columns = ["ts", "namespace", "pod", "model", "profile", "share", "util_mean", "util_max"]
    frame = pd.DataFrame(list(items), columns=columns)
    for extra in ("hostname", "uuid", "gpu_i_id", "container"):
        frame[extra] = "x"
    return frame


NAN = float("nan")
SAMPLE = rows(
    (0, "a", "p1", "H100", "", 1.0, 0.5, 0.9),
    (3600, "a", "p1", "H100", "", 1.0, 0.005, 0.009),  # idle: peak under the floor
    (7200, "a", "p1", "H100", "", 0.5, 0.0, 0.01),  # not idle: peak at the floor
    (86400, "a", "p1", "H100", "", 1.0, 0.2, 0.2),  # the next day
    (0, "b", "p2", "H100", "3g.40gb", 3 / 7, NAN, NAN),  # MIG: unmeasured, never idle
    (0, "a", "p3", "A100", "", 0.25, 0.4, 0.4),
)


def _by_key(usage: pd.DataFrame) -> dict[tuple[int, str], tuple[float, ...]]:
    return {(int(r.day), str(r.pod)): tuple(round(float(getattr(r, c)), 9) for c in STEP_SUMS)
            for r in usage.itertuples()}


def test_reduce_batch_sums() -> None:
    usage = combine_usage([reduce_batch(SAMPLE, step_seconds=3600, idle_floor=0.01)])
    assert _by_key(usage) == {
        (0, "p1"): (2.5, 0.5 + 0.005, 1.0, 0.0),
        (1, "p1"): (1.0, 0.2, 0.0, 0.0),
        (0, "p2"): (round(3 / 7, 9), 0.0, 0.0, round(3 / 7, 9)),
        (0, "p3"): (0.25, 0.1, 0.0, 0.0),
    }
    half_hour = reduce_batch(SAMPLE, step_seconds=1800, idle_floor=0.01)
    assert half_hour["alloc_h"].sum() == pytest.approx((3.75 + 3 / 7) / 2)


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(SAMPLE))), st.integers(min_value=1, max_value=5))
def test_reduce_is_independent_of_order_and_batching(order: list[int], cut: int) -> None:
    shuffled = SAMPLE.iloc[order].reset_index(drop=True)
    parts = [reduce_batch(shuffled.iloc[:cut], step_seconds=3600, idle_floor=0.01),
             reduce_batch(shuffled.iloc[cut:], step_seconds=3600, idle_floor=0.01)]
    whole = combine_usage([reduce_batch(SAMPLE, step_seconds=3600, idle_floor=0.01)])
    assert _by_key(combine_usage(parts)) == _by_key(whole)


def test_tables_price_mig_by_share_and_rank() -> None:
    usage = combine_usage([reduce_batch(SAMPLE, step_seconds=3600, idle_floor=0.01)])
    prices = PriceTable({"H100": 7.0, "A100": 2.0}, 0.0)
    priced = price_usage(usage, prices)
    tables = build_tables(priced, None, teams={"a": "alpha"}, top_n=1)
    teams = tables.teams.set_index("team")
    assert teams.loc["unassigned", "cost"] == pytest.approx(3 / 7 * 7.0)  # b: the MIG slice
    assert teams.loc["alpha", "cost"] == pytest.approx(3.5 * 7.0 + 0.25 * 2.0)
    assert teams.loc["alpha", "idle_cost"] == pytest.approx(7.0)
    assert math.isnan(teams.loc["alpha", "previous_cost"])  # no previous week read
    assert list(tables.top_idle_workloads["workload"]) == ["p1"]
    assert tables.totals["gpu_hours_unmeasured"] == pytest.approx(3 / 7)


def test_previous_week_with_a_retired_model_is_not_fatal() -> None:
    usage = combine_usage([reduce_batch(SAMPLE, step_seconds=3600, idle_floor=0.01)])
    priced = price_usage(usage, PriceTable({"H100": 1.0}, 0.0), strict=False)
    assert priced.unpriced_models == ("A100",)
    with pytest.raises(MissingPriceError):
        price_usage(usage, PriceTable({"H100": 1.0}, 0.0))


def test_unallocated_rows_are_capacity_not_anybodys_cost() -> None:
    frame = pd.concat([SAMPLE, rows((0, "", "", "H100", "", 0.5, NAN, NAN),
                                    (3600, "", "", "A100", "", 0.75, NAN, NAN))],
                      ignore_index=True)
    usage = combine_usage([reduce_batch(frame, step_seconds=3600, idle_floor=0.01)])
    tables = build_tables(price_usage(usage, PriceTable({"H100": 7.0, "A100": 2.0}, 0.0)),
                          None, teams={"a": "alpha"})
    assert set(tables.teams["team"]) == {"alpha", "unassigned"}  # nobody is "" team
    assert "" not in set(tables.namespaces["namespace"])
    totals = tables.totals
    assert totals["gpu_hours_allocated"] == pytest.approx(3.75 + 3 / 7)
    assert totals["gpu_hours_unmeasured"] == pytest.approx(3 / 7)  # not the free rows
    assert totals["gpu_hours_unallocated"] == pytest.approx(1.25)
    assert totals["unallocated_cost"] == pytest.approx(0.5 * 7.0 + 0.75 * 2.0)
    assert totals["capacity_cost"] == pytest.approx(totals["cost"] + 5.0)


def test_cents_add_up_where_rounding_each_charge_would_not() -> None:
    # A GPU at $3.33 for 166 h shared 0.4 / 0.25 / 0.2 / 0.1 with 0.05 nobody held: rounded
    # one by one (half up) the charges come to $552.79, a cent more than the GPU's $552.78.
    shares = ("0.4", "0.25", "0.2", "0.1", "0.05")
    exact = [Decimal(s) * 166 * Decimal("3.33") for s in shares]
    assert sum(e.quantize(Decimal("0.01"), ROUND_HALF_UP) for e in exact) == Decimal("552.79")
    cents = cents_that_add_up(np.array([float(e) for e in exact]))
    assert cents.tolist() == [221.11, 138.19, 110.56, 55.28, 27.64]
    assert round(cents.sum(), 2) == 552.78
    assert cents_that_add_up(np.array([])).tolist() == []


def test_parquet_written_before_fractions_is_read_as_fractions(tmp_path: Path) -> None:
    """An export from before shares were fractions of the GPU: no ``mode`` column, a MIG
    row holds one instance. Read as 3/7 of the GPU; an unknown profile counts whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agent.finops.parquet import META_STEP, ParquetSource

    columns = ("hostname", "uuid", "gpu_i_id", "profile", "model", "namespace", "pod",
               "container")
    values = [("n", "GPU-1", "1", "3g.40gb", "NVIDIA H100 80GB HBM3", "a", "p", "c"),
              ("n", "GPU-1", "2", "unknown", "NVIDIA H100 80GB HBM3", "a", "q", "c"),
              ("n", "GPU-2", "", "", "NVIDIA H100 80GB HBM3", "a", "r", "c")]
    table = pa.table({
        "ts": pa.array([0, 0, 0], pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        **{c: pa.array([v[i] for v in values]) for i, c in enumerate(columns)},
        "share": [1.0, 1.0, 0.5], "util_mean": [None, None, 0.3], "util_max": [None, None, 0.4],
    }).replace_schema_metadata({META_STEP: b"3600"})
    pq.write_table(table, tmp_path / "old.parquet")
    source = ParquetSource(tmp_path / "old.parquet")
    frame = pd.concat(list(source.batches(datetime.fromtimestamp(0, UTC),
                                          datetime.fromtimestamp(3600, UTC))))
    assert frame["share"].tolist() == pytest.approx([3 / 7, 1.0, 0.5])
    assert frame["mode"].astype(str).tolist() == ["mig", "mig", "exclusive"]


@pytest.mark.parametrize(("pod", "workload"), [
    ("chat-7d9fbc6d58-x2x4z", "chat"),  # Deployment
    ("etl-29345678-b7k2p", "etl"),  # CronJob's Job
    ("train-job-h8q2x", "train-job"),  # Job
    ("trainer-0", "trainer"),  # StatefulSet
    ("debug-shell", "debug-shell"),
    ("nb-alice", "nb-alice"),
    ("llama-70b", "llama-70b"),
])
def test_workload_names(pod: str, workload: str) -> None:
    assert workload_of(pod) == workload


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_big_batch_reduces_to_runs() -> None:
    """A day of 1,000 GPUs at 1-minute steps, one row per GPU-minute."""
    gpus, minutes = 1000, 1440
    frame = pd.DataFrame({
        "ts": np.tile(np.arange(minutes, dtype=np.int64) * 60, gpus),
        "namespace": pd.Categorical.from_codes(np.repeat(np.arange(gpus) % 10, minutes),
                                               [f"ns{i}" for i in range(10)]),
        "pod": pd.Categorical.from_codes(np.repeat(np.arange(gpus), minutes),
                                         [f"pod{i}" for i in range(gpus)]),
        "model": "H100", "profile": "",
        "share": 1.0, "util_mean": 0.5, "util_max": 0.5,
    })
    usage = reduce_batch(frame, step_seconds=60, idle_floor=0.01)
    assert len(usage) == gpus
    assert usage["alloc_h"].sum() == pytest.approx(gpus * 24)
    assert usage["used_h"].sum() == pytest.approx(gpus * 12)


# --- teams --------------------------------------------------------------------------------


class Labels:
    def __init__(self, labels: dict[str, dict[str, str]] | Exception) -> None:
        self.labels = labels
        self.calls = 0

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        self.calls += 1
        if isinstance(self.labels, Exception):
            raise self.labels
        return self.labels


def test_static_map_wins_then_label_then_unassigned() -> None:
    source = Labels({"a": {"team": "from-label"}, "b": {"team": "beta"}, "c": {"x": "y"}})
    mapping = resolve_teams(["a", "b", "c", "gone"], static={"a": "alpha"}, label="team",
                            source=source)
    assert mapping.teams == {"a": "alpha", "b": "beta", "c": "unassigned",
                             "gone": "unassigned"}
    assert mapping.sources == {"a": "config", "b": "label", "c": "none", "gone": "none"}
    assert mapping.warnings == []


def test_static_map_alone_does_not_ask_the_api() -> None:
    source = Labels({})
    assert resolve_teams(["a"], static={"a": "alpha"}, label="team", source=source).teams == \
        {"a": "alpha"}
    assert source.calls == 0


def test_unreachable_api_leaves_the_static_map_and_warns() -> None:
    mapping = resolve_teams(["a", "b"], static={"a": "alpha"}, label="team",
                            source=Labels(ConnectionError("refused")))
    assert mapping.teams == {"a": "alpha", "b": "unassigned"}
    assert mapping.warnings and "ConnectionError" in mapping.warnings[0]


def test_namespace_labels_through_the_api_with_paging(monkeypatch: pytest.MonkeyPatch,
                                                     make_kube: KubeStandIns) -> None:
    monkeypatch.setattr(teams_module, "_PAGE", 2)
    kube = make_kube(namespaces=())
    for index in range(5):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": f"ns{index}", "labels": {"team": f"t{index % 2}"}}})
    source = KubernetesNamespaceLabels(kube.api_client)
    labels = source.namespace_labels()
    lists = kube.request_log(method="GET", path_regex=r"^/api/v1/namespaces$")
    assert labels == {f"ns{i}": {"team": f"t{i % 2}", "kubernetes.io/metadata.name": f"ns{i}"}
                      for i in range(5)}
    assert len(lists) == 3  # 2 + 2 + 1


# --- savings ------------------------------------------------------------------------------


class Actions:
    def __init__(self, actions: list[SavingAction]) -> None:
        self.items = actions

    def actions(self, start: datetime, end: datetime) -> list[SavingAction]:
        return self.items

    def latest_plans(self, until: datetime) -> list[PlanFound]:
        return [PlanFound("idle-gpus", "dry_run", until - timedelta(hours=1), candidates=3,
                          gpus=2.0),
                PlanFound("stale-images", "dry_run", until - timedelta(hours=2), candidates=5,
                          bytes=4 * GIB)]


def test_savings_from_actions() -> None:
    start = datetime(2026, 11, 16, tzinfo=UTC)
    end = start + timedelta(days=7)
    source = Actions([
        SavingAction("idle-gpus", "scale_to_zero", "ml/nb-1", end - timedelta(hours=10),
                     gpus=2, gpu_model="H100"),
        SavingAction("idle-gpus", "scale_to_zero", "ml/nb-2", end - timedelta(hours=4),
                     gpus=1),  # no model: the week's mean price
        SavingAction("stale-images", "delete", "reg/repo@sha256:1", start, bytes=3 * GIB),
        SavingAction("stale-images", "delete", "reg/repo@sha256:2", end, bytes=GIB),  # next week
    ])
    savings = compute_savings(source, start, end, prices={"H100": 4.0}, default_gpu_price=3.0,
                              storage_usd_per_gb_month=0.02)
    data = savings.to_json()
    assert data["available"] is True
    assert data["gpu_hours_freed"] == 24.0
    assert data["gpu_cost"] == 20 * 4.0 + 4 * 3.0
    assert data["bytes_removed"] == 3 * GIB
    assert data["storage_cost_per_month"] == pytest.approx(0.06)
    assert [j["job"] for j in data["jobs"]] == ["idle-gpus", "stale-images"]
    # Beside what was saved: what the latest plans found and nobody acted on, priced.
    assert [(r["job"], r["candidates"]) for r in data["reclaimable"]] == [
        ("idle-gpus", 3), ("stale-images", 5)]
    assert data["reclaimable"][0]["gpu_cost_per_week"] == 2 * 3.0 * 168
    assert data["reclaimable"][1]["storage_cost_per_month"] == pytest.approx(4 * 0.02)
    assert data["reclaimable"][0]["run_at"] == "2026-11-22T23:00:00Z"


def test_no_audit_log_is_not_zero_savings() -> None:
    start = datetime(2026, 11, 16, tzinfo=UTC)
    data = compute_savings(None, start, start + timedelta(days=7), prices={},
                           default_gpu_price=0, storage_usd_per_gb_month=0).to_json()
    assert data == {"available": False,
                    "reason": "no hygiene audit log in the state store (state.url): no "
                              "hygiene job has run against it"}
