"""Pipeline health (uid steward-pipelines, variables namespace and pipeline): CronJobs, Jobs
and Argo Workflows by result, failures, staleness, durations and runs in progress."""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    OK_BELOW_ONE,
    ORANGE,
    Column,
    Query,
    Section,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

P = 'namespace=~"$namespace", pipeline=~"$pipeline"'
RUNS = f"steward_pipeline_runs_total{{{P}}}"
FAILED_RUNS = f'steward_pipeline_runs_total{{{P}, result="failed"}}'
SUCCEEDED_RUNS = f'steward_pipeline_runs_total{{{P}, result="succeeded"}}'
RUNNING = f"(steward_pipeline_running_since_timestamp_seconds{{{P}}} > 0)"
SINCE_SUCCESS = f"time() - steward_pipeline_last_success_timestamp_seconds{{{P}}}"
# PipelineStale's default threshold.
STALE_AFTER_SECONDS = 26 * 3600
KEY = "namespace, pipeline, kind"
WHAT = ("A pipeline is a CronJob, a Job without a CronJob owner, or an Argo Workflow "
        "(grouped by its template or steward.io/pipeline label).")

summary = Section("Now", [
    stat(title="Succeeded runs in range", unit="short", width=6,
         runbooks=["PipelineRunFailed"],
         description="Pipeline runs that finished successfully within the selected range. "
                     + WHAT,
         queries=[Query(f"sum(increase({SUCCEEDED_RUNS}[$__range])) or vector(0)")]),
    stat(title="Failed runs in range", unit="short", width=6, thresholds=OK_BELOW_ONE,
         runbooks=["PipelineRunFailed"],
         description="Pipeline runs that failed within the selected range; each failure "
                     "raises PipelineRunFailed.",
         queries=[Query(f"sum(increase({FAILED_RUNS}[$__range])) or vector(0)")]),
    stat(title="Running now", unit="short", width=6, runbooks=["PipelineRunTooLong"],
         description="Pipelines with a run in progress. PipelineRunTooLong fires on a run "
                     "older than 6 h by default.",
         queries=[Query(f"count({RUNNING}) or vector(0)")]),
    stat(title="Stale pipelines", unit="short", width=6,
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["PipelineStale"],
         description="Pipelines whose last success is older than 26 h, PipelineStale's "
                     "default: a daily job that missed a day.",
         queries=[Query(f"count({SINCE_SUCCESS} > {STALE_AFTER_SECONDS}) or vector(0)")]),
])

runs = Section("Runs", [
    timeseries(title="Runs by result", unit="short", bars=True, stacked=True,
               runbooks=["PipelineRunFailed"],
               description="Finished runs per result, per rate interval.",
               queries=[Query(f"sum by (result) (increase({RUNS}[$__rate_interval]))",
                              "{{result}}")]),
    timeseries(title="Failures by pipeline", unit="short", bars=True, stacked=True,
               runbooks=["PipelineRunFailed"],
               description="Failed runs per pipeline, per rate interval.",
               queries=[Query(f"sum by (namespace, pipeline) "
                              f"(increase({FAILED_RUNS}[$__rate_interval]))",
                              "{{namespace}}/{{pipeline}}")]),
    timeseries(title="Last run duration", unit="s", width=24,
               description="Duration of each pipeline's last finished run: a step up means "
                           "the pipeline got slower (more data, slower nodes, retries).",
               queries=[Query(f"max by (namespace, pipeline) "
                              f"(steward_pipeline_last_duration_seconds{{{P}}})",
                              "{{namespace}}/{{pipeline}}")]),
])

pipelines = Section("Pipelines", [
    table(title="Pipelines", width=16, height=10, sort_by="Since last success",
          runbooks=["PipelineStale", "PipelineRunFailed"],
          description="One row per pipeline: time since its last success, its last "
                      "run's duration, and its runs within the selected range.",
          labels=["namespace", "pipeline", "kind"],
          columns=[
              Column("Since last success", f"max by ({KEY}) ({SINCE_SUCCESS})", "s"),
              Column("Last duration",
                     f"max by ({KEY}) (steward_pipeline_last_duration_seconds{{{P}}})", "s"),
              Column("Succeeded in range",
                     f"sum by ({KEY}) (increase({SUCCEEDED_RUNS}[$__range]))", "short"),
              Column("Failed in range",
                     f"sum by ({KEY}) (increase({FAILED_RUNS}[$__range]))", "short"),
          ]),
    table(title="Runs in progress", width=8, height=10, sort_by="Running for",
          runbooks=["PipelineRunTooLong"],
          description="Runs in progress and how long they have been running.",
          labels=["namespace", "pipeline", "kind"],
          columns=[Column("Running for", f"time() - max by ({KEY}) ({RUNNING})", "s")]),
])

dashboard = steward_dashboard(
    uid="steward-pipelines",
    title="Steward / Pipelines",
    description="Pipeline health per namespace: runs by result, failures, time since the "
                "last success, durations and runs in progress. " + WHAT,
    tags=["pipelines"],
    time_from="now-2d",
    variables=[
        query_variable("namespace", label="Namespace", metric="steward_pipeline_runs_total",
                       multi=True, include_all=True),
        query_variable("pipeline", label="Pipeline",
                       metric='steward_pipeline_runs_total{namespace=~"$namespace"}',
                       multi=True, include_all=True),
    ],
    sections=[summary, runs, pipelines],
)
