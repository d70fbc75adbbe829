"""Amazon ECR as an image registry for the stale-images job, through an injected boto3 client.

Listing is ``describe_repositories`` and ``describe_images`` in pages of the maximum size
(tags, media type, push and last pull time, size: everything the policy reads, no per-image
call); only index manifests are read, with ``batch_get_image`` (100 a call), to learn their
children; deletes go through ``batch_delete_image`` in batches of 100. Repository tags are
one ``list_tags_for_resource`` per repository that has a candidate: ECR has no bulk call for
them (``describe_repositories`` does not carry tags).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.controller.hygiene.images.registry import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    AgeBasis,
    ImageFacts,
    Manifest,
    RegistryError,
    summarize,
)

BATCH = 100  # the most image ids batch_get_image and batch_delete_image take
PAGE = 1000  # the most results describe_repositories and describe_images return
_HOST_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.")


def parse_registry_url(url: str) -> tuple[str | None, str | None]:
    """``123456789012.dkr.ecr.eu-west-1.amazonaws.com`` -> (account id, region)."""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    match = _HOST_RE.match(host)
    if match:
        return match["account"], match["region"]
    return (host if re.fullmatch(r"\d{12}", host) else None), None


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class EcrRegistry:
    """One ECR registry (an account in a region)."""

    records_pulls = True
    age_basis: AgeBasis = "pushed"
    parallel = 8  # repositories scanned at once: a boto3 client is thread-safe (OCI: serial)

    def __init__(self, client: Any, *, registry_id: str | None = None,
                 repositories: Sequence[str] = ()) -> None:
        self._client = client
        self._registry_id = registry_id
        self._patterns = tuple(repositories)
        self._arns: dict[str, str] = {}
        self.name = registry_id or "ecr"

    def _ids(self) -> dict[str, str]:
        return {"registryId": self._registry_id} if self._registry_id else {}

    def _call(self, operation: str, *, registry: bool = True, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        ids = self._ids() if registry else {}
        try:
            result: dict[str, Any] = getattr(self._client, operation)(**ids, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise RegistryError(f"ECR {operation}: {error.get('Code')}: "
                                f"{error.get('Message')}", code=error.get("Code")) from exc
        except BotoCoreError as exc:
            raise RegistryError(f"ECR {operation}: {exc}") from exc
        return result

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self._client.get_paginator(operation)
        try:
            yield from paginator.paginate(**self._ids(), **kwargs,
                                          PaginationConfig={"PageSize": PAGE})
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise RegistryError(f"ECR {operation}: {error.get('Code')}: "
                                f"{error.get('Message')}", code=error.get("Code")) from exc
        except BotoCoreError as exc:
            raise RegistryError(f"ECR {operation}: {exc}") from exc

    def repositories(self) -> list[str]:
        names = []
        for page in self._pages("describe_repositories"):
            for repo in page.get("repositories", []):
                name = repo["repositoryName"]
                self._arns[name] = repo["repositoryArn"]
                if not self._patterns or any(fnmatch.fnmatchcase(name, p)
                                             for p in self._patterns):
                    names.append(name)
        return sorted(names)

    def images(self, repository: str) -> list[ImageFacts]:
        details: list[dict[str, Any]] = []
        try:
            for page in self._pages("describe_images", repositoryName=repository):
                details.extend(page.get("imageDetails", []))
        except RegistryError as exc:
            if exc.code == "RepositoryNotFoundException":
                return []  # deleted since it was listed: no images left to judge
            raise
        indexes = [d["imageDigest"] for d in details
                   if d.get("imageManifestMediaType") in INDEX_TYPES]
        children: dict[str, tuple[str, ...]] = {}
        for digest, manifest in self._manifests(repository, indexes).items():
            summary = summarize(manifest.parsed(), manifest.media_type)
            children[digest] = summary.children
        sizes = {d["imageDigest"]: d.get("imageSizeInBytes") for d in details}
        facts = []
        for detail in details:
            digest = detail["imageDigest"]
            size = sizes.get(digest)
            kids = children.get(digest, ())
            if size is None and kids:
                # ECR reports no size for an index: its children are what it holds.
                size = sum(int(sizes.get(child) or 0) for child in kids)
            facts.append(ImageFacts(
                repository=repository, digest=digest,
                tags=tuple(sorted(detail.get("imageTags") or ())),
                media_type=str(detail.get("imageManifestMediaType") or ""),
                pushed_at=_aware(detail.get("imagePushedAt")),
                created_at=None,
                last_pulled_at=_aware(detail.get("lastRecordedPullTime")),
                size_bytes=int(size) if size is not None else None,
                children=kids))
        return facts

    def _manifests(self, repository: str, digests: Sequence[str]) -> dict[str, Manifest]:
        found: dict[str, Manifest] = {}
        for start in range(0, len(digests), BATCH):
            chunk = digests[start:start + BATCH]
            result = self._call("batch_get_image", repositoryName=repository,
                                imageIds=[{"imageDigest": d} for d in chunk],
                                acceptedMediaTypes=list(MANIFEST_TYPES))
            for image in result.get("images", []):
                digest = image.get("imageId", {}).get("imageDigest")
                if digest and digest not in found:
                    found[digest] = Manifest(image["imageManifest"].encode(),
                                             str(image.get("imageManifestMediaType") or ""))
            for failure in result.get("failures", []):
                if failure.get("failureCode") != "ImageNotFound":
                    raise RegistryError(f"ECR batch_get_image: {failure.get('failureCode')}: "
                                        f"{failure.get('failureReason')}")
        return found

    def repository_tags(self, repository: str) -> Mapping[str, str]:
        arn = self._arns.get(repository)
        if arn is None:
            self.repositories()
            arn = self._arns.get(repository)
        if arn is None:
            return {}
        # No registryId here: the ARN names the account.
        result = self._call("list_tags_for_resource", registry=False, resourceArn=arn)
        return {t["Key"]: t["Value"] for t in result.get("tags", [])}

    def manifest(self, repository: str, digest: str) -> Manifest | None:
        return self._manifests(repository, [digest]).get(digest)

    def delete(self, repository: str, digests: Sequence[str]) -> None:
        for start in range(0, len(digests), BATCH):
            chunk = digests[start:start + BATCH]
            try:
                result = self._call("batch_delete_image", repositoryName=repository,
                                    imageIds=[{"imageDigest": d} for d in chunk])
            except RegistryError as exc:
                if exc.code == "RepositoryNotFoundException":
                    return  # the repository went, and its images with it
                raise
            for failure in result.get("failures", []):
                if failure.get("failureCode") != "ImageNotFound":
                    raise RegistryError(f"ECR batch_delete_image: {failure.get('failureCode')}:"
                                        f" {failure.get('failureReason')}")

    def put_manifest(self, repository: str, manifest: Manifest, *, tag: str | None) -> None:
        kwargs: dict[str, Any] = {"repositoryName": repository,
                                  "imageManifest": manifest.body.decode(),
                                  "imageManifestMediaType": manifest.media_type,
                                  "imageDigest": manifest.digest}
        if tag:
            kwargs["imageTag"] = tag
        try:
            self._call("put_image", **kwargs)
        except RegistryError as exc:
            if exc.code != "ImageAlreadyExistsException":  # already there: restored
                raise
