"""A real kubelet PodResources v1 gRPC server on a unix socket, answering from state tests set.

Tests mutate ``pods``, ``allocatable`` and the fault knobs (``delay``, ``abort_code``) between
calls; every RPC reads them afresh. ``calls`` counts the RPCs served, by method name.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from agent.node.podresources import api_pb2, api_pb2_grpc


@dataclass
class Container:
    name: str
    # resource name -> device ids, in the order the device plugin allocated them
    devices: dict[str, list[str]] = field(default_factory=dict)
    cpu_ids: list[int] = field(default_factory=list)


@dataclass
class Pod:
    namespace: str
    name: str
    containers: list[Container] = field(default_factory=list)


def pod_message(pod: Pod) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=pod.name,
        namespace=pod.namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container.name,
                devices=[
                    api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                    for resource, ids in container.devices.items()
                ],
                cpu_ids=container.cpu_ids,
            )
            for container in pod.containers
        ],
    )


def list_response(pods: list[Pod]) -> api_pb2.ListPodResourcesResponse:
    return api_pb2.ListPodResourcesResponse(pod_resources=[pod_message(p) for p in pods])


class PodResourcesServer(api_pb2_grpc.PodResourcesListerServicer):
    """``v1.PodResourcesLister`` served by grpcio on ``socket_path`` (a temp dir by default)."""

    def __init__(self, socket_path: Path | None = None) -> None:
        self._own_dir: Path | None = None
        if socket_path is None:
            # Short on purpose: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
            self._own_dir = Path(tempfile.mkdtemp(prefix="steward-podres-"))
            socket_path = self._own_dir / "kubelet.sock"
        self.socket_path = socket_path
        self.calls: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self.reset()

    def reset(self) -> None:
        """Empty node, no faults, call counts cleared."""
        self.pods: list[Pod] = []
        # None: a kubelet that does not serve GetAllocatableResources (before 1.21, or its
        # feature gate off): UNIMPLEMENTED.
        self.allocatable: dict[str, list[str]] | None = {}
        # Seconds each RPC waits before answering; the wait ends early when the caller's
        # deadline passes, so a timeout test never leaves a handler thread sleeping.
        self.delay = 0.0
        self.abort_code: grpc.StatusCode | None = None
        self.abort_details = "injected fault"
        self.calls.clear()

    def start(self) -> PodResourcesServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(  # type: ignore[no-untyped-call]
            self, server
        )
        server.add_insecure_port(f"unix:{self.socket_path.resolve()}")
        server.start()
        self._stopping.clear()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> PodResourcesServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _faults(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        deadline = time.monotonic() + self.delay
        while context.is_active() and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._stopping.wait(min(remaining, 0.02))
        if self.abort_code is not None:
            context.abort(self.abort_code, self.abort_details)

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self._faults("List", context)
        return list_response(list(self.pods))

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        self._faults("GetAllocatableResources", context)
        if self.allocatable is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method GetAllocatableResources "
                          "for service v1.PodResourcesLister")
        assert self.allocatable is not None
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                for resource, ids in self.allocatable.items()
            ]
        )

    def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        self._faults("Get", context)
        for pod in list(self.pods):
            if pod.namespace == request.pod_namespace and pod.name == request.pod_name:
                return api_pb2.GetPodResourcesResponse(pod_resources=pod_message(pod))
        # The kubelet answers an unknown pod with a plain Go error, which gRPC sends as UNKNOWN.
        context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
        )
        raise AssertionError("context.abort() returned")
