"""The demo's report checked against its simulated week in closed form.

Every expected number below is worked out by hand from the week's story in
``agent/sim/finops_week.py`` and the demo's two nodes (``agent.demo.story.NODES``), not by
the code under test. Hours of the week: Monday 00:00 is hour 0; office hours are 08-20 on
weekdays (60 a week); the burst is hours 24-96 (72); the lost GPU stops reporting at hour
84; gpu-node-2's agent misses hours 122 and 123 (Saturday 02:00-04:00).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.finops.conftest import SIMULATED_PRICE

PRICE = SIMULATED_PRICE
OFFICE, BURST, WEEK = 60, 72, 168

# research (ml-research): 7 training GPUs, the lost GPU, the crash loop, the evaluation job.
TRAINING_ALLOC = BURST + 12 + 12  # Tuesday-Thursday round the clock, Monday and Friday office
TRAINING_USED = BURST * 0.92 + 24 * 0.65
RESEARCH = {
    "alloc": 7 * TRAINING_ALLOC + WEEK + WEEK + 5 * 24,
    "used": 7 * TRAINING_USED + 84 * 0.9 + WEEK * 0.05 + 5 * 24 * 0.5,
    "idle": 0.0,
    "unmeasured": WEEK - 84,  # the lost GPU, held, from Thursday noon
}
# data (data-science): a notebook per node (gpu-node-2's loses 2 hours), the 2g.20gb slice.
NOTEBOOK_USED = 3 * 0.35  # Monday 09:00-12:00
DATA = {
    "alloc": WEEK + (WEEK - 2) + WEEK * 2 / 7,
    "used": 2 * NOTEBOOK_USED,
    "idle": (WEEK - 3) + (WEEK - 2 - 3),
    "unmeasured": WEEK * 2 / 7,
}
# platform (inference): the chat API (gpu-node-2: 2 night hours lost), the two time-sliced
# replicas (half a GPU each), the 3g.40gb and 1g.10gb slices.
API_NIGHT = WEEK - OFFICE - 2
PLATFORM = {
    "alloc": (WEEK - 2) + WEEK + WEEK * 4 / 7,
    "used": OFFICE * 0.30 + API_NIGHT * 0.004 + (120 * 0.85 + 48 * 0.45),
    "idle": API_NIGHT,
    "unmeasured": WEEK * 4 / 7,
}
TEAMS = {"research": RESEARCH, "data": DATA, "platform": PLATFORM}
KEYS = {"alloc": "gpu_hours_allocated", "used": "gpu_hours_used", "idle": "gpu_hours_idle",
        "unmeasured": "gpu_hours_unmeasured"}
# The week before: no burst, the lost GPU healthy, no gap.
PREVIOUS_ALLOC = 7 * OFFICE + WEEK + WEEK + 5 * 24 + 2 * WEEK + WEEK * 2 / 7 \
    + WEEK + WEEK + WEEK * 4 / 7


@pytest.fixture(scope="module")
def summary(simulated_week_report_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((simulated_week_report_dir / "summary.json").read_text())
    return data


def test_the_numbers_are_the_closed_form(summary: dict[str, Any]) -> None:
    # Spelled out once, against slips in the arithmetic above.
    assert RESEARCH["alloc"] == 1128 and DATA["alloc"] == 382 and PLATFORM["alloc"] == 430
    totals = summary["totals"]
    for key, name in KEYS.items():
        assert totals[name] == pytest.approx(sum(t[key] for t in TEAMS.values()), abs=1e-6)
    assert totals["cost"] == pytest.approx(1940 * PRICE)
    assert totals["idle_cost"] == pytest.approx(434 * PRICE)
    teams = {t["team"]: t for t in summary["teams"]}
    assert list(teams) == ["research", "platform", "data"]  # by cost
    for team, expected in TEAMS.items():
        for key, name in KEYS.items():
            assert teams[team][name] == pytest.approx(expected[key], abs=1e-6), (team, key)
        assert teams[team]["cost"] == pytest.approx(expected["alloc"] * PRICE)


def test_utilization_is_used_over_allocated(simulated_week_report_dir: Path) -> None:
    with (simulated_week_report_dir / "teams.csv").open(encoding="utf-8") as handle:
        rows = {r["team"]: r for r in csv.DictReader(handle)}
    for team, expected in TEAMS.items():
        assert float(rows[team]["utilization"]) == pytest.approx(
            expected["used"] / expected["alloc"], abs=1e-6)
    page = (simulated_week_report_dir / "report.html").read_text(encoding="utf-8")
    assert "Utilization (used ÷ allocated)" in page
    assert "utilization 44.4% (861.0 of 1,940.0 GPU-h)" in page


def test_the_week_varies_like_a_week(simulated_week_report_dir: Path) -> None:
    with (simulated_week_report_dir / "daily.csv").open(encoding="utf-8") as handle:
        days = [float(r["gpu_hours_allocated"]) for r in csv.DictReader(handle)]
    # Per day: 24 h held all week by the notebooks, API, replicas, crash loop, lost GPU and
    # the 6/7 of MIG; the evaluation job on weekdays; training in office hours or the burst.
    always = 24 * (2 + 1 + 1 + 1 + 1 + 6 / 7)
    monday = always + 24 + 7 * 12
    burst = always + 24 + 7 * 24
    friday = monday
    saturday = always - 2 * 2  # gpu-node-2's agent: the API and the notebook, two hours
    assert days == pytest.approx([monday, burst, burst, burst, friday, saturday, always])


def test_week_over_week_is_the_burst(summary: dict[str, Any]) -> None:
    wow = summary["week_over_week"]
    assert wow["available"] is True
    assert wow["previous_totals"]["gpu_hours_allocated"] == pytest.approx(PREVIOUS_ALLOC)
    assert wow["gpu_hours_allocated_change"] == pytest.approx(1940 / PREVIOUS_ALLOC - 1,
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
