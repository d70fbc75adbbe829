"""``steward report finops``: build the week's report, write its folder, post it to Slack;
and the weekly schedule the controller registers.

Exit codes: 0 written (and posted), 2 input a user can fix (week, step, price table, Slack
channel or token, Parquet file), 1 runtime failure (Prometheus or Slack unreachable).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from agent.clients.prometheus import PrometheusClient, PrometheusError
from agent.clients.slack import SlackCallFailed, SlackSink
from agent.clients.slack_params import SlackSettings
from agent.config import StewardConfig
from agent.cron import cron_trigger
from agent.errors import RuntimeFailure
from agent.finops.aggregate import aggregate_usage, aggregate_week, build_tables, price_usage
from agent.finops.document import FinopsReport
from agent.finops.parquet import ParquetSource, export_parquet
from agent.finops.period import ReportWeek
from agent.finops.pricing import PriceTable
from agent.finops.queries import PrometheusSource
from agent.finops.recording import RECORDED
from agent.finops.render import write_report
from agent.finops.savings import AuditLogSavings, SavingsSource, compute_savings
from agent.finops.series import FinopsInputError, Gap, SeriesSource, parse_step
from agent.finops.slack_post import post_report
from agent.finops.teams import (
    KubernetesNamespaceLabels,
    NamespaceLabelsSource,
    resolve_teams,
)

log = logging.getLogger("agent.finops.report")
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
JOB_ID = "finops-weekly-report"


def default_source(config: StewardConfig, *, parquet: Path | None) -> SeriesSource:
    if parquet is not None:
        return ParquetSource(parquet)
    step = parse_step(config.finops.step)
    client = PrometheusClient(config.prometheus.url, timeout=config.prometheus.timeout_seconds)
    # The recording rules are written for the default selector, which this source uses.
    return PrometheusSource(client, step_seconds=step, recorded=RECORDED)


def default_namespace_labels(config: StewardConfig) -> NamespaceLabelsSource | None:
    from agent.clients.kubernetes.api import api_client, cluster_configured

    if not cluster_configured(config.kubernetes):
        return None
    return KubernetesNamespaceLabels(lambda: api_client(config.kubernetes, "finops"))


def default_savings(config: StewardConfig) -> SavingsSource | None:
    """The hygiene audit log in the state store, when there is one to read."""
    from sqlalchemy.engine import make_url

    from agent.controller.hygiene.store import has_hygiene_log
    from agent.state import open_store

    url = make_url(config.state.url)
    if url.get_backend_name() == "sqlite" and url.database and \
            not Path(url.database).exists():
        return None  # no hygiene job ever ran here: "not available", not zero
    engine = open_store(config.state.url, create=False)
    if not has_hygiene_log(engine):
        return None
    return AuditLogSavings(engine)


def _no_data_hours(gaps: list[Gap]) -> float:
    return sum(g.hours for g in gaps if g.kind == "no_data")


def build_report(config: StewardConfig, week: ReportWeek, *, source: SeriesSource,
                 namespace_labels: NamespaceLabelsSource | None,
                 savings: SavingsSource | None = None, now: datetime) -> FinopsReport:
    """Read the week and the one before, price, attribute to teams, shape the tables."""
    finops = config.finops
    prices = PriceTable(finops.prices, finops.storage_usd_per_gb_month)
    previous = week.previous()
    warnings: list[str] = []
    if week.end > now:
        warnings.append(f"{week.name} is not over yet: the hours after "
                        f"{now.astimezone(UTC):%a %H:%M} UTC have no data")

    week_usage = aggregate_week(source, week.start, week.end, idle_floor=finops.idle_floor)
    usage = week_usage.usage
    gaps = source.gaps(week.start, week.end)
    priced = price_usage(usage, prices, gpus=week_usage.gpus)
    prev_usage = aggregate_usage(source, previous.start, previous.end,
                                 idle_floor=finops.idle_floor)
    prev_gaps = source.gaps(previous.start, previous.end)
    week_hours = (previous.end - previous.start).total_seconds() / 3600
    prev_coverage = max(0.0, 1 - _no_data_hours(prev_gaps) / week_hours)
    prev_priced = price_usage(prev_usage, prices, strict=False)
    if prev_priced.unpriced_models:
        warnings.append(f"{previous.name}: no price for {', '.join(prev_priced.unpriced_models)}"
                        "; that cost is left out of the week-over-week change")
    if 0 < prev_coverage < 1:
        warnings.append(f"{previous.name} has data for {prev_coverage:.0%} of its hours: the "
                        "week-over-week change compares against a partial week")

    namespaces = {str(ns) for ns in usage["namespace"]} | \
        {str(ns) for ns in prev_usage["namespace"]}
    unmapped = sorted(ns for ns in namespaces if ns not in finops.namespace_teams)
    if namespace_labels is None and unmapped:
        warnings.append("no Kubernetes cluster configured: namespaces not in "
                        "finops.namespace_teams are reported as unassigned")
    teams = resolve_teams(namespaces, static=finops.namespace_teams, label=finops.team_label,
                          source=namespace_labels)
    warnings.extend(teams.warnings)
    # A previous week without any data has no cost to compare with (not a cost of 0).
    tables = build_tables(priced, prev_priced if prev_coverage > 0 else None,
                          teams=teams.teams)
    warnings.extend(tables.warnings)

    unmeasured = tables.totals["gpu_hours_unmeasured"]
    if unmeasured > 0:
        gaps.append(Gap(kind="utilization_unavailable",
                        scope="MIG instances, GPUs without utilization samples, and shares "
                              "whose use could not be attributed",
                        start=week.start, end=week.end, hours=unmeasured))
    allocated = tables.totals["gpu_hours_allocated"]
    mean_price = tables.totals["cost"] / allocated if allocated > 0 else (
        sum(finops.prices.values()) / len(finops.prices) if finops.prices else 0.0)
    hygiene = compute_savings(savings, week.start, week.end, prices=finops.prices,
                              default_gpu_price=mean_price,
                              storage_usd_per_gb_month=finops.storage_usd_per_gb_month,
                              until=now)
    return FinopsReport(
        week=week, tables=tables, gaps=gaps, savings=hygiene, source=source.describe(),
        generated_at=now, idle_floor=finops.idle_floor, previous_coverage=prev_coverage,
        warnings=warnings)


# Uploading the HTML report and a chart takes longer than a message.
SLACK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class SlackTarget:
    channel: str
    sink: SlackSink


def _slack_target(config: StewardConfig, sink: SlackSink | None) -> SlackTarget:
    channel = config.finops.slack_channel or config.slack.default_channel
    if not channel:
        raise FinopsInputError("finops.slack_channel: --slack needs a channel; set "
                               "finops.slack_channel or slack.default_channel")
    if sink is None:
        settings = SlackSettings.from_config(config.slack,
                                             timeout_seconds=SLACK_TIMEOUT_SECONDS)
        if settings.token is None:
            raise FinopsInputError("slack.token: --slack needs a Slack bot token "
                                   "($SLACK_BOT_TOKEN or slack.token_file)")
        sink = SlackSink.create(settings)
    return SlackTarget(channel=channel, sink=sink)


def run_finops_report(config: StewardConfig, *, week: str | None, out_dir: Path | None,
                      slack: bool, parquet: Path | None, now: datetime | None = None,
                      namespace_labels: NamespaceLabelsSource | None = None,
                      savings: SavingsSource | None = None,
                      slack_sink: SlackSink | None = None,
                      terminal: bool = True) -> int:
    """The CLI's entry point; returns the exit code.

    ``week`` defaults to the last complete ISO week before ``now``; the folder to
    ``finops.out_dir/<week>/``. ``namespace_labels`` defaults to the configured cluster.
    A runtime failure is one ``steward: ...`` line on stderr (``terminal``), else one log
    line (the controller's scheduled run).
    """
    moment = now or datetime.now(UTC)
    folder: Path | None = None
    try:
        try:
            report_week = ReportWeek.parse(week) if week else ReportWeek.last_complete(moment)
        except ValueError as exc:
            raise FinopsInputError(f"--week: {exc}") from None
        target = _slack_target(config, slack_sink) if slack else None
        source = default_source(config, parquet=parquet)
        labels = namespace_labels if namespace_labels is not None else \
            default_namespace_labels(config)
        log.info("building the FinOps report",
                 extra={"week": report_week.name, "source": source.describe()})
        report = build_report(config, report_week, source=source, namespace_labels=labels,
                              savings=savings if savings is not None else
                              default_savings(config), now=moment)
        folder = out_dir if out_dir is not None else config.finops.out_dir / report_week.name
        files = write_report(report, folder)
        log.info("FinOps report written", extra={
            "week": report_week.name, "folder": str(folder),
            "cost": round(report.tables.totals["cost"], 2),
            "idle_cost": round(report.tables.totals["idle_cost"], 2),
            "gaps": len(report.gaps)})
        if target is not None:
            post_report(target.sink, channel=target.channel, report=report, files=files)
    except FinopsInputError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrometheusError as exc:
        return _failed(RuntimeFailure(f"FinOps report: {exc}", "check prometheus.url "
                                      "(STEWARD_PROMETHEUS__URL), or report from an export "
                                      "with --parquet FILE"), terminal=terminal)
    except SlackCallFailed as exc:
        return _failed(RuntimeFailure(
            f"FinOps report written to {folder} but not posted to Slack: {exc}",
            "check slack.api_url, the bot token, and that the bot is in the channel "
            "(finops.slack_channel)"), terminal=terminal)
    except OSError as exc:
        return _failed(RuntimeFailure(f"FinOps report: {exc}", "check that the output folder "
                                      "(--out or finops.out_dir) is writable"),
                       terminal=terminal)
    return EXIT_OK


def _failed(failure: RuntimeFailure, *, terminal: bool) -> int:
    if terminal:
        print(f"steward: {failure.what}: {failure.check}", file=sys.stderr)
    else:
        log.error("%s", failure.what, extra={"check": failure.check})
    return EXIT_RUNTIME


def scheduled_report(config: StewardConfig) -> int:
    """What the controller runs each week: the last complete week, to Slack if a channel is
    configured."""
    return run_finops_report(config, week=None, out_dir=None,
                             slack=bool(config.finops.slack_channel), parquet=None,
                             terminal=False)


def run_finops_export(config: StewardConfig, *, path: Path, week: str | None,
                      now: datetime | None = None) -> int:
    """Export the week and the one before from Prometheus to ``path`` (Parquet), so that an
    offline run (``parquet=path``) has the week-over-week change too; returns the exit code."""
    moment = now or datetime.now(UTC)
    try:
        try:
            report_week = ReportWeek.parse(week) if week else ReportWeek.last_complete(moment)
        except ValueError as exc:
            raise FinopsInputError(f"--week: {exc}") from None
        source = default_source(config, parquet=None)
        result = export_parquet(source, path, report_week.previous().start, report_week.end)
    except FinopsInputError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrometheusError as exc:
        return _failed(RuntimeFailure(f"FinOps export: {exc}",
                                      "check prometheus.url (STEWARD_PROMETHEUS__URL)"),
                       terminal=True)
    except OSError as exc:
        return _failed(RuntimeFailure(f"FinOps export: {exc}",
                                      f"check that {path} can be written"), terminal=True)
    log.info("FinOps series exported", extra={
        "path": str(result.path), "rows": result.rows, "gaps": len(result.gaps),
        "from": report_week.previous().name, "to": report_week.name})
    return EXIT_OK


def schedule_finops_report(scheduler: Any, config: StewardConfig, *,
                           timezone: tzinfo | str | None = None) -> Any:
    """Register the weekly report on an APScheduler 3 scheduler (``finops.schedule``, cron,
    in ``timezone``, default the controller's local zone); returns the job."""
    try:
        trigger = cron_trigger(config.finops.schedule, timezone=timezone)
    except ValueError as exc:
        raise FinopsInputError(f"finops.schedule: {config.finops.schedule!r} is not a "
                               f"5-field cron expression: {exc}") from None
    # One run at a time; a controller that was down at 08:00 still runs it within the day.
    return scheduler.add_job(scheduled_report, trigger, args=[config], id=JOB_ID,
                             name="weekly FinOps report", replace_existing=True,
                             coalesce=True, max_instances=1, misfire_grace_time=86400)
