"""How complete a GPU's samples must be (``Coverage``), without servers: the tolerance is
one missed scrape, never two in a row, at the start, in the middle or at the end."""

from __future__ import annotations

import pytest

from agent.controller.hygiene.idle_gpus.evidence import GAP_TOLERANCE, Coverage, _regex_literal

END, SPAN, STEP = 10_000.0, 600.0, 30.0
ALL = [END - SPAN + STEP * i for i in range(1, 21)]  # 20 samples, the last at END
MAX_GAP = GAP_TOLERANCE * STEP


def cover(times: list[float]) -> Coverage:
    return Coverage.of(times, end=END, span=SPAN, interval=STEP)


def test_complete_samples() -> None:
    full = cover(ALL)
    assert full.to_json() == {"samples": 20, "expected": 20, "largest_gap_seconds": 30,
                              "last_sample_age_seconds": 0}


@pytest.mark.parametrize(("missing", "passes"), [
    ([10], True),  # one missed scrape: a 60 s gap
    ([10, 11], False),  # two in a row: 90 s
    ([0], True), ([0, 1], False),  # at the start of the span
    # At the end: the newest sample may be up to 2.5 intervals old (here the last one was
    # scraped exactly at the evaluation time, so two missing make it 60 s old).
    ([18, 19], True), ([17, 18, 19], False),
])
def test_one_missed_scrape_passes_two_do_not(missing: list[int], passes: bool) -> None:
    coverage = cover([t for i, t in enumerate(ALL) if i not in missing])
    assert (coverage.largest_gap <= MAX_GAP) is passes, coverage


def test_where_the_gap_is_said() -> None:
    assert cover(ALL[:10]).gap_text() == "no sample since 5m ago"
    assert cover(ALL[10:]).gap_text() == "samples begin only 4m30s ago, 5m30s into the " \
                                         "10m window"
    assert cover(ALL[:5] + ALL[15:]).gap_text() == "a gap of 5m30s ending 2m ago (10 of 20 " \
                                                   "samples)"
    assert cover([]).gap_text() == "no sample in the last 10m"
    assert cover([]).to_json()["last_sample_age_seconds"] is None


def test_duplicate_samples_of_two_scrape_jobs_count_once() -> None:
    assert cover(ALL + ALL).samples == 20


def test_uuids_are_matched_literally() -> None:
    assert _regex_literal("GPU-1234-abcd") == "GPU-1234-abcd"
    assert _regex_literal('a.b|c"') == 'a\\\\.b\\\\|c\\"'
