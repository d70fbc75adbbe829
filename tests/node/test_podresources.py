"""PodResourcesClient against a real grpcio PodResourcesLister on a unix socket."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.node.podresources import (
    ContainerDevices,
    PodResourcesClient,
    PodResourcesError,
    api_pb2,
    api_pb2_grpc,
)
from tests.support.net import wait_until
from tests.support.podresources_server import (
    Container,
    Pod,
    PodResourcesServer,
    list_response,
)
from tests.support.privileges import as_unprivileged

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kubelet() -> Iterator[PodResourcesServer]:
    with PodResourcesServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_state(kubelet: PodResourcesServer) -> None:
    kubelet.reset()


@pytest.fixture
def client(kubelet: PodResourcesServer) -> Iterator[PodResourcesClient]:
    with PodResourcesClient(str(kubelet.socket_path), timeout=2.0) as c:
        yield c


@pytest.fixture
def kubelet_client_factory(
    kubelet: PodResourcesServer,
) -> Iterator[Callable[..., PodResourcesClient]]:
    made: list[PodResourcesClient] = []

    def make(**kwargs: Any) -> PodResourcesClient:
        made.append(PodResourcesClient(str(kubelet.socket_path), **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte limit of a unix socket path.
    path = Path(tempfile.mkdtemp(prefix="steward-test-"))
    yield path
    path.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


def raises_reason(client: PodResourcesClient) -> PodResourcesError:
    with pytest.raises(PodResourcesError) as info:
        client.list_devices()
    assert "\n" not in str(info.value)
    return info.value


def server_connections(socket_path: Path) -> set[int]:
    """Inodes of the connected server-side sockets accepted on ``socket_path`` (Linux)."""
    want = os.path.normpath(str(socket_path.resolve()))
    inodes: set[int] = set()
    with open("/proc/net/unix", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; St 03 = connected
            if len(fields) >= 8 and fields[5] == "03" and os.path.normpath(fields[7]) == want:
                inodes.add(int(fields[6]))
    return inodes


# --- parsing -------------------------------------------------------------------------------


def test_devices_of_several_pods_and_containers(
    kubelet: PodResourcesServer, client: PodResourcesClient
) -> None:
    kubelet.pods = [
        Pod("ml", "train-0", [
            Container("trainer", {"nvidia.com/gpu": ["GPU-aaaa", "GPU-bbbb"]}, cpu_ids=[2, 3]),
            Container("sidecar"),
        ]),
        Pod("ml", "train-1", [Container("trainer", {"nvidia.com/gpu": ["GPU-cccc"]})]),
        Pod("serving", "llm-7f9c", [
            Container("server", {"nvidia.com/gpu": ["GPU-dddd"]}),
            Container("draft", {"nvidia.com/gpu": ["GPU-eeee"]}),
        ]),
        Pod("kube-system", "coredns-1", [Container("coredns")]),
    ]

    assert client.list_devices() == [
        ContainerDevices("ml", "train-0", "trainer", "nvidia.com/gpu", ("GPU-aaaa", "GPU-bbbb")),
        ContainerDevices("ml", "train-1", "trainer", "nvidia.com/gpu", ("GPU-cccc",)),
        ContainerDevices("serving", "llm-7f9c", "server", "nvidia.com/gpu", ("GPU-dddd",)),
        ContainerDevices("serving", "llm-7f9c", "draft", "nvidia.com/gpu", ("GPU-eeee",)),
    ]
    assert kubelet.calls["List"] == 1


def test_mig_and_time_sliced_device_ids_kept_verbatim(
    kubelet: PodResourcesServer, client: PodResourcesClient
) -> None:
    mig_a = "MIG-5c1e3f4a-8b2d-5e6f-9a0b-1c2d3e4f5a6b"
    mig_b = "MIG-0d9e8f7a-6b5c-5d4e-8f3a-2b1c0d9e8f7a"
    replica = "GPU-8f2c1d90-3e5a-4b17-9c2e-5da9abb51763::2"
    kubelet.pods = [
        # mixed MIG strategy: one resource per profile; a container may hold two profiles
        Pod("ml", "mig-pod", [Container("worker", {
            "nvidia.com/mig-1g.10gb": [mig_a],
            "nvidia.com/mig-3g.40gb": [mig_b],
        })]),
        Pod("ml", "sliced", [Container("infer", {"nvidia.com/gpu": [replica]})]),
    ]

    assert client.list_devices() == [
        ContainerDevices("ml", "mig-pod", "worker", "nvidia.com/mig-1g.10gb", (mig_a,)),
        ContainerDevices("ml", "mig-pod", "worker", "nvidia.com/mig-3g.40gb", (mig_b,)),
        ContainerDevices("ml", "sliced", "infer", "nvidia.com/gpu", (replica,)),
    ]


def test_non_gpu_resources_filtered_out(
    kubelet: PodResourcesServer, kubelet_client_factory: Callable[..., PodResourcesClient]
) -> None:
    kubelet.pods = [
        Pod("net", "router", [Container("dp", {"intel.com/sriov_netdevice": ["0000:3b:02.1"]})]),
        Pod("ml", "both", [Container("c", {
            "example.com/fpga": ["fpga-0"],
            "nvidia.com/gpu": ["GPU-aaaa"],
            "amd.com/gpu": ["card1"],
        })]),
        Pod("ml", "not-nvidia", [Container("c", {"nvidia.comx/gpu": ["x"]})]),
    ]

    assert kubelet_client_factory().list_devices() == [
        ContainerDevices("ml", "both", "c", "nvidia.com/gpu", ("GPU-aaaa",)),
    ]
    widened = kubelet_client_factory(resource_prefixes=("nvidia.com/", "amd.com/"))
    assert [d.resource_name for d in widened.list_devices()] == ["nvidia.com/gpu", "amd.com/gpu"]


def test_response_over_grpc_default_4mib_limit(
    kubelet: PodResourcesServer, kubelet_client_factory: Callable[..., PodResourcesClient]
) -> None:
    pods = [
        Pod(f"team-{i % 40:02d}", f"batch-job-{i:05d}-worker", [
            Container("worker", {"nvidia.com/gpu": [f"GPU-{i:08x}-0000-4000-8000-{j:012x}"
                                                    for j in range(8)]},
                      cpu_ids=list(range(64, 96))),
            Container("log-shipper", {"example.com/hugepages": ["h0"]}),
        ])
        for i in range(9000)
    ]
    assert list_response(pods).ByteSize() > 4 * 1024 * 1024  # the point of the test
    kubelet.pods = pods

    devices = kubelet_client_factory(timeout=20.0).list_devices()
    assert len(devices) == 9000
    assert devices[-1] == ContainerDevices(
        "team-39", "batch-job-08999-worker", "worker", "nvidia.com/gpu",
        tuple(f"GPU-{8999:08x}-0000-4000-8000-{j:012x}" for j in range(8)),
    )
    # The same answer with gRPC's default receive limit is refused: the raised limit matters.
    small = kubelet_client_factory(timeout=20.0, max_message_bytes=4 * 1024 * 1024)
    error = raises_reason(small)
    assert error.reason == "error"
    assert "RESOURCE_EXHAUSTED" in str(error)


# --- socket problems -----------------------------------------------------------------------


def test_socket_missing(short_dir: Path) -> None:
    path = short_dir / "pod-resources" / "kubelet.sock"
    with PodResourcesClient(str(path)) as client:
        error = raises_reason(client)
    assert error.reason == "socket_missing"
    assert str(path) in str(error)


@pytest.mark.parametrize("kind", ["directory", "regular file"])
def test_path_that_is_not_a_socket(short_dir: Path, kind: str) -> None:
    # What a hostPath mount leaves behind when the kubelet socket was not there.
    path = short_dir / "kubelet.sock"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("")
    with PodResourcesClient(str(path)) as client:
        error = raises_reason(client)
    assert error.reason == "socket_missing"
    assert str(path) in str(error)
    assert ("directory" in str(error)) == (kind == "directory")


def reason_as_unprivileged(socket_path: Path) -> str:
    """The client's failure reason, asked as a non-root user.

    Root passes every permission check (chmod 000 on the socket or on its directory stops
    nothing), so under root a forked child drops to uid/gid 65534 first. The child only
    reaches the client's socket check, never gRPC, so forking next to gRPC threads is safe.
    """
    def ask() -> str:
        try:
            PodResourcesClient(str(socket_path), timeout=1.0).list_devices()
        except PodResourcesError as exc:
            return exc.reason
        return "no error"

    return as_unprivileged(ask)


def test_permission_denied_on_socket_directory(short_dir: Path) -> None:
    # /var/lib/kubelet/pod-resources is 0750 root:root on most distributions.
    short_dir.chmod(0o755)  # only the pod-resources directory is closed
    directory = short_dir / "pod-resources"
    directory.mkdir()
    with PodResourcesServer(directory / "kubelet.sock") as server:
        directory.chmod(0o000)
        try:
            assert reason_as_unprivileged(server.socket_path) == "permission_denied"
        finally:
            directory.chmod(0o755)


def test_permission_denied_on_socket_file(short_dir: Path) -> None:
    # connect() on a unix socket needs write permission on the socket file itself.
    with PodResourcesServer(short_dir / "kubelet.sock") as server:
        short_dir.chmod(0o755)
        server.socket_path.chmod(0o000)
        assert stat.S_ISSOCK(server.socket_path.stat().st_mode)
        assert reason_as_unprivileged(server.socket_path) == "permission_denied"


def test_stale_socket_without_listener_is_unavailable(short_dir: Path) -> None:
    # A kubelet that died leaves its socket file behind: connect() is refused.
    path = short_dir / "kubelet.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
        client = PodResourcesClient(str(path), timeout=5.0)
        started = time.monotonic()
        error = raises_reason(client)
        client.close()
    assert error.reason == "unavailable"
    assert str(path) in str(error)
    assert time.monotonic() - started < 4.0, "a refused connect must not wait for the deadline"


# --- RPC faults ----------------------------------------------------------------------------


def test_deadline_exceeded_is_timeout(
    kubelet: PodResourcesServer, kubelet_client_factory: Callable[..., PodResourcesClient]
) -> None:
    kubelet.pods = [Pod("ml", "p", [Container("c", {"nvidia.com/gpu": ["GPU-aaaa"]})])]
    client = kubelet_client_factory(timeout=0.3)
    kubelet.delay = 30.0

    started = time.monotonic()
    error = raises_reason(client)
    assert error.reason == "timeout"
    assert "0.3s" in str(error)
    assert time.monotonic() - started < 5.0

    kubelet.delay = 0.0  # the same client works again once the kubelet answers in time
    assert [d.pod for d in client.list_devices()] == ["p"]


@pytest.mark.parametrize(("delay", "reason"), [(0.0, "error"), (0.95, "timeout")])
def test_cancelled_by_the_server_is_a_timeout_only_at_the_deadline(
    kubelet: PodResourcesServer, kubelet_client_factory: Callable[..., PodResourcesClient],
    delay: float, reason: str,
) -> None:
    """The kubelet's grpc-go server resets a call at its deadline (RST_STREAM CANCEL), which
    can reach the client before its own deadline fires: CANCELLED then means timeout
    (tests/realk8s/test_kubelet_podresources.py sees it against the kubelet's code). Early,
    it is something else."""
    client = kubelet_client_factory(timeout=1.0)
    kubelet.delay = delay
    kubelet.abort_code = grpc.StatusCode.CANCELLED
    error = raises_reason(client)
    assert error.reason == reason, str(error)
    if reason == "error":
        assert "CANCELLED" in str(error)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, "unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
        (grpc.StatusCode.INTERNAL, "error"),
        (grpc.StatusCode.UNIMPLEMENTED, "error"),
        (grpc.StatusCode.PERMISSION_DENIED, "error"),
    ],
)
def test_server_abort_is_mapped(
    kubelet: PodResourcesServer, client: PodResourcesClient, code: grpc.StatusCode, reason: str
) -> None:
    kubelet.abort_code = code
    kubelet.abort_details = "podresources: injected\nsecond line"

    error = raises_reason(client)
    assert error.reason == reason
    assert str(kubelet.socket_path) in str(error)
    if reason != "timeout":
        assert "podresources: injected second line" in str(error)
    if reason == "error":
        assert code.name in str(error)


# --- channel -------------------------------------------------------------------------------


def test_channel_is_reused_across_calls(
    kubelet: PodResourcesServer, client: PodResourcesClient
) -> None:
    kubelet.pods = [Pod("ml", "p", [Container("c", {"nvidia.com/gpu": ["GPU-aaaa"]})])]
    # Lazily connected: no connection of this client's (earlier tests' close asynchronously).
    wait_until(lambda: not server_connections(kubelet.socket_path), timeout=5,
               what="no connection before the first call")

    client.list_devices()
    first = server_connections(kubelet.socket_path)
    assert len(first) == 1
    for _ in range(4):
        client.list_devices()
    assert server_connections(kubelet.socket_path) == first
    assert kubelet.calls["List"] == 5

    client.close()
    wait_until(lambda: not server_connections(kubelet.socket_path), timeout=5,
               what="the closed channel's connection to go away")
    client.list_devices()  # a closed client reconnects on its next call
    second = server_connections(kubelet.socket_path)
    assert len(second) == 1
    assert second != first


def test_recovers_at_once_when_the_kubelet_restarts(short_dir: Path) -> None:
    path = short_dir / "kubelet.sock"
    with PodResourcesServer(path) as first:
        first.pods = [Pod("ml", "before", [Container("c", {"nvidia.com/gpu": ["GPU-aaaa"]})])]
        client = PodResourcesClient(str(path), timeout=2.0)
        assert [d.pod for d in client.list_devices()] == ["before"]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            if not path.exists():
                stale.bind(str(path))  # the restart window: socket there, nobody listening
            assert raises_reason(client).reason == "unavailable"
        path.unlink(missing_ok=True)
        with PodResourcesServer(path) as second:
            second.pods = [Pod("ml", "after", [Container("c", {"nvidia.com/gpu": ["GPU-b"]})])]
            # No polling: a channel left in gRPC's reconnect backoff would fail this call.
            assert [d.pod for d in client.list_devices()] == ["after"]
    finally:
        client.close()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout"):
        PodResourcesClient("/x.sock", timeout=0)
    with pytest.raises(ValueError, match="max_message_bytes"):
        PodResourcesClient("/x.sock", max_message_bytes=0)


def test_allocatable_devices_list_every_replica(
    kubelet: PodResourcesServer, client: PodResourcesClient
) -> None:
    kubelet.allocatable = {"nvidia.com/gpu": [f"GPU-aaaa::{i}" for i in range(4)] + ["GPU-bbbb"],
                           "example.com/fpga": ["fpga0"]}
    assert client.allocatable_devices() == ["GPU-aaaa::0", "GPU-aaaa::1", "GPU-aaaa::2",
                                            "GPU-aaaa::3", "GPU-bbbb"]


def test_allocatable_unimplemented_is_an_error_naming_the_call(
    kubelet: PodResourcesServer, client: PodResourcesClient
) -> None:
    kubelet.allocatable = None
    with pytest.raises(PodResourcesError) as info:
        client.allocatable_devices()
    assert info.value.reason == "error"
    assert "GetAllocatableResources() " in str(info.value) and "UNIMPLEMENTED" in str(info.value)
    kubelet.allocatable = {}
    assert client.allocatable_devices() == []  # and the channel still works


# --- the test server and the proto ---------------------------------------------------------


def test_server_get_and_allocatable(kubelet: PodResourcesServer) -> None:
    kubelet.pods = [Pod("ml", "p", [Container("c", {"nvidia.com/gpu": ["GPU-aaaa"]})])]
    kubelet.allocatable = {"nvidia.com/gpu": ["GPU-aaaa", "GPU-bbbb"]}
    with grpc.insecure_channel(f"unix:{kubelet.socket_path}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        got = stub.Get(api_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ml"),
                       timeout=2)
        assert got.pod_resources.containers[0].devices[0].device_ids == ["GPU-aaaa"]
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(api_pb2.GetPodResourcesRequest(pod_name="gone", pod_namespace="ml"),
                     timeout=2)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        allocatable = stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(),
                                                   timeout=2)
        assert list(allocatable.devices[0].device_ids) == ["GPU-aaaa", "GPU-bbbb"]
    assert kubelet.calls == {"Get": 2, "GetAllocatableResources": 1}


def test_proto_matches_the_kubelet_v1_wire_format() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert [m.name for m in service.methods] == ["List", "GetAllocatableResources", "Get"]

    def numbers(message: str) -> dict[str, int]:
        fields = api_pb2.DESCRIPTOR.message_types_by_name[message].fields
        return {f.name: f.number for f in fields}

    assert numbers("ListPodResourcesResponse") == {"pod_resources": 1}
    assert numbers("PodResources") == {"name": 1, "namespace": 2, "containers": 3}
    assert numbers("ContainerResources") == {
        "name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5,
    }
    assert numbers("ContainerDevices") == {"resource_name": 1, "device_ids": 2, "topology": 3}
    assert numbers("AllocatableResourcesResponse") == {"devices": 1, "cpu_ids": 2, "memory": 3}
    assert numbers("ContainerMemory") == {"memory_type": 1, "size": 2, "topology": 3}
    assert numbers("DynamicResource") == {
        "claim_name": 2, "claim_namespace": 3, "claim_resources": 4,
    }
    assert numbers("ClaimResource") == {
        "cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4,
    }
    assert numbers("GetPodResourcesRequest") == {"pod_name": 1, "pod_namespace": 2}
    # Bytes as a Go kubelet writes them: field 1 (pod_resources) holding name=1, namespace=2.
    wire = bytes.fromhex("0a0b" "0a0170" "12026d6c" "1a02" "0a00")
    parsed = api_pb2.ListPodResourcesResponse.FromString(wire)
    assert (parsed.pod_resources[0].name, parsed.pod_resources[0].namespace) == ("p", "ml")


def test_generated_stubs_are_fresh() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-podresources.sh"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
