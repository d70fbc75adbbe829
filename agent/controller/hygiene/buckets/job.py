"""The orphaned-buckets hygiene job: S3 buckets no team owns, nothing uses and nobody writes.

Guards run cheapest first, so a bucket is listed only when nothing cheaper settled it: scope,
cluster references and creation date cost no call; tags one; a listing by version (any
bucket's, versioned or not) that stops at the first recent object next; then, only for the
buckets still in play, their versioning; who logs into them last (every bucket's logging
configuration: S3 cannot be asked who writes into a bucket), and who replicates into them
only when one of them is versioned (S3 replicates into versioned buckets only). Reads of
different buckets run in parallel.

Marks are bucket tags (``steward.io/marked-for-deletion=<deadline date>`` and
``steward.io/marked-reason``) next to the bucket's own tags. Sweeping deletes empty buckets
only; a non-empty orphan gets a lifecycle rule expiring its objects after a further grace
period, when ``expire_non_empty`` allows it, else the owner is only told. A listing that
failed on any page is never read as empty: that bucket is skipped.

Restore needs only S3: it re-creates a deleted bucket with its tags (plus
``steward.io/restored-from``, which tells a retried restore its own bucket), policy,
lifecycle and versioning state, or puts the lifecycle back; objects that already expired
cannot come back, and a deleted bucket's name taken by someone else meanwhile is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.config import StewardConfig
from agent.controller.hygiene.buckets.policy import (
    EXPIRE_RULE_ID,
    MARKER_RULE_ID,
    MAX_TAGS,
    RESTORED_TAG,
    BucketPolicy,
    action_for,
    activity_guard,
    age_guard,
    expiry_rules,
    marked_tags,
    merged_lifecycle,
    orphan_reason,
    owner_tag,
    scope_guard,
    tag_guard,
    target_guard,
    unmarked_tags,
)
from agent.controller.hygiene.buckets.s3 import Activity, Bucket, S3Buckets, S3Error
from agent.controller.hygiene.context import JobContext, JobUnavailable, NoReferences
from agent.controller.hygiene.model import (
    Candidate,
    Observed,
    Scan,
    ScanFailed,
    Skipped,
    Unit,
)
from agent.controller.hygiene.references import (
    BucketReferences,
    BucketReferenceSource,
    ReferencesUnavailable,
)

T = TypeVar("T")
R = TypeVar("R")
PREFIX = "s3://"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if moment else None


def bucket_of(resource: str) -> str:
    if not resource.startswith(PREFIX) or "/" in resource[len(PREFIX):]:
        raise ValueError(f"not a bucket resource (s3://bucket): {resource!r}")
    return resource[len(PREFIX):]


@dataclass(frozen=True)
class _Targets:
    logging: dict[str, list[str]]  # target -> sources
    replication: dict[str, list[str]]
    read_at: float
    replication_read: bool = True  # False: not read, no candidate could be a destination


class OrphanedBucketsJob:
    """Implements the engine's ``HygieneJob`` protocol for S3 buckets."""

    name = "orphaned-buckets"
    unit: Unit = "bytes"

    def __init__(self, s3: S3Buckets, references: BucketReferenceSource, *,
                 policy: BucketPolicy, clock: Callable[[], datetime] = _utcnow,
                 max_workers: int = 8, targets_ttl_seconds: float = 60.0) -> None:
        self._s3 = s3
        self._references = references
        self._policy = policy
        self._clock = clock
        self._workers = max_workers
        # Sweeps recheck several buckets in a row; each needs every bucket's logging and
        # replication configuration, which is read at most once a minute.
        self._targets_ttl = targets_ttl_seconds
        self._targets: _Targets | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: StewardConfig, *,
                    references: BucketReferenceSource | None = None,
                    clock: Callable[[], datetime] = _utcnow,
                    boto_session: Any = None) -> OrphanedBucketsJob:
        import boto3
        from botocore.config import Config

        if references is None:
            from agent.clients.kubernetes.api import api_client
            from agent.controller.hygiene.references import ClusterReferences

            references = ClusterReferences(
                api_client(config.kubernetes, "hygiene"),
                secret_namespaces=config.hygiene.orphaned_buckets.secret_namespaces)
        session = boto_session or boto3.session.Session()
        client = session.client("s3", endpoint_url=config.aws.endpoint_url,
                                region_name=config.aws.region,
                                config=Config(retries={"mode": "standard"},
                                              max_pool_connections=16))
        return cls(S3Buckets(client), references,
                   policy=BucketPolicy.from_config(config.hygiene.orphaned_buckets), clock=clock)

    # ------------------------------------------------------------------ scan

    def scan(self) -> Scan:
        try:
            buckets = self._s3.buckets()
        except S3Error as exc:
            raise ScanFailed(f"listing buckets: {exc}") from exc
        scan, _unreadable = self._evaluate(buckets, [b.name for b in buckets],
                                           self._bucket_references(), self._clock(),
                                           fresh_targets=True)
        return scan

    def _bucket_references(self) -> BucketReferences:
        try:
            return self._references.bucket_references()
        except ReferencesUnavailable as exc:
            raise ScanFailed(f"cluster references: {exc}") from exc

    def _parallel(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1 or self._workers <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self._workers, len(items)),
                                thread_name_prefix="hygiene-s3") as pool:
            return list(pool.map(work, items))

    def _evaluate(self, buckets: Sequence[Bucket], all_names: Sequence[str],
                  references: BucketReferences, now: datetime, *, fresh_targets: bool
                  ) -> tuple[Scan, set[str]]:
        """The scan, and the buckets skipped only because they could not be read."""
        policy = self._policy
        unreadable: set[str] = set()
        skipped: list[Skipped] = []
        pending: list[Bucket] = []
        for bucket in buckets:
            reason = (scope_guard(bucket.name, policy) or references.find(bucket.name)
                      or age_guard(bucket.created, policy, now))
            if reason:
                skipped.append(Skipped(PREFIX + bucket.name, reason))
            else:
                pending.append(bucket)

        def read_tags(bucket: Bucket) -> dict[str, str] | S3Error:
            try:
                return self._s3.tags(bucket.name)
            except S3Error as exc:
                return exc

        tags: dict[str, dict[str, str]] = {}
        survivors: list[Bucket] = []
        for bucket, result in zip(pending, self._parallel(read_tags, pending), strict=True):
            if isinstance(result, S3Error):
                # Left alone: an unreadable bucket may well be someone's.
                unreadable.add(bucket.name)
                skipped.append(Skipped(PREFIX + bucket.name, f"tags unreadable ({result.code})"))
                continue
            reason = tag_guard(result, policy)
            if reason:
                skipped.append(Skipped(PREFIX + bucket.name, reason))
                continue
            tags[bucket.name] = result
            survivors.append(bucket)

        since = now - policy.quiet_for

        def read_activity(bucket: Bucket) -> Activity | S3Error:
            # By version whatever the versioning: an unversioned bucket lists its objects
            # (version "null") the same way, and no versioning read is spent to choose.
            try:
                return self._s3.activity(bucket.name, since=since, versioned=True)
            except S3Error as exc:
                return exc

        listed: list[tuple[Bucket, Activity]] = []
        for bucket, read in zip(survivors, self._parallel(read_activity, survivors),
                                strict=True):
            if isinstance(read, S3Error):
                unreadable.add(bucket.name)
                skipped.append(Skipped(PREFIX + bucket.name, f"objects unreadable ({read.code})"))
                continue
            reason = activity_guard(read, policy)
            if reason:
                skipped.append(Skipped(PREFIX + bucket.name, reason))
            else:
                listed.append((bucket, read))

        def read_versioning(bucket: Bucket) -> str | S3Error | None:
            try:
                return self._s3.versioning(bucket.name)
            except S3Error as exc:
                return exc

        # Versioning only for the buckets still in play: their evidence shows it, and only a
        # versioned bucket can be a replication destination (S3 refuses any other).
        quiet: list[tuple[Bucket, str | None, Activity]] = []
        for (bucket, activity), versioning in zip(
                listed, self._parallel(read_versioning, [b for b, _ in listed]), strict=True):
            if isinstance(versioning, S3Error):
                unreadable.add(bucket.name)
                skipped.append(Skipped(PREFIX + bucket.name,
                                       f"versioning unreadable ({versioning.code})"))
                continue
            quiet.append((bucket, versioning, activity))

        candidates: list[Candidate] = []
        if quiet:
            targets = self._read_targets(
                all_names, fresh=fresh_targets,
                replication=any(versioning is not None for _, versioning, _ in quiet))
            for bucket, versioning, activity in quiet:
                reason = target_guard(bucket.name, targets.logging, targets.replication)
                if reason:
                    skipped.append(Skipped(PREFIX + bucket.name, reason))
                    continue
                reason = self._expiring(bucket.name, activity)
                if reason:
                    if reason.startswith("lifecycle unreadable"):
                        unreadable.add(bucket.name)
                    skipped.append(Skipped(PREFIX + bucket.name, reason))
                    continue
                candidates.append(self._candidate(bucket, tags[bucket.name], versioning,
                                                  activity))
        order = {b.name: i for i, b in enumerate(buckets)}
        skipped.sort(key=lambda s: order.get(s.resource[len(PREFIX):], 0))
        return Scan(candidates, skipped), unreadable

    def _expiring(self, name: str, activity: Activity) -> str | None:
        """Why a bucket that would get the expiry rule is left alone: it has it already
        (read only for those: one call each)."""
        if action_for(activity, self._policy) != "expire_objects":
            return None
        try:
            rules = self._s3.lifecycle(name) or []
        except S3Error as exc:
            return f"lifecycle unreadable ({exc.code})"
        if any(r.get("ID") == EXPIRE_RULE_ID for r in rules):
            return f"Steward's expiry rule {EXPIRE_RULE_ID} is set already: its objects expire"
        return None

    def _read_targets(self, names: Sequence[str], *, fresh: bool,
                      replication: bool) -> _Targets:
        """Who logs into (and, when ``replication``, replicates into) which bucket: every
        bucket's configuration, since S3 has no lookup from a target to its sources."""
        with self._lock:
            cached = self._targets
        if cached is not None and not fresh and (cached.replication_read or not replication) \
                and time.monotonic() - cached.read_at < self._targets_ttl:
            return cached

        def read(name: str) -> tuple[str | None, list[str]]:
            return self._s3.logging_target(name), \
                self._s3.replication_targets(name) if replication else []

        try:
            results = self._parallel(read, list(names))
        except S3Error as exc:
            # Any unreadable source could be writing into any candidate: decide nothing.
            raise ScanFailed(f"logging/replication configuration: {exc}") from exc
        logging: dict[str, list[str]] = {}
        replicas: dict[str, list[str]] = {}
        for name, (log_target, replica_targets) in zip(names, results, strict=True):
            if log_target and log_target != name:
                logging.setdefault(log_target, []).append(name)
            for target in replica_targets:
                replicas.setdefault(target, []).append(name)
        targets = _Targets(logging, replicas, time.monotonic(), replication_read=replication)
        with self._lock:
            self._targets = targets
        return targets

    def _candidate(self, bucket: Bucket, tags: Mapping[str, str], versioning: str | None,
                   activity: Activity) -> Candidate:
        policy = self._policy
        action = action_for(activity, policy)
        owner = owner_tag(tags, policy)
        evidence: dict[str, Any] = {
            # A bucket deleted and created again under the same name is another bucket: the
            # engine sweeps only when this still matches the mark's.
            "uid": f"{bucket.name}@{_iso(bucket.created)}",
            "bucket": bucket.name, "created": _iso(bucket.created), "tags": dict(tags),
            "owner_tag": f"{owner[0]}={owner[1]}" if owner else None,
            "versioning": versioning or "Disabled", "empty": activity.empty,
            "objects": activity.objects, "bytes": activity.bytes,
            "newest_write": _iso(activity.newest), "oldest_write": _iso(activity.oldest),
            "quiet_days": policy.quiet_for.days, "pages_listed": activity.pages,
        }
        if action == "notify":
            evidence["why_notify"] = ("not empty, and hygiene.orphaned_buckets."
                                      "expire_non_empty is off")
        if action == "expire_objects":
            evidence["expire_after_days"] = policy.expire_after_days
        return Candidate(resource=PREFIX + bucket.name, action=action,
                         reason=orphan_reason(tags, activity, policy), evidence=evidence,
                         reclaim={} if action == "notify" else {"bytes": float(activity.bytes)},
                         owner=owner[1] if owner else None)

    # ------------------------------------------------------------------ recheck

    def recheck(self, resource: str) -> Candidate | None:
        name = bucket_of(resource)
        try:
            buckets = self._s3.buckets()
        except S3Error as exc:
            raise ScanFailed(f"listing buckets: {exc}") from exc
        bucket = next((b for b in buckets if b.name == name), None)
        if bucket is None:
            return None  # gone: nothing left to sweep
        scan, unreadable = self._evaluate([bucket], [b.name for b in buckets],
                                          self._bucket_references(), self._clock(),
                                          fresh_targets=False)
        if unreadable:
            raise ScanFailed(f"{resource}: {scan.skipped[0].reason}")
        return scan.candidates[0] if scan.candidates else None

    # ------------------------------------------------------------------ marks

    def mark(self, candidate: Candidate, *, deadline: str, run_id: str) -> None:
        name = bucket_of(candidate.resource)
        tags = self._s3.tags(name)
        try:
            new = marked_tags(tags, deadline=deadline, reason=candidate.reason)
        except ValueError as exc:
            raise S3Error(f"cannot mark {candidate.resource}: {exc}", code="TooManyTags") \
                from exc
        if new != tags:
            self._s3.put_tags(name, new)

    def unmark(self, resource: str) -> None:
        name = bucket_of(resource)
        try:
            tags = self._s3.tags(name)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return
            raise
        kept = unmarked_tags(tags)
        if kept != tags:
            self._s3.put_tags(name, kept)

    # ------------------------------------------------------------------ act and undo

    def restore_record(self, candidate: Candidate) -> dict[str, Any]:
        name = bucket_of(candidate.resource)
        return {
            "resource": candidate.resource, "bucket": name, "action": candidate.action,
            "region": self._s3.region(name), "tags": self._s3.tags(name),
            "policy": self._s3.policy(name), "lifecycle": _jsonable(self._s3.lifecycle(name)),
            "versioning": self._s3.versioning(name),
        }

    def act(self, candidate: Candidate) -> None:
        name = bucket_of(candidate.resource)
        if candidate.action == "notify" or not self._s3.exists(name):
            return  # nothing to do, or done before a crash
        if candidate.action == "delete":
            # Checked again at the last moment: a write since the recheck stops the delete.
            if not self._s3.is_empty(name):
                raise S3Error(f"{candidate.resource} is no longer empty; not deleted",
                              code="BucketNotEmpty")
            self._s3.delete_bucket(name)
        elif candidate.action == "expire_objects":
            versioning = self._s3.versioning(name)
            oldest = candidate.evidence.get("oldest_write")
            rules = expiry_rules(
                now=self._clock(), policy=self._policy, versioned=versioning is not None,
                oldest_write=datetime.fromisoformat(oldest.replace("Z", "+00:00"))
                if isinstance(oldest, str) else None)
            self._s3.put_lifecycle(name, merged_lifecycle(self._s3.lifecycle(name), rules))
        else:
            raise ValueError(f"{candidate.resource}: unknown action {candidate.action!r}")

    def observe(self, candidate: Candidate, record: dict[str, Any]) -> Observed:
        name = bucket_of(candidate.resource)
        bucket = next((b for b in self._s3.buckets() if b.name == name), None)
        if candidate.action == "delete":
            if bucket is None:
                return Observed("done", f"{candidate.resource} is gone")
            created = _iso(bucket.created)
            if created != candidate.evidence.get("created"):
                return Observed("done", f"{candidate.resource} was deleted; a bucket of that "
                                        f"name was created again at {created}")
            return Observed("not_done", f"{candidate.resource} still exists")
        if candidate.action == "expire_objects":
            if bucket is None:
                return Observed("vanished", f"{candidate.resource} no longer exists")
            rules = self._s3.lifecycle(name) or []
            if any(r.get("ID") == EXPIRE_RULE_ID for r in rules):
                return Observed("done", f"{candidate.resource} has the rule {EXPIRE_RULE_ID}")
            return Observed("not_done", f"{candidate.resource} has no rule {EXPIRE_RULE_ID}")
        raise ValueError(f"{candidate.resource}: unknown action {candidate.action!r}")

    def restore(self, record: dict[str, Any], *, restore_id: str) -> str:
        name = record["bucket"]
        resource = PREFIX + name
        tags = unmarked_tags(record.get("tags") or {})
        if record.get("action") == "delete":
            if self._s3.exists(name):
                if self._s3.tags(name).get(RESTORED_TAG) != restore_id:
                    raise RuntimeError(f"a bucket named {name} exists again and is not the one "
                                       "deleted (or its restore); not touching it")
            else:
                self._s3.create_bucket(name, region=record["region"])
            if len(tags) < MAX_TAGS:
                tags = {**tags, RESTORED_TAG: restore_id}
            self._s3.put_tags(name, tags)  # first: a retry knows the bucket for its own
            if record.get("versioning"):
                self._s3.put_versioning(name, record["versioning"])
            if record.get("policy"):
                self._s3.put_policy(name, record["policy"])
        lifecycle = record.get("lifecycle")
        current = self._s3.lifecycle(name)
        if lifecycle or current:
            self._s3.put_lifecycle(name, _without_ours(lifecycle))
        self._s3.put_tags(name, tags)
        if not self._s3.exists(name):
            raise RuntimeError(f"{resource} cannot be read back after the restore")
        left = [r.get("ID") for r in self._s3.lifecycle(name) or []
                if r.get("ID") in (EXPIRE_RULE_ID, MARKER_RULE_ID)]
        if left:
            raise RuntimeError(f"{resource} still has the rules {left} after the restore")
        if record.get("action") == "delete":
            return (f"{resource} created again with its tags, policy, lifecycle and "
                    "versioning (objects deleted before cannot come back)")
        return f"{resource}: its own lifecycle rules are back, Steward's expiry rule is gone"


def _without_ours(rules: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [dict(r) for r in rules or [] if r.get("ID") not in (EXPIRE_RULE_ID, MARKER_RULE_ID)]


def _jsonable(value: Any) -> Any:
    """Lifecycle rules hold datetimes (Expiration.Date); records are stored as JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    return value


def build(context: JobContext) -> OrphanedBucketsJob:
    """The engine's entry point (``registry.build_job``): the job over the configured AWS
    account and the cluster the controller talks to."""
    references: BucketReferenceSource
    if context.api_client is not None:
        from agent.controller.hygiene.references import ClusterReferences

        references = ClusterReferences(
            context.api_client,
            secret_namespaces=context.config.hygiene.orphaned_buckets.secret_namespaces)
    elif context.for_restore:
        references = NoReferences()
    else:
        raise JobUnavailable("orphaned-buckets needs the Kubernetes API to know which buckets "
                             "are in use; no cluster is configured")
    seconds = context.clock
    return OrphanedBucketsJob.from_config(
        context.config, references=references,
        clock=lambda: datetime.fromtimestamp(seconds(), UTC))
