"""Assembles the node agent: GPU source -> collectors -> loops -> exposition -> HTTP server."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.process_collector import ProcessCollector

from agent.config import StewardConfig
from agent.node.collection import CollectionLoops, Collector, CollectorFailed, CollectResult
from agent.node.exposition import Exposition
from agent.node.gpu_metrics import GpuInventory, build_gpu_families, build_xid_families
from agent.node.nvml import NvmlGpuSource
from agent.node.readings import GpuSourceUnavailable
from agent.node.server import MetricsServer, parse_listen

log = logging.getLogger(__name__)


def gpu_collector(source: NvmlGpuSource, hostname: str, interval: float) -> Collector:
    inventory = GpuInventory()

    def collect() -> CollectResult:
        try:
            readings = source.read()
        except GpuSourceUnavailable as exc:
            raise CollectorFailed("nvml_unavailable", str(exc)) from exc
        readings = inventory.reconcile(readings)
        errors = list(source.last_errors)
        errors.extend("gpu_lost" for r in readings if r.lost)
        return CollectResult(build_gpu_families(readings, hostname), errors)

    return Collector("gpu", collect, interval)


def xid_collector(source: NvmlGpuSource, hostname: str, interval: float) -> Collector:
    def collect() -> CollectResult:
        try:
            counts = source.xid_counts()
        except GpuSourceUnavailable as exc:
            raise CollectorFailed("xid_events_unavailable", str(exc)) from exc
        return CollectResult(build_xid_families(counts, hostname))

    return Collector("xid_events", collect, interval)


def make_gpu_source(config: StewardConfig, **kwargs: Any) -> NvmlGpuSource:
    node = config.node
    if node.gpu_backend == "sim":
        from agent.sim.nvml import SimulatedNvml

        lib: Any = SimulatedNvml(node.sim.gpus, hostname=node.node_name, seed=node.sim.seed,
                                 model_name=node.sim.model_name,
                                 lost_after_seconds=node.sim.lost_after_seconds)
        return NvmlGpuSource(lib=lib, retry_seconds=node.nvml_retry_seconds, **kwargs)
    return NvmlGpuSource(retry_seconds=node.nvml_retry_seconds, **kwargs)


@dataclass
class NodeAgent:
    loops: CollectionLoops
    exposition: Exposition
    server: MetricsServer
    source: NvmlGpuSource

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()
        self.loops.start()

    def stop(self) -> None:
        self.loops.stop()
        self.server.stop()
        self.source.close()


def build_node_agent(config: StewardConfig, *, source: NvmlGpuSource | None = None,
                     extra_collectors: list[Collector] | None = None) -> NodeAgent:
    node = config.node
    source = source or make_gpu_source(config)
    collectors = [
        gpu_collector(source, node.node_name, node.collect_interval_seconds),
        xid_collector(source, node.node_name, node.collect_interval_seconds),
        *(extra_collectors or []),
    ]
    process = ProcessCollector(registry=None)
    # Closures bind late: each names the other, and neither is called before start().
    loops = CollectionLoops(collectors, on_publish=lambda: exposition.publish())  # noqa: PLW0108
    exposition = Exposition(lambda: [*loops.families(), *process.collect()])
    server = MetricsServer(parse_listen(node.listen), exposition,
                           healthy=loops.alive, ready=loops.ready)
    return NodeAgent(loops=loops, exposition=exposition, server=server, source=source)


def run_node(config: StewardConfig, *, stop: threading.Event | None = None,
             on_started: Callable[[NodeAgent], None] | None = None) -> int:
    stop = stop or threading.Event()
    agent = build_node_agent(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
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
