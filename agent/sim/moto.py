"""moto's server, in-process over real HTTP, and back-dating through its backend objects.

AWS APIs cannot set push times, pull times, object write times or bucket creation times;
moto's in-process backends can (TESTING.md). Bulk objects are written straight into the
backend too: 10,000 keys in a fraction of a second instead of 10,000 round trips.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import requests

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class EcrImage:
    repository: str
    digest: str
    body: str
    media_type: str
    size: int  # what ECR reports as imageSizeInBytes


@dataclass
class Moto:
    url: str
    server: Any

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **CREDENTIALS)

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    # ------------------------------------------------------------------ ECR

    @staticmethod
    def ecr_backend() -> Any:
        from moto.ecr.models import ecr_backends

        return ecr_backends[ACCOUNT][REGION]

    def ecr_image(self, repository: str, digest: str) -> Any:
        for image in self.ecr_backend().repositories[repository].images:
            if image.get_image_digest() == digest:
                return image
        raise KeyError(f"{repository}@{digest} not in moto")

    def push_ecr_image(self, ecr: Any, repository: str, *, tag: str | None, size: int = 1000,
                       pushed: datetime | None = None, pulled: datetime | None = None,
                       seed: str = "") -> EcrImage:
        """put_image over HTTP (digest = sha256 of the manifest, as ECR computes it), then
        back-date push and pull times in the backend."""
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "size": size,
                               "digest": "sha256:" + hashlib.sha256(
                                   f"{repository}{tag}{seed}".encode()).hexdigest()},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "size": size, "digest": "sha256:" + hashlib.sha256(
                                    f"layer{repository}{tag}{seed}".encode()).hexdigest()}]}
        body = json.dumps(manifest)
        image = self._put(ecr, repository, body, OCI_MANIFEST, tag)
        self.backdate(repository, image.digest, pushed=pushed, pulled=pulled)
        # moto reports the config size as the image size.
        return EcrImage(repository, image.digest, body, OCI_MANIFEST, size)

    def push_ecr_index(self, ecr: Any, repository: str, *, tag: str | None,
                       children: Iterable[EcrImage], pushed: datetime | None = None
                       ) -> EcrImage:
        kids = list(children)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": c.media_type, "digest": c.digest, "size": len(c.body),
             "platform": {"architecture": f"arch{i}", "os": "linux"}}
            for i, c in enumerate(kids)]}
        image = self._put(ecr, repository, json.dumps(index), OCI_INDEX, tag)
        self.backdate(repository, image.digest, pushed=pushed)
        return EcrImage(repository, image.digest, image.body, OCI_INDEX,
                        sum(c.size for c in kids))

    @staticmethod
    def _put(ecr: Any, repository: str, body: str, media_type: str,
             tag: str | None) -> EcrImage:
        digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
        kwargs: dict[str, Any] = {"repositoryName": repository, "imageManifest": body,
                                  "imageManifestMediaType": media_type, "imageDigest": digest}
        if tag:
            kwargs["imageTag"] = tag
        ecr.put_image(**kwargs)
        return EcrImage(repository, digest, body, media_type, 0)

    def backdate(self, repository: str, digest: str, *, pushed: datetime | None = None,
                 pulled: datetime | None = None) -> None:
        image = self.ecr_image(repository, digest)
        if pushed is not None:
            image.image_pushed_at = int(pushed.timestamp())
        if pulled is not None:
            # moto never sets it; its serializer reads the attribute when present.
            image.last_recorded_pull_time = pulled

    # ------------------------------------------------------------------ S3

    @staticmethod
    def s3_backend() -> Any:
        from moto.s3.models import s3_backends

        return s3_backends[ACCOUNT]["aws"]

    def bucket(self, name: str) -> Any:
        return self.s3_backend().buckets[name]

    def set_bucket_created(self, name: str, when: datetime) -> None:
        self.bucket(name).creation_date = when.astimezone(UTC)

    def put_objects(self, bucket: str, keys: Iterable[str], *, written: datetime,
                    body: bytes = b"x") -> int:
        """Write keys straight into the backend, all back-dated to ``written``."""
        backend = self.s3_backend()
        count = 0
        for key in keys:
            obj = backend.put_object(bucket, key, body)
            obj.last_modified = written.astimezone(UTC).replace(tzinfo=None)
            count += 1
        return count

    @contextmanager
    def access_logs_off(self) -> Iterator[None]:
        """moto writes an access-log object into the target bucket on every request to a
        logging bucket, at once; S3 delivers hours later, best effort. Off, a logging target
        stays as quiet as its sources' traffic really was."""
        from unittest import mock

        backend_type = type(self.s3_backend())
        with mock.patch.object(backend_type, "log_incoming_request", lambda *a, **k: None):
            yield

    def set_written(self, bucket: str, key: str, when: datetime) -> None:
        for version in self.bucket(bucket).keys.getlist(key):
            version.last_modified = when.astimezone(UTC).replace(tzinfo=None)


@contextmanager
def running_moto() -> Iterator[Moto]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield Moto(f"http://{host}:{port}", server)
    finally:
        server.stop()


def count_calls(client: Any) -> Counter[str]:
    """Every API call ``client`` makes from now on, by operation name (botocore's
    ``before-call`` event fires once per HTTP request, pages included)."""
    calls: Counter[str] = Counter()

    def record(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.*.*", record)
    return calls
