"""The node agent's Kubernetes surface: paged lists and watches of pods over plain HTTPS
(``http.client``, ``ssl``, ``json``), connected in-cluster or through a kubeconfig.

Why not the official client: ``import kubernetes`` loads every API group's classes and
about 770 model modules, ~60 MiB of a DaemonSet that runs on every GPU node, to make the
one request the node agent needs. What that request needs is here: the API's JSON as
plain dicts, ``resourceVersion`` and ``continue`` tokens, bookmarks, ``410 Gone`` as an
error with its status, timeouts on every read, and a bearer token read again on every
request (a projected ServiceAccount token is rotated by the kubelet while the pod runs).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import yaml

from agent.clients.kubernetes.api import (
    IN_CLUSTER_ENV,
    KubeApiError,
    KubeConfigError,
    user_agent,
)
from agent.config import KubernetesConfig

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# An error body is a Status of a few hundred bytes; a watch event is one object, and etcd
# refuses objects over 1.5 MiB. Anything longer is not the API server talking.
_MAX_ERROR_BODY: Final = 64 * 1024
_MAX_EVENT_LINE: Final = 4 * 1024 * 1024
_MAX_LIST_BODY: Final = 64 * 1024 * 1024

JsonObj = dict[str, Any]


class ApiStatus(Exception):
    """What the API server answered when it refused: ``HTTP 410 Expired: <message>``.
    Wrapped in :class:`KubeApiError` (the one error type of the Kubernetes surface)."""

    def __init__(self, status: int, reason: str, message: str | None) -> None:
        text = f"HTTP {status} {reason}".rstrip()
        super().__init__(f"{text}: {' '.join(message.split())}" if message else text)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    """Where the API server is and how to authenticate to it."""

    scheme: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    token: str | None = None
    token_file: Path | None = None
    server_hostname: str | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise KubeConfigError(f"cannot read the token file {self.token_file}: "
                                      f"{exc.strerror}") from exc
        return self.token


def load_endpoint(config: KubernetesConfig, *,
                  environ: Mapping[str, str] | None = None,
                  service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> Endpoint:
    """The configured cluster, chosen as :func:`agent.clients.kubernetes.api.api_client`
    chooses it: ``kubernetes.kubeconfig``, else ``KUBECONFIG`` outside a pod, else the pod's
    ServiceAccount."""
    env = os.environ if environ is None else environ
    if config.kubeconfig is not None or (env.get("KUBECONFIG") and not env.get(IN_CLUSTER_ENV)):
        paths = [Path(config.kubeconfig)] if config.kubeconfig is not None else [
            Path(p) for p in env["KUBECONFIG"].split(os.pathsep) if p]
        return _from_kubeconfig(paths, config.context)
    if env.get(IN_CLUSTER_ENV):
        return _in_cluster(env, service_account_dir)
    raise KubeConfigError("no Kubernetes cluster configured: not in a pod, and neither "
                          "kubernetes.kubeconfig nor KUBECONFIG is set")


def _in_cluster(env: Mapping[str, str], directory: Path) -> Endpoint:
    host, port = env[IN_CLUSTER_ENV], env.get("KUBERNETES_SERVICE_PORT", "443")
    token, ca = directory / "token", directory / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise KubeConfigError(f"cannot load in-cluster configuration: {path} is missing "
                                  "(is automountServiceAccountToken off?)")
    context = ssl.create_default_context(cafile=str(ca))
    try:
        port_number = int(port)
    except ValueError:
        raise KubeConfigError(f"KUBERNETES_SERVICE_PORT is not a port: {port[:40]!r}") from None
    return Endpoint("https", host.strip("[]"), port_number, context, token_file=token)


def _merged_kubeconfig(paths: list[Path]) -> tuple[JsonObj, Path]:
    """``KUBECONFIG=a:b``: the first file naming a cluster, user or context wins, as kubectl
    merges them. Returns the merged view and the directory relative paths start from."""
    merged: JsonObj = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    base: Path | None = None
    for path in paths:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise KubeConfigError(f"kubeconfig {path} is not YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise KubeConfigError(f"kubeconfig {path} is not a mapping")
        base = base or path.parent
        if not merged["current-context"]:
            merged["current-context"] = loaded.get("current-context")
        for key in ("clusters", "users", "contexts"):
            for entry in loaded.get(key) or []:
                if isinstance(entry, dict) and entry.get("name"):
                    merged[key].setdefault(str(entry["name"]), entry.get(key[:-1]) or {})
    return merged, base or Path(".")


def _from_kubeconfig(paths: list[Path], context_name: str | None) -> Endpoint:
    merged, base = _merged_kubeconfig(paths)
    name = context_name or merged.get("current-context")
    where = ":".join(str(p) for p in paths)
    if not name:
        raise KubeConfigError(f"kubeconfig {where} names no current-context")
    context = merged["contexts"].get(name)
    if context is None:
        raise KubeConfigError(f"kubeconfig {where} has no context {name!r}")
    cluster = merged["clusters"].get(context.get("cluster"))
    user = merged["users"].get(context.get("user")) or {}
    if not cluster or not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {where}: context {name!r} names no cluster server")
    for unsupported in ("exec", "auth-provider", "username"):
        if unsupported in user:
            raise KubeConfigError(
                f"kubeconfig {where}: the node agent authenticates with a token, a token file "
                f"or a client certificate; user {context.get('user')!r} uses {unsupported!r}")
    server = urlsplit(str(cluster["server"]))
    if server.scheme not in ("http", "https") or not server.hostname:
        raise KubeConfigError(f"kubeconfig {where}: server {str(cluster['server'])[:200]!r} is "
                              "not an http(s) URL")
    if server.path not in ("", "/"):
        raise KubeConfigError(f"kubeconfig {where}: a server with a path prefix "
                              f"({server.path[:100]!r}) is not supported")

    def file_of(key: str) -> Path | None:
        value = cluster.get(key) if key.startswith("certificate-authority") else user.get(key)
        return None if value is None else (base / str(value))

    context_ssl: ssl.SSLContext | None = None
    if server.scheme == "https":
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl = ssl.create_default_context()
            context_ssl.check_hostname = False
            context_ssl.verify_mode = ssl.CERT_NONE
        else:
            ca_data = cluster.get("certificate-authority-data")
            ca_file = file_of("certificate-authority")
            context_ssl = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None and ca_data is None else None,
                cadata=_decoded(ca_data, "certificate-authority-data", where).decode("ascii")
                if ca_data is not None else None)
        cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
        cert_file, key_file = file_of("client-certificate"), file_of("client-key")
        if cert_data is not None or cert_file is not None:
            _load_client_cert(context_ssl, where,
                              _decoded(cert_data, "client-certificate-data", where)
                              if cert_data is not None else _read(cert_file, where),
                              _decoded(key_data, "client-key-data", where)
                              if key_data is not None else _read(key_file, where))
    token_file = file_of("tokenFile")
    return Endpoint(server.scheme, server.hostname, server.port or
                    (443 if server.scheme == "https" else 80), context_ssl,
                    token=str(user["token"]) if user.get("token") else None,
                    token_file=token_file,
                    server_hostname=cluster.get("tls-server-name"))


def _decoded(value: Any, key: str, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise KubeConfigError(f"kubeconfig {where}: {key} is not base64") from None


def _read(path: Path | None, where: str) -> bytes:
    if path is None:
        raise KubeConfigError(f"kubeconfig {where}: a client certificate needs its key")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KubeConfigError(f"kubeconfig {where}: cannot read {path}: {exc.strerror}") from exc


def _load_client_cert(context: ssl.SSLContext, where: str, cert: bytes, key: bytes) -> None:
    # ssl loads a certificate chain from files only: a private temporary directory, gone
    # once loaded.
    with tempfile.TemporaryDirectory(prefix="steward-kube-") as directory:
        cert_path, key_path = Path(directory) / "client.crt", Path(directory) / "client.key"
        for path, data in ((cert_path, cert), (key_path, key)):
            path.touch(mode=0o600)
            path.write_bytes(data)
        try:
            context.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise KubeConfigError(f"kubeconfig {where}: the client certificate or key does "
                                  f"not load: {exc.reason}") from exc


@dataclass(frozen=True)
class PodPage:
    """One page of a pod list: the pods as the API's JSON, the snapshot's resourceVersion,
    and the token of the next page (None on the last)."""

    items: list[JsonObj]
    resource_version: str
    continue_token: str | None


class PodWatch:
    """One watch request: iterate :meth:`events` (``(type, object)`` as the API sends them,
    bookmarks included); :meth:`stop` from another thread ends it."""

    def __init__(self, connection: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response
        self._stopped = threading.Event()

    def events(self) -> Iterator[tuple[str, JsonObj]]:
        try:
            for line in self._lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    # The watch's own failure, sent as a Status in the stream: 410 when the
                    # resourceVersion it resumes from was compacted away.
                    raise KubeApiError("watch pods", ApiStatus(
                        int(obj.get("code") or 500), str(obj.get("reason") or ""),
                        obj.get("message")))
                yield kind, obj
        finally:
            self.close()

    def _lines(self) -> Iterator[bytes]:
        """The stream's lines. ``read1`` and not ``readline``: the response's ``readline``
        answers a connection cut mid-stream like the server's last chunk (an empty line
        both times), and a cut must not pass for the end of the watch."""
        pending = b""
        while not self._stopped.is_set():
            try:
                data = self._response.read1(64 * 1024)
            except TimeoutError:
                raise TimeoutError("watch pods: Read timed out") from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stopped.is_set():
                    return
                raise ConnectionError(f"watch pods: connection broken: {exc!r}") from exc
            if not data:
                return  # the last chunk: the server ended the watch (its timeoutSeconds)
            *lines, pending = (pending + data).split(b"\n")
            if len(pending) > _MAX_EVENT_LINE:
                raise ValueError(f"watch pods: an event over {_MAX_EVENT_LINE} bytes")
            yield from lines

    def stop(self) -> None:
        self._stopped.set()
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._connection.close()


class PodListWatch:
    """``GET /api/v1/pods`` across namespaces, listed a page at a time or watched: the one
    read the node agent makes (its own node's pods, by field selector)."""

    def __init__(self, endpoint: Endpoint, *, component: str = "node") -> None:
        self._endpoint = endpoint
        self._user_agent = user_agent(component)

    def _open(self, query: Mapping[str, str], timeout: float, what: str
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        e = self._endpoint
        connection: http.client.HTTPConnection
        if e.scheme == "https":
            connection = _HTTPSConnection(e.host, e.port, timeout=timeout,
                                          context=e.ssl_context, server_hostname=e.server_hostname)
        else:
            connection = http.client.HTTPConnection(e.host, e.port, timeout=timeout)
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        token = e.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            try:
                connection.connect()
            except TimeoutError:
                raise TimeoutError(f"{what}: connect timed out ({timeout:g} s)") from None
            try:
                connection.request("GET", f"/api/v1/pods?{urlencode(query)}", headers=headers)
                response = connection.getresponse()
            except TimeoutError:
                raise TimeoutError(f"{what}: Read timed out ({timeout:g} s)") from None
        except BaseException:
            connection.close()
            raise
        if response.status != 200:
            try:
                body = response.read(_MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                connection.close()
            raise KubeApiError(what, ApiStatus(response.status, response.reason,
                                               _status_message(body)))
        return connection, response

    def list_pods(self, *, field_selector: str, limit: int, continue_token: str | None,
                  timeout: float) -> PodPage:
        query = {"fieldSelector": field_selector, "limit": str(limit)}
        if continue_token:
            query["continue"] = continue_token
        connection, response = self._open(query, timeout, "list pods")
        try:
            body = response.read(_MAX_LIST_BODY + 1)
        except TimeoutError:
            raise TimeoutError(f"list pods: Read timed out ({timeout:g} s)") from None
        finally:
            connection.close()
        if len(body) > _MAX_LIST_BODY:
            raise ValueError(f"list pods: a page over {_MAX_LIST_BODY} bytes")
        listed = json.loads(body)
        metadata = listed.get("metadata") or {}
        return PodPage(list(listed.get("items") or []), str(metadata.get("resourceVersion")),
                       metadata.get("continue") or None)

    def watch_pods(self, *, field_selector: str, resource_version: str, timeout_seconds: int,
                   request_timeout: float) -> PodWatch:
        """Opens the watch (raises when the server refuses it); ``request_timeout`` bounds
        every read of the stream, so it must exceed ``timeout_seconds`` when no bookmark
        may come before the server ends the watch."""
        query = {"fieldSelector": field_selector, "watch": "true",
                 "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        return PodWatch(*self._open(query, request_timeout, "watch pods"))


class _HTTPSConnection(http.client.HTTPSConnection):
    """``tls-server-name``: the certificate is checked for that name, not the host dialled."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext | None,
                 server_hostname: str | None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_hostname = server_hostname

    def connect(self) -> None:
        if self._server_hostname is None:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self._server_hostname)


def _status_message(body: bytes) -> str | None:
    try:
        status = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or None
    return str(status.get("message")) if isinstance(status, dict) and status.get("message") \
        else None
