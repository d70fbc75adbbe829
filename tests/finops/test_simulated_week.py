"""The demo's report checked against its simulated week in closed form.

Every expected number below is worked out by hand from the week's story in
``agent/sim/finops_week.py`` and the demo's two nodes (``agent.demo.story.NODES``), not by
the code under test. Hours of the week: Monday 00:00 is hour 0; office hours are 08-20 on
weekdays (60 a week); the burst is hours 24-96 (72); the lost GPU stops reporting at hour
84; gpu-node-2's agent misses hours 122 and 123 (Saturday 02:00-04:00), so its GPUs have
166 hours. Shares of shared GPUs are fractions of the GPU (a quarter of a time-sliced one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.finops.conftest import SIMULATED_PRICE

PRICE = SIMULATED_PRICE
OFFICE, BURST, WEEK, NODE2 = 60, 72, 168, 166
WEEKEND2 = 48 - 2  # gpu-node-2's weekend hours with data

# research (ml-research): 4 training GPUs, the lost GPU, the crash loop, the evaluation job;
# on gpu-node-2 the nightly evaluation (a quarter of the time-sliced GPU) and the LoRA job
# (KAI gpu-fraction 0.5).
TRAINING_ALLOC = BURST + 12 + 12  # Tuesday-Thursday round the clock, Monday and Friday office
TRAINING_USED = BURST * 0.92 + 24 * 0.65
NIGHTLY_ACTIVE = 7 * 4 - 2  # 02:00-06:00 daily, less Saturday's two missing hours
RESEARCH = {
    "alloc": 4 * TRAINING_ALLOC + WEEK + WEEK + 5 * 24 + NODE2 / 4 + NODE2 / 2,
    "used": 4 * TRAINING_USED + 84 * 0.9 + WEEK * 0.05 + 5 * 24 * 0.5
    + NIGHTLY_ACTIVE * 0.2 + 5 * 24 * 0.3,
    "idle": (NODE2 - NIGHTLY_ACTIVE) / 4 + WEEKEND2 / 2,
    "unmeasured": WEEK - 84,  # the lost GPU, held, from Thursday noon
}
# data (data-science): a notebook per node (gpu-node-2's loses 2 hours), the 2g.20gb slice,
# the idle time-slicing tenant, the KAI notebook (gpu-memory: a quarter) used 2 hours.
NOTEBOOK_USED = 3 * 0.35  # Monday 09:00-12:00
DATA = {
    "alloc": WEEK + NODE2 + WEEK * 2 / 7 + NODE2 / 4 + NODE2 / 4,
    "used": 2 * NOTEBOOK_USED + 2 * 0.2,
    "idle": (WEEK - 3) + (NODE2 - 3) + NODE2 / 4 + (NODE2 - 2) / 4,
    "unmeasured": WEEK * 2 / 7,
}
# platform (inference): the chat API (gpu-node-2: 2 night hours lost), the two time-sliced
# replicas (half a GPU each), the 3g.40gb and 1g.10gb slices, the LLM server and the
# embedding API (a quarter each of the time-sliced GPU), the HAMi reranker (0.3).
API_NIGHT = NODE2 - OFFICE
PLATFORM = {
    "alloc": NODE2 + WEEK + WEEK * 4 / 7 + NODE2 / 4 + NODE2 / 4 + NODE2 * 0.3,
    "used": OFFICE * 0.30 + API_NIGHT * 0.004 + (120 * 0.85 + 48 * 0.45)
    + (120 * 0.22 + WEEKEND2 * 0.12) + (OFFICE * 0.15 + (NODE2 - OFFICE) * 0.05)
    + NODE2 * 0.24,
    "idle": API_NIGHT,
    "unmeasured": WEEK * 4 / 7,
}
TEAMS = {"research": RESEARCH, "data": DATA, "platform": PLATFORM}
KEYS = {"alloc": "gpu_hours_allocated", "used": "gpu_hours_used", "idle": "gpu_hours_idle",
        "unmeasured": "gpu_hours_unmeasured"}
# Nobody holds: training GPUs off hours (72 a week each on gpu-node-1, 70 on gpu-node-2),
# the evaluation GPU at the weekend, the MIG GPU's free slice, a quarter of the KAI GPU,
# the free GPU, 0.7 of the HAMi GPU.
UNALLOCATED = 2 * 72 + 2 * 70 + 48 + WEEK / 7 + NODE2 / 4 + NODE2 + NODE2 * 0.7
CAPACITY = 8 * WEEK + 8 * NODE2
# The week before: no burst, the lost GPU healthy, no gap.
PREVIOUS_ALLOC = 4 * OFFICE + WEEK + WEEK + 5 * 24 + 2 * WEEK + WEEK * 2 / 7 \
    + WEEK + WEEK + WEEK * 4 / 7 + WEEK + WEEK * 0.75 + WEEK * 0.3


@pytest.fixture(scope="module")
def summary(simulated_week_report_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((simulated_week_report_dir / "summary.json").read_text())
    return data


def test_the_numbers_are_the_closed_form(summary: dict[str, Any]) -> None:
    # Spelled out once, against slips in the arithmetic above.
    assert RESEARCH["alloc"] == 964.5 and DATA["alloc"] == 465 and PLATFORM["alloc"] == 562.8
    totals = summary["totals"]
    for key, name in KEYS.items():
        assert totals[name] == pytest.approx(sum(t[key] for t in TEAMS.values()), abs=1e-6)
    assert totals["cost"] == pytest.approx(1992.3 * PRICE)
    assert totals["idle_cost"] == pytest.approx(574.5 * PRICE)
    teams = {t["team"]: t for t in summary["teams"]}
    assert list(teams) == ["research", "platform", "data"]  # by cost
    for team, expected in TEAMS.items():
        for key, name in KEYS.items():
            assert teams[team][name] == pytest.approx(expected[key], abs=1e-6), (team, key)
        assert teams[team]["cost"] == pytest.approx(expected["alloc"] * PRICE)


def test_allocated_plus_unallocated_is_every_gpus_cost(summary: dict[str, Any]) -> None:
    totals = summary["totals"]
    assert round(UNALLOCATED, 6) == 679.7 and CAPACITY == 2672
    assert totals["gpu_hours_unallocated"] == pytest.approx(UNALLOCATED, abs=1e-6)
    assert totals["gpu_hours_capacity"] == pytest.approx(CAPACITY)
    assert totals["capacity_cost"] == pytest.approx(CAPACITY * PRICE)
    assert round(totals["cost"] + totals["unallocated_cost"], 2) == round(CAPACITY * PRICE, 2)


def test_the_time_sliced_gpu_splits_into_four_tenants(summary: dict[str, Any]) -> None:
    gpus = summary["shared_gpus"]
    # MIG, the two inference replicas, the four tenants, KAI and HAMi
    assert len(gpus) == 5
    sliced = next(g for g in gpus if len(g["tenants"]) == 4
                  and all(t["mode"] == "time_sliced" for t in g["tenants"]))
    assert (sliced["hostname"], sliced["gpu_hours"], sliced["cost"]) == (
        "gpu-node-2", NODE2, round(NODE2 * PRICE, 2))
    tenants = {t["pod"]: t for t in sliced["tenants"]}
    assert set(tenants) == {"llm-serve-2", "embed-api-2", "jupyter-carol-2", "eval-nightly-2"}
    for tenant in tenants.values():
        assert tenant["share"] == 0.25
        assert tenant["cost"] == round(NODE2 / 4 * PRICE, 2) == 170.15
    assert sum(t["cost"] for t in tenants.values()) == pytest.approx(sliced["cost"])
    assert tenants["llm-serve-2"]["gpu_hours_used"] == pytest.approx(120 * 0.22 + WEEKEND2 * 0.12)
    assert tenants["jupyter-carol-2"]["gpu_hours_idle"] == NODE2 / 4  # idle for its quarter
    assert tenants["eval-nightly-2"]["gpu_hours_idle"] == (NODE2 - NIGHTLY_ACTIVE) / 4


def test_kai_and_hami_gpus_charge_their_fractions(summary: dict[str, Any]) -> None:
    by_pod = {t["pod"]: (g, t) for g in summary["shared_gpus"] for t in g["tenants"]}
    kai, lora = by_pod["tune-lora-5"]
    rows = {t["tenant"]: t for t in kai["tenants"]}
    assert lora["mode"] == "fraction" and lora["share"] == 0.5
    assert rows["data-science/jupyter-dave-5"]["share"] == 0.25  # gpu-memory: 20480 MiB
    assert rows["(unallocated)"]["share"] == 0.25
    assert [t["cost"] for t in kai["tenants"]] == [340.3, 170.15, 170.15]
    hami, reranker = by_pod["rerank-hami-7"]
    assert reranker["share"] == 0.3  # 30 % of the cores; 24 GiB of 80 is 0.3 too
    assert [t["cost"] for t in hami["tenants"]] == [204.18, 476.42]
    assert hami["cost"] == round(NODE2 * PRICE, 2) == 680.6
    # The reservation pod that holds the KAI GPU is nobody's charge.
    assert not any(t["namespace"] == "kai-resource-reservation"
                   for g in summary["shared_gpus"] for t in g["tenants"])


def test_utilization_is_used_over_allocated(simulated_week_report_dir: Path) -> None:
    with (simulated_week_report_dir / "teams.csv").open(encoding="utf-8") as handle:
        rows = {r["team"]: r for r in csv.DictReader(handle)}
    for team, expected in TEAMS.items():
        assert float(rows[team]["utilization"]) == pytest.approx(
            expected["used"] / expected["alloc"], abs=1e-6)
    page = (simulated_week_report_dir / "report.html").read_text(encoding="utf-8")
    assert "Utilization (used ÷ allocated)" in page
    assert "utilization 37.3% (743.1 of 1,992.3 GPU-h)" in page
    assert "<h2>Shared GPUs</h2>" in page


def test_the_week_varies_like_a_week(simulated_week_report_dir: Path) -> None:
    with (simulated_week_report_dir / "daily.csv").open(encoding="utf-8") as handle:
        days = [float(r["gpu_hours_allocated"]) for r in csv.DictReader(handle)]
    # Per day: 24 h held all week by the notebooks, API, replicas, crash loop, lost GPU,
    # 6/7 of MIG, the time-sliced GPU, 3/4 of the KAI GPU and 0.3 of the HAMi GPU; the
    # evaluation job on weekdays; training in office hours or the burst.
    node2_always = 1 + 1 + 1 + 0.75 + 0.3  # notebook, API, time-sliced, KAI, HAMi
    always = 24 * (1 + 1 + 1 + 1 + 6 / 7 + node2_always)
    monday = always + 24 + 4 * 12
    burst = always + 24 + 4 * 24
    friday = monday
    saturday = always - 2 * node2_always  # gpu-node-2's agent, two hours
    assert days == pytest.approx([monday, burst, burst, burst, friday, saturday, always])


def test_week_over_week_is_the_burst(summary: dict[str, Any]) -> None:
    wow = summary["week_over_week"]
    assert wow["available"] is True
    assert wow["previous_totals"]["gpu_hours_allocated"] == pytest.approx(PREVIOUS_ALLOC)
    assert wow["gpu_hours_allocated_change"] == pytest.approx(1992.3 / PREVIOUS_ALLOC - 1,
                                                              abs=1e-6)


def test_gaps_and_what_is_reclaimable(summary: dict[str, Any]) -> None:
    assert {"kind": "node_agent_down", "scope": "gpu-node-2", "start": "2026-11-28T02:00:00Z",
            "end": "2026-11-28T04:00:00Z", "hours": 2.0} in summary["gaps"]
    unmeasured = next(g for g in summary["gaps"] if g["kind"] == "utilization_unavailable")
    assert unmeasured["hours"] == pytest.approx(228.0)
    savings = summary["hygiene_savings"]
    assert savings["available"] is True and savings["gpu_cost"] == 0
    idle = next(r for r in savings["reclaimable"] if r["job"] == "idle-gpus")
    assert idle["gpu_cost_per_week"] == pytest.approx(3 * PRICE * 168)
