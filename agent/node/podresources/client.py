"""Client of the kubelet PodResources v1 API: which device-plugin devices each container holds.

One long-lived HTTP/2 connection to the kubelet's unix socket (``transport``: the unary gRPC
calls without grpcio); every call has a deadline, and every failure is a
``PodResourcesError`` whose ``reason`` is a bounded label value.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal

from google.protobuf.message import DecodeError

from agent.clients.kubernetes.gpus import GPU_RESOURCE_PREFIXES
from agent.node.podresources import api_pb2
from agent.node.podresources.transport import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    UNAVAILABLE,
    GrpcError,
    UnixGrpcChannel,
)

DEFAULT_SOCKET_PATH: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
_SERVICE: Final = "/v1.PodResourcesLister/"
# The kubelet's grpc-go server resets a call at the deadline we sent it (RST_STREAM CANCEL, no
# status), timed from when our request arrived and rounded down: its reset can beat our own
# deadline, so a cancellation this late is the timeout.
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
        self._channel: UnixGrpcChannel | None = None

    def list_devices(self) -> list[ContainerDevices]:
        """One ``List()`` call with a deadline; containers with no matching device are left out."""
        response = api_pb2.ListPodResourcesResponse()
        self._call("List", api_pb2.ListPodResourcesRequest(), response)
        return self._devices_of(response)

    def allocatable_devices(self) -> list[str]:
        """Every device ID the kubelet can hand out for the resources watched, allocated or
        not (``GetAllocatableResources``, GA since Kubernetes 1.28): a time-sliced GPU
        appears once per replica (``GPU-uuid::0`` .. ``::N-1``), which is how a replica's
        share of the GPU is known."""
        response = api_pb2.AllocatableResourcesResponse()
        self._call("GetAllocatableResources", api_pb2.AllocatableResourcesRequest(), response)
        return [device_id for devices in response.devices
                if devices.resource_name.startswith(self.resource_prefixes)
                for device_id in devices.device_ids]

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
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
        # connect() reports a missing socket, a directory in its place and a permission
        # problem alike as a failed connection; checking first names the cause and the path.
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

    def _call(self, method: str, request: api_pb2.ListPodResourcesRequest
              | api_pb2.AllocatableResourcesRequest,
              response: api_pb2.ListPodResourcesResponse
              | api_pb2.AllocatableResourcesResponse) -> None:
        self._check_socket()
        where = f"kubelet PodResources {method}() on {self.socket_path}"
        started = time.monotonic()
        try:
            answer = self._connected().unary(_SERVICE + method, request.SerializeToString(),
                                             timeout=self.timeout)
        except GrpcError as exc:
            late = time.monotonic() - started >= self.timeout * _DEADLINE_SLACK
            if exc.code == DEADLINE_EXCEEDED or (exc.code == CANCELLED and late):
                raise PodResourcesError(
                    "timeout", f"{where} timed out after {self.timeout}s") from None
            if exc.code == UNAVAILABLE:
                # The channel dropped its connection with the error: after a kubelet restart
                # (a new socket) the next call connects afresh, without a backoff.
                raise PodResourcesError("unavailable", f"{where} unavailable: {exc.details}"
                                        ) from None
            raise PodResourcesError("error", f"{where} failed with {exc.name}: {exc.details}"
                                    ) from None
        try:
            response.ParseFromString(answer)
        except DecodeError as exc:
            raise PodResourcesError("error", f"{where} answered a message that does not "
                                    f"decode as {type(response).__name__}: {exc}") from None

    def _connected(self) -> UnixGrpcChannel:
        with self._lock:
            if self._channel is None:
                self._channel = UnixGrpcChannel(os.path.abspath(self.socket_path),
                                                max_message_bytes=self.max_message_bytes)
            return self._channel

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
