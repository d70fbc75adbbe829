"""A graph in the thread of every firing alert: its catalog expression, narrowed to the
alert's own series, over the last hour, from Prometheus' range API, as a PNG.

The graphs are drawn by the action worker (never a delivery thread: an alert is delivered
whether or not Prometheus answers), from the store: every group with a root in Slack and a
firing alert without a graph in the last hour gets one. A graph is claimed in
``notifier_graphs`` before it is uploaded, so there is at most one per alert per hour even
across replicas and restarts; a notifier killed between the claim and the upload leaves that
alert without a graph for the hour (a graph is a convenience, never worth a duplicate).
Prometheus unreachable or without the series: no graph, recorded as skipped, tried again
after the hour if the alert still fires.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Column, Connection, Engine, Float, String, Table, Text, insert, select
from sqlalchemy import update as sql_update

from agent.clients.prometheus import PrometheusClient, PrometheusError
from agent.clients.slack import SlackCallFailed, SlackSink, Upload
from agent.notify.blocks import where
from agent.notify.incident import AlertState, load_alerts
from agent.notify.outbox import TABLES, Outbox, groups

log = logging.getLogger(__name__)

WINDOW_SECONDS: Final = 3600.0
STEP_SECONDS: Final = 15
MAX_SERIES: Final = 10
YOUNG_SECONDS: Final = 600.0
_COMPARISONS: Final = (">=", "<=", "==", "!=", ">", "<")
_OPEN: Final = "([{"
_CLOSE: Final = ")]}"

graphs = Table(
    "notifier_graphs", TABLES,
    Column("fingerprint", String(64), primary_key=True),
    Column("group_id", String(32), nullable=False),
    Column("claimed_at", Float, nullable=False),
    Column("state", String(16), nullable=False),  # claimed, posted, skipped
    Column("detail", Text, nullable=True),
)


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]


def graph_expression(expr: str) -> str:
    """The quantity an alert compares: ``max(x) > 85`` -> ``max(x)``. The threshold
    comparison would leave only the points past it; the graph should show the way there."""
    depth = 0
    quoted: str | None = None
    index = 0
    while index < len(expr):
        char = expr[index]
        if quoted:
            if char == "\\":
                index += 2
                continue
            if char == quoted:
                quoted = None
        elif char in "\"'`":
            quoted = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif depth == 0:
            for op in _COMPARISONS:
                if expr.startswith(op, index) and not expr.startswith("=~", index) \
                        and not (op == "=" and expr.startswith("!=", index - 1)):
                    return expr[:index].strip()
        index += 1
    return expr.strip()


def matches(series: Mapping[str, str], alert: Mapping[str, str]) -> bool:
    """The series belongs to the alert: every label both have agrees."""
    return all(alert[k] == v for k, v in series.items() if k != "__name__" and k in alert)


def alert_series(prometheus: PrometheusClient, expr: str, labels: Mapping[str, str], *,
                 end: float, window: float = WINDOW_SECONDS) -> list[Series]:
    """The alert's own series of ``expr`` (its comparison dropped) over ``window``; series
    younger than 10 minutes are asked again at a finer step (a new node, a new pod)."""
    query = graph_expression(expr)
    found = _matching(prometheus.query_range(query, start=end - window, end=end,
                                             step=STEP_SECONDS), labels)
    first = min((s.points[0][0] for s in found if s.points), default=None)
    if first is not None and end - first < YOUNG_SECONDS:
        start = max(end - window, first - STEP_SECONDS)
        step = max(1, int((end - start) / 120))
        if step < STEP_SECONDS:
            found = _matching(prometheus.query_range(query, start=start, end=end, step=step),
                              labels)
    return found[:MAX_SERIES]


def _matching(result: list[dict[str, Any]], labels: Mapping[str, str]) -> list[Series]:
    found = []
    for item in result:
        metric = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        if not matches(metric, labels):
            continue
        points = [(float(t), float(v)) for t, v in item.get("values") or []]
        found.append(Series(labels=metric, points=points))
    return found


def render_png(alert: AlertState, series: Sequence[Series], path: Path, *,
               end: float, window: float = WINDOW_SECONDS) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot is imported anywhere in the process
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3), dpi=100)
    try:
        varying = sorted({k for s in series for k in s.labels
                          if len({o.labels.get(k) for o in series}) > 1})
        for one in series:
            xs = [_num(t) for t, _ in one.points]
            ys = [v for _, v in one.points]
            label = ", ".join(f"{k}={one.labels.get(k, '')}" for k in varying[:3]) or None
            axes.plot(xs, ys, linewidth=1.6, label=label,
                      marker="o" if len(xs) <= 30 else None, markersize=3)
        place = " · ".join(where(alert.labels))
        title = f"{alert.alertname}" + (f" — {place}" if place else "")
        axes.set_title(title if len(title) <= 85 else title[:84] + "…", fontsize=10,
                       loc="left")
        # The last hour, or less when the series are younger (a new node): the line, not
        # an empty hour, is what on-call looks at.
        first = min((t for one in series for t, _ in one.points[:1]), default=end - window)
        earliest = min(first, alert.starts_at.timestamp())
        start = max(end - window, earliest - min(60.0, 0.1 * (end - earliest)))
        axes.set_xlim(_num(start), _num(end))
        axes.axvline(_num(alert.starts_at.timestamp()), color="#d33", linestyle="--",
                     linewidth=1)
        axes.xaxis.set_major_formatter(
            mdates.DateFormatter("%H:%M" if end - start > 600 else "%H:%M:%S",
                                 tz=UTC))  # type: ignore[no-untyped-call]
        axes.set_xlabel("UTC", fontsize=8)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=8)
        if len(series) > 1:
            axes.legend(fontsize=7, loc="upper left")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def _num(epoch: float) -> float:
    """Matplotlib's date number (days since 1970) of a unix time."""
    return epoch / 86400.0


class GraphPoster:
    """The periodic work: a graph for each firing alert that has none from the last hour."""

    def __init__(self, *, outbox: Outbox, engine: Engine, sink: SlackSink,
                 prometheus: PrometheusClient, expressions: Mapping[str, str],
                 clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._engine = engine
        self._sink = sink
        self._prometheus = prometheus
        self._expressions = dict(expressions)
        self._clock = clock

    def _open_alerts(self) -> list[tuple[str, str, str, AlertState]]:
        """(group_id, channel_id, root ts, alert) of every firing alert with a root."""
        query = select(groups.c.group_id, groups.c.channel_id, groups.c.ts, groups.c.alerts) \
            .where(groups.c.resolved.is_(False), groups.c.ts.is_not(None))
        with self._engine.connect() as conn:
            rows = list(conn.execute(query))
        found = []
        for row in rows:
            for alert in load_alerts(row.alerts).values():
                if alert.firing and alert.alertname in self._expressions:
                    found.append((row.group_id, row.channel_id, row.ts, alert))
        return found

    def _claim(self, group_id: str, fingerprint: str) -> bool:
        now = self._clock()

        def run(conn: Connection) -> bool:
            row = conn.execute(select(graphs.c.claimed_at)
                               .where(graphs.c.fingerprint == fingerprint)).first()
            if row is None:
                conn.execute(insert(graphs).values(fingerprint=fingerprint, group_id=group_id,
                                                   claimed_at=now, state="claimed"))
                return True
            if float(row[0]) > now - WINDOW_SECONDS:
                return False
            conn.execute(sql_update(graphs).where(graphs.c.fingerprint == fingerprint)
                         .values(claimed_at=now, state="claimed", detail=None,
                                 group_id=group_id))
            return True

        claimed: bool = self._outbox.transact(run)
        return claimed

    def _done(self, fingerprint: str, state: str, detail: str) -> None:
        self._outbox.transact(lambda conn: conn.execute(
            sql_update(graphs).where(graphs.c.fingerprint == fingerprint)
            .values(state=state, detail=detail[:500])))

    def run(self) -> None:
        for group_id, channel_id, ts, alert in self._open_alerts():
            if self._claim(group_id, alert.fingerprint):
                self.post(channel_id, ts, alert)

    def post(self, channel_id: str, ts: str, alert: AlertState) -> None:
        end = self._clock()
        try:
            series = alert_series(self._prometheus, self._expressions[alert.alertname],
                                  alert.labels, end=end)
        except PrometheusError as exc:
            log.info("no graph: Prometheus did not answer", extra={
                "alertname": alert.alertname, "error": str(exc)})
            self._done(alert.fingerprint, "skipped", str(exc))
            return
        if not any(s.points for s in series):
            self._done(alert.fingerprint, "skipped", "no series of the alert in the last hour")
            return
        with tempfile.TemporaryDirectory(prefix="steward-graph-") as workdir:
            path = Path(workdir) / "graph.png"
            render_png(alert, series, path, end=end)
            try:
                files = self._sink.upload(channel_id, [Upload(
                    path=path, filename=f"{alert.alertname}-{alert.fingerprint[:12]}.png",
                    title=f"{alert.alertname}: the last hour")], thread_ts=ts)
            except SlackCallFailed as exc:
                self._done(alert.fingerprint, "skipped", f"upload failed: {exc}")
                log.warning("graph upload failed", extra={"alertname": alert.alertname,
                                                          "error": str(exc)})
                return
        self._done(alert.fingerprint, "posted", ",".join(files))
        log.info("graph posted", extra={"alertname": alert.alertname, "series": len(series)})

    def records(self) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(graphs))]


def catalog_expressions() -> dict[str, str]:
    from agent.alerts.catalog import CATALOG

    return {alert.name: alert.expr for alert in CATALOG}
