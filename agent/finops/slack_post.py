"""The weekly report's Slack post: a summary message, then the HTML report and a chart
uploaded into its thread, through the one Slack sink (``agent.clients.slack``).

``chat.postMessage`` accepts a channel name; ``files.completeUploadExternal`` needs the
channel ID, which the message's answer carries. A weekly report may wait: a 429 is waited
out (Retry-After) before each call is given up on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.clients.slack import Message, SlackSink, Upload, wait_out_rate_limits
from agent.finops.document import FinopsReport
from agent.finops.render import (
    ReportFiles,
    change,
    hours,
    money,
    percent,
    reclaimable_text,
    size,
    utilization_text,
)

log = logging.getLogger("agent.finops.slack_post")
TOP_TEAMS = 3


def summary_text(report: FinopsReport) -> str:
    """The message: totals, top teams, idle cost, savings, week-over-week, gaps (mrkdwn)."""
    totals = report.tables.totals
    week = report.week
    wow = report.week_over_week()
    vs = (f" ({change(wow.get('cost_change'))} vs {wow['previous_week']})"
          if wow["available"] else f" (no data for {wow['previous_week']})")
    idle_share = totals["idle_cost"] / totals["cost"] if totals["cost"] > 0 else None
    lines = [
        f"*GPU cost report {week.name}* ({week.start:%a %d %b} to {week.end:%a %d %b}, UTC)",
        f"• *Total GPU cost:* {money(totals['cost'])}{vs}",
        f"• *Allocated but idle:* {money(totals['idle_cost'])} ({percent(idle_share)} of the "
        f"cost, {hours(totals['gpu_hours_idle'])} GPU-h)"
        + (f", {change(wow.get('idle_cost_change'))} vs last week" if wow["available"] else ""),
        f"• *GPU-hours:* {hours(totals['gpu_hours_allocated'])} allocated, utilization "
        f"{utilization_text(totals['gpu_hours_used'], totals['gpu_hours_allocated'])}, "
        f"{hours(totals['gpu_hours_unmeasured'])} GPU-h unmeasured",
    ]
    teams = report.tables.teams.head(TOP_TEAMS)
    if len(teams):
        ranked = " · ".join(f"{row['team']} {money(row['cost'])} (idle {money(row['idle_cost'])})"
                            for row in teams.to_dict("records"))
        lines.append(f"• *Top teams:* {ranked}")
    savings = report.savings
    if savings.available:
        lines.append(f"• *Hygiene savings:* {money(savings.gpu_cost)} "
                     f"({hours(savings.gpu_hours_freed)} GPU-h freed), "
                     f"{size(savings.bytes_removed)} removed "
                     f"({money(savings.storage_cost_per_month)}/month); reclaimable, not "
                     f"acted on: {reclaimable_text(report)}")
    else:
        lines.append("• *Hygiene savings:* not available yet")
    missing = [g for g in report.gaps if g.kind != "utilization_unavailable"]
    if missing:
        lines.append(f":warning: Data missing for {hours(sum(g.hours for g in missing))} "
                     "hours of the week; their cost is not counted (see the report).")
    return "\n".join(lines)


@dataclass(frozen=True)
class SlackPost:
    channel_id: str
    ts: str
    file_ids: tuple[str, ...]


def post_report(sink: SlackSink, *, channel: str, report: FinopsReport,
                files: ReportFiles, chart: str = "cost-by-team") -> SlackPost:
    """Summary message, then the HTML report and one chart in its thread."""
    posted = wait_out_rate_limits(
        lambda: sink.post(channel, Message(text=summary_text(report))))
    uploads = [
        Upload(files.html, f"{report.week.name}-{files.html.name}",
               f"GPU cost report {report.week.name} (open in a browser)"),
        Upload(files.charts[chart], f"{report.week.name}-{files.charts[chart].name}",
               f"GPU cost by team, {report.week.name}"),
    ]
    ids = wait_out_rate_limits(
        lambda: sink.upload(posted.channel_id, uploads, thread_ts=posted.ts))
    log.info("FinOps report posted to Slack", extra={
        "channel": posted.channel_id, "ts": posted.ts, "files": len(ids),
        "week": report.week.name})
    return SlackPost(channel_id=posted.channel_id, ts=posted.ts, file_ids=tuple(ids))
