"""Hourly recording rules for the FinOps report: large installs pay the aggregation once.

The report's four hourly reductions (:mod:`agent.finops.queries`: each holder's share, each
GPU's unallocated rest, each tenant's mean and peak use of its share) are recorded by
Prometheus once an hour, with the very expressions the report sends at a one-hour step, so a
weekly report reads 168 points per GPU instead of reducing every raw sample again.
``steward build`` writes them to ``alerts/finops-recording-rules.yaml`` (a Prometheus rules
file; ``promtool tsdb create-blocks-from rules`` backfills them over past weeks).

The report uses a recorded series for a chunk (a day) only when its step is one hour, its
selector is the default one (the rules are written for it), and every step of the chunk has
a recorded unallocated value: a chunk the rules do not cover (before they were installed,
an evaluation Prometheus missed) is reduced from the raw samples as before.

A group is evaluated at a fixed offset within the hour that Prometheus (and promtool when
it backfills) derives from a hash of the group's name and of its rules file's path, so the
offset changes with where the file lives. Reduced over the hour before each evaluation, a
recorded hour would straddle two of the report's steps and differ from the raw reduction
wherever use changes within it (a weekday's last samples in a Saturday's first hour). Each
rule therefore evaluates the report's expression at the last hour boundary strictly before
the evaluation (a one-hour subquery, aligned to the epoch by PromQL, 1 ms back): the sample
recorded at ``e`` is exactly the report's step ending at that boundary, and the report reads
the step ending at ``t`` from the evaluation in ``(t, t + 1h]``
(:func:`agent.finops.queries.recorded_step`). The last hour of a range is recorded by the
first evaluation after it ends.
"""

from __future__ import annotations

from typing import Any, Final

from agent.alerts.render import dump_rules_yaml
from agent.finops.queries import (
    NODE_JOB,
    RecordedSeries,
    allocation_share_query,
    unallocated_query,
    utilization_query,
)

RULES_FILE: Final = "finops-recording-rules.yaml"
GROUP: Final = "steward-finops-hourly"
INTERVAL_SECONDS: Final = 3600
DEFAULT_SELECTOR: Final = f'job="{NODE_JOB}"'
SHARE: Final = "steward:gpu_pod_allocated_ratio:share1h"
UNALLOCATED: Final = "steward:gpu_unallocated_ratio:share1h"
USE_MEAN: Final = "steward:gpu_pod_use_of_share:avg1h"
USE_PEAK: Final = "steward:gpu_pod_use_of_share:max1h"
RECORDED: Final = RecordedSeries(share=SHARE, unallocated=UNALLOCATED, use_mean=USE_MEAN,
                                 use_peak=USE_PEAK, step_seconds=INTERVAL_SECONDS)


def recording_rules(*, selector: str = DEFAULT_SELECTOR) -> dict[str, str]:
    """Recorded name -> the report's own hourly expression, at the last hour boundary."""
    window = f"{INTERVAL_SECONDS}s"
    return {name: _at_last_boundary(expr) for name, expr in {
        SHARE: allocation_share_query(selector=selector, window=window),
        UNALLOCATED: unallocated_query(selector=selector, window=window),
        USE_MEAN: utilization_query("avg", selector=selector, window=window),
        USE_PEAK: utilization_query("max", selector=selector, window=window),
    }.items()}


def _at_last_boundary(expr: str) -> str:
    """``expr`` as the report's step ending at the last hour boundary strictly before the
    evaluation: the subquery's one point in ``(e - 1h - 1ms, e - 1ms]`` (``[...]`` closed
    before Prometheus 3: still one point) is that boundary, whatever the group's offset."""
    window = f"{INTERVAL_SECONDS}s"
    return f"last_over_time((\n{expr}\n)[{window}:{window}] offset 1ms)"


def recording_rule_groups() -> list[dict[str, Any]]:
    return [{"name": GROUP, "interval": "1h",
             "rules": [{"record": name, "expr": expr}
                       for name, expr in recording_rules().items()]}]


def render_recording_rules() -> str:
    return dump_rules_yaml({"groups": recording_rule_groups()},
                           source="agent/finops/recording.py")

