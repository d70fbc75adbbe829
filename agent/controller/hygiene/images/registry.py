"""What the stale-images job knows about an image, and the adapter every registry backend fills.

Backends (``ecr.py``, ``oci.py``) turn their API into :class:`ImageFacts`; the policy and the
job never see a registry's own shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
# Every manifest type, for Accept: a registry answers 404 (or converts) for types not asked for.
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED,
                  DOCKER_SCHEMA1)
IMAGE_CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                                "application/vnd.docker.container.image.v1+json"})
CREATED_ANNOTATION = "org.opencontainers.image.created"
# cosign stores signatures, attestations and SBOMs under tags named after their subject.
_COSIGN_TAG = re.compile(r"^(sha256)-([0-9a-f]{64})\.(sig|att|sbom)$")

AgeBasis = Literal["pushed", "created"]


class RegistryError(Exception):
    """The registry could not answer: nothing about its images can be decided."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the registry's error code (ECR exception name, OCI error code)


@dataclass(frozen=True)
class ImageFacts:
    """One manifest in one repository, with every tag that points at it."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    media_type: str
    # When the registry received it (ECR). None where the registry does not record it.
    pushed_at: datetime | None
    # When the image was built (config ``created`` or the created annotation).
    created_at: datetime | None
    # Where the registry records pulls (ECR ``lastRecordedPullTime``); None: never or unknown.
    last_pulled_at: datetime | None
    size_bytes: int | None
    children: tuple[str, ...] = ()  # an index's manifests, by digest
    subject: str | None = None  # the image this artifact (signature, SBOM) belongs to
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def attached_to(self) -> str | None:
        """The digest this signature/attestation/SBOM is attached to, if it is one."""
        if self.subject:
            return self.subject
        for tag in self.tags:
            match = _COSIGN_TAG.match(tag)
            if match:
                return f"{match[1]}:{match[2]}"
        return None


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes and media type: what a restore pushes back."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    def parsed(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


@dataclass(frozen=True)
class ManifestSummary:
    """What the policy needs from a manifest's content."""

    children: tuple[str, ...]
    child_sizes: Mapping[str, int]
    size_bytes: int | None  # config + layers of an image; None for an index
    config_digest: str | None
    config_media_type: str | None
    subject: str | None
    annotations: Mapping[str, str]


def summarize(manifest: Mapping[str, Any], media_type: str) -> ManifestSummary:
    """Children, size, config and subject of a parsed manifest of any supported type."""
    annotations = {str(k): str(v) for k, v in (manifest.get("annotations") or {}).items()}
    subject = (manifest.get("subject") or {}).get("digest")
    kind = media_type or str(manifest.get("mediaType") or "")
    if kind in INDEX_TYPES or (not kind and "manifests" in manifest):
        children = [m for m in manifest.get("manifests") or [] if isinstance(m, dict)]
        return ManifestSummary(
            children=tuple(str(m["digest"]) for m in children if m.get("digest")),
            child_sizes={str(m["digest"]): int(m.get("size") or 0) for m in children
                         if m.get("digest")},
            size_bytes=None, config_digest=None, config_media_type=None,
            subject=subject, annotations=annotations)
    config = manifest.get("config") or {}
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
    size = None
    if config or layers:
        size = int(config.get("size") or 0) + sum(int(layer.get("size") or 0)
                                                  for layer in layers)
    return ManifestSummary(
        children=(), child_sizes={}, size_bytes=size,
        config_digest=config.get("digest"), config_media_type=config.get("mediaType"),
        subject=subject, annotations=annotations)


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 text (as in image configs and annotations) -> aware datetime, else None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Go writes nanoseconds; Python's parser takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


class ImageRegistry(Protocol):
    """One registry, as the stale-images job uses it. Errors are :class:`RegistryError`."""

    name: str  # the resource prefix: registry host, or the ECR registry id
    records_pulls: bool  # whether ImageFacts.last_pulled_at means anything
    age_basis: AgeBasis  # which timestamp the age guard reads

    def repositories(self) -> list[str]:
        """The repositories in scope (the configured list or patterns; all when empty)."""
        ...

    def images(self, repository: str) -> list[ImageFacts]:
        """Every manifest of ``repository`` that can be seen, index children included."""
        ...

    def repository_tags(self, repository: str) -> Mapping[str, str]:
        """Tags on the repository itself (exemption, owner); empty where there are none."""
        ...

    def manifest(self, repository: str, digest: str) -> Manifest | None:
        """The manifest's exact bytes, or None when it no longer exists."""
        ...

    def delete(self, repository: str, digests: Sequence[str]) -> None:
        """Delete manifests by digest; one already gone counts as deleted."""
        ...

    def put_manifest(self, repository: str, manifest: Manifest, *, tag: str | None) -> None:
        """Push a manifest back (by ``tag``, else by its digest)."""
        ...
