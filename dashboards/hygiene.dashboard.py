"""Hygiene actions (uid steward-hygiene, variable hygiene_job): runs, candidates, actions
taken or planned, what could be reclaimed, and blast-radius trips."""

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

J = 'hygiene_job=~"$hygiene_job"'
RUNS = f"steward_hygiene_runs_total{{{J}}}"
ACTIONS = f"steward_hygiene_actions_total{{{J}}}"
RUN_ALERTS = ["StewardHygieneJobFailing", "StewardHygieneBlastRadiusTripped"]
JOBS = "The jobs are idle-gpus, stale-images and orphaned-buckets."
MODES = ("dry_run actions are what an applied run would have done; apply actions were "
         "carried out.")

summary = Section("Now", [
    stat(title="Failed runs in range", unit="short", thresholds=OK_BELOW_ONE,
         runbooks=["StewardHygieneJobFailing"],
         description="Hygiene runs that failed within the selected range "
                     "(StewardHygieneJobFailing). " + JOBS,
         queries=[Query(f'sum(increase(steward_hygiene_runs_total{{{J}, result="failed"}}'
                        f"[$__range])) or vector(0)")]),
    stat(title="Blast-radius trips in range", unit="short", thresholds=OK_BELOW_ONE,
         runbooks=RUN_ALERTS,
         description="Runs that found more candidates than the caps allow and therefore "
                     "acted on nothing (StewardHygieneBlastRadiusTripped). Look at the plan "
                     "before raising a cap.",
         queries=[Query(f"sum(increase(steward_hygiene_runs_total"
                        f'{{{J}, result="blast_radius_tripped"}}[$__range])) or vector(0)')]),
    stat(title="Kill-switch runs in range", unit="short",
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["StewardHygieneJobFailing"],
         description="Runs that stopped because the global kill switch is on.",
         queries=[Query(f"sum(increase(steward_hygiene_runs_total"
                        f'{{{J}, result="kill_switch"}}[$__range])) or vector(0)')]),
    stat(title="Candidates", unit="short",
         description="Resources matching a hygiene policy at each job's last run, summed.",
         queries=[Query(f"sum(steward_hygiene_candidates{{{J}}})")]),
    stat(title="Reclaimable GPUs", unit="short",
         description="GPUs the idle-gpus job would free by acting on its candidates.",
         queries=[Query(f'sum(steward_hygiene_reclaimable{{{J}, unit="gpus"}})')]),
    stat(title="Reclaimable storage", unit="bytes",
         description="Bytes the stale-images and orphaned-buckets jobs would free.",
         queries=[Query(f'sum(steward_hygiene_reclaimable{{{J}, unit="bytes"}})')]),
])

runs = Section("Runs", [
    timeseries(title="Runs by job and result", unit="short", bars=True, stacked=True,
               runbooks=RUN_ALERTS,
               description="Hygiene runs per job and result (succeeded, failed, "
                           "blast_radius_tripped, kill_switch), per rate interval.",
               queries=[Query(f"sum by (hygiene_job, result) "
                              f"(increase({RUNS}[$__rate_interval]))",
                              "{{hygiene_job}} {{result}}")]),
    table(title="Jobs", width=12, sort_by="hygiene_job", sort_desc=False,
          runbooks=RUN_ALERTS,
          description="Per job: its last successful run, candidates at the last run, what it "
                      "could reclaim, and its failed runs within the selected range.",
          labels=["hygiene_job"],
          columns=[
              Column("Last success", f"max by (hygiene_job) "
                                     f"(steward_hygiene_last_success_timestamp_seconds{{{J}}})"
                                     f" * 1000", "dateTimeFromNow"),
              Column("Candidates",
                     f"max by (hygiene_job) (steward_hygiene_candidates{{{J}}})", "short"),
              Column("Reclaimable GPUs", f"max by (hygiene_job) "
                                         f'(steward_hygiene_reclaimable{{{J}, unit="gpus"}})',
                     "short"),
              Column("Reclaimable bytes", f"max by (hygiene_job) "
                                          f'(steward_hygiene_reclaimable{{{J}, unit="bytes"}})',
                     "bytes"),
              Column("Runs in range",
                     f"sum by (hygiene_job) (increase({RUNS}[$__range]))", "short"),
          ]),
])

actions = Section("Actions", [
    table(title="Actions in range", width=12, sort_by="Actions",
          description="Actions per job, action (notify, mark, unmark, scale_to_zero, delete, "
                      "expire_objects, restore) and mode within the selected range. " + MODES,
          labels=["hygiene_job", "action", "mode"],
          columns=[Column("Actions", f"sum by (hygiene_job, action, mode) "
                                     f"(increase({ACTIONS}[$__range]))", "short")]),
    timeseries(title="Actions over time", unit="short", bars=True, stacked=True,
               description="Actions per action and mode, per rate interval. " + MODES,
               queries=[Query(f"sum by (action, mode) (increase({ACTIONS}[$__rate_interval]))",
                              "{{action}} ({{mode}})")]),
    timeseries(title="Candidates by job", unit="short", width=8,
               description="Resources matching each job's policy at its last run.",
               queries=[Query(f"max by (hygiene_job) (steward_hygiene_candidates{{{J}}})",
                              "{{hygiene_job}}")]),
    timeseries(title="Reclaimable GPUs by job", unit="short", width=8,
               description="GPUs each job would free (idle-gpus).",
               queries=[Query(f"max by (hygiene_job) "
                              f'(steward_hygiene_reclaimable{{{J}, unit="gpus"}})',
                              "{{hygiene_job}}")]),
    timeseries(title="Reclaimable storage by job", unit="bytes", width=8,
               description="Bytes each job would free (stale-images, orphaned-buckets).",
               queries=[Query(f"max by (hygiene_job) "
                              f'(steward_hygiene_reclaimable{{{J}, unit="bytes"}})',
                              "{{hygiene_job}}")]),
])

dashboard = steward_dashboard(
    uid="steward-hygiene",
    title="Steward / Hygiene",
    description="The hygiene jobs (idle GPUs, stale images, orphaned buckets): runs, "
                "candidates, actions in dry-run and apply mode, what could be reclaimed, and "
                "blast-radius trips.",
    tags=["hygiene"],
    time_from="now-7d",
    variables=[query_variable("hygiene_job", label="Job", metric="steward_hygiene_runs_total",
                              multi=True, include_all=True)],
    sections=[summary, runs, actions],
)
