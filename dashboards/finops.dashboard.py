"""FinOps GPU cost (uid steward-finops, variable namespace): what allocated GPUs cost per
hour and over the selected range, per namespace, and how much of it bought idle GPUs.

Cost is allocation x ``steward_gpu_price_dollars_per_hour`` (config ``finops.prices``)
joined on ``modelName``. The weekly report maps namespaces to teams; this dashboard stays
per namespace.
"""

from __future__ import annotations

from agent.dashboards.panels import (
    GREEN,
    IDLE_UTILIZATION_FLOOR,
    ORANGE,
    Column,
    Query,
    Section,
    bargauge,
    gpu_price,
    gpu_share,
    idle_share,
    pod_use,
    query_variable,
    stat,
    table,
    timeseries,
)
from agent.dashboards.panels import dashboard as steward_dashboard

NS = 'namespace=~"$namespace"'
SHARE = gpu_share(NS)
PRICED_SHARE = f"({SHARE} * on (modelName) group_left () {gpu_price()})"
COST = f"sum by (namespace) ({PRICED_SHARE})"
IDLE_COST = (f"sum by (namespace) ({idle_share(NS)} * on (modelName) group_left () "
             f"{gpu_price()})")
GPU_HOURS = f"sum by (namespace) ({SHARE})"
USED_GPU_HOURS = f"sum by (namespace) ({pod_use(NS)})"


def over_range(per_hour: str) -> str:
    """Integrate a per-hour rate over the dashboard range, one step per $__interval."""
    return f"sum_over_time(({per_hour})[$__range:$__interval]) * $__interval_ms / 3600000"


PRICING = ("Cost = each pod's share of a GPU x its model's price per hour (finops.prices, "
           "joined on modelName); a shared GPU is charged by share (a time-sliced replica, "
           "a KAI or HAMi fraction, a MIG slice).")
IDLE = (f"Idle: a pod's own SM use, averaged over the rate interval, under "
        f"{IDLE_UTILIZATION_FLOOR:.0%} of its share.")
RANGE = "Summed over the selected time range (a week by default)."

now = Section("Now", [
    stat(title="GPU cost per hour", unit="currencyUSD", width=6, decimals=2,
         description="What the GPUs allocated in the selected namespaces cost per hour "
                     "now. " + PRICING,
         queries=[Query(f"sum({COST})")]),
    stat(title="Idle GPU cost per hour", unit="currencyUSD", width=6, decimals=2,
         thresholds=((GREEN, None), (ORANGE, 1.0)), runbooks=["GpuIdleAllocated"],
         description="The part of the hourly cost paying for allocated GPUs that are idle "
                     "now. " + IDLE,
         queries=[Query(f"sum({IDLE_COST}) or vector(0)")]),
    stat(title="Idle share of cost", unit="percentunit", width=6, decimals=1,
         thresholds=((GREEN, None), (ORANGE, 0.2)), runbooks=["GpuIdleAllocated"],
         description="Idle GPU cost over GPU cost, now. " + IDLE,
         queries=[Query(f"sum({IDLE_COST}) / sum({COST})")]),
    stat(title="Allocated GPUs without a price", unit="short", width=6,
         thresholds=((GREEN, None), (ORANGE, 1.0)),
         description="Allocated GPUs whose model has no entry in finops.prices: their cost "
                     "is missing from every panel here. Add the modelName shown on the GPU "
                     "fleet dashboard to finops.prices.",
         queries=[Query(f"count(max by (hostname, UUID, modelName) "
                        f"(steward_gpu_allocation{{{NS}}}) unless on (modelName) "
                        f"steward_gpu_price_dollars_per_hour) or vector(0)")]),
])

hourly = Section("Cost per hour", [
    timeseries(title="GPU cost per hour by namespace", unit="currencyUSD", stacked=True,
               description="Hourly GPU cost per namespace. " + PRICING,
               queries=[Query(COST, "{{namespace}}")]),
    timeseries(title="Idle GPU cost per hour by namespace", unit="currencyUSD", stacked=True,
               runbooks=["GpuIdleAllocated"],
               description="Hourly cost of allocated GPUs that are idle, per namespace. "
                           + IDLE,
               queries=[Query(IDLE_COST, "{{namespace}}")]),
])

totals = Section("Over the selected range", [
    stat(title="GPU cost in range", unit="currencyUSD", width=8, decimals=0,
         description="GPU cost of the selected namespaces. " + RANGE + " " + PRICING,
         queries=[Query(f"sum({over_range(COST)})")]),
    stat(title="Idle GPU cost in range", unit="currencyUSD", width=8, decimals=0,
         runbooks=["GpuIdleAllocated"],
         description="Cost of allocated GPUs while they were idle. " + RANGE + " " + IDLE,
         queries=[Query(f"sum({over_range(IDLE_COST)}) or vector(0)")]),
    stat(title="GPU-hours allocated in range", unit="short", width=8, decimals=0,
         description="GPU-hours allocated to the selected namespaces. " + RANGE,
         queries=[Query(f"sum({over_range(GPU_HOURS)})")]),
    table(title="Cost by namespace in range", width=16, height=10, sort_by="Cost",
          runbooks=["GpuIdleAllocated"],
          description="Per namespace: GPU-hours allocated and used (utilization-weighted), "
                      "cost and idle cost. " + RANGE + " " + PRICING + " " + IDLE,
          labels=["namespace"],
          columns=[
              Column("GPU-hours allocated", over_range(GPU_HOURS), "short"),
              Column("GPU-hours used", over_range(USED_GPU_HOURS), "short"),
              Column("Cost", over_range(COST), "currencyUSD"),
              Column("Idle cost", over_range(IDLE_COST), "currencyUSD"),
          ]),
    bargauge(title="Cost share by namespace", unit="percentunit", width=8, height=10,
             max_value=1,
             description="Each namespace's share of the GPU cost of the selected namespaces. "
                         + RANGE,
             queries=[Query(f"{over_range(COST)} / scalar(sum({over_range(COST)}))",
                            "{{namespace}}")]),
    table(title="GPU prices", width=24, height=6, sort_by="Price per GPU-hour",
          description="Configured price per GPU model (finops.prices) and the GPUs of that "
                      "model allocated now in the selected namespaces.",
          labels=["modelName"],
          columns=[
              Column("Price per GPU-hour", gpu_price(), "currencyUSD"),
              Column("GPUs allocated now", f"sum by (modelName) ({SHARE})", "short"),
          ]),
])

dashboard = steward_dashboard(
    uid="steward-finops",
    title="Steward / FinOps GPU cost",
    description="GPU cost per namespace from allocation and configured prices: per hour now, "
                "and over the selected range (a week by default), with the cost of idle "
                "allocated GPUs.",
    tags=["finops"],
    time_from="now-7d",
    refresh="5m",
    variables=[query_variable("namespace", label="Namespace", metric="steward_gpu_allocation",
                              multi=True, include_all=True)],
    sections=[now, hourly, totals],
)
