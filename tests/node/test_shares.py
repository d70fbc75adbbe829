"""Each pod's share of each physical GPU: whole GPUs, MIG, replicas, KAI and HAMi fractions.

Readings are what NVML reports (an H100 with 80 GiB, an A30 in MIG mode); allocations are
what the kubelet's PodResources API answers; KAI and HAMi metadata is on the pods, as the
schedulers write it (``gpu-fraction``/``gpu-memory`` with a ``runai-gpu-group`` label and a
reservation pod in ``kai-resource-reservation``; ``hami.io/vgpu-devices-allocated``).
"""

from __future__ import annotations

import pytest

from agent.node.attribution import DeviceIndex
from agent.node.podresources.client import ContainerDevices
from agent.node.pods import ContainerInfo, PodInfo, pod_info_from_api
from agent.node.readings import GpuIdentity, GpuReading
from agent.node.shares import ShareResult, compute_shares, parse_hami

GIB = 1024**3
H100, A30 = "NVIDIA H100 80GB HBM3", "NVIDIA A30"
G0 = "GPU-00000000-0000-0000-0000-000000000000"
G1 = "GPU-11111111-1111-1111-1111-111111111111"
G2 = "GPU-22222222-2222-2222-2222-222222222222"


def gpu(index: int, uuid: str, model: str = H100, *, mps: bool = False,
        memory: int = 80 * GIB) -> GpuReading:
    return GpuReading(GpuIdentity(index, uuid, f"0000:{index}", f"nvidia{index}", model),
                      up=True, memory_total_bytes=memory, mps=mps)


def mig(index: int, uuid: str, gi: int, profile: str, memory: int, model: str = A30
        ) -> GpuReading:
    return GpuReading(GpuIdentity(index, uuid, f"0000:{index}", f"nvidia{index}", model,
                                  gpu_instance_id=gi, gpu_instance_profile=profile,
                                  mig_uuid=f"MIG-{uuid[4:]}-{gi}"),
                      up=True, mig_mode="enabled", memory_total_bytes=memory)


READINGS = [gpu(0, G0), gpu(1, G1), gpu(2, G2, A30, memory=24 * GIB),
            mig(2, G2, 1, "2g.12gb", 12 * GIB), mig(2, G2, 2, "1g.6gb", 6 * GIB)]


def held(ns: str, pod: str, *ids: str, resource: str = "nvidia.com/gpu") -> ContainerDevices:
    return ContainerDevices(ns, pod, "c", resource, ids)


def pod(ns: str, name: str, *, phase: str = "Running", labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None) -> PodInfo:
    return PodInfo(f"uid-{ns}-{name}", ns, name, phase, 0,
                   (ContainerInfo("c", 0, None, None, None),),
                   labels=labels or {}, annotations=annotations or {})


def shares(devices: list[ContainerDevices], pods: list[PodInfo] | None = None,
           allocatable: list[str] | None = None) -> ShareResult:
    return compute_shares(devices, [] if allocatable is None else allocatable, READINGS, pods,
                          DeviceIndex(READINGS))


def table(result: ShareResult) -> dict[tuple[str, str], tuple[str, str, float]]:
    return {(s.namespace, s.pod): (s.identity.uuid + (f"/{s.identity.gpu_instance_id}"
                                                       if s.identity.gpu_instance_id else ""),
                                   s.mode, round(s.ratio, 6)) for s in result.shares}


def test_whole_gpus_mig_slices_and_replicas() -> None:
    result = shares([
        held("ml", "train", G0),
        held("ml", "a", f"{G1}::0"), held("ml", "b", f"{G1}::1"), held("ml", "b", f"{G1}::2"),
        held("nb", "x", "MIG-22222222-2222-2222-2222-222222222222-1",
             resource="nvidia.com/mig-2g.12gb"),
        held("nb", "y", f"MIG-{G2}/2/0", resource="nvidia.com/mig-1g.6gb"),  # legacy ID form
    ], allocatable=[G0, *(f"{G1}::{i}" for i in range(4))])
    assert table(result) == {
        ("ml", "train"): (G0, "exclusive", 1.0),
        ("ml", "a"): (G1, "time_sliced", 0.25),
        ("ml", "b"): (G1, "time_sliced", 0.5),  # two replicas of four
        # A30: 4 compute slices, so 2g is half the GPU and 1g a quarter
        ("nb", "x"): (f"{G2}/1", "mig", 0.5),
        ("nb", "y"): (f"{G2}/2", "mig", 0.25),
    }
    assert result.errors == []


def test_replicas_are_mps_when_nvml_lists_mps_clients() -> None:
    readings = [gpu(0, G0, mps=True)]
    result = compute_shares([held("ml", "a", f"{G0}::3")], [f"{G0}::{i}" for i in range(10)],
                            readings, None, DeviceIndex(readings))
    assert [(s.mode, s.ratio) for s in result.shares] == [("mps", 0.1)]


def test_replicas_without_the_allocatable_list_are_left_out() -> None:
    result = compute_shares([held("ml", "a", f"{G1}::0"), held("ml", "t", G0)], None,
                            READINGS, None, DeviceIndex(READINGS))
    assert table(result) == {("ml", "t"): (G0, "exclusive", 1.0)}
    assert result.errors == ["replicas_unknown"]


RESERVATION = "gpu-reservation-node1-x7k2p"


def kai_world(*fraction_pods: PodInfo) -> tuple[list[ContainerDevices], list[PodInfo]]:
    reservation = pod("kai-resource-reservation", RESERVATION,
                      labels={"runai-gpu-group": "grp-1", "app": "kai-resource-reservation"})
    return [held("kai-resource-reservation", RESERVATION, G1)], [reservation, *fraction_pods]


def test_kai_fractions_land_on_their_reservations_gpu_and_the_reservation_is_no_user() -> None:
    devices, pods = kai_world(
        pod("ml", "lora", labels={"runai-gpu-group": "grp-1"},
            annotations={"gpu-fraction": "0.5"}),
        pod("ds", "nb", labels={"runai-gpu-group": "grp-1"},
            annotations={"gpu-memory": "20480"}),  # MiB: a quarter of 80 GiB
        pod("ds", "unbound", annotations={"gpu-fraction": "0.5"}),  # not bound: no group yet
        pod("ds", "done", phase="Succeeded", labels={"runai-gpu-group": "grp-1"},
            annotations={"gpu-fraction": "0.2"}))
    result = shares(devices, pods)
    assert table(result) == {("ml", "lora"): (G1, "fraction", 0.5),
                             ("ds", "nb"): (G1, "fraction", 0.25)}
    assert result.errors == []


def test_kai_multi_device_fractions_take_a_share_of_each_gpu() -> None:
    reservations = [pod("kai-resource-reservation", f"gpu-reservation-{g}",
                        labels={"runai-gpu-group": g}) for g in ("g0", "g1")]
    devices = [held("kai-resource-reservation", "gpu-reservation-g0", G0),
               held("kai-resource-reservation", "gpu-reservation-g1", G1)]
    multi = pod("ml", "multi", labels={"runai-gpu-group/g0": "g0", "runai-gpu-group/g1": "g1"},
                annotations={"gpu-fraction": "0.3", "gpu-fraction-num-devices": "2"})
    result = shares(devices, [*reservations, multi])
    assert sorted((s.identity.uuid, s.ratio) for s in result.shares) == [(G0, 0.3), (G1, 0.3)]


@pytest.mark.parametrize("annotations", [
    {"gpu-fraction": "1.5"}, {"gpu-fraction": "0"}, {"gpu-fraction": "nan"},
    {"gpu-fraction": "half"}, {"gpu-memory": "-1"}, {"gpu-memory": "lots"},
    {"gpu-fraction": "inf"},
])
def test_untrusted_fraction_annotations_place_nothing(annotations: dict[str, str]) -> None:
    devices, pods = kai_world(pod("ml", "bad", labels={"runai-gpu-group": "grp-1"},
                                  annotations=annotations))
    result = shares(devices, pods)
    assert result.shares == [] and result.errors == ["invalid_share_annotation"]


def test_a_fraction_whose_reservation_is_not_on_this_node_is_an_error() -> None:
    result = shares([], [pod("ml", "lora", labels={"runai-gpu-group": "elsewhere"},
                             annotations={"gpu-fraction": "0.5"})])
    assert result.shares == [] and result.errors == ["reservation_not_found"]


def test_the_kubelet_wins_over_a_forged_fraction_annotation() -> None:
    # A pod holding a whole GPU claims to hold a tenth of it: it is charged for the GPU.
    result = shares([held("ml", "greedy", G0)],
                    [pod("ml", "greedy", labels={"runai-gpu-group": "grp-1"},
                         annotations={"gpu-fraction": "0.1"})], allocatable=[G0])
    assert table(result) == {("ml", "greedy"): (G0, "exclusive", 1.0)}


def test_hami_shares_are_the_larger_of_cores_and_memory() -> None:
    pods = [
        pod("inf", "cores", annotations={"hami.io/vgpu-devices-allocated":
                                         f"{G0},NVIDIA,8192,30:;"}),  # 30 % cores, 10 % memory
        pod("inf", "memory", annotations={"hami.io/vgpu-devices-allocated":
                                          f"{G0},NVIDIA,40960,10:;"}),  # 50 % memory
        pod("inf", "two", annotations={"hami.io/vgpu-devices-allocated":
                                       f"{G1},NVIDIA,0,0:;{G2},NVIDIA,12288,0:;"}),
    ]
    # HAMi hands the kubelet replica IDs of its own choosing: they are not the GPU it chose.
    devices = [held("inf", "cores", f"{G1}::3"), held("inf", "memory", f"{G1}::4")]
    result = shares(devices, pods, allocatable=[f"{G1}::{i}" for i in range(10)])
    assert sorted((s.pod, s.identity.uuid, s.mode, round(s.ratio, 6))
                  for s in result.shares) == [
        ("cores", G0, "fraction", 0.3), ("memory", G0, "fraction", 0.5),
        ("two", G1, "fraction", 1.0),  # no limit at all: the whole GPU
        ("two", G2, "fraction", 0.5)]  # 12 GiB of the A30's 24 GiB


def test_oversubscribed_shares_are_scaled_to_the_whole_gpu() -> None:
    pods = [pod("inf", n, annotations={"hami.io/vgpu-devices-allocated":
                                       f"{G0},NVIDIA,61440,0:;"}) for n in ("a", "b")]
    result = shares([], pods)  # 75 % of the memory each: HAMi memory oversubscription
    assert [round(s.ratio, 6) for s in result.shares] == [0.5, 0.5]
    assert result.errors == ["oversubscribed"]


@pytest.mark.parametrize("text", ["GPU-x,NVIDIA,abc,10:;", "GPU-x,NVIDIA,10:;",
                                  "GPU-x,NVIDIA,10,101:;", "nvidia0,NVIDIA,10,10:;"])
def test_malformed_hami_annotations_are_rejected(text: str) -> None:
    assert parse_hami(text) is None


def test_the_pod_cache_keeps_only_the_share_annotations() -> None:
    # The pod as the API's JSON has it (the node's own client reads JSON).
    api_pod = {
        "metadata": {"uid": "u", "namespace": "inf", "name": "p", "labels": {"app": "x"},
                     "annotations": {"gpu-fraction": "0.5",
                                     "kubectl.kubernetes.io/last-applied-configuration":
                                         "{" + "x" * 10_000 + "}"}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {
            "nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30",
            "cpu": "2"}}}]},
        "status": {"phase": "Running"}}
    info = pod_info_from_api(api_pod)
    assert info.annotations == {"gpu-fraction": "0.5"}
    assert info.gpu_resources == {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000,
                                  "nvidia.com/gpucores": 30}
    # HAMi's memory (MiB) and cores (%) are not GPUs: one GPU requested, not 3031.
    assert info.gpus_requested == 1
