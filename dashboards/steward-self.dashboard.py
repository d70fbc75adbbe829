"""Steward's own health (uid steward-self): agents and targets up, collectors, GPU-to-pod
attribution, the notifier's delivery to Slack, and the age of the state stores."""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    OK_BELOW_ONE,
    ORANGE,
    RED,
    Column,
    Query,
    Section,
    allocated_gpus,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

JOBS = 'job=~"steward-node|steward-controller|steward-notifier"'
UP_THRESHOLDS = ((RED, None), (GREEN, 1.0))
SCRAPE_NOTE = "From Prometheus's own up series for the Steward scrape jobs."

targets = Section("Agents and targets", [
    stat(title="Node agents up", unit="short", runbooks=["StewardAgentDown"],
         description="Node agent targets (job steward-node, one per GPU node) Prometheus "
                     "scraped successfully. " + SCRAPE_NOTE,
         queries=[Query('sum(up{job="steward-node"})')]),
    stat(title="Node agents down", unit="short", thresholds=OK_BELOW_ONE,
         runbooks=["StewardAgentDown"],
         description="Node agent targets whose last scrape failed: that node's GPUs and pods "
                     "are unobserved (StewardAgentDown after 5 min).",
         queries=[Query('count(up{job="steward-node"} == 0) or vector(0)')]),
    stat(title="Controller up", unit="short", thresholds=UP_THRESHOLDS,
         runbooks=["StewardAgentDown"],
         description="Controller targets scraped successfully (job steward-controller). 0 "
                     "means no pipelines, pending pods, hygiene or prices. " + SCRAPE_NOTE,
         queries=[Query('sum(up{job="steward-controller"}) or vector(0)')]),
    stat(title="Controller leader", unit="short", thresholds=UP_THRESHOLDS,
         runbooks=["StewardCollectorFailing"],
         description="Controller replicas whose leader-election loop last succeeded "
                     "(collector leader). 0 means no replica can hold the Lease, so the "
                     "cluster collectors and the hygiene jobs stop.",
         queries=[Query('sum(steward_collector_up{job="steward-controller", '
                        'collector="leader"}) or vector(0)')]),
    stat(title="Notifier up", unit="short", thresholds=UP_THRESHOLDS,
         runbooks=["StewardAgentDown"],
         description="Notifier targets scraped successfully (job steward-notifier). 0 means "
                     "Alertmanager's webhooks are not reaching Slack. " + SCRAPE_NOTE,
         queries=[Query('sum(up{job="steward-notifier"}) or vector(0)')]),
    stat(title="Slack outbox depth", unit="short",
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["StewardNotifierDeliveryFailing"],
         description="Alert messages accepted from Alertmanager but not yet delivered to "
                     "Slack.",
         queries=[Query("sum(steward_notifier_outbox_depth)")]),
    timeseries(title="Targets up by job", unit="short", runbooks=["StewardAgentDown"],
               description="Steward targets scraped successfully, per scrape job. "
                           + SCRAPE_NOTE,
               queries=[Query(f"sum by (job) (up{{{JOBS}}})", "{{job}}")]),
    table(title="Targets", width=12, sort_by="Up", sort_desc=False,
          runbooks=["StewardAgentDown"],
          description="Every Steward scrape target: up, how long the scrape took and how "
                      "many samples it returned. A slow scrape means a collector blocks it.",
          labels=["job", "instance"],
          columns=[
              Column("Up", f"up{{{JOBS}}}", "short"),
              Column("Scrape duration", f"scrape_duration_seconds{{{JOBS}}}", "s"),
              Column("Samples", f"scrape_samples_scraped{{{JOBS}}}", "short"),
          ]),
])

collectors = Section("Collectors", [
    timeseries(title="Failing collectors", unit="short", width=8, stacked=True,
               runbooks=["StewardCollectorFailing", "StewardGpuAttributionFailing"],
               description="Instances whose last run of each collector failed (gpu, "
                           "xid_events, attribution, pods on node agents; pipelines, "
                           "pending_pods, leader on the controller).",
               queries=[Query("sum by (job, collector) (1 - steward_collector_up)",
                              "{{collector}} ({{job}})")]),
    timeseries(title="Collector duration", unit="s", width=8,
               description="Slowest instance's last run of each collector. Collectors run in "
                           "a loop and scrapes read their cache, so this does not slow a "
                           "scrape, but a collector slower than its interval falls behind.",
               queries=[Query("max by (collector) (steward_collector_duration_seconds)",
                              "{{collector}}")]),
    timeseries(title="Collector errors", unit="short", width=8, bars=True,
               runbooks=["StewardCollectorFailing"],
               description="Collector errors per collector and error kind, per rate "
                           "interval; collectors without errors show 0.",
               queries=[Query("sum by (collector, error) (increase("
                              "steward_collector_errors_total[$__rate_interval])) "
                              "or sum by (collector) (steward_collector_up * 0)",
                              "{{collector}} {{error}}")]),
])

attribution = Section("GPU attribution", [
    timeseries(title="Attribution collector by node", unit="short",
               runbooks=["StewardGpuAttributionFailing"], min_value=0, max_value=1,
               description="1 while the node agent can map GPUs to pods through the kubelet "
                           "PodResources API; 0 means GPU usage on that node is unattributed "
                           "(StewardGpuAttributionFailing).",
               queries=[Query('min by (hostname) (steward_collector_up{job="steward-node", '
                              'collector="attribution"})', "{{hostname}}")]),
    timeseries(title="GPUs requested vs attributed", unit="short",
               runbooks=["StewardGpuAttributionFailing"],
               description="GPUs requested by running pods against GPUs the PodResources API "
                           "attributes to a container. Attributed below requested means "
                           "the attribution is missing pods.",
               queries=[
                   Query("sum(steward_pod_gpu_requested and on (hostname, namespace, pod) "
                         '(steward_pod_phase{phase="Running"} == 1))', "requested"),
                   Query(f"count({allocated_gpus()})", "attributed"),
               ]),
])

notifier = Section("Notifier", [
    timeseries(title="Alerts received", unit="short", width=8, bars=True,
               description="Alerts received from Alertmanager's webhook, per rate interval.",
               queries=[Query("sum(increase(steward_notifier_alerts_received_total"
                              "[$__rate_interval]))", "alerts")]),
    timeseries(title="Slack messages by result", unit="short", width=8, bars=True,
               runbooks=["StewardNotifierDeliveryFailing"],
               description="Slack API calls per result: ok, or error (the message stays in "
                           "the outbox and is retried). StewardNotifierDeliveryFailing routes "
                           "to a receiver other than this notifier.",
               queries=[Query("sum by (result) (increase(steward_notifier_slack_messages_total"
                              "[$__rate_interval]))", "{{result}}")]),
    timeseries(title="Outbox depth", unit="short", width=8,
               runbooks=["StewardNotifierDeliveryFailing"],
               description="Undelivered messages in the outbox. Growing while Slack errors "
                           "climb means alerts are not reaching on-call.",
               queries=[Query("sum(steward_notifier_outbox_depth)", "undelivered")]),
])

state = Section("State stores", [
    timeseries(title="State store age", unit="s", width=24,
               runbooks=["StewardStateStoreRecreated"],
               description="Time since each component's state store was created "
                           "(steward_state_store_created_timestamp_seconds). A line that "
                           "drops back to zero means the component started over on a new, "
                           "empty store: its old state was lost.",
               queries=[Query("time() - max by (job) "
                              "(steward_state_store_created_timestamp_seconds)", "{{job}}")]),
])

dashboard = steward_dashboard(
    uid="steward-self",
    title="Steward / Self",
    description="Steward's own health: node agents, controller and notifier up, collectors, "
                "GPU-to-pod attribution and Slack delivery.",
    tags=["self"],
    sections=[targets, collectors, attribution, notifier, state],
)
