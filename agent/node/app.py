"""Assembles the node agent: GPU source -> collectors -> loops -> exposition -> HTTP server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client.process_collector import ProcessCollector

from agent.clients.kubernetes.api import cluster_configured
from agent.clients.kubernetes.rest import PodListWatch, load_endpoint
from agent.config import StewardConfig
from agent.exporter.collection import CollectionLoops, Collector, CollectorFailed, CollectResult
from agent.exporter.exposition import Exposition
from agent.exporter.server import MetricsServer, parse_listen
from agent.node.attribution import DeviceSource, LatestReadings, attribution_collector
from agent.node.cgroup import pod_uid_for_pid
from agent.node.gpu_metrics import GpuInventory, build_gpu_families, build_xid_families
from agent.node.nvml import NvmlGpuSource
from agent.node.podresources.client import PodResourcesClient
from agent.node.pods import PodCache, PodSource, build_pod_families
from agent.node.readings import GpuSourceUnavailable
from agent.signals import stop_on_signals

log = logging.getLogger(__name__)


def gpu_collector(source: NvmlGpuSource, hostname: str, interval: float, *,
                  latest: LatestReadings | None = None) -> Collector:
    inventory = GpuInventory()

    def collect() -> CollectResult:
        try:
            readings = source.read()
        except GpuSourceUnavailable as exc:
            raise CollectorFailed("nvml_unavailable", str(exc), reported=exc.reported) from exc
        readings = inventory.reconcile(readings)
        if latest is not None:
            latest.set(readings)
        errors = list(source.last_errors)
        errors.extend("gpu_lost" for r in readings if r.lost)
        return CollectResult(build_gpu_families(readings, hostname), errors)

    return Collector("gpu", collect, interval)


def xid_collector(source: NvmlGpuSource, hostname: str, interval: float) -> Collector:
    def collect() -> CollectResult:
        try:
            counts = source.xid_counts()
        except GpuSourceUnavailable as exc:
            raise CollectorFailed("xid_events_unavailable", str(exc),
                                  reported=exc.reported) from exc
        return CollectResult(build_xid_families(counts, hostname))

    return Collector("xid_events", collect, interval)


def pods_collector(source: PodSource, hostname: str, interval: float) -> Collector:
    def collect() -> CollectResult:
        families = build_pod_families(source.pods(), hostname)
        problem = source.health()
        # A reconnecting watch still has the last known pods: export them, report down.
        return CollectResult(families, degraded=None if problem is None else
                             ("pod_watch_failed", problem))

    return Collector("pods", collect, interval)


@dataclass
class NodeSources:
    """Where the node agent's collectors read from: real (NVML, kubelet, API) or simulated."""

    gpus: NvmlGpuSource
    devices: DeviceSource
    pod_uid_for_pid: Callable[[int], str | None]
    pods: PodSource | None
    closers: list[Callable[[], None]]
    starters: list[Callable[[], None]]


def make_sources(config: StewardConfig, *, gpu_lib: Any = None) -> NodeSources:
    """The real sources: NVML, the kubelet's PodResources API, the pod watch when a cluster
    is configured. ``gpu_lib`` replaces the NVML library (``--gpu-backend sim``: the CLI
    chooses the simulated GPUs and injects them; this module never imports them)."""
    node = config.node
    if node.gpu_backend == "sim" and gpu_lib is None:
        raise ValueError("node.gpu_backend sim: the simulated GPUs are injected by the caller "
                         "(agent.sim.node.simulated_sources)")
    if gpu_lib is not None:
        gpus = NvmlGpuSource(lib=gpu_lib, retry_seconds=node.nvml_retry_seconds, simulated=True)
    else:
        gpus = NvmlGpuSource(retry_seconds=node.nvml_retry_seconds)
    devices = PodResourcesClient(str(node.pod_resources_socket),
                                 timeout=node.attribution_timeout_seconds)
    closers: list[Callable[[], None]] = [gpus.close, devices.close]
    starters: list[Callable[[], None]] = []
    pods: PodSource | None = None
    if cluster_configured(config.kubernetes):
        cache = PodCache(PodListWatch(load_endpoint(config.kubernetes)), node.node_name)
        pods = cache
        starters.append(cache.start)
        closers.insert(0, cache.stop)
    return NodeSources(gpus, devices, partial(pod_uid_for_pid, proc_root=node.proc_root),
                       pods, closers=closers, starters=starters)


@dataclass
class NodeAgent:
    loops: CollectionLoops
    exposition: Exposition
    server: MetricsServer
    sources: NodeSources

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        for start in self.sources.starters:
            start()
        self.server.start()
        self.loops.start()

    def stop(self) -> None:
        self.loops.stop()
        self.server.stop()
        for close in self.sources.closers:
            close()


def build_node_agent(config: StewardConfig, *, sources: NodeSources | None = None,
                     extra_collectors: list[Collector] | None = None) -> NodeAgent:
    node = config.node
    sources = sources or make_sources(config)
    interval = node.collect_interval_seconds
    latest = LatestReadings()
    pods = sources.pods
    collectors = [
        gpu_collector(sources.gpus, node.node_name, interval, latest=latest),
        xid_collector(sources.gpus, node.node_name, interval),
        attribution_collector(sources.devices, latest, node.node_name, interval,
                              pod_uid_for_pid=sources.pod_uid_for_pid,
                              pods=pods.pods if pods is not None else None),
        *([pods_collector(pods, node.node_name, interval)] if pods is not None else []),
        *(extra_collectors or []),
    ]
    process = ProcessCollector(registry=None)
    # Closures bind late: each names the other, and neither is called before start().
    loops = CollectionLoops(collectors, on_publish=lambda: exposition.publish(),
                            const_labels={"hostname": node.node_name})
    exposition = Exposition(lambda: [*loops.families(), *process.collect()])
    server = MetricsServer(parse_listen(node.listen), exposition,
                           healthy=loops.alive, ready=loops.ready)
    return NodeAgent(loops=loops, exposition=exposition, server=server, sources=sources)


def run_node(config: StewardConfig, *, sources: NodeSources | None = None,
             stop: threading.Event | None = None,
             on_started: Callable[[NodeAgent], None] | None = None) -> int:
    stop = stop or threading.Event()
    stop_on_signals(stop)
    agent = build_node_agent(config, sources=sources)
    agent.start()
    log.info("node agent started", extra={
        "listen": config.node.listen, "port": agent.port, "node": config.node.node_name,
        "gpu_backend": config.node.gpu_backend})
    if on_started is not None:
        on_started(agent)
    stop.wait()
    log.info("node agent stopping")
    agent.stop()
    return 0
