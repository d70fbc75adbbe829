"""Posting the weekly report to Slack: a summary message, then the HTML report and a chart
uploaded into its thread with ``files_upload_v2``.

``chat.postMessage`` accepts a channel name; ``files.completeUploadExternal`` needs the
channel ID, which the message's answer carries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

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

log = logging.getLogger("agent.finops.slack")
TOP_TEAMS = 3


def slack_client(*, token: str, api_url: str) -> WebClient:
    client = WebClient(token=token, base_url=api_url.rstrip("/") + "/")
    # Slack answers bursts with 429 + Retry-After; wait rather than lose the weekly report.
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    return client


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


def post_report(client: WebClient, *, channel: str, report: FinopsReport,
                files: ReportFiles, chart: str = "cost-by-team") -> SlackPost:
    """Summary message, then the HTML report and one chart in its thread."""
    text = summary_text(report)
    message = client.chat_postMessage(channel=channel, text=text, mrkdwn=True,
                                      unfurl_links=False)
    channel_id = str(message["channel"])
    ts = str(message["ts"])
    uploads: list[tuple[Path, str]] = [
        (files.html, f"GPU cost report {report.week.name} (open in a browser)"),
        (files.charts[chart], f"GPU cost by team, {report.week.name}"),
    ]
    completion = client.files_upload_v2(
        channel=channel_id, thread_ts=ts,
        file_uploads=[{"file": str(path), "filename": f"{report.week.name}-{path.name}",
                       "title": title} for path, title in uploads])
    ids = tuple(str(f.get("id")) for f in completion.get("files") or [])
    log.info("FinOps report posted to Slack",
             extra={"channel": channel_id, "ts": ts, "files": len(ids), "week": report.week.name})
    return SlackPost(channel_id=channel_id, ts=ts, file_ids=ids)
