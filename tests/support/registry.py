"""A real OCI registry (Debian ``docker-registry``, distribution 2.8) started by a test, and
pushing images and multi-arch indexes into it over plain HTTP, without a docker daemon.

``auth="basic"`` runs it behind htpasswd; ``auth="token"`` behind the Bearer token flow, with
a token server here that signs RS256 JWTs carrying the certificate in ``x5c`` (the registry
trusts that certificate through ``rootcertbundle``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
import yaml

from agent.localnet import stop_process
from tests.support.binaries import require_binary
from tests.support.net import free_port, wait_until

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_ALL = ", ".join([
    OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
SERVICE = "steward-test-registry"
ISSUER = "steward-test-issuer"
USERNAME, PASSWORD = "ci", "s3cret-pass"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    """A manifest in the registry: its digest, size and exact bytes."""

    repository: str
    digest: str
    size: int  # of the manifest itself
    body: bytes
    media_type: str
    content_bytes: int  # config + layers (for an image), sum of the children (an index)
    platform: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- token server


class TokenServer:
    """The Bearer flow's token endpoint: checks Basic credentials, signs what was asked for."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "steward-test-token")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict[str, Any]] = []
        server = self
        port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                header = self.headers.get("Authorization", "")
                server.requests.append({"scope": query.get("scope", []), "auth": header})
                expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                if header != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                token = server.mint(query.get("scope", []))
                body = json.dumps({"token": token, "access_token": token,
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.realm = f"http://127.0.0.1:{port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="registry-token-server")
        self._thread.start()

    def mint(self, scopes: Sequence[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            for one in scope.split(" "):
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": USERNAME, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- the registry


@dataclass
class Registry:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    auth: Literal["none", "basic", "token"]
    token_server: TokenServer | None = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        if self.token_server is not None:
            self.token_server.stop()

    # ------------------------------------------------------------------ raw HTTP, as admin

    def request(self, method: str, path: str, *, repository: str | None = None,
                **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        auth = None
        if self.auth == "basic":
            auth = (USERNAME, PASSWORD)
        elif self.auth == "token" and self.token_server is not None:
            scope = (f"repository:{repository}:pull,push,delete" if repository
                     else "registry:catalog:*")
            headers["Authorization"] = f"Bearer {self.token_server.mint([scope])}"
        return self.session.request(method, urljoin(self.url, path), headers=headers,
                                    auth=auth, timeout=10, **kwargs)

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository=repository)
        assert started.status_code == 202, started.text
        location = urljoin(self.url, started.headers["Location"])
        done = self.request("PUT", location, repository=repository, params={"digest": digest},
                            data=data, headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes,
                     media_type: str) -> str:
        response = self.request("PUT", f"/v2/{repository}/manifests/{reference}",
                                repository=repository, data=body,
                                headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        return str(response.headers["Docker-Content-Digest"])

    def push_image(self, repository: str, *, tag: str | None, created: datetime,
                   layers: Sequence[bytes] = (b"layer",), arch: str = "amd64",
                   annotations: Mapping[str, str] | None = None) -> Pushed:
        """Blobs, then the manifest (by ``tag``, or by digest when untagged)."""
        config = json.dumps({
            "created": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]},
            "config": {}}).encode()
        descriptors = []
        for layer in layers:
            descriptors.append({"mediaType": OCI_LAYER, "size": len(layer),
                                "digest": self.push_blob(repository, layer)})
        manifest: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config),
                       "digest": self.push_blob(repository, config)},
            "layers": descriptors}
        if annotations:
            manifest["annotations"] = dict(annotations)
        body = json.dumps(manifest).encode()
        digest = self.put_manifest(repository, tag or digest_of(body), body, OCI_MANIFEST)
        return Pushed(repository, digest, len(body), body, OCI_MANIFEST,
                      len(config) + sum(len(x) for x in layers),
                      {"architecture": arch, "os": "linux"})

    def push_index(self, repository: str, *, tag: str | None,
                   children: Sequence[Pushed]) -> Pushed:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": c.media_type, "digest": c.digest, "size": c.size,
             "platform": dict(c.platform)} for c in children]}
        body = json.dumps(index).encode()
        digest = self.put_manifest(repository, tag or digest_of(body), body, OCI_INDEX)
        return Pushed(repository, digest, len(body), body, OCI_INDEX,
                      sum(c.content_bytes for c in children))

    def tag(self, pushed: Pushed, tag: str) -> None:
        self.put_manifest(pushed.repository, tag, pushed.body, pushed.media_type)

    def exists(self, repository: str, reference: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/manifests/{reference}",
                                repository=repository, headers={"Accept": ACCEPT_ALL})
        return response.status_code == 200

    def tags(self, repository: str) -> list[str]:
        response = self.request("GET", f"/v2/{repository}/tags/list", repository=repository)
        if response.status_code == 404:
            return []
        return list(response.json().get("tags") or [])


def _htpasswd_line(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through libxcrypt: no extra package for one test file

        # Cost 4 (16 rounds): the registry checks the hash on every request.
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    return f"{user}:{hashed}\n"


def start_registry(*, auth: Literal["none", "basic", "token"] = "none") -> Registry:
    binary = require_binary("docker-registry")
    workdir = Path(tempfile.mkdtemp(prefix="steward-registry-"))
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    token_server = None
    if auth == "basic":
        (workdir / "htpasswd").write_text(_htpasswd_line(USERNAME, PASSWORD), encoding="utf-8")
        config["auth"] = {"htpasswd": {"realm": "steward-test",
                                       "path": str(workdir / "htpasswd")}}
    elif auth == "token":
        token_server = TokenServer(workdir)
        config["auth"] = {"token": {"realm": token_server.realm, "service": SERVICE,
                                    "issuer": ISSUER,
                                    "rootcertbundle": str(token_server.cert_path)}}
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log,
                                   stderr=subprocess.STDOUT)
    registry = Registry(f"http://127.0.0.1:{port}", process, workdir, log_path, auth,
                        token_server)

    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.log()}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{registry.url}/v2/", timeout=1).status_code in (200, 401)
        return False

    try:
        wait_until(answering, timeout=10, what="docker-registry /v2/")
    except BaseException:
        registry.stop()
        raise
    return registry


@contextlib.contextmanager
def running_registry(*, auth: Literal["none", "basic", "token"] = "none") -> Iterator[Registry]:
    registry = start_registry(auth=auth)
    try:
        yield registry
    finally:
        registry.stop()
