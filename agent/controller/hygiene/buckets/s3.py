"""S3 as the orphaned-buckets job sees it, through an injected boto3 client.

Every read answers one question with as few calls as it can: tags in one call, activity by
listing in pages of the maximum size and stopping at the first recent object, emptiness with
one key. AWS's "no such configuration" answers (``NoSuchTagSet``, ``NoSuchBucketPolicy``...)
are values here, not errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PAGE = 1000  # the most keys one list call returns
_ABSENT = {
    "NoSuchTagSet", "NoSuchTagSetError", "NoSuchBucketPolicy", "NoSuchLifecycleConfiguration",
    "ReplicationConfigurationNotFoundError", "NoSuchReplicationConfiguration",
}


class S3Error(Exception):
    """S3 refused or failed; ``code`` is AWS's error code."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Bucket:
    name: str
    created: datetime | None


@dataclass(frozen=True)
class Activity:
    """What listing a bucket showed, up to the first object written at or after ``since``."""

    recent: datetime | None  # when that object was written; None: nothing recent
    recent_key: str | None
    objects: int  # objects (all versions and delete markers, when versioned) listed
    bytes: int
    newest: datetime | None  # newest write seen
    oldest: datetime | None  # oldest write seen
    complete: bool  # listed to the end
    pages: int

    @property
    def empty(self) -> bool:
        return self.complete and self.objects == 0


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class S3Buckets:
    """The S3 calls the job makes; every method raises :class:`S3Error` on failure."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, operation: str, *, absent: Any = None, gone: Any = None,
              **kwargs: Any) -> Any:
        """Call ``operation``; a "not configured" answer returns ``absent``, a missing bucket
        returns ``gone`` when given (else raises)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _ABSENT:
                return absent
            if code == "NoSuchBucket" and gone is not None:
                return gone
            bucket = kwargs.get("Bucket", "")
            raise S3Error(f"S3 {operation} {bucket}: {code}: "
                          f"{exc.response.get('Error', {}).get('Message')}", code=code) from exc
        except BotoCoreError as exc:
            raise S3Error(f"S3 {operation}: {exc}", code="Unreachable") from exc

    # ------------------------------------------------------------------ reads

    def buckets(self) -> list[Bucket]:
        found: list[Bucket] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"MaxBuckets": 10_000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_buckets", **kwargs)
            found.extend(Bucket(b["Name"], _aware(b.get("CreationDate")))
                         for b in page.get("Buckets", []))
            token = page.get("ContinuationToken")
            if not token:
                return found


    def tags(self, bucket: str) -> dict[str, str]:
        result = self._call("get_bucket_tagging", absent={}, Bucket=bucket)
        return {t["Key"]: t["Value"] for t in (result or {}).get("TagSet", [])}

    def versioning(self, bucket: str) -> str | None:
        """``Enabled``, ``Suspended``, or None for a bucket that was never versioned."""
        status = self._call("get_bucket_versioning", Bucket=bucket).get("Status")
        return str(status) if status else None

    def activity(self, bucket: str, *, since: datetime, versioned: bool) -> Activity:
        """List until an object written at or after ``since`` shows up, or to the end.

        A versioned (or once-versioned) bucket is listed by version: an overwrite or a delete
        is a write, and its old versions and delete markers keep a bucket from being empty.
        """
        recent = recent_key = newest = oldest = None
        objects = size = pages = 0
        kwargs: dict[str, Any] = {"Bucket": bucket, "MaxKeys": PAGE}
        while True:
            pages += 1
            if versioned:
                page = self._call("list_object_versions", **kwargs)
                entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            else:
                page = self._call("list_objects_v2", **kwargs)
                entries = page.get("Contents", [])
            for entry in entries:
                written = _aware(entry.get("LastModified"))
                objects += 1
                size += int(entry.get("Size") or 0)
                if written is None:
                    continue
                newest = written if newest is None or written > newest else newest
                oldest = written if oldest is None or written < oldest else oldest
                if written >= since and (recent is None or written > recent):
                    recent, recent_key = written, str(entry.get("Key"))
            truncated = bool(page.get("IsTruncated"))
            if recent is not None or not truncated:
                return Activity(recent, recent_key, objects, size, newest, oldest,
                                complete=not truncated, pages=pages)
            # A page that says "more" without saying where from: stopping here would read a
            # part of the bucket as all of it.
            if versioned:
                if not page.get("NextKeyMarker"):
                    raise S3Error(f"S3 list_object_versions {bucket}: truncated page "
                                  "without NextKeyMarker", code="IncompleteListing")
                kwargs["KeyMarker"] = page.get("NextKeyMarker")
                if page.get("NextVersionIdMarker"):
                    kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker")
                else:
                    kwargs.pop("VersionIdMarker", None)
            else:
                if not page.get("NextContinuationToken"):
                    raise S3Error(f"S3 list_objects_v2 {bucket}: truncated page without "
                                  "NextContinuationToken", code="IncompleteListing")
                kwargs["ContinuationToken"] = page.get("NextContinuationToken")

    def is_empty(self, bucket: str) -> bool:
        """One key of one list: versions and delete markers count, whatever versioning says."""
        page = self._call("list_object_versions", Bucket=bucket, MaxKeys=1)
        return not page.get("Versions") and not page.get("DeleteMarkers")

    def logging_target(self, bucket: str) -> str | None:
        result = self._call("get_bucket_logging", Bucket=bucket)
        return (result.get("LoggingEnabled") or {}).get("TargetBucket")

    def replication_targets(self, bucket: str) -> list[str]:
        result = self._call("get_bucket_replication", absent={}, Bucket=bucket) or {}
        targets = []
        for rule in (result.get("ReplicationConfiguration") or {}).get("Rules", []):
            arn = str((rule.get("Destination") or {}).get("Bucket") or "")
            if arn:
                targets.append(arn.split(":::", 1)[-1])
        return targets

    def policy(self, bucket: str) -> str | None:
        result = self._call("get_bucket_policy", Bucket=bucket, absent={}) or {}
        return result.get("Policy")

    def lifecycle(self, bucket: str) -> list[dict[str, Any]] | None:
        result = self._call("get_bucket_lifecycle_configuration", Bucket=bucket, absent=None)
        return list(result.get("Rules", [])) if result else None

    def region(self, bucket: str) -> str:
        result = self._call("get_bucket_location", Bucket=bucket)
        return str(result.get("LocationConstraint") or "us-east-1")

    def exists(self, bucket: str) -> bool:
        try:
            self._call("head_bucket", Bucket=bucket)
        except S3Error as exc:
            if exc.code in {"404", "NoSuchBucket", "NotFound"}:
                return False
            raise
        return True

    # ------------------------------------------------------------------ writes

    def put_tags(self, bucket: str, tags: Mapping[str, str]) -> None:
        if tags:
            self._call("put_bucket_tagging", Bucket=bucket, Tagging={
                "TagSet": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]})
        else:
            self._call("delete_bucket_tagging", Bucket=bucket)

    def put_lifecycle(self, bucket: str, rules: Sequence[Mapping[str, Any]] | None) -> None:
        if rules:
            self._call("put_bucket_lifecycle_configuration", Bucket=bucket,
                       LifecycleConfiguration={"Rules": [dict(r) for r in rules]})
        else:
            self._call("delete_bucket_lifecycle", Bucket=bucket)

    def put_policy(self, bucket: str, policy: str | None) -> None:
        if policy:
            self._call("put_bucket_policy", Bucket=bucket, Policy=policy)
        else:
            self._call("delete_bucket_policy", Bucket=bucket)

    def put_versioning(self, bucket: str, status: str) -> None:
        self._call("put_bucket_versioning", Bucket=bucket,
                   VersioningConfiguration={"Status": status})

    def delete_bucket(self, bucket: str) -> bool:
        """Delete an empty bucket; True when it is gone (deleted now or before)."""
        self._call("delete_bucket", Bucket=bucket, gone={"gone": True})
        return True

    def create_bucket(self, bucket: str, *, region: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("create_bucket", **kwargs)
