"""A real kube-apiserver (and kube-controller-manager) started by scripts/real-k8s.sh, and
what the tests do with it: clients per ServiceAccount token, the audit log, restarts and
etcd compaction."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-k8s.sh"
# The audience the API server accepts (scripts/real-k8s.sh --api-audiences).
AUDIENCE = "https://kubernetes.default.svc"


def binaries_dir() -> Path:
    out = subprocess.run([str(SCRIPT), "bin-dir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@dataclass(frozen=True)
class AuditEvent:
    """One request as the audit log (Metadata level) recorded it."""

    user: str
    verb: str
    group: str
    resource: str  # with "/subresource"
    namespace: str | None
    name: str | None
    code: int
    user_agent: str
    uri: str

    @classmethod
    def parse(cls, line: str) -> AuditEvent | None:
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            return None  # a non-resource URL (discovery, /version, /healthz)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        return cls(user=event["user"]["username"], verb=event["verb"],
                   group=ref.get("apiGroup", ""), resource=resource,
                   namespace=ref.get("namespace"), name=ref.get("name"),
                   code=int((event.get("responseStatus") or {}).get("code", 0)),
                   user_agent=event.get("userAgent", ""), uri=event.get("requestURI", ""))


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


class RealCluster:
    """One control plane for the whole session (``scripts/real-k8s.sh up DIR``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.kubeconfig = directory / "admin.kubeconfig"
        config = yaml.safe_load(self.kubeconfig.read_text(encoding="utf-8"))
        self.server = config["clusters"][0]["cluster"]["server"]
        self.ca = Path(config["clusters"][0]["cluster"]["certificate-authority"])
        self._admin_token = config["users"][0]["user"]["token"]
        env = dict(line.split("=", 1) for line in
                   (directory / "env").read_text(encoding="utf-8").split())
        self.etcd_url = f"http://127.0.0.1:{env['ETCD_PORT']}"
        self.admin = self.client(self._admin_token, "steward-tests/admin")

    @classmethod
    def up(cls, directory: Path) -> RealCluster:
        result = subprocess.run([str(SCRIPT), "up", str(directory)], capture_output=True,
                                text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"real-k8s.sh up failed:\n{result.stderr[-3000:]}")
        assert Path(result.stdout.strip()) == directory / "admin.kubeconfig", result.stdout
        return cls(directory)

    def down(self) -> None:
        self.admin.close()
        subprocess.run([str(SCRIPT), "down", str(self.dir)], check=False, timeout=60)

    # ------------------------------------------------------------------ clients

    def configuration(self, token: str) -> client.Configuration:
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca)
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def client(self, token: str, user_agent: str) -> client.ApiClient:
        api = client.ApiClient(self.configuration(token))
        api.user_agent = user_agent
        return api

    def token(self, namespace: str, service_account: str, *, seconds: int = 3600) -> str:
        """A bound token for the ServiceAccount (TokenRequest), as a kubelet would mount."""
        request = {"spec": {"audiences": [AUDIENCE], "expirationSeconds": seconds}}
        answer = client.CoreV1Api(self.admin).create_namespaced_service_account_token(
            service_account, namespace, request)
        return str(answer.status.token)

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def write_kubeconfig(self, path: Path, token: str, *, port: int | None = None) -> Path:
        """A kubeconfig with ``token``; ``port`` points it at a proxy instead."""
        server = self.server if port is None else f"https://127.0.0.1:{port}"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "real", "cluster": {"server": server,
                                                      "certificate-authority": str(self.ca)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "real", "user": "sa"}}],
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------ objects

    def namespace(self, name: str) -> str:
        """Create a namespace and wait for its ``default`` ServiceAccount (the
        controller-manager makes it; pods cannot be created before)."""
        core = client.CoreV1Api(self.admin)
        try:
            core.create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + 30
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                return name
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def node(self, name: str) -> None:
        """A Node object (no kubelet): pods bound to it are not garbage-collected as orphans."""
        try:
            client.CoreV1Api(self.admin).create_node({"metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name}}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    # ------------------------------------------------------------------ audit log

    @property
    def audit_path(self) -> Path:
        return self.dir / "audit.log"

    def audit_mark(self) -> int:
        """Where the audit log ends now: pass to :meth:`audit` to see only later requests."""
        return self.audit_path.stat().st_size

    def audit(self, *, since: int = 0, user: str | None = None) -> list[AuditEvent]:
        with self.audit_path.open("rb") as log:
            log.seek(since)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
        events = [e for e in (AuditEvent.parse(line) for line in lines if line.strip())
                  if e is not None]
        return [e for e in events if user is None or e.user == user]

    # ------------------------------------------------------------------ disruptions

    def restart_apiserver(self) -> None:
        subprocess.run([str(SCRIPT), "restart-apiserver", str(self.dir)], check=True,
                       timeout=180, capture_output=True)

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision (physically): a watch from any older
        resourceVersion can no longer be served from etcd. Returns the revision."""
        revision = int(self._etcd("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])
        self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.etcd_url}{path}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def http_status(call: Any, *args: Any, **kwargs: Any) -> int:
    """The HTTP status a call fails with (0 when it succeeds)."""
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        return int(exc.status)
    return 0


class TcpProxy:
    """A TCP forwarder to the API server (TLS passes through untouched): ``cut()`` drops
    every open connection at once, as a load balancer or a network blip would, while the
    server stays up and keeps its watch cache."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="k8s-proxy", daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
                upstream.settimeout(None)
            except OSError:  # the API server is down (restarting): refuse, as it would
                downstream.close()
                continue
            with self._lock:
                self._open.update((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: Any) -> None:
        import socket

        for sock in sockets:
            with self._lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        with self._lock:
            sockets = list(self._open)
        self._drop(*sockets)
        return len(sockets) // 2

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
