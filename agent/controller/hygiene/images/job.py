"""The stale-images hygiene job: old, unused, unreferenced images in ECR and OCI registries.

Marks live in the engine's state store only: a registry cannot hold one safely (a marker tag
would itself be a tag to protect or to delete, and a retag races with CI pushes), so
``mark``/``unmark`` here change nothing. Restore needs only the registry: it pushes back the
recorded manifest bytes and tags, and reads the manifest back; that works only while the
registry still holds the layers (ECR keeps them for a while after a manifest delete; a
distribution registry until its garbage collection runs), and cannot bring back pull history
or push time.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from agent.config import RegistryConfig, StewardConfig
from agent.controller.hygiene.context import JobContext, JobUnavailable, NoReferences
from agent.controller.hygiene.images.ecr import EcrRegistry, parse_registry_url
from agent.controller.hygiene.images.oci import OciRegistry, credentials_from
from agent.controller.hygiene.images.policy import (
    EXEMPT_KEY,
    ImageDecision,
    ImagePolicy,
    decide_repository,
)
from agent.controller.hygiene.images.registry import (
    ImageFacts,
    ImageRegistry,
    Manifest,
    RegistryError,
)
from agent.controller.hygiene.model import (
    Candidate,
    Observed,
    Scan,
    ScanFailed,
    Skipped,
    Unit,
)
from agent.controller.hygiene.references import (
    ImageReferences,
    ImageReferenceSource,
    ReferencesUnavailable,
)

OWNER_TAGS = ("owner", "team")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def image_resource(registry: str, repository: str, digest: str) -> str:
    return f"{registry}/{repository}@{digest}"


def parse_image_resource(resource: str) -> tuple[str, str, str]:
    """``registry/repository@sha256:...`` -> (registry, repository, digest)."""
    registry, slash, rest = resource.partition("/")
    repository, at, digest = rest.rpartition("@")
    if not slash or not at or not repository or not digest.startswith("sha256:"):
        raise ValueError(f"not an image resource (registry/repository@sha256:...): {resource!r}")
    return registry, repository, digest


def reclaimable_by_repository(candidates: Iterable[Candidate]) -> dict[str, int]:
    """``registry/repository`` -> bytes the candidates would free: an upper bound, since layers
    shared with kept images stay."""
    totals: dict[str, int] = {}
    for candidate in candidates:
        key = f"{candidate.evidence.get('registry')}/{candidate.evidence.get('repository')}"
        totals[key] = totals.get(key, 0) + int(candidate.reclaim.get("bytes", 0))
    return dict(sorted(totals.items()))


def _size(decision: ImageDecision, by_digest: Mapping[str, ImageFacts]) -> int:
    """An image's bytes; an index's are its children's (ECR reports none for it)."""
    riders = [by_digest[d] for d in decision.children if d in by_digest]
    size = decision.image.size_bytes
    if size is None or (not size and riders):
        size = sum(r.size_bytes or 0 for r in riders)
    return int(size)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if moment else None


class StaleImagesJob:
    """Implements the engine's ``HygieneJob`` protocol for container images."""

    name = "stale-images"
    unit: Unit = "bytes"

    def __init__(self, registries: Sequence[ImageRegistry], references: ImageReferenceSource,
                 *, policy: ImagePolicy, clock: Callable[[], datetime] = _utcnow) -> None:
        self._registries = {r.name: r for r in registries}
        self._references = references
        self._policy = policy
        self._clock = clock
        self.reclaimable_by_repository: dict[str, int] = {}  # from the last scan

    @classmethod
    def from_config(cls, config: StewardConfig, *, references: ImageReferenceSource | None = None,
                    clock: Callable[[], datetime] = _utcnow, boto_session: Any = None,
                    environ: Mapping[str, str] | None = None) -> StaleImagesJob:
        """Registries from ``registries``, references from the configured cluster."""
        if references is None:
            from agent.clients.kubernetes.api import api_client
            from agent.controller.hygiene.references import ClusterReferences

            references = ClusterReferences(api_client(config.kubernetes, "hygiene"))
        registries = [registry_from_config(entry, config, boto_session=boto_session,
                                           environ=environ)
                      for entry in config.registries]
        return cls(registries, references,
                   policy=ImagePolicy.from_config(config.hygiene.stale_images), clock=clock)

    # ------------------------------------------------------------------ scan

    def scan(self) -> Scan:
        references = self._image_references()
        now = self._clock()
        candidates: list[Candidate] = []
        skipped: list[Skipped] = []
        for registry in self._registries.values():
            try:
                repositories = registry.repositories()
            except RegistryError as exc:
                raise ScanFailed(f"registry {registry.name}: {exc}") from exc
            for found, left in self._each_repository(registry, repositories, references, now):
                candidates.extend(found)
                skipped.extend(left)
        self.reclaimable_by_repository = reclaimable_by_repository(candidates)
        return Scan(candidates, skipped)

    def _each_repository(self, registry: ImageRegistry, repositories: Sequence[str],
                         references: ImageReferences, now: datetime
                         ) -> Iterable[tuple[list[Candidate], list[Skipped]]]:
        """Each repository's decisions, in order; several repositories read at once where the
        registry's client allows it (``parallel`` on the adapter: boto3 clients are
        thread-safe), since each one's reads wait on the network."""
        workers = min(int(getattr(registry, "parallel", 1)), len(repositories))
        if workers <= 1:
            return [self._scan_repository(registry, r, references, now) for r in repositories]
        with ThreadPoolExecutor(workers, thread_name_prefix="hygiene-images") as pool:
            return list(pool.map(
                lambda r: self._scan_repository(registry, r, references, now), repositories))

    def _image_references(self) -> ImageReferences:
        try:
            return self._references.image_references()
        except ReferencesUnavailable as exc:
            raise ScanFailed(f"cluster references: {exc}") from exc

    def _scan_repository(self, registry: ImageRegistry, repository: str,
                         references: ImageReferences, now: datetime
                         ) -> tuple[list[Candidate], list[Skipped]]:
        try:
            images = registry.images(repository)
        except RegistryError as exc:
            raise ScanFailed(f"registry {registry.name} repository {repository}: {exc}") from exc
        decisions = decide_repository(images, policy=self._policy, references=references,
                                      now=now, records_pulls=registry.records_pulls,
                                      age_basis=registry.age_basis)
        skipped = [Skipped(image_resource(registry.name, repository, d.image.digest), d.reason)
                   for d in decisions if not d.candidate]
        chosen = [d for d in decisions if d.candidate]
        if not chosen:
            return [], skipped
        # Repository tags are read only where they could matter: one call, not one per repo.
        try:
            repo_tags = registry.repository_tags(repository)
        except RegistryError as exc:
            raise ScanFailed(f"registry {registry.name} repository {repository}: {exc}") from exc
        if repo_tags.get(EXEMPT_KEY, "").lower() == "true":
            reason = f"exempt repository (tag {EXEMPT_KEY}=true)"
            return [], skipped + [
                Skipped(image_resource(registry.name, repository, d.image.digest), reason)
                for d in chosen]
        owner = next((repo_tags[t] for t in OWNER_TAGS if repo_tags.get(t)), None)
        by_digest = {image.digest: image for image in images}
        sizes = {d.image.digest: _size(d, by_digest) for d in chosen}
        # The plan reports reclaimable bytes per repository: each candidate carries its
        # repository's total (an upper bound: layers shared with kept images stay).
        total = sum(sizes.values())
        return [self._candidate(registry, d, sizes[d.image.digest], total, owner)
                for d in chosen], skipped

    def _candidate(self, registry: ImageRegistry, decision: ImageDecision, size: int,
                   repository_total: int, owner: str | None) -> Candidate:
        image = decision.image
        evidence: dict[str, Any] = {
            "registry": registry.name, "repository": image.repository,
            "digest": image.digest, "tags": list(image.tags), "media_type": image.media_type,
            "pushed_at": _iso(image.pushed_at), "created_at": _iso(image.created_at),
            "age_basis": registry.age_basis,
            "last_pulled_at": _iso(image.last_pulled_at) if registry.records_pulls else None,
            "pulls_recorded": registry.records_pulls,
            "size_bytes": size, "children": list(decision.children),
            "repository_reclaimable_bytes": repository_total,
        }
        if image.attached_to:
            evidence["attached_to"] = image.attached_to
        return Candidate(resource=image_resource(registry.name, image.repository, image.digest),
                         action="delete", reason=decision.reason, evidence=evidence,
                         reclaim={"bytes": float(size)}, owner=owner)

    # ------------------------------------------------------------------ recheck

    def recheck(self, resource: str) -> Candidate | None:
        # The whole repository again: newest-K, index children and signatures depend on the
        # other images, and any of them may have changed since the mark.
        registry, repository, _digest = self._locate(resource)
        references = self._image_references()
        found, _ = self._scan_repository(registry, repository, references, self._clock())
        return next((c for c in found if c.resource == resource), None)

    def _locate(self, resource: str) -> tuple[ImageRegistry, str, str]:
        name, repository, digest = parse_image_resource(resource)
        registry = self._registries.get(name)
        if registry is None:
            raise ScanFailed(f"{resource}: registry {name} is not configured")
        return registry, repository, digest

    # ------------------------------------------------------------------ marks (engine-side)

    def mark(self, candidate: Candidate, *, deadline: str, run_id: str) -> None:
        """No-op: image marks live in the engine's state store (see the module docstring)."""

    def unmark(self, resource: str) -> None:
        """No-op: nothing was written to the registry by :meth:`mark`."""

    # ------------------------------------------------------------------ act and undo

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        registry, repository, digest = self._locate(candidate.resource)
        manifests = []
        for member in [digest, *candidate.evidence.get("children", [])]:
            try:
                manifest = registry.manifest(repository, member)
            except RegistryError as exc:
                raise RegistryError(f"cannot record {candidate.resource}: {exc}",
                                    code=exc.code) from exc
            if manifest is None:
                if member == digest:
                    raise RegistryError(f"cannot record {candidate.resource}: the manifest is "
                                        "gone", code="MANIFEST_UNKNOWN")
                continue  # a child already gone cannot be restored anyway
            manifests.append({"digest": member, "media_type": manifest.media_type,
                              "manifest_b64": base64.b64encode(manifest.body).decode()})
        return {"resource": candidate.resource, "registry": registry.name,
                "repository": repository, "digest": digest,
                "tags": list(candidate.evidence.get("tags", [])),
                # Children first: an index can be pushed back only after what it lists.
                "manifests": manifests[1:] + manifests[:1],
                "limits": "re-pushes manifests and tags; layers must still be in the registry"}

    def act(self, candidate: Candidate) -> None:
        if candidate.action != "delete":
            return  # notify: the engine told the owner; nothing to do here
        registry, repository, digest = self._locate(candidate.resource)
        # The index alone first: its children must not go while it still lists them (ECR
        # refuses that), and a crash in between leaves only unlisted children behind.
        registry.delete(repository, [digest])
        children = list(candidate.evidence.get("children", []))
        if children:
            registry.delete(repository, children)

    def observe(self, candidate: Candidate, record: dict[str, Any]) -> Observed:
        registry, repository, digest = self._locate(candidate.resource)
        if registry.manifest(repository, digest) is not None:
            return Observed("not_done", f"{candidate.resource} is still in the registry")
        left = [child for child in candidate.evidence.get("children", [])
                if registry.manifest(repository, child) is not None]
        if left:
            return Observed("partial", f"{candidate.resource} is gone, {len(left)} of its "
                                       "children are not")
        return Observed("done", f"{candidate.resource} is gone")

    def restore(self, record: dict[str, Any], *, restore_id: str) -> str:
        registry, repository, digest = self._locate(record["resource"])
        for entry in record["manifests"]:
            manifest = Manifest(base64.b64decode(entry["manifest_b64"]), entry["media_type"])
            if manifest.digest != entry["digest"]:
                raise RegistryError(f"restore record of {record['resource']} is corrupt: "
                                    f"{entry['digest']} does not match its bytes")
            tags = record["tags"] if entry["digest"] == digest else []
            registry.put_manifest(repository, manifest, tag=None)
            for tag in tags:
                registry.put_manifest(repository, manifest, tag=tag)
        back = registry.manifest(repository, digest)
        if back is None or back.digest != digest:
            raise RegistryError(f"{record['resource']} cannot be read back after the restore")
        tags = ", ".join(record["tags"]) or "no tags"
        return (f"{record['resource']} pushed back ({len(record['manifests'])} manifests, "
                f"{tags})")


def registry_from_config(entry: RegistryConfig, config: StewardConfig, *,
                         boto_session: Any = None,
                         environ: Mapping[str, str] | None = None) -> ImageRegistry:
    """One ``registries[]`` entry -> its adapter (boto3 client or HTTP client)."""
    if entry.type == "ecr":
        import boto3

        account, region = parse_registry_url(entry.url)
        session = boto_session or boto3.session.Session()
        client = session.client("ecr", endpoint_url=config.aws.endpoint_url,
                                region_name=region or config.aws.region)
        return EcrRegistry(client, registry_id=account, repositories=entry.repositories)
    try:
        credentials = credentials_from(entry.auth, environ=environ)
    except ValueError as exc:
        from agent.config import ConfigError

        raise ConfigError([f"registries ({entry.url}).auth: {exc}"]) from exc
    return OciRegistry(entry.url, repositories=entry.repositories, credentials=credentials)


def build(context: JobContext) -> StaleImagesJob:
    """The engine's entry point (``registry.build_job``): the job over the configured
    registries and the cluster the controller talks to."""
    references: ImageReferenceSource
    if context.api_client is not None:
        from agent.controller.hygiene.references import ClusterReferences

        references = ClusterReferences(context.api_client)
    elif context.for_restore:
        references = NoReferences()
    else:
        raise JobUnavailable("stale-images needs the Kubernetes API to know which images are "
                             "in use; no cluster is configured")
    seconds = context.clock
    return StaleImagesJob.from_config(
        context.config, references=references,
        clock=lambda: datetime.fromtimestamp(seconds(), UTC))
