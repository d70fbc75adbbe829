"""Client of the kubelet PodResources v1 API: which device-plugin devices each container holds.

One long-lived gRPC channel to the kubelet's unix socket; every call has a deadline, and every
failure is a ``PodResourcesError`` whose ``reason`` is a bounded label value.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Protocol

import grpc

from agent.clients.kubernetes.gpus import GPU_RESOURCE_PREFIXES
from agent.node.podresources import api_pb2, api_pb2_grpc

DEFAULT_SOCKET_PATH: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The server's deadline timer starts when our request arrives, with the grpc-timeout we sent
# (rounded down): its RST_STREAM can come a little before our own deadline.
_DEADLINE_SLACK: Final = 0.9

Reason = Literal["socket_missing", "permission_denied", "timeout", "unavailable", "error"]


@dataclass(frozen=True)
class ContainerDevices:
    """Devices of one resource (``nvidia.com/gpu``, ``nvidia.com/mig-1g.10gb``) of a container."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    # As the device plugin reported them: GPU-uuid, MIG-uuid, an index, or a time-slicing
    # replica id such as ``GPU-uuid::2``; kept verbatim so the caller decides how to match.
    device_ids: tuple[str, ...]


class PodResourcesError(Exception):
    """The kubelet could not be asked; ``reason`` is one of the ``Reason`` values."""

    def __init__(self, reason: Reason, message: str) -> None:
        # One line: it ends up in a JSON log line and in the collector's error metric.
        super().__init__(" ".join(message.split()))
        self.reason: Reason = reason


class _ListStub(Protocol):
    def List(  # noqa: N802 - the gRPC method name
        self, request: api_pb2.ListPodResourcesRequest, *, timeout: float
    ) -> api_pb2.ListPodResourcesResponse: ...

    def GetAllocatableResources(  # noqa: N802 - the gRPC method name
        self, request: api_pb2.AllocatableResourcesRequest, *, timeout: float
    ) -> api_pb2.AllocatableResourcesResponse: ...


class PodResourcesClient:
    """Lists the devices the kubelet assigned to the containers of its node."""

    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        resource_prefixes: tuple[str, ...] = GPU_RESOURCE_PREFIXES,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.socket_path = socket_path
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.resource_prefixes = resource_prefixes
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: _ListStub | None = None

    def list_devices(self) -> list[ContainerDevices]:
        """One ``List()`` call with a deadline; containers with no matching device are left out."""
        self._check_socket()
        stub = self._connected_stub()
        started = time.monotonic()
        try:
            response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, started) from exc
        return self._devices_of(response)

    def allocatable_devices(self) -> list[str]:
        """Every device ID the kubelet can hand out for the resources watched, allocated or
        not (``GetAllocatableResources``, GA since Kubernetes 1.28): a time-sliced GPU
        appears once per replica (``GPU-uuid::0`` .. ``::N-1``), which is how a replica's
        share of the GPU is known."""
        self._check_socket()
        stub = self._connected_stub()
        started = time.monotonic()
        try:
            response = stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(),
                                                    timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, started, call="GetAllocatableResources()") from exc
        return [device_id for devices in response.devices
                if devices.resource_name.startswith(self.resource_prefixes)
                for device_id in devices.device_ids]

    def close(self) -> None:
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_socket(self) -> None:
        # gRPC reports a missing socket, a directory in its place and a permission problem
        # alike as a bare UNAVAILABLE; checking first names the actual cause and the path.
        path = self.socket_path
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise PodResourcesError(
                "socket_missing",
                f"kubelet PodResources socket {path} does not exist "
                "(is the pod-resources directory mounted?)",
            ) from None
        except PermissionError:
            raise PodResourcesError(
                "permission_denied",
                f"no permission to reach kubelet PodResources socket {path} (uid {os.geteuid()})",
            ) from None
        except OSError as exc:
            raise PodResourcesError(
                "error", f"cannot stat kubelet PodResources socket {path}: {exc.strerror}"
            ) from None
        if not stat.S_ISSOCK(mode):
            # Typically an empty directory a hostPath mount created where the socket should be.
            kind = "a directory" if stat.S_ISDIR(mode) else "not a unix socket"
            raise PodResourcesError(
                "socket_missing", f"kubelet PodResources socket {path} is {kind}"
            )
        # connect() on a unix socket needs write permission on the socket file.
        effective = os.access in os.supports_effective_ids
        if not os.access(path, os.R_OK | os.W_OK, effective_ids=effective):
            raise PodResourcesError(
                "permission_denied",
                f"no read/write permission on kubelet PodResources socket {path} "
                f"(uid {os.geteuid()})",
            )

    def _connected_stub(self) -> _ListStub:
        with self._lock:
            if self._stub is None:
                self._channel = grpc.insecure_channel(
                    f"unix:{os.path.abspath(self.socket_path)}",
                    options=[
                        # The kubelet answers for every pod of the node in one message; dense
                        # nodes exceed gRPC's default 4 MiB receive limit.
                        ("grpc.max_receive_message_length", self.max_message_bytes),
                    ],
                )
                # grpcio-tools writes no type stubs for services; _ListStub types the one call.
                self._stub = api_pb2_grpc.PodResourcesListerStub(  # type: ignore[no-untyped-call]
                    self._channel
                )
            return self._stub

    def _rpc_error(self, exc: grpc.RpcError, started: float, *,
                   call: str = "List()") -> PodResourcesError:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        where = f"kubelet PodResources {call} on {self.socket_path}"
        # The kubelet's grpc-go server ends a call at its deadline with RST_STREAM(CANCEL), no
        # status; when that reaches us before our own deadline timer fires, gRPC says
        # CANCELLED. This client never cancels a call itself, so a CANCELLED at the deadline
        # is the kubelet's timeout (tests/realk8s/test_kubelet_podresources.py).
        at_deadline = time.monotonic() - started >= self.timeout * _DEADLINE_SLACK
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                code == grpc.StatusCode.CANCELLED and at_deadline):
            return PodResourcesError("timeout", f"{where} timed out after {self.timeout}s")
        if code == grpc.StatusCode.UNAVAILABLE:
            # A restarted kubelet recreates the socket; a fresh channel skips the reconnect
            # backoff (up to minutes) the old one may be sitting in.
            self.close()
            return PodResourcesError("unavailable", f"{where} unavailable: {details}")
        name = code.name if code is not None else "UNKNOWN"
        return PodResourcesError("error", f"{where} failed with {name}: {details}")

    def _devices_of(self, response: api_pb2.ListPodResourcesResponse) -> list[ContainerDevices]:
        prefixes = self.resource_prefixes
        found: list[ContainerDevices] = []
        for pod in response.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    if devices.device_ids and devices.resource_name.startswith(prefixes):
                        found.append(
                            ContainerDevices(
                                namespace=pod.namespace,
                                pod=pod.name,
                                container=container.name,
                                resource_name=devices.resource_name,
                                device_ids=tuple(devices.device_ids),
                            )
                        )
        return found
