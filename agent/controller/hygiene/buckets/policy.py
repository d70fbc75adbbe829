"""The orphaned-buckets policy: each guard a pure function of what was read, cheapest first.

A bucket is a candidate only when it is in scope, not referenced by the cluster, not created
recently, not exempt, not owned by a configured team, quiet (no write within the window),
and no other bucket logs or replicates into it. Also the tag names Steward writes and the
lifecycle rule that expires a non-empty orphan's objects.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from agent.config import OrphanedBucketsConfig
from agent.controller.hygiene.buckets.s3 import Activity

EXEMPT_TAG = "steward.io/exempt"
MARK_TAG = "steward.io/marked-for-deletion"
REASON_TAG = "steward.io/marked-reason"
STEWARD_TAGS = (MARK_TAG, REASON_TAG)
# On a bucket a restore created again: which restore did it, so a restore that died after
# the create and is tried again knows the bucket for its own.
RESTORED_TAG = "steward.io/restored-from"
EXPIRE_RULE_ID = "steward-expire-orphaned-bucket"
MARKER_RULE_ID = "steward-expire-orphaned-bucket-delete-markers"
MAX_TAGS = 50  # S3's limit per bucket
# S3 tag values take letters, digits, spaces and + - = . _ : / @, at most 256 characters.
_TAG_VALUE_BAD = re.compile(r"[^\w\s+\-=.:/@]", re.UNICODE)


@dataclass(frozen=True)
class BucketPolicy:
    owner_tags: tuple[str, ...]
    teams: frozenset[str]  # casefolded
    quiet_for: timedelta
    expire_non_empty: bool
    expire_after_days: int
    patterns: tuple[str, ...]  # empty: every bucket

    @classmethod
    def from_config(cls, config: OrphanedBucketsConfig) -> BucketPolicy:
        return cls(owner_tags=tuple(config.owner_tags),
                   teams=frozenset(t.strip().casefold() for t in config.teams),
                   quiet_for=timedelta(days=config.quiet_days),
                   expire_non_empty=config.expire_non_empty,
                   expire_after_days=config.expire_after_days,
                   patterns=tuple(config.buckets))


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def scope_guard(name: str, policy: BucketPolicy) -> str | None:
    if policy.patterns and not any(fnmatch.fnmatchcase(name, p) for p in policy.patterns):
        return "not in scope (hygiene.orphaned_buckets.buckets)"
    return None


def age_guard(created: datetime | None, policy: BucketPolicy, now: datetime) -> str | None:
    """A bucket younger than the quiet window may simply not have been written to yet."""
    if created is not None and created > now - policy.quiet_for:
        return f"created {_day(created)}, within {policy.quiet_for.days} days"
    return None


def owner_tag(tags: Mapping[str, str], policy: BucketPolicy) -> tuple[str, str] | None:
    """The first configured owner tag the bucket carries: (key, value)."""
    for key in policy.owner_tags:
        value = tags.get(key, "").strip()
        if value:
            return key, value
    return None


def tag_guard(tags: Mapping[str, str], policy: BucketPolicy) -> str | None:
    if tags.get(EXEMPT_TAG, "").strip().lower() == "true":
        return f"exempt tag {EXEMPT_TAG}=true"
    for key in policy.owner_tags:
        value = tags.get(key, "").strip()
        if value and value.casefold() in policy.teams:
            return f"owned by team {value} (tag {key})"
    return None


def activity_guard(activity: Activity, policy: BucketPolicy) -> str | None:
    if activity.recent is not None:
        return f"object written {_day(activity.recent)}"
    return None


def target_guard(name: str, logging_sources: Mapping[str, Sequence[str]],
                 replication_sources: Mapping[str, Sequence[str]]) -> str | None:
    """``*_sources``: target bucket -> the buckets that write into it."""
    if logging_sources.get(name):
        return f"logging target of {', '.join(sorted(logging_sources[name]))}"
    if replication_sources.get(name):
        return f"replication target of {', '.join(sorted(replication_sources[name]))}"
    return None


def action_for(activity: Activity, policy: BucketPolicy) -> str:
    """Only an empty bucket is deleted; a non-empty one gets an expiry rule when allowed."""
    if activity.empty:
        return "delete"
    return "expire_objects" if policy.expire_non_empty else "notify"


def orphan_reason(tags: Mapping[str, str], activity: Activity, policy: BucketPolicy) -> str:
    owner = owner_tag(tags, policy)
    who = f"owner {owner[1]} (tag {owner[0]}) is not a known team" if owner else "no owner tag"
    if activity.empty:
        what = "empty"
    else:
        last = _day(activity.newest) if activity.newest else "unknown"
        what = (f"{activity.objects} objects, {activity.bytes} bytes, nothing written in "
                f"{policy.quiet_for.days} days (last {last})")
    return f"orphaned bucket: {who}, {what}, not referenced in the cluster"


# --------------------------------------------------------------------------- marks


def tag_value(text: str) -> str:
    return _TAG_VALUE_BAD.sub(" ", text).strip()[:256]


def marked_tags(tags: Mapping[str, str], *, deadline: str, reason: str) -> dict[str, str]:
    """The bucket's tags plus Steward's mark: the deadline's date and the reason."""
    new = {k: v for k, v in tags.items() if k not in STEWARD_TAGS}
    new[MARK_TAG] = tag_value(deadline[:10])
    new[REASON_TAG] = tag_value(reason)
    if len(new) > MAX_TAGS:
        raise ValueError(f"the bucket already has {len(tags)} tags; a mark needs 2 of "
                         f"S3's {MAX_TAGS}")
    return new


def unmarked_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k not in STEWARD_TAGS}


# --------------------------------------------------------------------------- expiry


def expiry_rules(*, now: datetime, policy: BucketPolicy, versioned: bool,
                 oldest_write: datetime | None) -> list[dict[str, Any]]:
    """Lifecycle rules that expire every object no sooner than ``expire_after_days`` from now.

    Current versions expire on a fixed date (S3 wants midnight UTC), not N days after their
    own creation, which for a quiet bucket would be at once. A noncurrent version's clock
    starts when it became noncurrent, which is after its own write; counting from the oldest
    write seen keeps every one of them for at least the grace period too.
    """
    first = (now + timedelta(days=policy.expire_after_days)).date() + timedelta(days=1)
    expire: dict[str, Any] = {
        "ID": EXPIRE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
        "Expiration": {"Date": datetime.combine(first, time(0, 0), tzinfo=UTC)},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": policy.expire_after_days},
    }
    rules = [expire]
    if versioned:
        since_oldest = (now - oldest_write).total_seconds() / 86400 if oldest_write else 0.0
        expire["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": policy.expire_after_days + math.ceil(max(since_oldest, 0.0)) + 1}
        # S3 takes ExpiredObjectDeleteMarker only in a rule without a Date or Days.
        rules.append({"ID": MARKER_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
                      "Expiration": {"ExpiredObjectDeleteMarker": True}})
    return rules


def merged_lifecycle(existing: Sequence[Mapping[str, Any]] | None,
                     ours: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The bucket's own rules kept, Steward's replaced (so applying twice changes nothing)."""
    ids = {rule["ID"] for rule in ours}
    return [dict(r) for r in existing or [] if r.get("ID") not in ids] + [dict(r) for r in ours]
