"""Per-process use on shared GPUs, through pynvml's own wrapper over a fake C function.

``nvmlDeviceGetProcessUtilization`` is faked as libnvidia-ml's C function (see ``FakeNvml``):
pynvml asks for the size, allocates its ``c_nvmlProcessUtilizationSample_t`` array, and
raises ``NVMLError_NotFound`` when the driver has no sample, exactly as against a GPU.
Pods come from a fake ``/proc`` tree read by the real cgroup code, allocations from a real
PodResources gRPC server on a unix socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from prometheus_client import CollectorRegistry

from agent.exporter.collection import CollectionLoops
from agent.node.app import gpu_collector
from agent.node.attribution import LatestReadings, attribution_collector
from agent.node.cgroup import pod_uid_for_pid
from agent.node.nvml import NvmlGpuSource
from agent.node.podresources.client import PodResourcesClient
from agent.node.pods import ContainerInfo, PodInfo
from agent.node.readings import ProcessUtilization
from tests.node.test_nvml import GIB, FakeGpu, FakeNvml, registry_for
from tests.support.podresources_server import Container, Pod, PodResourcesServer

UUID = "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"
T0 = 1_700_000_000_000_000  # NVML's microsecond timestamps
UID_A, UID_B, UID_C = (f"{n}1111111-2222-3333-4444-555555555555" for n in "abc")
CONTAINER = (ContainerInfo("c", 0, None, None, None),)
PODS = [PodInfo(UID_A, "inf", "tenant-a", "Running", 1, CONTAINER),
        PodInfo(UID_B, "inf", "tenant-b", "Running", 1, CONTAINER),
        PodInfo(UID_C, "tools", "sneaky", "Running", 0, CONTAINER)]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return FakeNvml(monkeypatch, [FakeGpu(UUID, util=(70, 30), processes=[
        (101, 10 * GIB), (202, 20 * GIB)])])


@pytest.fixture
def source(fake: FakeNvml) -> Iterator[NvmlGpuSource]:
    src = NvmlGpuSource(lib=pynvml, event_timeout_ms=20)
    yield src
    src.close()


def test_samples_become_each_processes_mean_since_the_last_call(
        fake: FakeNvml, source: NvmlGpuSource) -> None:
    gpu = fake.gpus[0]
    gpu.samples = [(101, T0 + 1, 40), (101, T0 + 2, 60), (202, T0 + 2, 10)]
    reading = source.read()[0]
    assert reading.process_utilization == (ProcessUtilization(101, 0.5, 2),
                                           ProcessUtilization(202, 0.1, 1))
    # The next call asks only for what came after the newest sample it saw.
    gpu.samples.append((202, T0 + 9, 30))
    assert source.read()[0].process_utilization == (ProcessUtilization(202, 0.3, 1),)
    assert fake.sample_requests == [0, T0 + 2]
    assert source.last_errors == []


def test_a_process_that_starts_between_pynvmls_two_calls_is_read_again(
        fake: FakeNvml, source: NvmlGpuSource) -> None:
    gpu = fake.gpus[0]
    gpu.samples = [(101, T0 + 1, 40)]
    # pynvml sized its array for one sample; by its second call there are two, and the
    # driver answers INSUFFICIENT_SIZE: asked again, both are read.
    fake.samples_between_calls = [[(202, T0 + 2, 10)]]
    assert source.read()[0].process_utilization == (ProcessUtilization(101, 0.4, 1),
                                                    ProcessUtilization(202, 0.1, 1))
    assert fake.sample_requests == [0, 0] and source.last_errors == []
    # Still racing on the second try: unknown this round (counted), never a partial answer.
    gpu.samples.append((101, T0 + 3, 40))
    fake.samples_between_calls = [[(303, T0 + 4, 5)], [(404, T0 + 5, 5)]]
    assert source.read()[0].process_utilization is None
    assert source.last_errors == ["insufficient_size"]


def test_no_sample_is_not_found_and_means_nothing_ran(fake: FakeNvml,
                                                      source: NvmlGpuSource) -> None:
    assert source.read()[0].process_utilization == ()
    assert source.last_errors == []  # NOT_FOUND is NVML's "no sample", not an error


def test_unsupported_is_unknown_and_other_errors_are_counted(fake: FakeNvml,
                                                             source: NvmlGpuSource) -> None:
    gpu = fake.gpus[0]
    gpu.fail["process_utilization"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert source.read()[0].process_utilization is None
    assert source.last_errors == []
    gpu.fail["process_utilization"] = pynvml.NVML_ERROR_NO_PERMISSION
    assert source.read()[0].process_utilization is None
    assert source.last_errors == ["no_permission"]


def test_gpu_lost_while_sampling_is_a_lost_gpu(fake: FakeNvml, source: NvmlGpuSource) -> None:
    source.read()
    fake.gpus[0].fail["process_utilization"] = pynvml.NVML_ERROR_GPU_IS_LOST
    reading = source.read()[0]
    assert reading.lost and not reading.up and reading.process_utilization is None


def test_mps_clients_and_graphics_processes_hold_memory_too(fake: FakeNvml,
                                                            source: NvmlGpuSource) -> None:
    gpu = fake.gpus[0]
    gpu.processes = [(999, 2 * GIB)]  # under MPS the compute list is the MPS server
    gpu.mps = [(101, 10 * GIB), (202, 20 * GIB)]
    gpu.graphics = [(999, 2 * GIB)]  # one process in two lists: one allocation
    reading = source.read()[0]
    assert reading.mps
    assert sorted((p.pid, p.used_bytes) for p in reading.processes or ()) == [
        (101, 10 * GIB), (202, 20 * GIB), (999, 2 * GIB)]


# --- through the attribution collector -----------------------------------------------------


def write_proc(root: Path, pid: int, uid: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-1.scope\n",
        encoding="utf-8")


@pytest.fixture
def kubelet() -> Iterator[PodResourcesServer]:
    with PodResourcesServer() as server:
        # The GPU time-sliced in two: tenant-a and tenant-b each hold one replica.
        server.pods = [Pod("inf", "tenant-a", [Container("c", {"nvidia.com/gpu": [f"{UUID}::0"]})]),
                       Pod("inf", "tenant-b", [Container("c", {"nvidia.com/gpu": [f"{UUID}::1"]})])]
        server.allocatable = {"nvidia.com/gpu": [f"{UUID}::0", f"{UUID}::1"]}
        yield server


def collect(source: NvmlGpuSource, kubelet: PodResourcesServer, proc: Path) -> CollectorRegistry:
    latest = LatestReadings()
    client = PodResourcesClient(str(kubelet.socket_path))
    loops = CollectionLoops([
        gpu_collector(source, "n1", 1.0, latest=latest),
        attribution_collector(client, latest, "n1", 1.0,
                              pod_uid_for_pid=lambda pid: pod_uid_for_pid(pid, proc_root=proc),
                              pods=lambda: PODS)])
    loops.run_all_once()
    client.close()
    return registry_for(loops)


def series(registry: CollectorRegistry, name: str, key: str) -> dict[str, float]:
    return {s.labels[key]: s.value for m in registry.collect() if m.name == name
            for s in m.samples}


def test_each_tenant_gets_its_own_use_and_exited_pids_are_unattributed(
        fake: FakeNvml, source: NvmlGpuSource, kubelet: PodResourcesServer,
        tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, UID_A)
    write_proc(proc, 202, UID_B)
    write_proc(proc, 404, UID_C)  # a pod with no share of this GPU uses it
    # PID 303 ran, then exited before its cgroup could be read: no /proc entry.
    fake.gpus[0].samples = [(101, T0 + 1, 30), (202, T0 + 1, 20), (303, T0 + 1, 15),
                            (404, T0 + 1, 5)]
    registry = collect(source, kubelet, proc)
    assert series(registry, "steward_gpu_pod_allocated_ratio", "pod") == {
        "tenant-a": 0.5, "tenant-b": 0.5}
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == pytest.approx(
        {"tenant-a": 0.3, "tenant-b": 0.2})
    assert series(registry, "steward_gpu_unattributed_utilization_ratio", "reason") == \
        pytest.approx({"no_samples": 0.0, "unknown_process": 0.15, "pod_without_share": 0.05})
    # PIDs never become labels
    assert not any("pid" in s.labels or "303" in s.labels.values()
                   for m in registry.collect() for s in m.samples)


def test_a_tenant_with_no_sample_used_nothing(fake: FakeNvml, source: NvmlGpuSource,
                                              kubelet: PodResourcesServer, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, UID_A)
    write_proc(proc, 202, UID_B)
    fake.gpus[0].samples = [(101, T0 + 1, 70)]
    registry = collect(source, kubelet, proc)
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == pytest.approx(
        {"tenant-a": 0.7, "tenant-b": 0.0})


def test_no_samples_on_a_busy_gpu_is_never_guessed(fake: FakeNvml, source: NvmlGpuSource,
                                                   kubelet: PodResourcesServer,
                                                   tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, UID_A)
    write_proc(proc, 202, UID_B)
    # NOT_FOUND, yet the GPU reports 70 %: nobody gets a use, all of it is unattributed.
    registry = collect(source, kubelet, proc)
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == {}
    assert series(registry, "steward_gpu_unattributed_utilization_ratio", "reason") == \
        pytest.approx({"no_samples": 0.7, "unknown_process": 0.0, "pod_without_share": 0.0})
    # The same on a GPU that cannot sample per process at all.
    fake.gpus[0].fail["process_utilization"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    registry = collect(source, kubelet, proc)
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == {}


def test_no_samples_on_an_idle_gpu_means_every_tenant_used_nothing(
        fake: FakeNvml, source: NvmlGpuSource, kubelet: PodResourcesServer,
        tmp_path: Path) -> None:
    fake.gpus[0].util = (0, 0)
    registry = collect(source, kubelet, tmp_path / "proc")
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == {
        "tenant-a": 0.0, "tenant-b": 0.0}


def test_mps_replicas_are_mps_shares(fake: FakeNvml, source: NvmlGpuSource,
                                     kubelet: PodResourcesServer, tmp_path: Path) -> None:
    fake.gpus[0].mps = [(101, 10 * GIB)]
    registry = collect(source, kubelet, tmp_path / "proc")
    assert {s.labels["mode"] for m in registry.collect()
            if m.name == "steward_gpu_pod_allocated_ratio" for s in m.samples} == {"mps"}


def test_an_exclusive_gpu_is_its_holders_use(fake: FakeNvml, source: NvmlGpuSource,
                                             kubelet: PodResourcesServer,
                                             tmp_path: Path) -> None:
    kubelet.pods = [Pod("inf", "tenant-a", [Container("c", {"nvidia.com/gpu": [UUID]})])]
    kubelet.allocatable = {"nvidia.com/gpu": [UUID]}
    registry = collect(source, kubelet, tmp_path / "proc")
    assert series(registry, "steward_gpu_pod_allocated_ratio", "mode") == {"exclusive": 1.0}
    assert series(registry, "steward_gpu_pod_utilization_ratio", "pod") == pytest.approx(
        {"tenant-a": 0.7})
    assert series(registry, "steward_gpu_unattributed_utilization_ratio", "reason") == {}


def test_replicas_unknown_when_the_kubelet_cannot_list_allocatable(
        fake: FakeNvml, source: NvmlGpuSource, kubelet: PodResourcesServer,
        tmp_path: Path) -> None:
    kubelet.allocatable = None  # an old kubelet: GetAllocatableResources unimplemented
    registry = collect(source, kubelet, tmp_path / "proc")
    assert series(registry, "steward_gpu_pod_allocated_ratio", "pod") == {}
    errors = series(registry, "steward_collector_errors", "error")
    assert errors["allocatable_unavailable"] == 1 and errors["replicas_unknown"] == 2
