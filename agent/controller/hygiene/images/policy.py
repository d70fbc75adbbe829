"""The stale-images policy: a repository's image facts in, one decision with its reason out.

Pure: no I/O, the time is an argument. An image is a candidate only when every guard passes:
not referenced by the cluster (by tag or digest, its own or a child's), not exempt, no
protected tag, not among the newest K, old enough, not pulled recently (where the registry
records pulls), not a child of a kept index and not attached to a kept image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.config import ConfigError, StaleImagesConfig
from agent.controller.hygiene.images.registry import AgeBasis, ImageFacts
from agent.controller.hygiene.references import ImageReferences

EXEMPT_KEY = "steward.io/exempt"


@dataclass(frozen=True)
class ImagePolicy:
    min_age: timedelta
    unused_for: timedelta
    keep_newest: int
    protected_tags: tuple[re.Pattern[str], ...]
    # ECR refreshes lastRecordedPullTime about once a day: a pull in the last day may not
    # show yet, so a pull counts as recent for this much longer.
    pull_record_lag: timedelta = timedelta(days=1)

    @classmethod
    def from_config(cls, config: StaleImagesConfig) -> ImagePolicy:
        patterns = []
        for pattern in config.protected_tags:
            try:
                patterns.append(re.compile(pattern))
            except re.error as exc:
                raise ConfigError([f"hygiene.stale_images.protected_tags: {pattern!r} is not "
                                   f"a regular expression ({exc})"]) from exc
        return cls(min_age=timedelta(days=config.min_age_days),
                   unused_for=timedelta(days=config.unused_days),
                   keep_newest=config.keep_newest, protected_tags=tuple(patterns))

    def protected_tag(self, tags: Sequence[str]) -> str | None:
        for tag in tags:
            if any(p.fullmatch(tag) for p in self.protected_tags):
                return tag
        return None


@dataclass(frozen=True)
class ImageDecision:
    """``candidate`` with the manifests that go with it (an index's children), or a skip."""

    image: ImageFacts
    candidate: bool
    reason: str
    children: tuple[str, ...] = ()  # untagged children deleted with this index


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _age_time(image: ImageFacts, basis: AgeBasis) -> datetime | None:
    return image.pushed_at if basis == "pushed" else (image.created_at or image.pushed_at)


def _descendants(digest: str, by_digest: Mapping[str, ImageFacts]) -> list[str]:
    """An index's children, grandchildren (nested indexes)...; cycles are cut."""
    seen: list[str] = []
    stack = list(by_digest[digest].children) if digest in by_digest else []
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.append(child)
        if child in by_digest:
            stack.extend(by_digest[child].children)
    return seen


def decide_repository(images: Sequence[ImageFacts], *, policy: ImagePolicy,
                      references: ImageReferences, now: datetime, records_pulls: bool,
                      age_basis: AgeBasis = "pushed") -> list[ImageDecision]:
    """One decision per top-level image (tagged, or untagged and no index's child) and per
    child of a kept index; children of candidate indexes ride along with their index."""
    by_digest = {image.digest: image for image in images}
    parents: dict[str, list[str]] = {}
    for image in images:
        for child in image.children:
            parents.setdefault(child, []).append(image.digest)
    top = [i for i in images if i.tags or i.digest not in parents]
    attachments = {i.digest for i in top if i.attached_to}

    kept: dict[str, str] = {}
    # Newest first; an image whose time is unknown counts as newest (so it is kept).
    def recency(image: ImageFacts) -> tuple[bool, float, str]:
        when = _age_time(image, age_basis)
        return when is not None, -when.timestamp() if when else 0.0, image.digest

    ranked = sorted((i for i in top if i.digest not in attachments), key=recency)
    newest = {i.digest for i in ranked[:policy.keep_newest]}
    for image in top:
        reason = _own_guard(image, policy=policy, references=references, now=now,
                            records_pulls=records_pulls, age_basis=age_basis,
                            newest=image.digest in newest,
                            descendants=_descendants(image.digest, by_digest))
        if reason:
            kept[image.digest] = reason

    # Keeping an index keeps what it points at; keeping an image keeps its signatures.
    changed = True
    while changed:
        changed = False
        for digest in list(kept):
            for child in by_digest[digest].children if digest in by_digest else ():
                if child in by_digest and child not in kept:
                    kept[child] = f"child of kept index {digest}"
                    changed = True
        for image in top:
            subject = image.attached_to
            if image.digest not in kept and subject and subject in kept:
                kept[image.digest] = f"attached to kept image {subject}"
                changed = True

    decisions: list[ImageDecision] = []
    claimed: set[str] = set()
    for image in sorted(top, key=lambda i: i.digest):
        if image.digest in kept:
            decisions.append(ImageDecision(image, False, kept[image.digest]))
            continue
        riders = tuple(d for d in _descendants(image.digest, by_digest)
                       if d in by_digest and d not in kept and d not in claimed
                       and not by_digest[d].tags)
        claimed.update(riders)
        decisions.append(ImageDecision(image, True, _candidate_reason(
            image, policy=policy, now=now, records_pulls=records_pulls, age_basis=age_basis),
            riders))
    for digest, reason in sorted(kept.items()):
        member = by_digest.get(digest)
        if member is not None and not member.tags and digest in parents:
            decisions.append(ImageDecision(member, False, reason))
    return decisions


def _own_guard(image: ImageFacts, *, policy: ImagePolicy, references: ImageReferences,
               now: datetime, records_pulls: bool, age_basis: AgeBasis, newest: bool,
               descendants: Sequence[str]) -> str | None:
    """The first guard that protects ``image`` on its own account, or None."""
    referenced = references.find(image.repository, tags=image.tags,
                                 digests=[image.digest, *descendants])
    if referenced:
        return referenced
    if image.annotations.get(EXEMPT_KEY, "").lower() == "true":
        return f"exempt annotation {EXEMPT_KEY}=true"
    tag = policy.protected_tag(image.tags)
    if tag is not None:
        return f"protected tag {tag}"
    if newest:
        return f"among newest {policy.keep_newest}"
    when = _age_time(image, age_basis)
    if when is None:
        return "push time unknown" if age_basis == "pushed" else "creation time unknown"
    if when > now - policy.min_age:
        verb = "pushed" if age_basis == "pushed" else "created"
        return f"{verb} {_day(when)}, younger than {policy.min_age.days} days"
    if records_pulls and image.last_pulled_at is not None and \
            image.last_pulled_at > now - policy.unused_for - policy.pull_record_lag:
        return f"pulled {_day(image.last_pulled_at)}"
    return None


def _candidate_reason(image: ImageFacts, *, policy: ImagePolicy, now: datetime,
                      records_pulls: bool, age_basis: AgeBasis) -> str:
    when = _age_time(image, age_basis)
    verb = "pushed" if age_basis == "pushed" else "built"
    parts = [f"{verb} {_day(when)}" if when else "age unknown"]
    if records_pulls:
        parts.append(f"last pulled {_day(image.last_pulled_at)}" if image.last_pulled_at
                     else "no pull recorded")
    parts.append("not referenced in the cluster")
    parts.append(f"not among the newest {policy.keep_newest}")
    return "stale image: " + ", ".join(parts)
