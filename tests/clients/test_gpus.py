"""The one GPU-pod predicate: the same answer for the node, the controller and hygiene."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from agent.clients.kubernetes.gpus import container_gpus, pod_gpus, pod_json_gpus


def json_pod(limits: dict[str, str], requests: dict[str, str] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": limits}
    if requests is not None:
        resources["requests"] = requests
    return {"spec": {"containers": [{"name": "a", "resources": resources},
                                    {"name": "b", "resources": {"limits": {"cpu": "1"}}}]}}


@pytest.mark.parametrize(("limits", "gpus"), [
    ({"nvidia.com/gpu": "2"}, 2),
    ({"nvidia.com/gpu.shared": "1"}, 1),  # time-sliced, renamed by the device plugin
    ({"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "1"}, 2),
    ({"nvidia.com/mig-1g.10gb.shared": "1"}, 1),
    # The network operator's NICs and RDMA devices are not GPUs.
    ({"nvidia.com/mlnxnics": "1", "rdma/rdma_shared_device_a": "1"}, 0),
    ({"amd.com/gpu": "1", "cpu": "4"}, 0),
    # HAMi: one GPU, of which 3000 MiB and 30 % of the cores; the amounts are not GPUs.
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}, 1),
    ({"nvidia.com/gpu": "0"}, 0),
])
def test_both_shapes_agree(limits: dict[str, str], gpus: int) -> None:
    assert pod_json_gpus(json_pod(limits)) == gpus
    model = client.V1Pod(spec=client.V1PodSpec(containers=[
        client.V1Container(name="a", resources=client.V1ResourceRequirements(limits=limits))]))
    assert pod_gpus(model) == gpus


def test_limits_win_over_requests() -> None:
    assert container_gpus({"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "1"}) == 2
    assert container_gpus(None, {"nvidia.com/gpu": "1"}) == 1
    assert container_gpus(None, None) == 0
