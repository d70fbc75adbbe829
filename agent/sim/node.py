"""The simulated node the CLI injects for ``steward node --gpu-backend sim``: simulated GPUs,
and, without a cluster, simulated pods holding them (with a cluster: the real kubelet and
pod watch around the simulated GPUs)."""

from __future__ import annotations

from agent.clients.kubernetes.api import cluster_configured
from agent.config import StewardConfig
from agent.node.app import NodeSources, make_sources
from agent.node.nvml import NvmlGpuSource
from agent.sim.nvml import SimulatedNvml
from agent.sim.pods import SimulatedPods


def simulated_sources(config: StewardConfig) -> NodeSources:
    node = config.node
    lib = SimulatedNvml(node.sim.gpus, hostname=node.node_name, seed=node.sim.seed,
                        model_name=node.sim.model_name,
                        lost_after_seconds=node.sim.lost_after_seconds,
                        ecc_after_seconds=node.sim.ecc_after_seconds)
    if cluster_configured(config.kubernetes):
        return make_sources(config, gpu_lib=lib)
    sim_pods = SimulatedPods(lib, node.node_name, extra_pods=node.sim.extra_pods,
                             churn_seconds=node.sim.pod_churn_seconds)
    gpus = NvmlGpuSource(lib=lib, retry_seconds=node.nvml_retry_seconds, simulated=True)
    return NodeSources(gpus, sim_pods, sim_pods.pod_uid_for_pid, sim_pods,
                       closers=[gpus.close], starters=[])
