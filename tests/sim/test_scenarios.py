"""The simulated scenarios: what the demo, the tests and the benchmarks all rely on."""

from __future__ import annotations

import pytest

from agent.sim.scenarios import SCENARIOS, ScenarioContext, XidSchedule

CTX = ScenarioContext(memory_total_bytes=80 * 1024**3, power_limit_watts=700, phase=1.1,
                      lost_after_seconds=20)


def test_schedule_between_is_half_open_and_complete() -> None:
    schedule = XidSchedule(13, period=5.0)
    assert schedule.between(0, 5) == [5.0]
    assert schedule.between(5, 15) == [10.0, 15.0]
    assert schedule.between(0, 4.9) == []
    one_shot = XidSchedule(79, period=1e9, start=20)
    assert one_shot.between(0, 19.9) == []
    assert one_shot.between(19.9, 20) == [20]
    assert one_shot.between(20, 1000) == []


def test_next_after_agrees_with_between() -> None:
    schedule = XidSchedule(31, period=7.0, start=2.0, stop=30.0)
    assert schedule.next_after(0) == 2.0
    assert schedule.next_after(2.0) == 9.0
    assert schedule.next_after(29.0) == 30.0  # the stop time itself is included
    assert schedule.next_after(30.0) is None
    for t in (0.0, 3.5, 9.0, 22.0):
        nxt = schedule.next_after(t)
        assert nxt is not None
        assert schedule.between(t, nxt) == [nxt]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_energy_never_decreases_and_ratios_in_range(name: str) -> None:
    scenario = SCENARIOS[name]
    previous = -1.0
    for step in range(0, 3600, 7):
        state = scenario.state(float(step), CTX)
        assert state.energy_joules >= previous
        previous = state.energy_joules
        assert 0.0 <= state.utilization <= 1.0
        assert 0.0 <= state.memory_copy_utilization <= 1.0
        assert 0 <= state.memory_used_bytes <= CTX.memory_total_bytes


def test_lost_scenario_falls_off_the_bus_on_time() -> None:
    lost = SCENARIOS["lost"]
    assert not lost.state(19.9, CTX).lost
    assert lost.state(20.0, CTX).lost
    assert [s.xid for s in lost.xids(CTX)] == [79]


def test_config_names_exactly_the_simulated_scenarios() -> None:
    """Config validates scenario names without importing the simulator: the two lists agree."""
    from agent.config import SIM_SCENARIOS
    from agent.sim.scenarios import SCENARIOS

    assert sorted(SIM_SCENARIOS) == sorted(SCENARIOS)
