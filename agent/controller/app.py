"""Assembles the controller: leader election gates the cluster-scope collectors and the
scheduled jobs (hygiene); every replica serves ``/metrics``, ``/healthz`` and ``/readyz``.

Followers export only their own health and ``steward_controller_leader 0``: the cluster
collectors do not exist there, so they report nothing rather than a failing collector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import Engine

from agent.config import StewardConfig
from agent.controller.hygiene.runner import HygieneRuntime
from agent.controller.hygiene.store import TABLES as HYGIENE_TABLES
from agent.controller.hygiene.store import HygieneStore
from agent.controller.leader import LeaderElector
from agent.controller.owners import node_remediation_collector
from agent.controller.pending import pending_pods_collector
from agent.controller.pipelines import pipelines_collector
from agent.controller.scheduler import LeaderScheduler
from agent.exporter.collection import CollectionLoops, Collector, CollectResult
from agent.exporter.exposition import Exposition
from agent.exporter.server import MetricsServer, parse_listen
from agent.signals import stop_on_signals
from agent.state import StoreCreatedCollector, open_store, store_identity

log = logging.getLogger(__name__)
# Another component's cluster collector for the leader: (ApiClient, interval) -> Collector.
LeaderCollector = Callable[[Any, float], Collector]


@dataclass
class Controller:
    elector: LeaderElector
    server: MetricsServer
    exposition: Exposition
    base_loops: CollectionLoops
    make_cluster_loops: Callable[[], CollectionLoops]
    scheduler: LeaderScheduler | None = None
    cluster_loops: CollectionLoops | None = None
    store: Engine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.port

    def families(self) -> list[Metric]:
        with self._lock:
            cluster = self.cluster_loops
        # The hygiene families are the leader's, like the cluster collectors'.
        hygiene = self.scheduler.metrics_families() if cluster and self.scheduler else []
        return [*self.base_loops.families(), *(cluster.families() if cluster else []), *hygiene]

    def started_leading(self) -> None:
        with self._lock:
            self.cluster_loops = self.make_cluster_loops()
            self.cluster_loops.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def stopped_leading(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        with self._lock:
            loops, self.cluster_loops = self.cluster_loops, None
        if loops is not None:
            loops.stop()
        self.exposition.publish()

    def start(self) -> None:
        self.server.start()
        self.base_loops.start()
        self.elector.start()

    def stop(self) -> None:
        self.elector.stop(release=True)  # calls stopped_leading if leading
        self.base_loops.stop()
        self.server.stop()
        if self.store is not None:
            self.store.dispose()


def leader_collector(elector: LeaderElector, identity: str, interval: float) -> Collector:
    def collect() -> CollectResult:
        family = Metric("steward_controller_leader",
                        "1 on the replica that holds the leader lease.", "gauge")
        family.add_sample("steward_controller_leader", {"identity": identity},
                          1.0 if elector.is_leader else 0.0)
        return CollectResult([family])

    return Collector("leader", collect, interval)


def prices_collector(prices: dict[str, float], interval: float) -> Collector:
    """The configured GPU prices, so dashboards can turn GPU-hours into money."""

    def collect() -> CollectResult:
        family = Metric("steward_gpu_price_dollars_per_hour",
                        "Configured price of one GPU-hour (finops.prices).", "gauge")
        for model, price in sorted(prices.items()):
            family.add_sample(family.name, {"modelName": model}, price)
        return CollectResult([family] if family.samples else [])

    return Collector("prices", collect, interval)


def build_controller(config: StewardConfig, *, api_client: Any,
                     scheduled: Sequence[Callable[[Any], Any]] = (),
                     leader_collectors: Sequence[LeaderCollector] = ()) -> Controller:
    """The controller, not started. ``scheduled`` register other components' jobs on the
    leader's scheduler (the CLI adds the weekly FinOps report); ``leader_collectors`` are
    other components' cluster collectors, run on the leader only (the CLI adds FinOps'
    namespace -> team series)."""
    from kubernetes import client

    ctl = config.controller
    # Closures bind late: the callbacks name ``controller``, assigned below, before start().
    elector = LeaderElector(
        client.CoordinationV1Api(api_client), name=ctl.lease_name,
        namespace=ctl.lease_namespace, identity=ctl.identity,
        lease_duration=ctl.lease_duration_seconds, renew_deadline=ctl.renew_deadline_seconds,
        retry_period=ctl.retry_period_seconds,
        on_started_leading=lambda: controller.started_leading(),
        on_stopped_leading=lambda: controller.stopped_leading())
    process = ProcessCollector(registry=None)

    def publish() -> None:
        exposition.publish()

    base = CollectionLoops([leader_collector(elector, ctl.identity, ctl.retry_period_seconds)],
                           on_publish=publish)

    def cluster_loops() -> CollectionLoops:
        interval = ctl.collect_interval_seconds
        return CollectionLoops([
            pipelines_collector(client.BatchV1Api(api_client), client.CustomObjectsApi(api_client),
                                interval),
            pending_pods_collector(client.CoreV1Api(api_client), interval),
            # On the leader only: N replicas exporting it would multiply every sum().
            prices_collector(config.finops.prices, interval),
            # Whether a failed GPU's node is already quarantined.
            node_remediation_collector(client.CoreV1Api(api_client), interval,
                                       taint_keys=ctl.remediation_taint_keys),
            *(make(api_client, interval) for make in leader_collectors),
        ], on_publish=publish)

    # Opened at start, not at the first job: a store that lost its state stops the start
    # (StateLost), and its creation time is exported from the first scrape.
    store = open_store(config.state.url, tables=[HYGIENE_TABLES])
    state = StoreCreatedCollector(store_identity(store))
    # Hygiene runs act only while this replica leads: the engine asks before every action.
    hygiene = HygieneRuntime(config, api_client=api_client, store=HygieneStore(store),
                             still_leader=lambda: elector.is_leader)
    # Other components' jobs (the weekly FinOps report) ride on the same leader-only
    # scheduler as the hygiene jobs.
    scheduler = LeaderScheduler(hygiene, on_finished=publish, extra=scheduled)
    exposition = Exposition(lambda: [*controller.families(), *process.collect(),
                                     *state.collect()])
    server = MetricsServer(parse_listen(ctl.listen), exposition, healthy=base.alive,
                           ready=base.ready)
    controller = Controller(elector=elector, server=server, exposition=exposition,
                            base_loops=base, make_cluster_loops=cluster_loops,
                            scheduler=scheduler, store=store)
    return controller


def run_controller(config: StewardConfig, *, stop: threading.Event | None = None,
                   scheduled: Sequence[Callable[[Any], Any]] = (),
                   leader_collectors: Sequence[LeaderCollector] = ()) -> int:
    from agent.clients.kubernetes.api import api_client

    stop = stop or threading.Event()
    stop_on_signals(stop)
    controller = build_controller(config, api_client=api_client(config.kubernetes, "controller"),
                                  scheduled=scheduled, leader_collectors=leader_collectors)
    controller.start()
    log.info("controller started", extra={
        "listen": config.controller.listen, "port": controller.port,
        "identity": config.controller.identity,
        "mode": "apply" if config.controller.apply else "dry_run"})
    stop.wait()
    log.info("controller stopping")
    controller.stop()
    return 0
