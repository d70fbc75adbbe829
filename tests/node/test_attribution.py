"""GPU -> pod attribution over a real PodResources gRPC server on a unix socket.

GPUs come from the simulated NVML (real NVML code path), allocations from the kubelet API
stand-in, PIDs from a fake /proc tree read by the real cgroup code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.exporter.collection import CollectionLoops
from agent.node.app import gpu_collector
from agent.node.attribution import (
    DeviceIndex,
    LatestReadings,
    attribution_collector,
    match_allocations,
)
from agent.node.cgroup import pod_uid_for_pid
from agent.node.nvml import NvmlGpuSource
from agent.node.podresources.client import ContainerDevices, PodResourcesClient
from agent.node.pods import ContainerInfo, PodInfo
from agent.sim.nvml import SimulatedNvml
from tests.support.podresources_server import Container, Pod, PodResourcesServer

GIB = 1024**3


@pytest.fixture
def nvml() -> SimulatedNvml:
    # GPU 0 training, 1 idle, 2 thermal (two processes), 3 MIG with three slices
    return SimulatedNvml(["training", "idle_allocated", "thermal_throttling", "mig"],
                         hostname="n1")


@pytest.fixture
def source(nvml: SimulatedNvml) -> Iterator[NvmlGpuSource]:
    src = NvmlGpuSource(lib=nvml, event_timeout_ms=20)
    yield src
    src.close()


@pytest.fixture
def kubelet() -> Iterator[PodResourcesServer]:
    with PodResourcesServer() as server:
        yield server


def registry_for(loops: CollectionLoops) -> CollectorRegistry:
    class _Snapshot:
        def collect(self) -> Any:
            return loops.families()

    registry = CollectorRegistry()
    registry.register(_Snapshot())  # type: ignore[arg-type]
    return registry


def test_device_ids_in_every_form_resolve(nvml: SimulatedNvml, source: NvmlGpuSource) -> None:
    readings = source.read()
    index = DeviceIndex(readings)
    gpu0, gpu3 = nvml.gpus()[0][0], nvml.gpus()[3][0]
    assert index.resolve(gpu0) is not None and index.resolve(gpu0).index == 0  # type: ignore[union-attr]
    assert index.resolve("1").uuid == nvml.gpus()[1][0]  # type: ignore[union-attr]
    assert index.resolve(f"{gpu0}::3").index == 0  # type: ignore[union-attr]
    mig = index.resolve(nvml.mig_uuids(3)[1])
    assert mig is not None and (mig.gpu_instance_id, mig.gpu_instance_profile) == (5, "2g.20gb")
    legacy = index.resolve(f"MIG-{gpu3}/13/0")
    assert legacy is not None and legacy.gpu_instance_profile == "1g.10gb"
    assert index.resolve("GPU-00000000-0000-0000-0000-000000000000") is None
    assert index.resolve(f"MIG-{gpu3}/99/0") is None


def test_unmatched_devices_are_reported_not_dropped(source: NvmlGpuSource) -> None:
    readings = source.read()
    held = ContainerDevices("ns", "p", "c", "nvidia.com/gpu",
                            ("GPU-gone", readings[0].identity.uuid))
    allocations, unmatched = match_allocations([held], readings)
    assert [(a.pod, a.identity.index) for a in allocations] == [("p", 0)]
    assert unmatched == ["GPU-gone"]


def test_allocations_over_real_grpc(nvml: SimulatedNvml, source: NvmlGpuSource,
                                    kubelet: PodResourcesServer) -> None:
    gpus = [g[0] for g in nvml.gpus()]
    migs = nvml.mig_uuids(3)
    kubelet.pods = [
        Pod("ml", "trainer-0", [Container("main", {"nvidia.com/gpu": [gpus[0]]}),
                                Container("sidecar", {"cpu.example/x": ["1"]})]),
        Pod("nb", "alice", [Container("notebook", {"nvidia.com/gpu": [gpus[1]]})]),
        Pod("inf", "srv-a", [Container("s", {"nvidia.com/gpu": [f"{gpus[2]}::0"]})]),
        Pod("inf", "srv-b", [Container("s", {"nvidia.com/gpu": [f"{gpus[2]}::1"]})]),
        Pod("inf", "embed", [Container("s", {"nvidia.com/mig-3g.40gb": [migs[0]]})]),
        Pod("x", "stale", [Container("s", {"nvidia.com/gpu": ["GPU-not-on-this-node"]})]),
    ]
    latest = LatestReadings()
    client = PodResourcesClient(str(kubelet.socket_path))
    loops = CollectionLoops([gpu_collector(source, "n1", 1.0, latest=latest),
                             attribution_collector(client, latest, "n1", 1.0)])
    loops.run_all_once()
    client.close()
    registry = registry_for(loops)
    samples = [s for m in registry.collect() if m.name == "steward_gpu_allocation"
               for s in m.samples]
    held = sorted((s.labels["namespace"], s.labels["pod"], s.labels["container"],
                   s.labels["gpu"], s.labels.get("GPU_I_PROFILE", "")) for s in samples)
    assert held == [("inf", "embed", "s", "3", "3g.40gb"), ("inf", "srv-a", "s", "2", ""),
                    ("inf", "srv-b", "s", "2", ""), ("ml", "trainer-0", "main", "0", ""),
                    ("nb", "alice", "notebook", "1", "")]
    assert all(s.labels["hostname"] == "n1" and s.labels["UUID"].startswith("GPU-")
               for s in samples)
    assert registry.get_sample_value("steward_collector_up",
                                     {"collector": "attribution"}) == 1
    assert registry.get_sample_value("steward_collector_errors_total",
                                     {"collector": "attribution", "error": "unmatched_device"}) == 1


@pytest.mark.parametrize(("fault", "reason"), [
    ("missing", "socket_missing"), ("delay", "timeout"), ("abort", "unavailable")])
def test_attribution_failure_keeps_gpu_metrics(source: NvmlGpuSource,
                                               kubelet: PodResourcesServer, tmp_path: Path,
                                               fault: str, reason: str) -> None:
    import grpc

    socket = str(kubelet.socket_path)
    if fault == "missing":
        socket = str(tmp_path / "no-kubelet.sock")
    elif fault == "delay":
        kubelet.delay = 2.0
    else:
        kubelet.abort_code = grpc.StatusCode.UNAVAILABLE
    latest = LatestReadings()
    client = PodResourcesClient(socket, timeout=0.3)
    loops = CollectionLoops([gpu_collector(source, "n1", 1.0, latest=latest),
                             attribution_collector(client, latest, "n1", 1.0)])
    loops.run_all_once()
    client.close()
    registry = registry_for(loops)
    assert registry.get_sample_value("steward_collector_up", {"collector": "attribution"}) == 0
    assert registry.get_sample_value("steward_collector_errors_total",
                                     {"collector": "attribution", "error": reason}) == 1
    assert registry.get_sample_value("steward_collector_up", {"collector": "gpu"}) == 1
    assert any(m.name == "steward_gpu_up" for m in registry.collect())
    assert not any(m.name == "steward_gpu_allocation" for m in registry.collect())


def write_proc(root: Path, pid: int, cgroup: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(cgroup, encoding="utf-8")


def test_per_pod_memory_on_a_shared_gpu(nvml: SimulatedNvml, source: NvmlGpuSource,
                                        kubelet: PodResourcesServer, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    uid_a, uid_b = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
    # GPU 2 (thermal) runs two processes: offset 0 in pod a (cgroup v2, systemd driver),
    # offset 1 in pod b (cgroup v1, cgroupfs driver); GPU 0's process is a host process.
    write_proc(proc, nvml.process_pid(2, 0), "0::/kubepods.slice/kubepods-burstable.slice/"
               f"kubepods-burstable-pod{uid_a.replace('-', '_')}.slice/cri-containerd-ab.scope\n")
    write_proc(proc, nvml.process_pid(2, 1),
               f"12:memory:/kubepods/besteffort/pod{uid_b}/0123abcd\n11:cpu:/kubepods/x\n")
    write_proc(proc, nvml.process_pid(0, 0), "0::/system.slice/trainer-on-host.service\n")
    container = (ContainerInfo("s", 0, None, None, None),)
    pods = [PodInfo(uid_a, "inf", "srv-a", "Running", 1, container),
            PodInfo(uid_b, "inf", "srv-b", "Running", 1, container)]
    latest = LatestReadings()
    client = PodResourcesClient(str(kubelet.socket_path))
    loops = CollectionLoops([
        gpu_collector(source, "n1", 1.0, latest=latest),
        attribution_collector(client, latest, "n1", 1.0,
                              pod_uid_for_pid=lambda pid: pod_uid_for_pid(pid, proc_root=proc),
                              pods=lambda: pods)])
    loops.run_all_once()
    client.close()
    samples = {s.labels["pod"]: s for m in registry_for(loops).collect()
               if m.name == "steward_gpu_pod_memory_used_bytes" for s in m.samples}
    assert sorted(samples) == ["srv-a", "srv-b"]
    assert samples["srv-a"].value == 40 * GIB and samples["srv-a"].labels["gpu"] == "2"
    assert samples["srv-b"].value == 30 * GIB
